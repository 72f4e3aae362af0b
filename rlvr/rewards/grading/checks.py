"""The cheap checks: string, multiple-choice, base-subscript, word, unevaluated-arithmetic and number
comparisons, tried in order.

Each takes the answer and the gold as :class:`Side` and returns True or False when it decides, None to pass
to the next one; :mod:`.equivalence` runs :data:`CHEAP_CHECKS` and falls back to math-verify only when none
decides. All are linear-time string work on answers capped at ``MAX_ANSWER_CHARS``: no sympy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rlvr.rewards.grading.numbers import compare_numbers, number_value


@dataclass(frozen=True)
class Side:
    """One answer as the checks see it: ``raw`` as given, ``cleaned`` (spaces kept), ``squeezed`` (none)."""

    raw: str
    cleaned: str
    squeezed: str


def _same_string(answer: Side, gold: Side) -> bool | None:
    return True if answer.squeezed == gold.squeezed else None


_CHOICES = "A-H"
_CHOICE_LIST = re.compile(rf"\(?[{_CHOICES}]\)?(?:,\(?[{_CHOICES}]\)?)*")
_CHOICE_ANSWER = re.compile(
    rf"(?:(?i:option|choice|answer)\s*)?(?:\(([{_CHOICES}{_CHOICES.lower()}])\)|([{_CHOICES}])(?![A-Za-z0-9]))"
)


def _choice_letters(squeezed: str) -> list[str] | None:
    """The sorted letters of ``C``, ``(C)`` or ``A,C,E``, or None when ``squeezed`` is not a choice."""
    return sorted(re.findall(r"[A-Z]", squeezed)) if _CHOICE_LIST.fullmatch(squeezed) else None


def _same_choice(answer: Side, gold: Side) -> bool | None:
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


def _base_number(side: Side) -> tuple[str, int] | None:
    """``(digits, base)`` for ``52_8`` or ``52_{8}`` (letters as digits only above base 10), else None."""
    match = _BASE_NUMBER.fullmatch(side.squeezed)
    if match is None or not 2 <= int(match.group(2)) <= 36:
        return None
    digits, base = match.group(1), int(match.group(2))
    if base <= 10 and not digits.isdigit():  # A_1 is a name, not a number
        return None
    return digits, base


def _same_base_number(answer: Side, gold: Side) -> bool | None:
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


def _is_text_answer(side: Side) -> bool:
    """A word answer (a name, a direction, "even"): written in ``\\text{}``, or with a word of 4+ letters."""
    if _WORDS.fullmatch(side.cleaned) is None:
        return False
    return bool(_TEXT_COMMAND.search(side.raw)) or any(len(word) >= 4 for word in re.split(r"[ '-]", side.cleaned))


def _same_words(answer: Side, gold: Side) -> bool | None:
    """Two word answers: the same words, case ignored. A word gold against a non-word answer is wrong."""
    if _is_text_answer(gold):
        return _WORDS.fullmatch(answer.cleaned) is not None and answer.cleaned.lower() == gold.cleaned.lower()
    if _is_text_answer(answer) and _WORDS.fullmatch(gold.cleaned) is not None:
        return answer.cleaned.lower() == gold.cleaned.lower()
    return None


# Only number literals, brackets and arithmetic: 38+41, 2\cdot(3+4), 2^{10}, \frac{1}{2}+1.
_ARITHMETIC = re.compile(r"(?:[\d.+\-*/^()\[\]{}×÷]|\\(?:times|cdot|div|frac|dfrac|tfrac|left|right))+")
_BINARY_OPERATOR = re.compile(r"[\d.)\]}]\s*(?:[+\-*/^×÷]|\\(?:times|cdot|div))")


def _unevaluated_arithmetic(answer: Side, gold: Side) -> bool | None:
    """A number gold against arithmetic on number literals (``38+41`` for 79, ``2^{10}`` for 1024): wrong.

    The question asked for the value; a response that restates the problem (or leaves the sum undone) has not
    answered it, though the two are equal in value. Without this check math-verify accepts them, and a policy
    trained on an arithmetic task learns to copy the question (SmolLM2-135M did, in 10 GRPO steps). Plain
    number forms (``1/2``, ``\frac{1}{2}``, ``1.5\times10^{3}``, ``-21``) are not arithmetic here."""
    if number_value(gold.squeezed) is None or number_value(answer.squeezed) is not None:
        return None
    if _ARITHMETIC.fullmatch(answer.squeezed) and _BINARY_OPERATOR.search(answer.squeezed):
        return False
    return None


def _same_numbers(answer: Side, gold: Side) -> bool | None:
    """Plain numbers (percent, scientific notation, mixed numbers) or groups of them, decided exactly."""
    return compare_numbers(answer.squeezed, gold.squeezed)


# Each check returns True or False when it decides, None to pass to the next one.
CHEAP_CHECKS: tuple[Callable[[Side, Side], bool | None], ...] = (
    _same_string,
    _same_choice,
    _same_base_number,
    _same_words,
    _unevaluated_arithmetic,
    _same_numbers,
)
