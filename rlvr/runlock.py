"""Run ownership: one live run per ``trainer.output_dir``. A run holds ``<output_dir>/run.lock`` (its pid, host and
start time) from start to end; a second run into the directory fails at once naming the first, and the lock of a
run that died without releasing it (a kill -9, a lost node) is taken over with a message."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("rlvr")

LOCK_FILE = "run.lock"


class RunInUse(FileExistsError):
    """Another live run owns the output directory."""


class RunDirUnwritable(PermissionError):
    """The output directory cannot be created or written (read-only file system, permissions, disk full)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.made_dir = False  # acquire made the directory: release takes it away again while it is empty
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`RunInUse` naming the run that holds it."""
        try:
            self.made_dir = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                with os.fdopen(fd, "w") as file:
                    json.dump(self.mine, file)
                return
        except RunInUse:
            raise
        except OSError as error:  # read-only, no permission, a file where the directory should be
            raise RunDirUnwritable(f"cannot write the run directory {self.path.parent}: "
                                   f"{error.strerror or error} ({error.filename or self.path}); set "
                                   "trainer.output_dir to a directory this user can write") from None
        raise RunInUse(f"{self.path.parent} is being taken by another run at this moment; try again")

    def check(self) -> None:
        """Raises :class:`RunInUse` when a live run (or one on another host) holds the lock; takes nothing. The
        command line asks this before its heavy imports, so a second run fails within a second."""
        if self.path.exists():
            self._take_over_if_stale(dry_run=True)

    def _take_over_if_stale(self, dry_run: bool = False) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host, started = int(holder["pid"]), str(holder["host"]), holder.get("started", "?")
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host, started = None, -1, "?", "?"
        if holder is not None and host != self.mine["host"]:
            raise RunInUse(f"{self.path.parent} belongs to the run with pid {pid} on host {host} (started "
                           f"{started}); rlvr cannot tell from here whether it still runs. Use another "
                           f"trainer.output_dir, or delete {self.path} if that run is gone")
        if holder is not None and _alive(pid):
            raise RunInUse(f"{self.path.parent} belongs to a live run (pid {pid} on this host, started {started}); "
                           "two runs in one directory would mix their metrics and overwrite each other's "
                           "checkpoints. Use another trainer.output_dir, or stop that run first")
        if dry_run:
            return
        log.warning("%s: taking over the lock of a run that is gone (pid %s, started %s)", self.path.parent, pid,
                    started)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Gives the lock back, if it is still this process's (and the directory, if it made it and the run wrote
        nothing there: a run that failed before any work leaves nothing behind)."""
        try:
            if json.loads(self.path.read_text()).get("pid") == self.mine["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            return
        if self.made_dir:
            try:
                self.path.parent.rmdir()
            except OSError:  # not empty: the run's files stay
                pass
