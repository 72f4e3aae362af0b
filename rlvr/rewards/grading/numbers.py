"""Exact comparison of plain numbers, and of tuples, intervals, sets and lists of them, in Python fractions.

Integers, decimals, fractions, mixed numbers, scientific notation and percentages are read from the
squeezed answer (see :func:`.cleaning.normalize`) and compared exactly, so that number answers (every
integer one among them) are decided without importing sympy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rlvr.rewards.grading.cleaning import canonical_integer
from rlvr.rewards.grading.limits import MAX_ANSWER_CHARS


def compare_numbers(answer: str, gold: str) -> bool | None:
    """Two squeezed answers that are plain numbers or groups of them, decided exactly; else None."""
    answer_number, gold_number = _as_number(answer), _as_number(gold)
    if answer_number is not None and gold_number is not None:
        return _numbers_equal(answer_number, gold_number)
    answer_group, gold_group = _as_number_group(answer), _as_number_group(gold)
    if answer_group is not None and gold_group is not None:
        return _groups_equal(answer_group, gold_group)
    return None


def number_value(squeezed: str) -> Fraction | None:
    """The exact value of a squeezed answer that is a plain number (``0.5``, ``1/2``, ``\\frac{1}{2}``, ``1.5e3``,
    ``50\\%`` as 50), else None."""
    number = _as_number(squeezed)
    return None if number is None else number.value


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
        number = _as_number(canonical_integer(element))
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
