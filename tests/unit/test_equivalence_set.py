"""The labelled equivalence set (tests/data/equivalence_set.jsonl): its schema, and the grader's agreement with it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rlvr.rewards.grading import grade

SET_PATH = Path(__file__).resolve().parents[1] / "data" / "equivalence_set.jsonl"
FIELDS = {"response", "gold", "equal", "kind", "source"}
# The vocabulary of `kind`, as tests/data/README.md defines it.
KINDS = {
    "latex", "units", "currency", "percent", "degrees", "zero-padded", "thousands", "sci-notation", "interval",
    "inequality", "tuple", "set", "matrix", "multiple-answers", "multiple-choice", "equation", "fraction-decimal",
    "expression", "extraction", "base", "text", "sqrt", "pi", "sign", "complex",
}
MIN_CASES = 200
MIN_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return [json.loads(line) for line in SET_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_case_has_the_fields_and_a_known_kind(cases: list[dict]) -> None:
    assert len(cases) >= MIN_CASES
    for number, case in enumerate(cases, start=1):
        assert set(case) == FIELDS, f"line {number}: fields {sorted(case)}"
        assert isinstance(case["response"], str) and case["response"], f"line {number}: empty response"
        assert isinstance(case["gold"], str) and case["gold"].strip(), f"line {number}: empty gold"
        assert isinstance(case["equal"], bool), f"line {number}: equal must be a bool"
        assert case["kind"] in KINDS, f"line {number}: unknown kind {case['kind']!r}"
        assert case["source"].strip(), f"line {number}: empty source"


def test_every_kind_has_positives_and_negatives(cases: list[dict]) -> None:
    counts = Counter((case["kind"], case["equal"]) for case in cases)
    missing = [f"{kind} ({'equal' if equal else 'not equal'})" for kind in sorted(KINDS) for equal in (True, False)
               if counts[kind, equal] < 2]
    assert not missing, f"kinds with fewer than 2 cases of a label: {missing}"
    negatives = sum(not case["equal"] for case in cases) / len(cases)
    assert 0.3 <= negatives <= 0.5, f"{negatives:.0%} negatives"


def test_no_case_is_repeated(cases: list[dict]) -> None:
    pairs = Counter((case["response"], case["gold"]) for case in cases)
    assert [pair for pair, count in pairs.items() if count > 1] == []


def test_grade_agrees_with_the_labels(cases: list[dict]) -> None:
    disagreements = [case for case in cases if grade(case["response"], case["gold"]) != case["equal"]]
    agreement = 1 - len(disagreements) / len(cases)
    report = "\n".join(
        f"  [{case['kind']}] label={case['equal']} gold={case['gold']!r} response={case['response'][:80]!r}"
        for case in disagreements
    )
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement:.3f} < {MIN_AGREEMENT}; disagreements:\n{report}"
