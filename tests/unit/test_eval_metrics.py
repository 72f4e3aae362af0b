"""avg@k, pass@k and maj@k against brute force and hand-computed cases."""

from __future__ import annotations

import itertools

import pytest

from rlvr.eval.metrics import avg_at_k, maj_at_k, majority_answer, pass_at_k


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_of_subsets(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_known_values_and_large_n():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 1) == pytest.approx(1 / 16)
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - (7 * 6) / (10 * 9))
    # C(1024, 512) overflows a float; the product form does not
    assert 0.0 < pass_at_k(1024, 1, 512) == pytest.approx(0.5)


@pytest.mark.parametrize(("args", "error", "match"), [
    ((4, 2, 5), ValueError, r"k must be in \[1, n=4\]"),
    ((4, 2, 0), ValueError, "k must be"),
    ((4, 5, 1), ValueError, r"c \(correct samples\)"),
    ((0, 0, 1), ValueError, r"n \(samples\)"),
    ((4.0, 2, 1), TypeError, "n must be an int"),
])
def test_pass_at_k_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        pass_at_k(*args)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="no samples"):
        avg_at_k([])


def test_majority_vote_and_deterministic_ties():
    assert majority_answer(["3", "4", "4", "3", "5"]) == 0  # 3 and 4 tie twice each: 3 appeared first
    assert majority_answer(["4", "3", "3", "4"]) == 0
    assert majority_answer([None, "7", None, "8", "8"]) == 3  # None does not vote
    assert majority_answer([None, None]) is None
    answers = ["12", "13", "13", "12"]
    correct = [True, False, False, True]
    assert maj_at_k(answers, correct) == 1.0  # tie -> first seen, "12", correct
    assert maj_at_k(list(reversed(answers)), list(reversed(correct))) == 1.0
    assert maj_at_k(["13", "12", "12", "13"], [False, True, True, False]) == 0.0
    assert maj_at_k(["1", "2", "2", "2"], [True, False, False, False], k=1) == 1.0
    assert maj_at_k([None, None], [False, False]) == 0.0
    with pytest.raises(ValueError, match="k must be in"):
        maj_at_k(["1"], [True], k=2)
    with pytest.raises(ValueError, match="1 answers but 2"):
        maj_at_k(["1"], [True, False])
