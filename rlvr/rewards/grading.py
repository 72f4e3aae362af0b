"""Answer extraction and mathematical equivalence: the one grader behind the math reward and ``rlvr eval``.

``grade(response, gold)`` is :func:`extract_answer` followed by :func:`is_equivalent`. Both answers are first
cleaned by the same rewrites (:func:`normalize` without removing spaces: sizing commands, ``\\dfrac``,
``\\text{}``, units, currency, degree marks, thousands separators...), equations are aligned (``x = 3``
against ``3``; ``2 \\le x < 5`` becomes ``[2, 5)``), and then the first check that decides wins, cheapest
first:

1. the same string after :func:`normalize`;
2. a multiple-choice gold (``(C)``, ``\\text{(C)}``, ``C``, ``\\text{A, C}``): the same letters, or wrong;
3. a base-subscript number (``52_8``): the same digits (the answer may leave out the gold's base), or, for
   a base-subscript answer against a plain gold, the same value;
4. a text gold or answer (``\\text{Evelyn}``, ``east``): the same words, case ignored;
5. plain numbers, and tuples, intervals, sets or lists of them: compared exactly as fractions, in Python.
   A gold and an answer that are both integers are always decided here, so integer grading never imports
   sympy;
6. otherwise math-verify (parse both to sympy and compare): expressions, radicals, matrices, symbolic
   intervals, relations, complex numbers.

Policies (docs/grading.md lists them with the measured agreement on ``tests/data/equivalence_set.jsonl``):
units, currency signs and degree marks are dropped, never converted (``30^\\circ`` = ``30``, but not
``\\pi/6``); a percentage equals its number and its value (``50\\%`` = ``50`` = ``0.5``); a decimal equals a
fraction only exactly, except a fraction with no finite decimal (``1/3``), which a decimal matches when both
round to the same 6 places (math-verify's rule: ``0.333333`` = ``1/3``, ``0.33`` != ``1/3``); tuples and
intervals are ordered and their brackets matter, sets and bare lists (``1, 2``) are not ordered; a single
variable's equation (``x = 3``, ``y = 2x + 1``, ``x \\in [2, 5]``) equals its right side, and two such
equations must name the same variable; a base subscript may be left out (``52_8`` = ``52``).

Time: every call is bounded. The string and number checks are linear-time on inputs capped at
``MAX_ANSWER_CHARS``. The math-verify check runs under ``timeout_s`` (default ``GRADE_TIMEOUT_S``): in a
process's main thread a ``SIGALRM`` interval timer interrupts it (any earlier handler and timer are put
back); in any other thread it goes to one helper process per parent process (spawned on first use, shared
under a lock), which is killed and replaced when it passes the bound or dies. A call past its bound
returns False.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

logger = logging.getLogger(__name__)

# Seconds the math-verify part of one comparison may take before it counts as "not equal".
GRADE_TIMEOUT_S = 5.0
# Seconds a spawned helper may take to start (interpreter, sympy and math-verify imports, one warm-up call).
HELPER_START_TIMEOUT_S = 60.0
# Seconds a thread waits for the shared helper while other threads use it, before its call counts as a timeout.
HELPER_WAIT_S = 30.0
# Longer answers or golds are compared as strings only: no MATH/AIME gold is longer than 160 characters, and
# the regexes and sympy never see pathological sizes.
MAX_ANSWER_CHARS = 500
# A one-line response no longer than this, with no box, no "answer is" phrase and no prose (three plain words
# in a row), is taken as a bare answer ("47", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"); grading prose
# whole would reward noise.
BARE_ANSWER_MAX_CHARS = 200

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Boxes tried from the end of a response (each unclosed one costs a scan to the end, so the search is capped).
_MAX_BOXES_TRIED = 16
_ANSWER_PHRASE = re.compile(r"final answer is|the answer is|final answer|answer:", re.IGNORECASE)
# After the first alarm, the SIGALRM timer fires again at this period until the call returns, in case some
# library code catches and drops the first exception.
_ALARM_REPEAT_S = 0.05


# --- extraction -------------------------------------------------------------------------------------


def extract_answer(response: str) -> str | None:
    """The final answer in a model response, or None when there is none.

    In order: the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (braces matched; a box cut
    off by the token limit is skipped; ``\\boxed 2`` is read too), joined with the boxes just before it when
    only "and", "or", commas or ``x =`` separate them (``x = \\boxed{1} or x = \\boxed{2}`` gives ``1, 2``);
    else the text after the last "the answer is" / "final answer (is)" / "answer:" (case-insensitive): the
    ``$...$`` span that starts it, or its first sentence up to a clause like ", since", taken after its last
    " is " when the phrase had none ("Final Answer: The volume is 120" gives ``120``); else the whole
    response when it is one line of at most ``BARE_ANSWER_MAX_CHARS`` characters without prose (its last
    ``$...$`` span if it has one). Phrase and bare answers are trimmed of ``$`` signs, markdown ``**`` and a
    trailing period. An empty last box gives None: the model's final answer is empty.
    """
    boxes = _final_boxes(response)
    if boxes:
        return ", ".join(box.strip() for box in boxes) if all(box.strip() for box in boxes) else None
    phrase = _answer_after_phrase(response)
    if phrase:
        return phrase
    return _bare_answer(response.strip())


def _bare_answer(text: str) -> str | None:
    """A one-line response as the answer: its last ``$...$`` span if it has one, else all of it unless prose."""
    if len(text) > BARE_ANSWER_MAX_CHARS or "\n" in text:
        return None
    spans = re.findall(r"(?<!\\)\$([^$]+)(?<!\\)\$", text)
    if spans:
        return _clean_inline_answer(spans[-1]) or None
    return None if _PROSE.search(text) else _clean_inline_answer(text) or None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box whose closing brace
    never comes (a truncated generation) is skipped in favour of the one before it.
    """
    for _start, _end, content in _boxes_from_end(text):
        return content
    return None


def _boxes_from_end(text: str):
    """``(start, end, content)`` of each complete box, last first; at most ``_MAX_BOXES_TRIED`` are looked at."""
    end = len(text)
    for _ in range(_MAX_BOXES_TRIED):
        start = max(text.rfind(command, 0, end) for command in _BOX_COMMANDS)
        if start < 0:
            return
        command = next(command for command in _BOX_COMMANDS if text.startswith(command, start))
        braced = _braced_argument(text, start + len(command)) or _bare_argument(text, start + len(command))
        if braced is not None:
            content, close = braced
            yield start, close + 1, content
        end = start


def _braced_argument(text: str, position: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``position`` (after spaces) and its closing index."""
    while position < len(text) and text[position] == " ":
        position += 1
    if position >= len(text) or text[position] != "{":
        return None
    depth = 0
    for index in range(position, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : index], index
    return None


_BARE_ARGUMENT = re.compile(r" +([^\s${}]+)")


def _bare_argument(text: str, position: int) -> tuple[str, int] | None:
    """``\\boxed 2``: the token after the command and a space (up to a space or ``$``), and its last index."""
    match = _BARE_ARGUMENT.match(text, position)
    return (match.group(1), match.end() - 1) if match else None


# What may separate two boxes that together give the final answer: "\boxed{1} and x = \boxed{2}".
_BOX_GAP = re.compile(r"\s*(?:,|;|and|or|,\s*and|,\s*or)?\s*(?:[A-Za-z](?:_\d)?\s*=)?\s*")
_BOX_GAP_MAX_CHARS = 40


def _final_boxes(text: str) -> list[str]:
    """The last complete box and those joined to it by a short separator, in reading order, duplicates dropped."""
    boxes: list[str] = []
    next_start = None
    for start, end, content in _boxes_from_end(text):
        if next_start is not None:
            if next_start - end > 2 * _BOX_GAP_MAX_CHARS:
                break
            gap = re.sub(r"\\text\{([^{}]*)\}|\$|\\quad|\\[,;]", r" \1 ", text[end:next_start])
            if len(gap) > _BOX_GAP_MAX_CHARS or not _BOX_GAP.fullmatch(gap):
                break
        if not boxes or boxes[0].strip() != content.strip():
            boxes.insert(0, content)
        next_start = start
    return boxes


_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# Where an inline answer's sentence goes on after the answer: "5, since ...", "12 because ...".
_CLAUSE = re.compile(
    r",?\s+(?:since|because|as|which|so|for|from|by|when|where|given|using|but)\s|,\s+(?=[A-Za-z]{3,})"
)
# Three plain words in a row (not LaTeX commands): a sentence, not an answer.
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}[,;:]? [A-Za-z]{2,}[,;:]? [A-Za-z]{2,}")


def _answer_after_phrase(response: str) -> str | None:
    """The answer after the last answer phrase: a leading math span, else its first line up to a full stop."""
    phrases = list(_ANSWER_PHRASE.finditer(response))
    if not phrases:
        return None
    rest = response[phrases[-1].end() :].lstrip(" \t:*\n")
    span = _leading_math_span(rest)
    if span is not None:
        return span
    sentence = re.split(r"\.(?:\s|$)", rest.split("\n", 1)[0], maxsplit=1)[0]
    if not phrases[-1].group(0).lower().endswith("is") and " is " in sentence:  # "Final Answer: The sum is 12"
        sentence = sentence.rsplit(" is ", 1)[1].lstrip()
        span = _leading_math_span(sentence)
        if span is not None:
            return span
    return _clean_inline_answer(_CLAUSE.split(sentence, maxsplit=1)[0]) or None


def _leading_math_span(text: str) -> str | None:
    """The cleaned content of the ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` span that starts ``text``, or None."""
    for opening, closing in _MATH_SPANS:
        if text.startswith(opening):
            close = text.find(closing, len(opening))
            if close > 0:
                return _clean_inline_answer(text[len(opening) : close]) or None
    return None


def _clean_inline_answer(text: str) -> str:
    """Trim the decorations around an answer written inline: spaces, ``$``, ``**``, a final period."""
    text = text.strip().rstrip(".").strip().strip("*").strip()
    for opening, closing in _MATH_SPANS:
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            text = text[len(opening) : len(text) - len(closing)]
    return re.sub(r"(?<!\\)\$", "", text).strip().rstrip(".").strip()


# --- cleaning: rewrites that keep the meaning, applied to gold and answer alike -----------------------

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
    "\u00f7": "\\div ", "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u00b0": "^\\circ", "\u2264": "\\le ",
    "\u2265": "\\ge ", "\u221e": "\\infty ", "\u2260": "\\ne ", "\u222a": "\\cup ", "\u20ac": "", "\u00a3": "",
}
_UNICODE_PATTERN = re.compile("|".join(map(re.escape, _UNICODE)))


def _unify_unicode(text: str) -> str:
    """``−`` ``×`` ``π`` ``√`` ``°`` ``≤`` ``∞``... become their LaTeX; euro and pound signs are dropped."""
    return _UNICODE_PATTERN.sub(lambda match: _UNICODE[match.group(0)], text)


def _drop_dollars(text: str) -> str:
    """Math delimiters and the dollar sign: ``\\$18.90`` -> ``18.90``."""
    return text.replace("\\$", "").replace("$", "")


def _drop_sizing_and_spacing(text: str) -> str:
    """``\\left( x \\right)`` -> ``( x )``; ``\\!`` (with the spaces after it), ``\\,`` ``\\;`` ``\\:`` dropped.

    ``\\ ``, ``~``, ``\\quad`` become one space and all whitespace runs one space. The lookahead keeps
    ``\\rightarrow`` and ``\\leftarrow`` intact.
    """
    text = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])", "", text)
    text = re.sub(r"(?<!\\)(?:\\!\s*|\\[,;:])|\\displaystyle|\\mathrm\{th\}", "", text)
    text = re.sub(r"(?<!\\)\\ |~|\\q?quad(?![a-zA-Z])", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _unify_commands(text: str) -> str:
    """``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\textbf``, ``\\mbox``, ``\\mathrm``... -> ``\\text``."""
    text = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", text)
    text = re.sub(r"\\(?:text(?:bf|rm|it|normal|sf|tt)|math(?:rm|bf|it|sf)|mbox|hbox)(?![a-zA-Z])", r"\\text", text)
    return text.replace("{,}", ",")


def _fix_short_arguments(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac{270}7`` -> ``\\frac{270}{7}``, ``\\sqrt2`` -> ``\\sqrt{2}``.

    TeX takes one token as an unbraced argument (Hendrycks MATH ``_fix_fracs`` / ``_fix_sqrt``).
    """
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", text)
    return re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", text)


def _unify_percent(text: str) -> str:
    """``50%``, ``50 percent``, ``50\\text{ percent}`` -> ``50\\%``."""
    text = re.sub(r"\s*\\text\{\s*(?:percent|per cent)\s*\}", r"\\%", text)
    text = re.sub(r"\s*\b(?:percent|per cent)\b", r"\\%", text)
    return re.sub(r"(?<!\\)%", r"\\%", text)


_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)")


def _drop_degrees(text: str) -> str:
    """Degree marks after a number: ``30^\\circ``, ``30^{\\circ}``, ``30\\degree`` -> ``30``.

    Kept inside trigonometric expressions (``\\cos(6^\\circ)``), where they change the value.
    """
    if _TRIG.search(text):
        return text
    return re.sub(r"(?<=[\d}])\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree)", "", text)


# Words that are mathematics, not units: a run of trailing words containing one of these is kept.
_NOT_UNITS = frozenset(
    "and or mod pi sin cos tan cot csc log ln exp lim sqrt frac times cdot div pm mp infty "
    "is if of for all where when then with real none undefined".split()
)
# Units written without a space after the number ("12cm"); single letters are left alone ("2m" may be 2*m).
_GLUED_UNIT = re.compile(r"(?<=\d)(?:cm|mm|km|kg|ft|mph|kph|hrs?|mins?|secs?|sq|in|m/s)(?:\^\{?[23]\}?)?$")
_UNIT_WORD = re.compile(r"[A-Za-z]{2,}\.?(?:\^\{?[23]\}?)?")
# Two-letter words count as units only when they are one ("2 ab" is a product of variables).
_TWO_LETTER_UNITS = frozenset("cm mm km kg mg ml ft in yd mi lb oz hr am pm".split())
_UNIT_BOX = re.compile(r"\\text\{([^{}]*)\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?$")


def _is_unit_phrase(words: list[str]) -> bool:
    """Whether every word looks like a unit ("cm", "square units", "inches^2") and none is mathematics."""
    return bool(words) and all(_is_unit_word(word) for word in words)


def _is_unit_word(word: str) -> bool:
    if _UNIT_WORD.fullmatch(word) is None:
        return False
    bare = word.rstrip(".").split("^")[0].lower()
    return bare not in _NOT_UNITS and (len(bare) > 2 or bare in _TWO_LETTER_UNITS)


def _drop_units(text: str) -> str:
    """Units after a number: ``10\\text{ cm}``, ``864 \\text{ inches}^2``, ``18 dollars``, ``12cm`` -> the number.

    A trailing ``\\text{...}`` goes when its content starts with a space (the MATH convention, Hendrycks
    ``_remove_right_units``) or is all unit-like words; up to four trailing plain words go when they are all
    unit-like (two or more letters, not a mathematical word) and follow a digit, ``}``, ``)`` or ``%``.
    Nothing is converted: ``1 m`` and ``100 cm`` stay different.
    """
    box = _UNIT_BOX.search(text)
    if box is not None and text[: box.start()].strip():
        content = box.group(1)
        if content[:1].isspace() or _is_unit_phrase(content.split()):
            text = text[: box.start()].rstrip()
    return _GLUED_UNIT.sub("", _drop_unit_words(text))


def _drop_unit_words(text: str) -> str:
    """``18 dollars`` -> ``18``, ``5 square units`` -> ``5``; text without a number before its words is kept."""
    head = text
    for _ in range(4):
        before, space, last = head.rpartition(" ")
        if not space or not _is_unit_phrase([last]):
            return text
        head = before.rstrip()
        if re.search(r"[\d})%]$", head):
            return head
    return text


def _unwrap_text(text: str) -> str:
    """``\\text{(C)}`` -> ``(C)``; ``1 \\text{ or } 2`` -> ``1 or 2``."""
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", text)


_RELATION = re.compile(r"(\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<=|>=|<|>)")
_VARIABLE = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?|[A-Za-z]\([A-Za-z]\)")


def _inequalities_as_intervals(text: str) -> str:
    """``2 \\le x < 5`` -> ``[2, 5)``; ``x < 2 or x > 3`` -> ``(-\\infty, 2) \\cup (3, \\infty)``.

    Only for one variable; parts joined by "or", commas or ``\\cup`` become a union. Anything else (an
    "and", two variables, an expression on both sides) is left as written.
    """
    if not _RELATION.search(text) or len(text) > MAX_ANSWER_CHARS:
        return text
    parts = re.split(r"\s*(?:\bor\b|\\cup|,)\s*", text)
    intervals, variables = [], set()
    for part in parts:
        converted = _inequality_as_interval(part)
        if converted is None:
            return text
        variables.add(converted[0])
        intervals.append(converted[1])
    return " \\cup ".join(intervals) if len(variables) == 1 else text


def _inequality_as_interval(part: str) -> tuple[str, str] | None:
    """``(variable, interval)`` for one chain ``a < x``, ``x \\ge b`` or ``a < x \\le b``, else None."""
    pieces = [piece.strip() for piece in _RELATION.split(part)]
    if len(pieces) == 3:
        left, relation, right = pieces
        if _VARIABLE.fullmatch(left) and right and not _VARIABLE.fullmatch(right):
            return left, _one_sided_interval(relation, right, variable_on_left=True)
        if _VARIABLE.fullmatch(right) and left and not _VARIABLE.fullmatch(left):
            return right, _one_sided_interval(relation, left, variable_on_left=False)
        return None
    if len(pieces) == 5 and _VARIABLE.fullmatch(pieces[2]) and pieces[0] and pieces[4]:
        low, first, variable, second, high = pieces
        if _is_less(first) and _is_less(second):
            return variable, f"{'(' if _is_strict(first) else '['}{low}, {high}{')' if _is_strict(second) else ']'}"
        if not _is_less(first) and not _is_less(second):
            return variable, f"{'(' if _is_strict(second) else '['}{high}, {low}{')' if _is_strict(first) else ']'}"
    return None


def _is_less(relation: str) -> bool:
    return relation in ("<", "<=", "\\le", "\\leq", "\\leqslant", "\\lt")


def _is_strict(relation: str) -> bool:
    return relation in ("<", ">", "\\lt", "\\gt")


def _one_sided_interval(relation: str, bound: str, variable_on_left: bool) -> str:
    """``x < b`` -> ``(-\\infty, b)``; ``x \\ge b`` -> ``[b, \\infty)``; ``b < x`` -> ``(b, \\infty)``."""
    strict = _is_strict(relation)
    if _is_less(relation) == variable_on_left:  # the variable is below the bound
        return f"(-\\infty, {bound}{')' if strict else ']'}"
    return f"{'(' if strict else '['}{bound}, \\infty)"


def _unify_separators(text: str) -> str:
    """``1 or 2``, ``1 and 2``, ``1, and 2`` -> ``1, 2``: several answers are a list."""
    return re.sub(r"\s*,?\s+(?:and|or)\s+", ", ", text)


_THOUSANDS = re.compile(r"([+-]?[1-9]\d{0,2}(?:,\d{3})+)(\.\d+)?((?:\\%)?)")


def _drop_thousands_separators(text: str) -> str:
    """``2,125`` and ``1,234.5\\%`` -> ``2125``, ``1234.5\\%``; ``1, 125`` (with a space) is a list."""
    match = _THOUSANDS.fullmatch(text.strip())
    if match is None:
        return text
    return match.group(1).replace(",", "") + (match.group(2) or "") + match.group(3)


def _drop_trailing_period(text: str) -> str:
    return text.strip().rstrip(".").strip()


# Applied in this order to gold and answer alike; each takes and returns a string. Units go before the
# \text{} wrapper is unwrapped (MATH marks units with "\text{ cm}"), percent before units ("\text{ percent}"),
# inequalities before separators ("x > 1 and x < 3" is not a union), thousands after units ("1,000 dollars").
_CLEANING: tuple[Callable[[str], str], ...] = (
    _unify_unicode,
    _drop_dollars,
    _drop_sizing_and_spacing,
    _unify_commands,
    _fix_short_arguments,
    _unify_percent,
    _drop_degrees,
    _drop_units,
    _unwrap_text,
    _drop_trailing_period,
    _drop_units,
    _inequalities_as_intervals,
    _unify_separators,
    _drop_thousands_separators,
)


def _clean(answer: str) -> str:
    """The answer with every meaning-preserving rewrite applied, spaces kept (what math-verify reads)."""
    for rewrite in _CLEANING:
        answer = rewrite(answer)
    return answer


def _canonical_integer(text: str) -> str:
    """``025`` -> ``25``, ``+7`` -> ``7``, ``-0`` -> ``0``; anything but a plain integer is unchanged."""
    match = re.fullmatch(r"([+-]?)(\d+)", text)
    if match is None:
        return text
    digits = match.group(2).lstrip("0") or "0"
    return ("-" if match.group(1) == "-" and digits != "0" else "") + digits


def _squeeze(cleaned: str) -> str:
    """The cleaned answer without whitespace, one matrix environment, and canonical integers."""
    squeezed = re.sub(r"\s+", "", cleaned).replace("bmatrix", "pmatrix")
    return _canonical_integer(squeezed)


def normalize(answer: str) -> str:
    """A cheap canonical string form of an answer, for exact comparison.

    Strips ``$``, whitespace, ``\\left``/``\\right``, thin spaces (``\\!``, ``\\,``...), units (a trailing
    ``\\text{ cm}``, ``18 dollars``), degree marks, the ``\\text{}`` wrapper, trailing periods, thousands
    separators (``2,125``), and leading zeros and ``+`` of integers (``025``); ``\\dfrac``/``\\tfrac``
    become ``\\frac``, ``\\frac12`` becomes ``\\frac{1}{2}``, ``%`` becomes ``\\%``, "or"/"and" between
    answers a comma, and a one-variable inequality an interval. It never evaluates anything: ``0.5`` and
    ``\\frac{1}{2}`` stay different strings.
    """
    return _squeeze(_clean(answer))


# --- pairing: equations against their right side -----------------------------------------------------

_GREEK = "alpha|beta|gamma|delta|theta|lambda|mu|phi|psi|omega|rho|sigma|tau"
_ASSIGNMENT = re.compile(
    rf"\s*([A-Za-z](?:_\{{?[A-Za-z0-9]+\}}?)?|\\(?:{_GREEK}))\s*(=|\\in(?![a-zA-Z]))\s*([^=]+?)\s*"
)


def _top_level_split(text: str) -> list[str]:
    """``text`` split at commas outside brackets: ``(1, 2), 3`` -> ``["(1, 2)", " 3"]``."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _assignment(cleaned: str) -> tuple[str, str] | None:
    """``(variable, right side)`` for ``x = 3``, ``x \\in [2, 5]`` or ``x = 1, x = 2`` (one variable), else None."""
    matches = [_ASSIGNMENT.fullmatch(part) for part in _top_level_split(cleaned)]
    if not all(matches):
        return None
    variables = {(match.group(1), match.group(2)) for match in matches}
    if len(variables) != 1:
        return None
    return matches[0].group(1), ", ".join(match.group(3) for match in matches)


def _align_equations(answer: str, gold: str) -> tuple[str, str, bool | None]:
    """Cleaned answer and gold with a one-variable left side dropped, and a verdict when that decides.

    ``x = 3`` against ``3`` compares ``3``; ``y = 2x + 1`` against ``y = 1 + 2x`` compares the right sides;
    ``x = 3`` against ``y = 3`` is wrong. A side is only stripped when the other has no ``=`` at all, so
    ``y = 2x + 3`` against ``y - 2x = 3`` stays a comparison of two equations.
    """
    answer_side, gold_side = _assignment(answer), _assignment(gold)
    if answer_side is not None and gold_side is not None:
        if answer_side[0] != gold_side[0]:
            return answer, gold, False
        return answer_side[1], gold_side[1], None
    if answer_side is not None and "=" not in gold:
        return answer_side[1], gold, None
    if gold_side is not None and "=" not in answer:
        return answer, gold_side[1], None
    return answer, gold, None


# --- cheap checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """One answer as the checks see it: ``raw`` as given, ``cleaned`` (spaces kept), ``squeezed`` (none)."""

    raw: str
    cleaned: str
    squeezed: str


def _same_string(answer: _Side, gold: _Side) -> bool | None:
    return True if answer.squeezed == gold.squeezed else None


_CHOICES = "A-H"
_CHOICE_LIST = re.compile(rf"\(?[{_CHOICES}]\)?(?:,\(?[{_CHOICES}]\)?)*")
_CHOICE_ANSWER = re.compile(
    rf"(?:(?i:option|choice|answer)\s*)?(?:\(([{_CHOICES}{_CHOICES.lower()}])\)|([{_CHOICES}])(?![A-Za-z0-9]))"
)


def _choice_letters(squeezed: str) -> list[str] | None:
    """The sorted letters of ``C``, ``(C)`` or ``A,C,E``, or None when ``squeezed`` is not a choice."""
    return sorted(re.findall(r"[A-Z]", squeezed)) if _CHOICE_LIST.fullmatch(squeezed) else None


def _same_choice(answer: _Side, gold: _Side) -> bool | None:
    """A letter gold (``(C)``, ``\\text{(C)}``, ``\\textbf{(C)}``), or a list of letters (``\\text{A, C}``).

    One letter: the answer must start with it, as ``C``, ``(C)``, ``(c)``, ``(C) 12`` or ``C) 12``; anything
    else is wrong, since the option's value cannot be checked without the options. Several letters: the
    answer must list the same letters, in any order.
    """
    gold_letters = _choice_letters(gold.squeezed)
    if gold_letters is None:
        return None
    if len(gold_letters) > 1:
        return _choice_letters(answer.squeezed.upper()) == gold_letters
    answer_match = _CHOICE_ANSWER.match(answer.cleaned)
    if answer_match is None:
        return False
    return (answer_match.group(1) or answer_match.group(2)).upper() == gold_letters[0]


_BASE_NUMBER = re.compile(r"([0-9A-F]+)_\{?(\d{1,2})\}?")


def _base_number(side: _Side) -> tuple[str, int] | None:
    """``(digits, base)`` for ``52_8`` or ``52_{8}`` (letters as digits only above base 10), else None."""
    match = _BASE_NUMBER.fullmatch(side.squeezed)
    if match is None or not 2 <= int(match.group(2)) <= 36:
        return None
    digits, base = match.group(1), int(match.group(2))
    if base <= 10 and not digits.isdigit():  # A_1 is a name, not a number
        return None
    return digits, base


def _same_base_number(answer: _Side, gold: _Side) -> bool | None:
    """A base-subscript number (``52_8``) on either side.

    Gold ``52_8``: the answer ``52``, ``52_8`` or ``52_{8}`` (the digits, in the base the question asked for);
    ``42`` is the value in base 10 and wrong. Answer ``52_8`` against a plain gold: the values must agree.
    """
    answer_number, gold_number = _base_number(answer), _base_number(gold)
    if gold_number is not None:
        if answer_number is not None:
            return answer_number == gold_number
        return answer.squeezed.lstrip("0") == gold_number[0].lstrip("0") if answer.squeezed.isalnum() else None
    if answer_number is not None and gold.squeezed.isdigit():
        return int(answer_number[0], answer_number[1]) == int(gold.squeezed)
    return None


_WORDS = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm)\s*\{")


def _is_text_answer(side: _Side) -> bool:
    """A word answer (a name, a direction, "even"): written in ``\\text{}``, or with a word of 4+ letters."""
    if _WORDS.fullmatch(side.cleaned) is None:
        return False
    return bool(_TEXT_COMMAND.search(side.raw)) or any(len(word) >= 4 for word in re.split(r"[ '-]", side.cleaned))


def _same_words(answer: _Side, gold: _Side) -> bool | None:
    """Two word answers: the same words, case ignored. A word gold against a non-word answer is wrong."""
    if _is_text_answer(gold):
        return _WORDS.fullmatch(answer.cleaned) is not None and answer.cleaned.lower() == gold.cleaned.lower()
    if _is_text_answer(answer) and _WORDS.fullmatch(gold.cleaned) is not None:
        return answer.cleaned.lower() == gold.cleaned.lower()
    return None


@dataclass(frozen=True)
class _Number:
    """A plain number: its exact value, whether it was written with a decimal point, whether with ``\\%``."""

    value: Fraction
    decimal: bool
    percent: bool = False


_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_FORMS = (
    # 12, -0.5, 1.5e3, 1.5\times10^{3}, 1.5\cdot10^3
    re.compile(
        rf"(?P<sign>[+-]?)(?P<num>{_DECIMAL})"
        r"(?:[eE](?P<exp>[+-]?\d{1,3})|(?:\\times|\\cdot)10\^(?:\{(?P<bexp>[+-]?\d{1,3})\}|(?P<dexp>\d)))?"
    ),
    re.compile(r"(?P<sign>[+-]?)(?P<num>[+-]?\d+)/(?P<den>[+-]?\d+)"),
    re.compile(r"(?P<sign>[+-]?)\\frac\{(?P<num>[+-]?\d+)\}\{(?P<den>[+-]?\d+)\}"),
    re.compile(r"(?P<sign>[+-]?)(?P<whole>\d+)\\frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}"),  # mixed: 1\frac{4}{5}
)


def _as_number(squeezed: str) -> _Number | None:
    """The plain number ``squeezed`` writes, or None (anything with a symbol, or too long to parse cheaply)."""
    if len(squeezed) > 64:  # int() and Fraction() of long digit strings are slow or refused
        return None
    percent = squeezed.endswith("\\%")
    body = squeezed[:-2] if percent else squeezed
    for form in _NUMBER_FORMS:
        match = form.fullmatch(body)
        if match is None:
            continue
        groups = match.groupdict()
        value = Fraction(groups["num"])
        if groups.get("den") is not None:
            if int(groups["den"]) == 0:
                return None
            value /= Fraction(groups["den"])
        if groups.get("whole") is not None:
            if value >= 1:  # 2\frac{3}{2} is not a mixed number
                return None
            value += int(groups["whole"])
        exponent = groups.get("exp") or groups.get("bexp") or groups.get("dexp")
        if exponent is not None:
            value *= Fraction(10) ** int(exponent)
        return _Number(-value if groups["sign"] == "-" else value, "." in groups["num"], percent)
    return None


def _values_equal(first: Fraction, first_decimal: bool, second: Fraction, second_decimal: bool) -> bool:
    """Exact equality, except a decimal against a fraction with no finite decimal: equal at 6 places."""
    if first == second:
        return True
    if first_decimal == second_decimal:
        return False
    decimal, exact = (first, second) if first_decimal else (second, first)
    if _has_finite_decimal(exact):
        return False
    return round(decimal, 6) == round(exact, 6)


def _has_finite_decimal(value: Fraction) -> bool:
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _numbers_equal(answer: _Number, gold: _Number) -> bool:
    """Equal values; a percentage on one side only also matches the other side's value times 100."""
    if answer.percent == gold.percent:
        return _values_equal(answer.value, answer.decimal, gold.value, gold.decimal)
    percent, other = (answer, gold) if answer.percent else (gold, answer)
    return _values_equal(other.value, other.decimal, percent.value, percent.decimal) or _values_equal(
        other.value, other.decimal, percent.value / 100, percent.decimal
    )


_INFINITY = {"\\infty": 1, "+\\infty": 1, "-\\infty": -1, "\\inf": 1, "-\\inf": -1, "oo": 1, "-oo": -1}


@dataclass(frozen=True)
class _NumberGroup:
    """Numbers in brackets (``(1,2)``, ``[2,5)``, ``\\{1,2\\}``) or a bare list (``1,2``); ``None`` = unordered."""

    brackets: tuple[str, str] | None
    items: tuple[_Number | int, ...]  # an int is an infinity: +1 or -1


def _as_number_group(squeezed: str) -> _NumberGroup | None:
    """The tuple, interval, set or list of plain numbers ``squeezed`` writes, or None."""
    if len(squeezed) > MAX_ANSWER_CHARS:
        return None
    brackets: tuple[str, str] | None = None
    body = squeezed
    if squeezed.startswith("\\{") and squeezed.endswith("\\}"):
        body = squeezed[2:-2]
    elif squeezed[:1] in "([" and squeezed[-1:] in ")]":
        brackets, body = (squeezed[0], squeezed[-1]), squeezed[1:-1]
    elif "," not in squeezed:
        return None
    items: list[_Number | int] = []
    for element in body.split(","):
        if element in _INFINITY and brackets is not None:
            items.append(_INFINITY[element])
            continue
        number = _as_number(_canonical_integer(element))
        if number is None:
            return None
        items.append(number)
    return _NumberGroup(brackets, tuple(items))


def _items_equal(first: _Number | int, second: _Number | int) -> bool:
    if isinstance(first, int) or isinstance(second, int):
        return first == second
    return _numbers_equal(first, second)


def _groups_equal(answer: _NumberGroup, gold: _NumberGroup) -> bool | None:
    """Ordered with the same brackets for tuples and intervals; as multisets for sets and bare lists."""
    if (answer.brackets is None) != (gold.brackets is None):
        return None  # a tuple against a set: math-verify's call
    if len(answer.items) != len(gold.items) or answer.brackets != gold.brackets:
        return False
    if answer.brackets is not None:
        return all(_items_equal(a, g) for a, g in zip(answer.items, gold.items, strict=True))
    remaining = list(gold.items)
    for item in answer.items:
        match = next((index for index, other in enumerate(remaining) if _items_equal(item, other)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True


def _same_numbers(answer: _Side, gold: _Side) -> bool | None:
    """Plain numbers (percent, scientific notation, mixed numbers) or groups of them, decided exactly."""
    answer_number, gold_number = _as_number(answer.squeezed), _as_number(gold.squeezed)
    if answer_number is not None and gold_number is not None:
        return _numbers_equal(answer_number, gold_number)
    answer_group, gold_group = _as_number_group(answer.squeezed), _as_number_group(gold.squeezed)
    if answer_group is not None and gold_group is not None:
        return _groups_equal(answer_group, gold_group)
    return None


# Each check returns True or False when it decides, None to pass to the next one.
_CHEAP_CHECKS: tuple[Callable[[_Side, _Side], bool | None], ...] = (
    _same_string,
    _same_choice,
    _same_base_number,
    _same_words,
    _same_numbers,
)


# --- the math-verify check and its time bound --------------------------------------------------------


def _import_math_verify():
    """math-verify's ``parse`` and ``verify``, imported on first use (sympy: ~0.5 s integers never need)."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # Its own signal.alarm timeouts are off (they only work in the main thread and would replace ours);
    # this says the warning about that has been shown, since the bound is this module's.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify.parse, math_verify.verify


@functools.lru_cache(maxsize=1)
def _extraction_config():
    """Parse a ``\\boxed{}`` answer; math-verify's own unit stripping is off (ours ran, and its list has
    "east", "d" and "t" in it, which are answers)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    normalization = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
    )
    return (LatexExtractionConfig(boxed_match_priority=0, normalization_config=normalization), ExprExtractionConfig())


def _math_verify_equal(answer: str, gold: str) -> bool:
    """math-verify's verdict on two cleaned answers, each parsed as the content of a ``\\boxed{}``; unbounded.

    An interval gold may be answered by a relation (``allow_set_relation_comp``). Any exception inside
    math-verify counts as not equal.
    """
    parse, verify = _import_math_verify()
    try:
        config = _extraction_config()
        parsed_gold = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=None)
        parsed_answer = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None)
        if not parsed_gold or not parsed_answer:
            return False
        return bool(verify(parsed_gold, parsed_answer, allow_set_relation_comp=True, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - a comparison math-verify cannot do is "not equal"
        return False


class _DeadlinePassed(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that ``except Exception`` in libraries lets it through."""


def _signals_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_signal_deadline(compare: Callable[[], bool], timeout_s: float) -> bool:
    """``compare()`` interrupted by ``SIGALRM`` after ``timeout_s`` (then False); main thread only.

    The previous SIGALRM handler is put back afterwards, and a timer that was running is re-armed with what
    was left of it (at least a millisecond), so a caller's own alarm still fires, at most ``timeout_s`` late.
    """
    armed = [True]

    def on_alarm(signum, frame) -> None:
        if armed[0]:
            raise _DeadlinePassed

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s, _ALARM_REPEAT_S)
    started = time.monotonic()
    try:
        try:
            return compare()
        finally:
            armed[0] = False  # first, so that a late alarm cannot interrupt the clean-up below
    except _DeadlinePassed:
        logger.warning("grading took longer than %.1fs and counts as wrong", timeout_s)
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL)
        if previous_delay > 0:
            left = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _helper_main(connection) -> None:
    """The helper process: answer ``(answer, gold)`` requests with math-verify verdicts until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills this process
    _math_verify_equal("1", "1")  # imports and warms sympy before saying it is ready
    connection.send("ready")
    while True:
        try:
            answer, gold = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(_math_verify_equal(answer, gold))


class _Helper:
    """One spawned process that runs the math-verify check for threads that cannot use signals.

    Calls take turns under a lock. A call that passes its bound, or finds the process dead, kills it and
    returns False; the next call starts a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def forget(self) -> None:
        """After ``fork``: the parent's helper is not this process's to use or kill."""
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def compare(self, answer: str, gold: str, timeout_s: float) -> bool:
        """The helper's verdict, or False when it cannot be had within the waits and ``timeout_s``."""
        if not self._lock.acquire(timeout=HELPER_WAIT_S):
            logger.warning("the grading helper stayed busy for %.0fs; this comparison counts as wrong", HELPER_WAIT_S)
            return False
        try:
            if self._process is None and not self._start():
                return False
            return self._ask(answer, gold, timeout_s)
        finally:
            self._lock.release()

    def _start(self) -> bool:
        context = multiprocessing.get_context("spawn")
        connection, child_connection = context.Pipe()
        try:
            process = context.Process(target=_helper_main, args=(child_connection,), name="rlvr-grading", daemon=True)
            process.start()
        except (AssertionError, OSError) as error:  # e.g. "daemonic processes are not allowed to have children"
            logger.error("cannot start the grading helper process (%s); symbolic comparisons count as wrong", error)
            connection.close()
            return False
        finally:
            child_connection.close()
        self._process, self._connection = process, connection
        try:
            if connection.poll(HELPER_START_TIMEOUT_S) and connection.recv() == "ready":
                return True
        except (EOFError, OSError):
            pass
        logger.error("the grading helper did not start within %.0fs", HELPER_START_TIMEOUT_S)
        self._stop()
        return False

    def _ask(self, answer: str, gold: str, timeout_s: float) -> bool:
        try:
            self._connection.send((answer, gold))
            if self._connection.poll(timeout_s):
                return bool(self._connection.recv())
            logger.warning("grading took longer than %.1fs and counts as wrong; restarting its helper", timeout_s)
        except (EOFError, OSError):
            logger.warning("the grading helper died; restarting it")
        self._stop()
        return False

    def _stop(self) -> None:
        self._process.kill()
        self._process.join(timeout=5)
        self._connection.close()
        self._process = self._connection = None


_HELPER = _Helper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELPER.forget)


def _bounded_math_verify_equal(answer: str, gold: str, timeout_s: float) -> bool:
    """:func:`_math_verify_equal` within ``timeout_s``: by signal in the main thread, else in the helper."""
    if _signals_usable():
        _import_math_verify()  # outside the bound: import time is not the input's fault
        return _call_with_signal_deadline(lambda: _math_verify_equal(answer, gold), timeout_s)
    return _HELPER.compare(answer, gold, timeout_s)


# --- the public checks -------------------------------------------------------------------------------


def is_equivalent(answer: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Whether an extracted answer and a gold answer are mathematically the same.

    Both are answers, not responses: nothing is extracted. An empty answer or gold is never equivalent; an
    answer or gold longer than ``MAX_ANSWER_CHARS`` only equals the same string. ``timeout_s`` (default
    ``GRADE_TIMEOUT_S``) bounds the math-verify part; past it the answer counts as wrong.
    """
    timeout_s = GRADE_TIMEOUT_S if timeout_s is None else timeout_s
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return bool(answer.strip()) and answer.split() == gold.split()
    cleaned_answer, cleaned_gold, verdict = _align_equations(_clean(answer), _clean(gold))
    if verdict is not None:
        return verdict
    answer_side = _Side(answer, cleaned_answer, _squeeze(cleaned_answer))
    gold_side = _Side(gold, cleaned_gold, _squeeze(cleaned_gold))
    if not answer_side.squeezed or not gold_side.squeezed:
        return False
    for check in _CHEAP_CHECKS:
        verdict = check(answer_side, gold_side)
        if verdict is not None:
            return verdict
    return _bounded_math_verify_equal(cleaned_answer, cleaned_gold, timeout_s)


def grade(response: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Whether the final answer in a model ``response`` equals the ``gold`` answer.

    :func:`extract_answer` then :func:`is_equivalent`; a response with no extractable answer is wrong.
    Safe in any thread or process, and bounded in time (see the module docstring).
    """
    answer = extract_answer(response)
    return answer is not None and is_equivalent(answer, gold, timeout_s=timeout_s)
