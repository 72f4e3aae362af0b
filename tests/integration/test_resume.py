"""SIGKILL mid-run, then --resume: the steps after the resume equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, tiny_overrides
from tests.integration.test_train import _comparable

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

STEPS = 6


def _command(model_dir, out, *extra):
    overrides = tiny_overrides(model_dir, out, **{"trainer.total_steps": STEPS, "trainer.save_every": 1})
    return [sys.executable, "-m", "rlvr.cli", "train", str(REPO / "recipes/tiny/grpo.yaml"), *overrides, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}  # the test reward module imports in the subprocess


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(tiny_model_dir, reference), check=True, timeout=300, capture_output=True, env=_env())

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_model_dir, killed), start_new_session=True, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step_2").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its reward processes and its Ray instance
    process.wait(timeout=60)
    assert not (killed / "checkpoints" / f"step_{STEPS}").exists(), "killed too late to test anything"
    interrupted_at = max(row["step"] for row in _rows(killed))

    subprocess.run(_command(tiny_model_dir, killed, "--resume"), check=True, timeout=300, capture_output=True,
                   env=_env())
    rows = _rows(killed)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))  # no step lost or repeated
    assert interrupted_at < STEPS
    expected = _rows(reference)
    assert all(row["actor/grad_norm"] > 0 for row in rows[1:])
    for got, want in zip(_comparable(rows[3:]), _comparable(expected[3:])):
        assert got == want  # same seed, same numbers: resume is exact on a CPU
