"""A private local Ray instance with only the processes a run uses.

``ray.init`` on a single machine starts, beside the GCS and the raylet (with its dashboard and runtime-env agents,
which the raylet needs), an autoscaler monitor, a dashboard API server, a log monitor and prestarted idle workers:
four or more Python interpreters (about 50-75 MB each, and a second or more of a core each to start) that a local
training run never uses. :func:`lean_head` leaves them out while ``ray.init`` starts the instance; :class:`LogTail`
does the log monitor's one job here, in a thread of the driver: the actors' output reaches the terminal.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# Only the first driver's idle workers: actors start their own worker processes whatever this says.
SYSTEM_CONFIG = {"prestart_worker_first_driver": False}
MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":task_attempt_start:", ":task_attempt_end:")


@contextlib.contextmanager
def lean_head() -> Iterator[None]:
    """While it is open, a head node that ``ray.init`` starts has no autoscaler monitor, dashboard API server or log
    monitor (Ray's own ``RayParams.no_monitor`` / ``include_log_monitor`` switches, which ``ray.init`` does not
    expose, and no API server: nothing here submits jobs or reads the state API)."""
    from ray._private import node

    init, start_api_server = node.Node.__init__, node.Node.start_api_server

    def lean_init(self, ray_params, *args, head: bool = False, **kwargs) -> None:
        if head:
            ray_params.no_monitor, ray_params.include_log_monitor = True, False
        init(self, ray_params, *args, head=head, **kwargs)

    node.Node.__init__ = lean_init
    node.Node.start_api_server = lambda self, **kwargs: None
    try:
        yield
    finally:
        node.Node.__init__, node.Node.start_api_server = init, start_api_server


class LogTail(threading.Thread):
    """Copies what the actors write to their log files (``<session>/logs/worker-*.out`` and ``.err``) to this process's
    stdout and stderr, line by line, prefixed with the actor's name and pid as Ray's log monitor prints them."""

    def __init__(self, logs_dir: Path, interval_s: float = 0.25, stdout: TextIO | None = None,
                 stderr: TextIO | None = None):
        super().__init__(name="rlvr-ray-logs", daemon=True)
        self.logs_dir, self.interval_s = logs_dir, interval_s
        self.stdout, self.stderr = stdout, stderr
        self.offsets: dict[Path, int] = {}
        self.names: dict[Path, str] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.poll()
        self.poll()

    def stop(self) -> None:
        self.stopped.set()

    def poll(self) -> None:
        for path in sorted(self.logs_dir.glob("worker-*.*")):
            if path.suffix not in (".out", ".err"):
                continue
            try:
                with open(path, "rb") as file:
                    file.seek(self.offsets.get(path, 0))
                    data = file.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # whole lines only; the rest is read again next time
            if not end:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + end
            self._emit(path, data[:end].decode("utf-8", "replace").splitlines())

    def _emit(self, path: Path, lines: list[str]) -> None:
        stream = (self.stderr or sys.stderr) if path.suffix == ".err" else (self.stdout or sys.stdout)
        pid = path.stem.rsplit("-", 1)[-1]
        for line in lines:
            if line.startswith(":actor_name:"):
                self.names[path] = line.removeprefix(":actor_name:")
            if line.startswith(MARKERS):
                continue
            stream.write(f"({self.names.get(path, 'worker')} pid={pid}) {line}\n")
        stream.flush()
