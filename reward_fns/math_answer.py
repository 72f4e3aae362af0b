"""The math answer reward: 1 when the response's final answer equals the gold answer, else 0.

It is the grader ``rlvr eval`` uses (:mod:`rlvr.rewards.grading`), so training reward and evaluation
accuracy measure the same thing. Copy this file to write your own reward: any
``fn(completion, answer, **fields) -> float | dict`` works, named in a recipe as ``module:function``.
"""

from __future__ import annotations

from rlvr.rewards.grading import extract_answer, is_equivalent


def reward(completion: str, answer: str, **fields: object) -> dict:
    """1.0 if the response's final answer equals the gold answer mathematically, else 0.0.

    The final answer is the last ``\\boxed{}``, else the text after "the answer is", else a short bare
    reply (:func:`rlvr.rewards.grading.extract_answer`). Returns ``{"score": 1.0 | 0.0, "extracted": ...}``
    where ``extracted`` is that answer ("" when there is none), carried as a reward extra for logs and
    answer-level metrics. Other dataset ``fields`` are accepted and ignored.
    """
    extracted = extract_answer(completion)
    correct = extracted is not None and is_equivalent(extracted, answer)
    return {"score": 1.0 if correct else 0.0, "extracted": extracted or ""}
