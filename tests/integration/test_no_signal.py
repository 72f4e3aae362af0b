"""Steps without signal on the real tiny model: no learner work, weights unchanged, one warning; a KL term
keeps the update."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr import trainer
from rlvr.config import build_recipe
from rlvr.trainer import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

ZERO = {"reward.function": "tests.rewards_for_tests:zero", "data.heldout": "null", "trainer.total_steps": 3}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_steps_without_signal_are_skipped_and_said_once(tiny_model_dir, ray_session, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(trainer, "NO_SIGNAL_WARN_AFTER", 2)  # warned at step 2, not again at step 3
    caplog.set_level(logging.WARNING, logger="rlvr")
    train(build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **ZERO)))
    rows = _rows(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["train/skipped_no_signal"] == 1 and row["adv/nonzero_frac"] == 0.0
        assert row["time/update"] == 0 and row["time/old_logprob"] == 0 and row["time/sync"] == 0
        assert row["tokens/trained"] == 0 and row["tokens/generated"] > 0 and "actor/grad_norm" not in row
    final = tmp_path / "checkpoints" / "step_3"
    assert _same_weights(_weights(final), _weights(Path(tiny_model_dir)))
    optimizer = torch.load(final / "learner_state.pt", weights_only=False)["optimizer"]
    assert optimizer["state"] == {}  # never stepped: a resume starts AdamW where it would have been
    warnings = [r.getMessage() for r in caplog.records if "train/skipped_no_signal" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("step 2: 2 steps in a row")
    for hint in ("mean reward 0", "of responses hit rollout.max_new_tokens (", "data.template", "qwen-boxed",
                 "tests.rewards_for_tests:zero", "rlvr eval"):
        assert hint in warnings[0], hint


def test_a_kl_term_trains_without_signal(tiny_model_dir, ray_session, tmp_path):
    # k1, whose gradient does not vanish where the policy equals the reference (k3's does, at step 1).
    overrides = {**ZERO, "trainer.total_steps": 1, "algorithm.kl_coef": 0.1, "algorithm.kl_estimator": "k1",
                 "learner.lr": 1e-3}
    train(build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **overrides)))
    (row,) = _rows(tmp_path)
    assert row["train/skipped_no_signal"] == 0 and row["adv/nonzero_frac"] == 0.0
    assert row["time/update"] > 0 and row["actor/grad_norm"] > 0 and "actor/kl" in row
    assert not _same_weights(_weights(tmp_path / "checkpoints" / "step_1"), _weights(Path(tiny_model_dir)))
