"""SIGKILL or Ctrl-C mid-run, then --resume: the steps after the resume equal an uninterrupted run's. A second run
into a live run's directory fails at once."""

from __future__ import annotations

import contextlib
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

STEPS = 8


def _command(model_dir, out, *extra):
    overrides = tiny_overrides(model_dir, out, **{"trainer.total_steps": STEPS, "trainer.save_every": 1})
    return [sys.executable, "-m", "rlvr.cli", "train", str(REPO / "recipes/tiny/grpo.yaml"), *overrides, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}  # the test reward module imports in the subprocess


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run's metrics."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(_command(tiny_model_dir, out), check=True, timeout=300, capture_output=True, env=_env())
    return _rows(out)


def _wait_for(condition, process, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tiny_model_dir, reference, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_model_dir, killed), start_new_session=True, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "checkpoints" / "step_2").exists(), process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its reward processes and its Ray instance
    process.wait(timeout=60)
    assert not (killed / "checkpoints" / f"step_{STEPS}").exists(), "killed too late to test anything"
    interrupted_at = max(row["step"] for row in _rows(killed))

    subprocess.run(_command(tiny_model_dir, killed, "--resume"), check=True, timeout=300, capture_output=True,
                   env=_env())
    rows = _rows(killed)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))  # no step lost or repeated
    assert interrupted_at < STEPS
    assert all(row["actor/grad_norm"] > 0 for row in rows[1:])
    for got, want in zip(_comparable(rows[3:]), _comparable(reference[3:])):
        assert got == want  # same seed, same numbers: resume is exact on a CPU


def test_ctrl_c_at_step_3_saves_step_3_and_the_resume_is_exact(tiny_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    command = _command(tiny_model_dir, out, "trainer.save_every=0")  # the only checkpoint before the end: Ctrl-C's
    process = subprocess.Popen(command, start_new_session=True, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and len(_rows(out)) == 3, process)  # step 2 done
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and the Ray processes it started
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    stopped = _rows(out)[-1]["step"]
    assert stopped == 3, stderr  # the step under way is finished, and its checkpoint written
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]
    assert f"stopped by Ctrl-C (SIGINT) after step 3 of {STEPS}; checkpoint written: {out / 'checkpoints' / 'step_3'}" \
        in stderr and "--resume" in stderr
    assert "Traceback" not in stderr

    subprocess.run([*command, "--resume"], check=True, timeout=300, capture_output=True, env=_env())
    rows = _rows(out)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))
    assert _comparable(rows) == _comparable(reference)


def test_a_second_run_into_a_live_runs_directory_fails_at_once_naming_it(tiny_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_command(tiny_model_dir, out), start_new_session=True, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and len(_rows(out)) >= 2, first)
    started = time.monotonic()
    second = subprocess.run(_command(tiny_model_dir, out), timeout=60, capture_output=True, text=True, env=_env())
    assert time.monotonic() - started < 5
    assert second.returncode == 2
    assert f"belongs to a live run (pid {first.pid} on this host" in second.stderr
    assert first.wait(timeout=300) == 0
    assert _comparable(_rows(out)) == _comparable(reference)  # the first run's files as if it had been alone


@contextlib.contextmanager
def _tmpfs(path, size, *options):
    """A real file system of ``size`` at ``path`` (root only: the disk-full and read-only cases need one)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_a_checkpoint_names_it_and_the_resume_after_freeing_space_is_exact(tiny_model_dir,
                                                                                             reference, tmp_path):
    with _tmpfs(tmp_path / "disk", "16m") as disk:  # one checkpoint (10.6 MB) fits, the second does not
        out = disk / "run"
        failed = subprocess.run(_command(tiny_model_dir, out), timeout=300, capture_output=True, text=True,
                                env=_env())
        assert failed.returncode == 1, failed.stderr
        assert (f"rlvr: could not write the checkpoint of step 2 to {out / 'checkpoints'}: no space left on the "
                "device (0.0 MiB free). The partial checkpoint was removed; the last complete one is step_1") \
            in failed.stderr
        assert "Traceback" not in failed.stderr
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]  # no .step_2.tmp left
        assert [row["step"] for row in _rows(out)] == [0, 1]  # no row for the step whose checkpoint failed

        subprocess.run(["mount", "-o", "remount,size=128m", str(disk)], check=True)  # space freed
        subprocess.run(_command(tiny_model_dir, out, "--resume"), check=True, timeout=300, capture_output=True,
                       env=_env())
        assert _comparable(_rows(out)) == _comparable(reference)


def test_a_read_only_output_directory_fails_at_once_naming_it(tiny_model_dir, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", "ro") as read_only:
        result = subprocess.run(_command(tiny_model_dir, read_only / "run"), timeout=60, capture_output=True,
                                text=True, env=_env())
    assert result.returncode == 2
    assert f"rlvr: cannot write the run directory {read_only / 'run'}: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
