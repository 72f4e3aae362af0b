"""Rewards for tests: deterministic and spread out within a group, so every step has a real gradient
even on the barely warm-started test model (whose math accuracy is near zero)."""


def by_length(completion: str, answer: str, **fields) -> float:
    """Shorter responses score higher: 1 / (1 + characters)."""
    return 1.0 / (1.0 + len(completion))


def by_length_with_answer(completion: str, answer: str, **fields) -> dict:
    """:func:`by_length`, plus the first character as the "extracted answer" (for COPO's answer entropy)."""
    return {"score": by_length(completion, answer), "extracted": completion[:1]}


def zero(completion: str, answer: str, **fields) -> float:
    """Always 0: every advantage of every step is zero (a model that never writes the answer format)."""
    return 0.0


def slow_math(completion: str, answer: str, **fields) -> dict:
    """The math reward after a 0.1 s pause: an evaluation slow enough, on any machine, to be killed halfway."""
    import time

    from reward_fns.math_answer import reward

    time.sleep(0.1)
    return reward(completion, answer, **fields)


def checks_answer(completion: str, answer: str, **fields) -> float:
    """:func:`by_length`, once the gold answer is checked against the row's ``expected`` column (verl rows:
    ``extra_info.answer``): a mismatch raises, which the run counts in ``reward/errors``."""
    expected = fields["expected"] if "expected" in fields else fields["extra_info"]["answer"]
    if answer != str(expected):
        raise ValueError(f"gold answer {answer!r}, but the row says {expected!r}")
    return by_length(completion, answer)
