"""A reward function that raises, hangs or returns NaN is counted, and the run goes on."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from rlvr.config import build_recipe
from rlvr.trainer import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

FLAKY = textwrap.dedent('''
    import math, time
    calls = 0

    def raises_every_third(completion, answer, **fields):
        global calls
        calls += 1
        if calls % 3 == 0:
            raise RuntimeError("flaky reward")
        return float(completion.strip() == answer)

    def sleeps_sometimes(completion, answer, **fields):
        global calls
        calls += 1
        if calls % 20 == 0:
            time.sleep(30)
        return float(completion.strip() == answer)

    def returns_nan(completion, answer, **fields):
        return math.nan
''')


@pytest.mark.parametrize("function, at_least", [
    ("raises_every_third", 10),  # 32 calls a step over 2 workers: ~1 in 3 fails
    ("sleeps_sometimes", 1),
    ("returns_nan", 32),
])
def test_failing_rewards_are_counted_and_the_run_completes(function, at_least, tiny_model_dir, ray_session,
                                                            tmp_path, monkeypatch):
    (tmp_path / "flaky_rewards.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = build_recipe({}, tiny_overrides(
        tiny_model_dir, tmp_path / "run", **{"reward.function": f"flaky_rewards:{function}",
                                             "reward.timeout_s": 1.0, "reward.failure_score": -1.0}))
    started = time.perf_counter()
    summary = train(recipe)
    assert summary["steps"] == 2
    assert time.perf_counter() - started < 120  # nothing hangs: a 30 s sleep is cut at 1 s
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    errors = [row["reward/errors"] for row in rows[1:]]
    assert sum(errors) >= at_least
    assert all(row["reward/mean"] < 1.0 for row in rows[1:])
    if function == "returns_nan":
        assert all(row["reward/mean"] == -1.0 for row in rows[1:])  # every call got failure_score
