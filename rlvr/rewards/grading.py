"""Answer extraction and mathematical equivalence: the one grader behind the math reward and ``rlvr eval``.

``grade(response, gold)`` is :func:`extract_answer` followed by :func:`is_equivalent`. Equivalence is
decided in order of cost, and the first check that decides wins:

1. the two answers are equal after :func:`normalize` (cheap string rewrites);
2. both are plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``) and equal as exact fractions.
   Two integers or fractions that differ are not equal, and the answer is final: the tiny arithmetic task
   grades thousands of integer answers a minute and must never reach sympy;
3. otherwise math-verify (parse both to sympy and compare), which handles LaTeX expressions, sets,
   intervals, units it knows, decimals against fractions at 6 places, and so on.

New cases (units, intervals, matrices...) are a new rewrite in ``_REWRITES`` or a new check in
``_CHECKS``; neither list needs the others changed.

math-verify bounds its own parsing and comparison with ``signal.alarm``, which only works in a process's
main thread. In any other thread this module calls it with those timeouts disabled, so a pathological
expression can then run unbounded: run untrusted grading in :class:`rlvr.rewards.pool.RewardPool`, whose
workers call it in their main thread and are killed past a hard timeout.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from fractions import Fraction

# A response no longer than this (after stripping) with no box and no "answer is" phrase is taken as a
# bare answer ("47", "-3/4"); a longer one is prose, and grading it whole would reward noise.
SHORT_ANSWER_MAX_CHARS = 40

# math-verify's own per-expression limits (seconds; whole seconds, as signal.alarm wants), used in the
# main thread only.
MATH_VERIFY_PARSE_TIMEOUT_S = 5
MATH_VERIFY_COMPARE_TIMEOUT_S = 5

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_PHRASE = re.compile(r"final answer is|the answer is|answer:", re.IGNORECASE)


# --- extraction -------------------------------------------------------------------------------------


def extract_answer(response: str) -> str | None:
    """The final answer in a model response, or None when there is none.

    In order: the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (braces matched, so
    nested braces are kept; a box cut off by the token limit is skipped); else the text after the last
    "the answer is" / "final answer is" / "answer:" (case-insensitive) up to the end of that line; else
    the whole response when it is at most ``SHORT_ANSWER_MAX_CHARS`` characters. Phrase and bare answers
    are trimmed of whitespace, ``$`` signs, markdown ``**`` and a trailing period. An empty last box gives
    None: the model's final answer is empty, and an earlier box is not its answer.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip() or None
    phrases = list(_ANSWER_PHRASE.finditer(response))
    if phrases:
        rest = response[phrases[-1].end() :].lstrip(" \t:*\n")
        line = rest.split("\n", 1)[0]
        answer = _clean_inline_answer(line)
        if answer:
            return answer
    stripped = response.strip()
    if stripped and len(stripped) <= SHORT_ANSWER_MAX_CHARS:
        return _clean_inline_answer(stripped) or None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box whose closing brace
    never comes (a truncated generation) is skipped in favour of the one before it.
    """
    end = len(text)
    while True:
        start = max(text.rfind(command, 0, end) for command in _BOX_COMMANDS)
        if start < 0:
            return None
        command = next(command for command in _BOX_COMMANDS if text.startswith(command, start))
        content = _braced_argument(text, start + len(command))
        if content is not None:
            return content
        end = start


def _braced_argument(text: str, position: int) -> str | None:
    """The content of the ``{...}`` group that opens at ``position`` (after optional spaces), or None."""
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
                return text[position + 1 : index]
    return None


def _clean_inline_answer(text: str) -> str:
    """Trim the decorations around an answer written inline: spaces, ``$``, ``**``, a final period."""
    text = text.strip().rstrip(".").strip().strip("*").strip()
    for opening, closing in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            text = text[len(opening) : len(text) - len(closing)]
    return text.replace("$", "").strip().rstrip(".").strip()


# --- normalisation ----------------------------------------------------------------------------------


def _drop_dollars(text: str) -> str:
    return text.replace("$", "")


def _drop_sizing_and_spacing(text: str) -> str:
    """``\\left( x \\right)`` -> ``( x )``; thin spaces ``\\!`` ``\\,`` ``\\;`` ``\\:`` removed.

    The lookahead keeps ``\\rightarrow`` and ``\\leftarrow`` intact.
    """
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text)
    return re.sub(r"\\[!,;:]", "", text)


def _unify_fractions(text: str) -> str:
    return re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)


def _unwrap_text(text: str) -> str:
    """Drop a trailing units box (``10\\text{ cm}`` -> ``10``) and unwrap the rest (``\\text{(C)}`` -> ``(C)``).

    A box counts as units when its content starts with a space and something precedes it, the MATH
    convention (Hendrycks et al. 2021, ``_remove_right_units``).
    """
    text = re.sub(r"(?<=\S)\s*\\(?:text|mbox)\{\s[^{}]*\}\s*$", "", text)
    return re.sub(r"\\(?:text|mbox)\{([^{}]*)\}", r"\1", text)


def _drop_thousands_separators(text: str) -> str:
    """``2,125`` and ``2{,}125`` -> ``2125``, for integers only: ``1, 125`` (with a space) is a list."""
    text = text.strip()
    candidate = text.replace("{,}", ",")
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+", candidate):
        return candidate.replace(",", "")
    return text


def _drop_whitespace(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _drop_trailing_period(text: str) -> str:
    return text.rstrip(".")


def _canonical_integer(text: str) -> str:
    """``025`` -> ``25``, ``+7`` -> ``7``, ``-0`` -> ``0``; anything but a plain integer is unchanged."""
    match = re.fullmatch(r"([+-]?)(\d+)", text)
    if match is None:
        return text
    digits = match.group(2).lstrip("0") or "0"
    return ("-" if match.group(1) == "-" and digits != "0" else "") + digits


# Applied in this order; each takes and returns a string. Thousands separators go before whitespace
# removal so that "1, 125" (a list) is not read as 1125.
_REWRITES: tuple[Callable[[str], str], ...] = (
    _drop_dollars,
    _drop_sizing_and_spacing,
    _unify_fractions,
    _unwrap_text,
    _drop_thousands_separators,
    _drop_whitespace,
    _drop_trailing_period,
    _canonical_integer,
)


def normalize(answer: str) -> str:
    """A cheap canonical string form of an answer, for exact comparison.

    Strips ``$``, whitespace, ``\\left``/``\\right``, thin spaces (``\\!``, ``\\,``...), a trailing
    units ``\\text{ ...}`` and the ``\\text{}`` wrapper elsewhere, trailing periods, thousands separators
    of integers (``2,125``), and leading zeros and ``+`` of integers (``025``); ``\\dfrac``/``\\tfrac``
    become ``\\frac``. It never evaluates anything: ``0.5`` and ``\\frac{1}{2}`` stay different strings.
    """
    for rewrite in _REWRITES:
        answer = rewrite(answer)
    return answer


# --- equivalence ------------------------------------------------------------------------------------

_NUMBER_FORMS = (
    re.compile(r"(?P<sign>[+-]?)(?P<num>\d+(?:\.\d*)?|\.\d+)"),
    re.compile(r"(?P<sign>[+-]?)(?P<num>[+-]?\d+)/(?P<den>[+-]?\d+)"),
    re.compile(r"(?P<sign>[+-]?)\\frac\{(?P<num>[+-]?\d+)\}\{(?P<den>[+-]?\d+)\}"),
    re.compile(r"(?P<sign>[+-]?)\\frac(?P<num>\d)(?P<den>\d)"),
)


def _as_number(normalized: str) -> tuple[Fraction, bool] | None:
    """``(value, exact)`` for a plain number in normalised form, else None.

    ``exact`` is False for a decimal: ``0.333333`` may be a rounded ``1/3``, which only math-verify's
    rounded comparison accepts, so a decimal mismatch is not final.
    """
    if len(normalized) > 64:  # int() and Fraction() of long digit strings are slow or refused
        return None
    for form in _NUMBER_FORMS:
        match = form.fullmatch(normalized)
        if match is None:
            continue
        groups = match.groupdict()
        den = groups.get("den")
        if den is not None and int(den) == 0:
            return None
        value = Fraction(groups["num"]) / (Fraction(den) if den is not None else 1)
        return (-value if groups["sign"] == "-" else value), "." not in groups["num"]
    return None


# A check sees each answer as written and normalised: (answer, gold, normalized_answer, normalized_gold).


def _same_string(answer: str, gold: str, normalized_answer: str, normalized_gold: str) -> bool | None:
    return True if normalized_answer == normalized_gold else None


def _same_number(answer: str, gold: str, normalized_answer: str, normalized_gold: str) -> bool | None:
    parsed_answer, parsed_gold = _as_number(normalized_answer), _as_number(normalized_gold)
    if parsed_answer is None or parsed_gold is None:
        return None
    (value_a, exact_a), (value_g, exact_g) = parsed_answer, parsed_gold
    if value_a == value_g:
        return True
    return False if exact_a and exact_g else None


def _math_verify_equal(answer: str, gold: str, normalized_answer: str, normalized_gold: str) -> bool:
    """math-verify's verdict on the two answers as written, each parsed as the content of a ``\\boxed{}``.

    The unnormalised strings go in because whitespace is meaningful in LaTeX (``\\pi r``). Any exception
    inside math-verify (a parse it cannot do, a timeout) counts as not equal.
    """
    # Imported on first use: math-verify pulls in sympy, ~0.5 s that integer-only grading never needs.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    in_main_thread = threading.current_thread() is threading.main_thread()
    parse_timeout = MATH_VERIFY_PARSE_TIMEOUT_S if in_main_thread else None
    compare_timeout = MATH_VERIFY_COMPARE_TIMEOUT_S if in_main_thread else None
    try:
        parsed_gold = parse(f"\\boxed{{{_drop_dollars(gold)}}}", parsing_timeout=parse_timeout)
        parsed_answer = parse(f"\\boxed{{{_drop_dollars(answer)}}}", parsing_timeout=parse_timeout)
        if not parsed_gold or not parsed_answer:
            return False
        return bool(verify(parsed_gold, parsed_answer, timeout_seconds=compare_timeout))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


# Each check returns True or False when it decides, None to pass to the next one; the last must decide.
_CHECKS: tuple[Callable[[str, str, str, str], bool | None], ...] = (
    _same_string,
    _same_number,
    _math_verify_equal,
)


def is_equivalent(answer: str, gold: str) -> bool:
    """Whether an extracted answer and a gold answer are mathematically the same.

    Both are answers, not responses: nothing is extracted. An empty answer or gold is never equivalent.
    """
    normalized_answer, normalized_gold = normalize(answer), normalize(gold)
    if not normalized_answer or not normalized_gold:
        return False
    for check in _CHECKS:
        verdict = check(answer, gold, normalized_answer, normalized_gold)
        if verdict is not None:
            return verdict
    return False


def grade(response: str, gold: str) -> bool:
    """Whether the final answer in a model ``response`` equals the ``gold`` answer.

    :func:`extract_answer` then :func:`is_equivalent`; a response with no extractable answer is wrong.
    Safe to call from any thread (see the module docstring for what is lost outside the main thread).
    """
    answer = extract_answer(response)
    return answer is not None and is_equivalent(answer, gold)
