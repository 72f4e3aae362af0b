"""Every registered algorithm preset, run from its own tiny recipe for four steps, logs exactly the metrics
recorded in ``tests/data/preset_metrics.json``: refactoring the algorithm layer must not move one bit.

The figures were recorded from main before the algorithm layer was restructured (issue 15). To record
them again after a change that is meant to move them, run::

    RLVR_RECORD_PRESET_METRICS=1 pytest tests/integration/test_presets.py

and say in the commit why they moved. Timings, throughput and memory are not compared.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from rlvr import algos
from rlvr.config import load_recipe
from rlvr.prepare import prepare
from rlvr.trainer import train
from tests.conftest import REPO, tiny_overrides

FIGURES = REPO / "tests" / "data" / "preset_metrics.json"
RECORD = os.environ.get("RLVR_RECORD_PRESET_METRICS") == "1"
STEPS = 4
# The weights' norm and its growth per step (the runaway guard's) came after the recording; deterministic, but
# instruments, not the algorithm layer's output.
NOT_COMPARED = ("time/", "throughput/", "memory/", "actor/weight_norm", "actor/weight_growth")


def _overrides(model_dir, out, name):
    """The tiny recipe, shortened: 8 prompts x 4 samples a step, two mini-batches of two micro-batches each (so the
    old log-probs are recomputed and the second mini-batch's ratio leaves 1), and a reward that varies within every
    group on the barely warm-started test model."""
    values = {"trainer.total_steps": STEPS, "data.heldout": "null", "data.train_size": 32, "trainer.save_every": 0,
              "reward.function": "tests.rewards_for_tests:by_length_with_answer", "learner.mini_batch_size": 16,
              "learner.micro_batch_size": 8}
    if name in ("dapo", "forking-tokens"):  # the test reward is never 'correct': vary on the score
        values["algorithm.dynamic_sampling_metric"] = "reward"
    if name == "scaf_grpo":  # short responses count as correct, so some groups fail and get hints
        values["reward.correct_threshold"] = 0.25
    if name == "astar":  # one sample per prompt; stage 1 samples each of the 32 prompts 8 times
        values.update({"rollout.n": 1, "algorithm.values_path": str(out.parent / f"{name}-values.jsonl")})
    return tiny_overrides(model_dir, out, **values)


def _compared(rows):
    return [{k: v for k, v in row.items() if not k.startswith(NOT_COMPARED)} for row in rows]


def _run(name, model_dir, tmp_path):
    out = tmp_path / name
    recipe = load_recipe(REPO / "recipes" / "tiny" / f"{name}.yaml", _overrides(model_dir, out, name))
    if name == "astar":
        prepare("astar", recipe)
    train(recipe)
    return _compared([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])


def _first_difference(got, want):
    if len(got) != len(want):
        return f"{len(got)} logged rows, recorded {len(want)}"
    for got_row, want_row in zip(got, want):
        if got_row.keys() != want_row.keys():
            return (f"step {got_row.get('step')}: keys added {sorted(got_row.keys() - want_row.keys())}, "
                    f"missing {sorted(want_row.keys() - got_row.keys())}")
        for key in want_row:
            a, b = got_row[key], want_row[key]
            if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                return f"step {got_row['step']}: {key} is {a!r}, recorded {b!r}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", algos.names())
def test_preset_metrics_match_the_recorded_figures(name, tiny_model_dir, ray_session, tmp_path):
    rows = _run(name, tiny_model_dir, tmp_path)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))
    for row in rows[1:]:  # every step trained, with the preset's own metrics and the common ones
        assert row["actor/grad_norm"] > 0 and not row["train/skipped_no_signal"], name
        if not row.get("scaf/exempt"):
            for key in (*algos.get(name).metrics, "adv/nonzero_frac", "actor/pg_loss", "actor/masked_token_frac"):
                assert key in row, (name, key)
    if name == "astar":
        assert all(row["rollout/num_rows"] == 8 for row in rows[1:])  # one sample per prompt
    if name == "scaf_grpo":  # after the exemption, every all-fail group searched all 12 hint levels, once each
        searched = [row for row in rows[1:] if not row["scaf/exempt"]]
        assert searched and all(row["scaf/hint_samples"] == 12 * row["scaf/all_fail_groups"] for row in searched)
        assert any(row["scaf/all_fail_groups"] > 0 for row in searched)
    if name == "forking-tokens":
        assert all(0.7 < row["actor/masked_token_frac"] < 0.85 for row in rows[1:])  # 80% of tokens off
    recorded = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    if RECORD:
        recorded[name] = rows
        FIGURES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert name in recorded, f"no recorded figures for {name!r}: run with RLVR_RECORD_PRESET_METRICS=1"
    difference = _first_difference(rows, recorded[name])
    assert difference is None, f"{name}: {difference}"
