"""Benchmark metrics over ``n`` samples per problem: avg@k, pass@k (unbiased), maj@k.

For one problem with ``n`` samples of which ``c`` are correct:

* ``avg@n``: the mean accuracy of the samples, ``c / n`` (what "accuracy at temperature T" reports).
* ``pass@k``: the probability that at least one of ``k`` samples drawn without replacement from the ``n``
  is correct, ``1 - C(n - c, k) / C(n, k)``: the unbiased estimator of Chen et al. 2021 (Codex, eq. 1),
  computed as a product so that it neither overflows nor loses precision for large ``n``.
* ``maj@k``: whether the most frequent extracted answer among the first ``k`` samples is correct
  (self-consistency, Wang et al. 2022). Samples without an extracted answer do not vote. Ties go to the
  answer that appeared first, so the result never depends on hashing or dictionary order.

A benchmark's figure is the mean of the per-problem values.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["avg_at_k", "majority_answer", "maj_at_k", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct (``1 <= k <= n``)."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name} must be an int; got {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples) must be >= 1; got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}]; got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}]: pass@k needs at least k samples; got {k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean accuracy of one problem's samples (avg@n)."""
    if not correct:
        raise ValueError("avg_at_k: no samples")
    return sum(bool(c) for c in correct) / len(correct)


def majority_answer(answers: Sequence[Hashable | None]) -> int | None:
    """Index of the first sample carrying the most frequent answer (``None`` answers do not vote), or
    ``None`` when no sample has an answer. Ties: the answer seen first wins."""
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not counts:
        return None
    best = max(counts.values())
    return min(first[a] for a, count in counts.items() if count == best)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int | None = None) -> float:
    """1.0 when the majority answer of the first ``k`` samples (default all) is correct, else 0.0.

    ``answers[i]`` is sample i's extracted, normalised answer (``None``: nothing extracted) and
    ``correct[i]`` whether the grader accepted it; samples with equal answers must agree on correctness.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    k = len(answers) if k is None else k
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k must be in [1, {len(answers)}] (the samples); got {k}")
    winner = majority_answer(answers[:k])
    return 0.0 if winner is None else float(bool(correct[winner]))
