"""Sampling ahead (``rollout.max_staleness: 1``): the engine samples step t+1's batch while the learner trains step t.
Every trained row is at most one step stale, the first step is on-policy, and a resume after SIGKILL trains the same
rows with the same numbers as the uninterrupted run (the batch sampled ahead travels in the checkpoint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, tiny_overrides
from tests.integration.test_resume import _env, _rows, _wait_for
from tests.integration.test_train import _comparable

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

STEPS = 6


def _command(model_dir, out, *extra):
    overrides = tiny_overrides(model_dir, out, **{"trainer.total_steps": STEPS, "trainer.save_every": 1,
                                                  "placement.mode": "split", "rollout.max_staleness": 1})
    return [sys.executable, "-m", "rlvr.cli", "train", str(REPO / "recipes/tiny/grpo.yaml"), *overrides, *extra]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ahead")
    subprocess.run(_command(tiny_model_dir, out), check=True, timeout=300, capture_output=True, env=_env())
    return out


def test_every_trained_row_is_at_most_one_step_stale(reference):
    rows = _rows(reference)[1:]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert rows[0]["rollout/staleness_max"] == 0  # the first batch is sampled with the weights it trains
    assert all(row["rollout/staleness"] == row["rollout/staleness_max"] == 1 for row in rows[1:])
    assert all(row["actor/grad_norm"] > 0 for row in rows)
    # A checkpoint keeps the batch sampled ahead of it, with its rows' staleness; the last has none left.
    kept = torch.load(reference / "checkpoints" / f"step_{STEPS - 1}" / "rollouts_ahead.pt", weights_only=False)
    assert [step for step, _ in kept] == [STEPS]
    assert kept[0][1].batch.staleness.tolist() == [1] * len(kept[0][1].batch)
    assert not (reference / "checkpoints" / f"step_{STEPS}" / "rollouts_ahead.pt").exists()


def test_sigkill_then_resume_trains_the_same_rows_as_the_uninterrupted_run(tiny_model_dir, reference, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_model_dir, killed), start_new_session=True, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "checkpoints" / "step_2").exists(), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "checkpoints" / f"step_{STEPS}").exists(), "killed too late to test anything"

    subprocess.run(_command(tiny_model_dir, killed, "--resume"), check=True, timeout=300, capture_output=True,
                   env=_env())
    rows, want = _rows(killed), _rows(reference)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))
    assert [row["rollout/staleness"] for row in rows[2:]] == [1.0] * (STEPS - 1)
    assert _comparable(rows[3:]) == _comparable(want[3:])  # the same rows, the same numbers on a CPU
