"""``is_equivalent`` and ``grade``: the pieces of the grader composed, cheapest first.

Clean both answers (:mod:`.cleaning`), align equations (:mod:`.equations`), let the first cheap check that
decides win (:mod:`.checks`), and only then ask math-verify under a time bound (:mod:`.bounded`).
"""

from __future__ import annotations

from rlvr.rewards.grading.bounded import bounded_math_verify_equal
from rlvr.rewards.grading.checks import CHEAP_CHECKS, Side
from rlvr.rewards.grading.cleaning import clean, squeeze
from rlvr.rewards.grading.equations import align_equations
from rlvr.rewards.grading.extract import extract_answer
from rlvr.rewards.grading.limits import GRADE_TIMEOUT_S, MAX_ANSWER_CHARS


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
    cleaned_answer, cleaned_gold, verdict = align_equations(clean(answer), clean(gold))
    if verdict is not None:
        return verdict
    answer_side = Side(answer, cleaned_answer, squeeze(cleaned_answer))
    gold_side = Side(gold, cleaned_gold, squeeze(cleaned_gold))
    if not answer_side.squeezed or not gold_side.squeezed:
        return False
    for check in CHEAP_CHECKS:
        verdict = check(answer_side, gold_side)
        if verdict is not None:
            return verdict
    return bounded_math_verify_equal(cleaned_answer, cleaned_gold, timeout_s)


def grade(response: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Whether the final answer in a model ``response`` equals the ``gold`` answer.

    :func:`extract_answer` then :func:`is_equivalent`; a response with no extractable answer is wrong.
    Safe in any thread or process, and bounded in time (see :mod:`rlvr.rewards.grading`).
    """
    answer = extract_answer(response)
    return answer is not None and is_equivalent(answer, gold, timeout_s=timeout_s)
