"""The reward pool: user reward functions run in separate, restricted processes, each call under a hard timeout.

A reward function is ``fn(completion: str, answer: str, **fields) -> float | dict`` (a dict carries
``score`` plus extras), named by a ``module:function`` spec or a registered name
(:mod:`rlvr.rewards.registry`). Whatever it does — raise, hang, return NaN or a string, run out of memory,
kill its own process — the call yields a :class:`RewardResult` with the pool's ``failure_score`` and a short
``error``, the error is counted, and the run goes on.

How: ``num_workers`` processes, each a fresh interpreter started by ``subprocess`` (the parent runs Ray and
threads, which ``fork`` would copy in a broken state; multiprocessing's ``spawn`` would also re-import the
run's main module, torch and all, in every worker). Each worker imports the function once and then serves one
call at a time in its main thread, so code that relies on ``signal.alarm`` (math-verify does) works. The
parent sends an idle worker a run of requests at once over a socket pair (one message rather than one round trip per
call; the run shrinks as the pending requests run out, so the workers finish together), the worker answers call by
call, and the parent waits on all of them with a deadline per call. A worker past ``timeout_s``, one that dies,
and one whose call ran out of its memory limit is killed, with every process it started (the requests of its run it
had not started go back to the queue), and its place is taken by one of ``spare_workers`` processes kept started and
idle (a new spare starts in the background), so a killed call costs its timeout, not a worker's start-up.
Workers start at the first :meth:`RewardPool.score` (or :meth:`RewardPool.start`) and are reused until
:meth:`RewardPool.close`.

What a worker may touch (:mod:`rlvr.rewards.sandbox` says how, and what each step needs from the OS):

- **Processes**: each worker leads its own session, with stdin from ``/dev/null``. Killing a worker kills its
  session and every process whose environment carries its marker, so a ``sleep`` it started, a daemon that
  double-forked and even one that called ``setsid`` die with it, and none holds the run's stdout open
  (which would hang ``rlvr train ... | tee``). :meth:`RewardPool.close`, and interpreter exit, do this for
  every worker. A descendant that leaves the session *and* replaces its environment escapes.
- **Environment**: the worker does not inherit the run's environment. It starts (``execve``) with
  ``PATH``, ``HOME``, locale, Python and Hugging Face settings (:data:`rlvr.rewards.sandbox.INHERITED_ENV`),
  the variables named in ``env``, and ``TMPDIR`` set to its own directory.
- **Files**: its working directory is a private temporary directory (mode 0700), removed with the worker.
  With ``writes="temp_dir"`` it may create or change files only there (Landlock); by default anywhere the
  run may.
- **Limits** (``limits``): memory (4096 MiB by default), CPU seconds per call, file size and processes
  (``setrlimit``); a call past one fails (``memory limit: ...``) and, for memory, its worker is replaced.
- **Network**: allowed by default; ``network=False`` puts each worker in a user and network namespace of its
  own, which also keeps it from reading the run's ``/proc/<pid>/environ``.

Not isolated, on any system: what a reward can read. It runs as the run's user and reads the run's files;
and by default (no user namespace) a secret kept out of its environment is still in the run's
``/proc/<pid>/environ``, which it can read.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import numbers
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe, wait
from typing import TYPE_CHECKING, Any

from rlvr.rewards import sandbox
from rlvr.rewards.registry import load_function, resolve
from rlvr.rewards.sandbox import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from rlvr.config import RewardConfig

# A worker's start-up (interpreter, imports of the reward module) must finish within this many seconds;
# a worker that takes longer is a broken environment, not a slow reward.
WORKER_STARTUP_TIMEOUT_S = 120.0

WRITES = ("anywhere", "temp_dir")

_ERROR_MESSAGE_MAX_CHARS = 300
# Where waiting on a worker's exit has no pidfd (not Linux), the parent polls it this often.
_EXIT_POLL_S = 0.05
MAX_RUN = 32  # requests sent to a worker in one message at most


@dataclass
class RewardRequest:
    """One call: ``fn(completion, answer, **fields)``. ``fields`` are the prompt's other dataset fields."""

    completion: str
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    """The outcome of one call.

    ``error`` is None on success; otherwise ``score`` is the pool's failure score, ``extras`` is empty and
    ``error`` is a kind and a message: ``"exception: ValueError: ..."``, ``"timeout after 2.0s"``,
    ``"nan"``, ``"inf"``, ``"overflow: ..."``, ``"wrong type: str ..."``, ``"missing score: ..."``,
    ``"unpicklable extras: ..."``, ``"memory limit: ..."``, ``"cpu limit: ..."``, ``"file size limit: ..."``,
    ``"worker died: exit code 1"``, ``"worker died: killed by signal 11 (SIGSEGV)"``.
    """

    score: float
    extras: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class _Settings:
    """What a worker needs before it imports the reward: its first message from the parent."""

    spec: str
    name: str
    sys_path: list[str]
    temp_dir: str
    limits: Limits
    network: bool
    writes: str
    parent: int | None  # the pid to die with, when the worker was started from the parent's main thread


# --- the worker process -----------------------------------------------------------------------------

# What a worker reports for one call: (score, extras, None) on success, (None, {}, error) on failure.
_Outcome = tuple[float | None, dict[str, Any], str | None]


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _ERROR_MESSAGE_MAX_CHARS:
        return text[: _ERROR_MESSAGE_MAX_CHARS - 3] + "..."
    return text


def _describe_exception(kind: str, error: BaseException) -> str:
    try:
        message = _shorten(str(error))
    except BaseException:  # an exception whose __str__ raises is still a failed call, not a dead worker
        message = "(its message cannot be printed)"
    return f"{kind}: {type(error).__name__}: {message}" if message else f"{kind}: {type(error).__name__}"


def _interpret(value: object) -> _Outcome:
    """Check a reward function's return value: a real number (bools count as 0/1) or a dict with one."""
    extras: dict[str, Any] = {}
    if isinstance(value, dict):
        if "score" not in value:
            keys = ", ".join(sorted(repr(key) for key in value)) or "none"
            return None, {}, f"missing score: the returned dict has keys {_shorten(keys)}; it needs 'score'"
        extras = {key: item for key, item in value.items() if key != "score"}
        value = value["score"]
        what = "score"
    else:
        what = "return value"
    if not isinstance(value, numbers.Real):
        return None, {}, (
            f"wrong type: {type(value).__name__} ({what}; a reward is a real number, or a dict whose "
            "'score' is one)"
        )
    try:
        score = float(value)
    except OverflowError as error:  # 10**400
        return None, {}, f"overflow: the {what} does not fit a float ({error})"
    if math.isnan(score):
        return None, {}, "nan"
    if math.isinf(score):
        return None, {}, "inf" if score > 0 else "-inf"
    return score, extras, None


def _call(function: Callable[..., object], request: tuple[str, str, dict[str, Any]], limits: Limits) -> _Outcome:
    completion, answer, fields = request
    try:
        return _interpret(function(completion, answer, **fields))
    except MemoryError as error:
        if limits.memory_mb is None:
            return None, {}, _describe_exception("exception", error)
        return None, {}, (f"memory limit: a reward process may map {limits.memory_mb} MiB "
                          f"(reward.limits.memory_mb); {_describe_exception('the call raised', error)}")
    except OSError as error:
        if error.errno != errno.EFBIG or limits.file_size_mb is None:
            return None, {}, _describe_exception("exception", error)
        return None, {}, (f"file size limit: a reward process may write files up to {limits.file_size_mb} MiB "
                          f"(reward.limits.file_size_mb); {_describe_exception('the call raised', error)}")
    except BaseException as error:  # sys.exit() in user code is a failed call, not a dead worker
        return None, {}, _describe_exception("exception", error)


def _worker_main(fd: int) -> None:
    """A worker's whole life: read its settings, restrict itself, import the function, report ready, serve
    calls until told to stop.

    Messages to the parent are pickled tuples: ``("ready", None)``; ``("sandbox", message)`` when a
    restriction the pool asked for cannot be set up; ``("failed", message)`` when the import fails;
    ``("result", outcome)`` per call. A message from the parent is a list of pickled requests (a run, answered
    in order); ``None``, or the parent's end closing, ends the worker.
    """
    os.set_inheritable(fd, False)  # programs the reward runs must not hold the parent's pipe
    conn = Connection(fd)
    settings: _Settings = pickle.loads(conn.recv_bytes())
    multiprocessing.current_process().name = settings.name  # for rewards that ask where they run
    # The parent's sys.path: modules it imported from a path added at run time (a test's tmp dir, a user's
    # script dir) import here too.
    sys.path[:] = settings.sys_path
    try:
        if settings.parent is not None:
            sandbox.die_with_parent(settings.parent)
        if not settings.network:
            sandbox.disable_network()  # first: a user namespace needs a process with one thread
        sandbox.apply_limits(settings.limits)
        if settings.writes == "temp_dir":
            sandbox.restrict_writes(settings.temp_dir)
    except (sandbox.SandboxError, OSError) as error:
        conn.send_bytes(pickle.dumps(("sandbox", str(error))))
        return
    try:
        function = load_function(settings.spec)
    except BaseException as error:  # load_function's ValueError already says what and why
        message = str(error) if isinstance(error, ValueError) else _describe_exception("exception", error)
        conn.send_bytes(pickle.dumps(("failed", message)))
        return
    conn.send_bytes(pickle.dumps(("ready", None)))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        run = pickle.loads(message)
        if run is None:
            return
        for request in run:  # pickled one by one: an unpicklable request fails alone
            try:
                call = pickle.loads(request)
            except Exception as error:  # fields holding a class this process cannot import
                outcome: _Outcome = (None, {}, _describe_exception("unpicklable request", error))
            else:
                if settings.limits.cpu_s is not None:
                    sandbox.arm_cpu_limit(settings.limits.cpu_s)
                outcome = _call(function, call, settings.limits)
            try:
                payload = pickle.dumps(("result", outcome))
            except Exception as error:
                payload = pickle.dumps(("result", (None, {}, _describe_exception("unpicklable extras", error))))
            conn.send_bytes(payload)


# --- the parent side --------------------------------------------------------------------------------


class _Worker:
    """One worker process, its private directory, the parent's end of its pipe, and the call it is serving."""

    def __init__(self, settings: _Settings, env: dict[str, str]) -> None:
        self.temp_dir = settings.temp_dir
        self.marker = f"{sandbox.MARKER}={env[sandbox.MARKER]}\0".encode()  # its processes' environments hold it
        self.conn, child_conn = Pipe(duplex=True)
        try:
            self.process = subprocess.Popen(
                sandbox.worker_command(child_conn.fileno(), settings.name), env=env, cwd=self.temp_dir,
                stdin=subprocess.DEVNULL, pass_fds=(child_conn.fileno(),), start_new_session=True,
            )
        finally:
            # The parent must not hold the child's end, or a dead worker would never read as EOF.
            child_conn.close()
        self.sentinel = _exit_fd(self.process.pid)
        try:
            self.conn.send_bytes(pickle.dumps(settings))
        except OSError:  # it died at once; the parent hears so from its exit, with its exit code
            pass
        self.ready = False
        self.tasks: deque[int] = deque()  # indexes of the requests sent, in order; the first is running
        self.deadline = time.monotonic() + WORKER_STARTUP_TIMEOUT_S

    @property
    def waiting(self) -> bool:
        """Whether the parent is waiting on this worker: starting up, or serving a call."""
        return not self.ready or bool(self.tasks)

    def exited(self, ready: set[object]) -> bool:
        """Whether the process has exited, given what :func:`multiprocessing.connection.wait` returned."""
        if self.sentinel is None:
            return self.process.poll() is not None
        return self.sentinel in ready

    def exit_description(self) -> str:
        """How the process ended (call after :meth:`kill`)."""
        code = self.process.returncode
        if code is None:
            return "still running but its pipe is closed"
        if code >= 0:
            return f"exit code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by signal {-code} ({name}: out of memory, or another process killed it)"
        return f"killed by signal {-code} ({name})"

    def kill(self) -> None:
        """SIGKILL the worker, its session and every process with its marker; reap it; remove its directory."""
        if self.process.returncode is None:  # still unreaped, so its pid cannot name another process group yet
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            sandbox.kill_processes({self.process.pid}, self.marker)
        self.process.wait()
        self.conn.close()
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def stop(self) -> None:
        """Ask an idle worker to exit (a second at most), then :meth:`kill` what is left of it."""
        if self.ready and not self.tasks:
            try:
                self.conn.send_bytes(pickle.dumps(None))
                if self.sentinel is not None:
                    wait([self.sentinel], timeout=1.0)
            except OSError:
                pass
        self.kill()


def _exit_fd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` exits (Linux 5.3+); None elsewhere."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _stop_workers(owner: int, workers: list[_Worker], spares: list[_Worker], marker: bytes) -> None:
    if os.getpid() != owner:  # a forked copy of the pool's process exiting: the workers are not its own
        return
    for worker in workers + spares:
        worker.stop()
    workers.clear()
    spares.clear()
    sandbox.kill_processes((), marker)  # whatever any worker left behind


class RewardPool:
    """Runs a reward function in ``num_workers`` restricted processes, with a hard per-call timeout.

    Use as a context manager (or call :meth:`close`)::

        with RewardPool("math_answer", num_workers=4, timeout_s=10.0) as pool:
            results = pool.score([RewardRequest(completion, answer) for completion in completions])

    ``function`` is a ``module:function`` spec or a registered name; it is imported here first, so a
    recipe naming a missing module fails before any worker starts. Failed calls (exception, timeout, NaN,
    infinite or overflowing score, wrong type, unpicklable extras, a limit hit, dead worker) score
    ``failure_score`` and are counted in :attr:`num_errors`. One :meth:`score` at a time: the pool is not
    thread-safe.

    ``spare_workers`` more processes are kept started and idle, to take a killed worker's place at once.
    ``limits``, ``env``, ``network`` and ``writes`` restrict every worker (see the module docstring):
    ``env`` names variables of the run's environment to pass on, ``network=False`` turns the network off and
    ``writes="temp_dir"`` keeps writes in the worker's own directory. Where the system cannot do what these
    ask for, the pool raises :class:`rlvr.rewards.sandbox.SandboxError` here, saying why.
    """

    def __init__(
        self,
        function: str,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        failure_score: float = 0.0,
        *,
        spare_workers: int = 1,
        limits: Limits = DEFAULT_LIMITS,
        env: Sequence[str] = (),
        network: bool = True,
        writes: str = "anywhere",
    ) -> None:
        for name, value, least in (("num_workers", num_workers, 1), ("spare_workers", spare_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r} is not allowed; use an integer >= {least}")
        if not isinstance(timeout_s, numbers.Real) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s!r} is not allowed; use a finite number of seconds > 0")
        if not isinstance(failure_score, numbers.Real) or not math.isfinite(failure_score):
            raise ValueError(f"failure_score={failure_score!r} is not allowed; use a finite number")
        if isinstance(env, str) or not all(isinstance(n, str) and n and "=" not in n and "\0" not in n for n in env):
            raise ValueError(f"env={env!r} is not allowed; use a list of environment variable names")
        if writes not in WRITES:
            raise ValueError(f"writes={writes!r} is not allowed; use one of {', '.join(map(repr, WRITES))}")
        self.function = resolve(function)
        load_function(self.function)  # fail here, with the import error, rather than in every worker
        sandbox.check_supported(network, writes)
        self.num_workers = num_workers
        self.spare_workers = spare_workers
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self.limits = limits
        self.env = tuple(env)
        self.network = network
        self.writes = writes
        self._num_errors = 0
        self._workers: list[_Worker] = []
        self._spares: list[_Worker] = []  # started (ready or not), idle until one takes a killed worker's place
        self._spawned = 0
        self._pending: deque[int] = deque()
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._closed = False
        # Stops the workers if the pool is garbage-collected or the interpreter exits without close().
        self._finalizer = weakref.finalize(self, _stop_workers, os.getpid(), self._workers, self._spares,
                                           f"{sandbox.MARKER}={self._token}-".encode())

    @classmethod
    def from_config(cls, reward: RewardConfig) -> RewardPool:
        """The pool a recipe's ``reward`` section describes."""
        return cls(reward.function, reward.num_workers, reward.timeout_s, reward.failure_score,
                   spare_workers=reward.spare_workers, limits=Limits(**reward.limits.model_dump()),
                   env=reward.env, network=reward.network, writes=reward.writes)

    @property
    def num_errors(self) -> int:
        """Failed calls since the pool was created (the ``reward/errors`` counter)."""
        return self._num_errors

    def start(self) -> None:
        """Start the worker and spare processes now, rather than at the first :meth:`score` (returns at once)."""
        self._check_open()
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())
        while len(self._spares) < self.spare_workers:
            self._spares.append(self._spawn())

    def score(self, requests: list[RewardRequest]) -> list[RewardResult]:
        """Score every request; the results come back in request order. Never raises for a failed call.

        Raises ``RuntimeError`` only when a worker cannot start at all (its import of the function fails
        or takes longer than ``WORKER_STARTUP_TIMEOUT_S``, or its restrictions cannot be set up), which no
        later call would fix.
        """
        if not requests:
            self._check_open()
            return []
        self.start()
        results: list[RewardResult | None] = [None] * len(requests)
        self._pending = deque(range(len(requests)))  # the requests not sent, or sent to a worker killed before them
        while self._pending or any(worker.tasks for worker in self._workers):
            for worker in self._workers:
                if self._pending and not worker.waiting:
                    size = min(MAX_RUN, -(-len(self._pending) // (2 * len(self._workers))))
                    run = [self._pending.popleft() for _ in range(size)]
                    self._dispatch(worker, run, requests, results)
            self._wait_and_collect(results)
        return results  # type: ignore[return-value]  # every slot is filled once nothing is pending

    def close(self) -> None:
        """Stop the workers (killing any busy one) and every process they started. Idempotent; the pool cannot
        be used afterwards."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the reward pool for {self.function!r} is closed; create a new one")

    def _spawn(self) -> _Worker:
        self._spawned += 1
        name = f"rlvr-reward-{self._spawned}"
        marker = f"{self._token}-{self._spawned}"
        temp_dir = tempfile.mkdtemp(prefix=f"{name}-")
        main_thread = threading.current_thread() is threading.main_thread()
        settings = _Settings(
            spec=self.function, name=name, sys_path=[entry or os.getcwd() for entry in sys.path],
            temp_dir=temp_dir, limits=self.limits, network=self.network, writes=self.writes,
            parent=os.getpid() if main_thread else None,
        )
        return _Worker(settings, sandbox.worker_environment(self.env, temp_dir, marker))

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker``; the oldest spare takes its place, and a new spare starts."""
        worker.kill()
        self._workers[self._workers.index(worker)] = self._spares.pop(0) if self._spares else self._spawn()
        if len(self._spares) < self.spare_workers:
            self._spares.append(self._spawn())

    def _failure(self, error: str) -> RewardResult:
        self._num_errors += 1
        return RewardResult(score=self.failure_score, extras={}, error=error)

    def _dispatch(self, worker: _Worker, run: list[int], requests: list[RewardRequest],
                  results: list[RewardResult | None]) -> None:
        """Send the requests ``run`` (indexes) to an idle worker; those that cannot be pickled fail now."""
        payloads = []
        for index in run:
            request = requests[index]
            try:
                payloads.append(pickle.dumps((request.completion, request.answer, dict(request.fields))))
            except Exception as error:
                results[index] = self._failure(_describe_exception("unpicklable request", error))
                continue
            worker.tasks.append(index)
        if not worker.tasks:
            return
        try:
            worker.conn.send_bytes(pickle.dumps(payloads))
        except OSError:  # it died while idle (OOM killer, or a thread of the user's code exited it)
            results[worker.tasks.popleft()] = self._failure(f"worker died: {worker.exit_description()}")
            self._requeue(worker)
            self._replace(worker)
            return
        worker.deadline = time.monotonic() + self.timeout_s

    def _requeue(self, worker: _Worker) -> None:
        """The requests sent to ``worker`` that it had not started go back to the front of the queue."""
        self._pending.extendleft(reversed(worker.tasks))
        worker.tasks.clear()

    def _wait_and_collect(self, results: list[RewardResult | None]) -> None:
        """Wait until a waited-on worker has news or a deadline passes, then handle every such worker."""
        waiting = [worker for worker in self._workers if worker.waiting]
        if not waiting:
            return
        timeout = max(0.0, min(worker.deadline for worker in waiting) - time.monotonic())
        if any(worker.sentinel is None for worker in waiting):
            timeout = min(timeout, _EXIT_POLL_S)
        handles = [w.conn for w in waiting] + [w.sentinel for w in waiting if w.sentinel is not None]
        ready = set(wait(handles, timeout=timeout))
        now = time.monotonic()
        for worker in waiting:
            if worker.conn in ready or worker.exited(ready):
                self._receive(worker, results)
                while worker.tasks and worker.ready and worker.conn.poll():  # the rest of its answers so far
                    self._receive(worker, results)
            elif now >= worker.deadline:
                self._expire(worker, results)

    def _receive(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        try:
            if not worker.conn.poll():  # it exited, and everything it sent before has been read
                raise EOFError
            kind, body = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._worker_died(worker, results)
            return
        except Exception as error:  # the parent cannot unpickle the extras (e.g. a class it cannot import)
            results[worker.tasks.popleft()] = self._failure(_describe_exception("unpicklable extras", error))
            worker.deadline = time.monotonic() + self.timeout_s  # the next call's
            return
        if kind == "ready":
            worker.ready = True
        elif kind == "sandbox":
            self.close()
            raise sandbox.SandboxError(f"a reward worker could not restrict itself as the pool asks: {body}")
        elif kind == "failed":
            self.close()
            raise RuntimeError(
                f"a reward worker could not load the function that this process did load: {body}. "
                "The module must import the same way in a fresh interpreter"
            )
        else:
            score, extras, error = body
            results[worker.tasks.popleft()] = (
                self._failure(error) if error is not None else RewardResult(score=score, extras=extras)
            )
            worker.deadline = time.monotonic() + self.timeout_s  # the next call's
            if error is not None and error.startswith("memory limit"):
                self._requeue(worker)
                self._replace(worker)  # what ran out of memory may have left it broken

    def _worker_died(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        worker.kill()
        exit_description = worker.exit_description()
        if not worker.ready:
            self.close()
            raise RuntimeError(
                f"a reward worker for {self.function!r} exited while starting ({exit_description}); "
                "its traceback is on stderr. The module must import cleanly in a fresh interpreter"
            )
        if worker.tasks:
            cpu_s = self.limits.cpu_s
            if worker.process.returncode == -signal.SIGXCPU and cpu_s is not None:
                error = f"cpu limit: the call used more than {cpu_s} CPU seconds (reward.limits.cpu_s; SIGXCPU)"
            else:
                error = f"worker died: {exit_description}"
            results[worker.tasks.popleft()] = self._failure(error)
            self._requeue(worker)
        self._replace(worker)

    def _expire(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        if not worker.ready:
            self.close()
            raise RuntimeError(
                f"a reward worker for {self.function!r} did not start within {WORKER_STARTUP_TIMEOUT_S}s"
            )
        results[worker.tasks.popleft()] = self._failure(f"timeout after {self.timeout_s}s")
        self._requeue(worker)
        self._replace(worker)
