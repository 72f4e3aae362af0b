"""The cleaning rewrites: meaning-preserving edits applied to gold and answer alike before any comparison.

Sizing commands, ``\\dfrac``, ``\\text{}``, unicode, units, currency, degree marks, percent, thousands
separators, "or"/"and" between answers, and one-variable inequalities as intervals. :func:`clean` applies
them in order and keeps spaces (what math-verify reads); :func:`normalize` also squeezes the spaces out, for
exact string comparison. Nothing here evaluates anything: ``0.5`` and ``\\frac{1}{2}`` stay different.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from rlvr.rewards.grading.limits import MAX_ANSWER_CHARS

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


def clean(answer: str) -> str:
    """The answer with every meaning-preserving rewrite applied, spaces kept (what math-verify reads)."""
    for rewrite in _CLEANING:
        answer = rewrite(answer)
    return answer


def canonical_integer(text: str) -> str:
    """``025`` -> ``25``, ``+7`` -> ``7``, ``-0`` -> ``0``; anything but a plain integer is unchanged."""
    match = re.fullmatch(r"([+-]?)(\d+)", text)
    if match is None:
        return text
    digits = match.group(2).lstrip("0") or "0"
    return ("-" if match.group(1) == "-" and digits != "0" else "") + digits


def squeeze(cleaned: str) -> str:
    """The cleaned answer without whitespace, one matrix environment, and canonical integers."""
    squeezed = re.sub(r"\s+", "", cleaned).replace("bmatrix", "pmatrix")
    return canonical_integer(squeezed)


def normalize(answer: str) -> str:
    """A cheap canonical string form of an answer, for exact comparison.

    Strips ``$``, whitespace, ``\\left``/``\\right``, thin spaces (``\\!``, ``\\,``...), units (a trailing
    ``\\text{ cm}``, ``18 dollars``), degree marks, the ``\\text{}`` wrapper, trailing periods, thousands
    separators (``2,125``), and leading zeros and ``+`` of integers (``025``); ``\\dfrac``/``\\tfrac``
    become ``\\frac``, ``\\frac12`` becomes ``\\frac{1}{2}``, ``%`` becomes ``\\%``, "or"/"and" between
    answers a comma, and a one-variable inequality an interval. It never evaluates anything: ``0.5`` and
    ``\\frac{1}{2}`` stay different strings.
    """
    return squeeze(clean(answer))
