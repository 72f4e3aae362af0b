"""The format reward: 1 when the response puts a non-empty answer in a \\boxed{}, whatever the answer.

Used alongside a correctness reward to teach the answer format early in training; on its own it rewards
boxing anything.
"""

from __future__ import annotations

from rlvr.rewards.grading import last_boxed


def reward(completion: str, answer: str, **fields: object) -> float:
    """1.0 if the response holds a complete, non-empty \\boxed{} answer, else 0.0 (correctness ignored)."""
    boxed = last_boxed(completion)
    return 1.0 if boxed is not None and boxed.strip() else 0.0
