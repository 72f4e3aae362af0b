"""One live run per output directory: a second run into it fails at once naming the first; the lock of a run that
died is taken over with a message; a run that fails before any work leaves no directory behind."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from rlvr.runlock import LOCK_FILE, RunInUse, RunLock


def test_a_second_run_into_a_live_runs_directory_fails_naming_it(tmp_path):
    first = RunLock(tmp_path / "run")
    first.acquire()
    held = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    with pytest.raises(RunInUse, match=rf"belongs to a live run \(pid {held['pid']} on this host"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run").exists()  # it made the directory and nothing else was written there
    again = RunLock(tmp_path / "run")
    again.acquire()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    again.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]  # the run's files stay


def test_the_lock_of_a_dead_run_is_taken_over_with_a_message(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": RunLock(tmp_path).mine["host"],
                                                  "started": "2026-12-07T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        lock = RunLock(tmp_path)
        lock.acquire()
    assert f"taking over the lock of a run that is gone (pid {int(gone.stdout)}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == lock.mine["pid"]


def test_a_lock_from_another_host_is_not_guessed_about(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-7", "started": "2026-12-07T00:00:00"}))
    with pytest.raises(RunInUse, match=r"pid 1 on host node-7 .* delete .*run.lock if that run is gone"):
        RunLock(tmp_path).acquire()


def test_training_into_a_live_runs_directory_stops_before_any_work(tmp_path):
    from rlvr.config import build_recipe
    from rlvr.trainer import Trainer

    recipe = build_recipe({}, ["model.path=tiny", f"trainer.output_dir={tmp_path / 'run'}"])
    live = RunLock(tmp_path / "run")
    live.acquire()
    with pytest.raises(RunInUse, match="belongs to a live run"):
        with Trainer(recipe):
            pass
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing of the second run
    live.release()
