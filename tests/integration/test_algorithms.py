"""The algorithms' state (DCPO's per-prompt statistics, CAPO's optimiser model) across ``--resume``, on real Ray
actors, the real tiny model and real reward processes. Every preset trains end to end in test_presets.py."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr import algos
from rlvr.config import build_recipe
from rlvr.trainer import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

RESUMED = ("dcpo", "capo")  # the presets whose parts keep state across steps


def _overrides(model_dir, out, name, **extra):
    values = {"algorithm.name": name, "data.heldout": None, "learner.lr": 1e-3, "data.train_size": 8,
              "reward.function": "tests.rewards_for_tests:by_length_with_answer", **extra}
    if name == "capo":  # at 1e-3 the curvature model predicts too large a step for every token
        values["learner.lr"] = 1e-4
    return [o.replace("=None", "=null") for o in tiny_overrides(model_dir, out, **values)]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_rows(name, steps):
    """Two logged steps with the algorithm's own metrics and the common ones, each with a gradient."""
    assert len(steps) == 2, name
    for row in steps:
        for key in (*algos.get(name).metrics, "adv/nonzero_frac", "actor/pg_loss", "actor/masked_token_frac"):
            assert key in row, (name, key)
        assert row["actor/grad_norm"] > 0, name


def _state_at(run_dir, step):
    """The algorithm's driver-side and learner-side state in a checkpoint (one file holds both)."""
    state = torch.load(run_dir / "checkpoints" / f"step_{step}" / "algorithm_state.pt", weights_only=False)
    return state["driver"], state["learner"]


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name", RESUMED)
def test_algorithm_state_survives_resume_exactly(name, tiny_model_dir, ray_session, tmp_path):
    common = {"trainer.save_every": 2, "data.train_size": 8, "data.batch_size": 4}
    straight = tmp_path / "straight"
    train(build_recipe({}, _overrides(tiny_model_dir, straight, name, **common, **{"trainer.total_steps": 4})))
    resumed = tmp_path / "resumed"
    train(build_recipe({}, _overrides(tiny_model_dir, resumed, name, **common, **{"trainer.total_steps": 2})))
    check_rows(name, _rows(resumed)[1:])  # end to end
    halfway = _state_at(resumed, 2)
    train(build_recipe({}, _overrides(tiny_model_dir, resumed, name, **common, **{"trainer.total_steps": 4})),
          resume=True)

    driver_state, learner_state = _state_at(straight, 4)
    if name == "dcpo":
        stats = driver_state["dcpo"]["stats"]
        assert stats and max(t for t, _, _ in stats.values()) >= 2  # prompts recur
        assert not _same(halfway[0], driver_state)  # the state moved after the resume point ...
    else:
        assert learner_state and not _same(halfway[1], learner_state)
    assert _same(_state_at(resumed, 4), (driver_state, learner_state))  # ... exactly as without the break
    compared = [k for k in _rows(straight)[-1] if k.startswith(("actor/", "reward/", "dcpo/", "capo/", "adv/"))]
    assert [{k: r.get(k) for k in compared} for r in _rows(resumed)] == \
        [{k: r.get(k) for k in compared} for r in _rows(straight)]
