"""The sandboxed reward pool: user reward functions run in separate processes, each call under a hard timeout.

A reward function is ``fn(completion: str, answer: str, **fields) -> float | dict`` (a dict carries
``score`` plus extras), named by a ``module:function`` spec or a registered name
(:mod:`rlvr.rewards.registry`). Whatever it does — raise, hang, return NaN or a string, kill its own
process — the call yields a :class:`RewardResult` with the pool's ``failure_score`` and a short ``error``,
the error is counted, and the run goes on.

How: ``num_workers`` processes started with the ``spawn`` method (the parent runs Ray and threads, which
``fork`` would copy in a broken state). Each worker imports the function once and then serves one call at
a time in its main thread, so code that relies on ``signal.alarm`` (math-verify does) works. The parent
sends each request to an idle worker over a pipe and waits on all of them with a deadline per call; a
worker past ``timeout_s`` is SIGKILLed and replaced, as is one that dies. Workers start at the first
:meth:`RewardPool.score` (or :meth:`RewardPool.start`) and are reused until :meth:`RewardPool.close`.
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
import pickle
import signal
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from typing import Any

from rlvr.rewards.registry import load_function, resolve

# A worker's start-up (interpreter, imports of the reward module) must finish within this many seconds;
# a worker that takes longer is a broken environment, not a slow reward.
WORKER_STARTUP_TIMEOUT_S = 120.0

_ERROR_MESSAGE_MAX_CHARS = 300


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
    ``"nan"``, ``"inf"``, ``"wrong type: str ..."``, ``"missing score: ..."``,
    ``"unpicklable extras: ..."``, ``"worker died: exit code 1"``.
    """

    score: float
    extras: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# --- the worker process -----------------------------------------------------------------------------

# What a worker reports for one call: (score, extras, None) on success, (None, {}, error) on failure.
_Outcome = tuple[float | None, dict[str, Any], str | None]


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _ERROR_MESSAGE_MAX_CHARS:
        return text[: _ERROR_MESSAGE_MAX_CHARS - 3] + "..."
    return text


def _describe_exception(kind: str, error: BaseException) -> str:
    message = _shorten(str(error))
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
    score = float(value)
    if math.isnan(score):
        return None, {}, "nan"
    if math.isinf(score):
        return None, {}, "inf" if score > 0 else "-inf"
    return score, extras, None


def _call(function: Callable[..., object], completion: str, answer: str, fields: dict[str, Any]) -> _Outcome:
    try:
        value = function(completion, answer, **fields)
    except BaseException as error:  # sys.exit() in user code is a failed call, not a dead worker
        return None, {}, _describe_exception("exception", error)
    return _interpret(value)


def _worker_main(conn: Connection, spec: str, parent_sys_path: list[str]) -> None:
    """A worker's whole life: import the function, report ready, serve calls until told to stop.

    Messages to the parent are pickled tuples: ``("ready", None)``, ``("failed", message)`` when the
    import fails, ``("result", outcome)`` per call. A ``None`` request, or the parent's end closing,
    ends the worker.
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # spawn already copies the parent's sys.path; restating it keeps modules the parent imported from a
    # path added at run time (a test's tmp dir, a user's script dir) importable here whatever the method.
    sys.path[:] = parent_sys_path
    try:
        function = load_function(spec)
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
        try:
            request = pickle.loads(message)
        except Exception as error:  # fields holding a class this process cannot import
            outcome: _Outcome = (None, {}, _describe_exception("unpicklable request", error))
        else:
            if request is None:
                return
            outcome = _call(function, *request)
        try:
            payload = pickle.dumps(("result", outcome))
        except Exception as error:
            payload = pickle.dumps(("result", (None, {}, _describe_exception("unpicklable extras", error))))
        conn.send_bytes(payload)


# --- the parent side --------------------------------------------------------------------------------


class _Worker:
    """One worker process, the parent's end of its pipe, and the call it is serving."""

    def __init__(self, context: SpawnContext, spec: str, name: str) -> None:
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main, args=(child_conn, spec, list(sys.path)), name=name, daemon=True
        )
        self.process.start()
        # The parent must not hold the child's end, or a dead worker would never read as EOF.
        child_conn.close()
        self.ready = False
        self.task: int | None = None  # index of the request in flight
        self.deadline = time.monotonic() + WORKER_STARTUP_TIMEOUT_S

    @property
    def waiting(self) -> bool:
        """Whether the parent is waiting on this worker: starting up, or serving a call."""
        return not self.ready or self.task is not None

    def exit_description(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "still running but its pipe is closed"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        """Ask an idle worker to exit, and kill it if it is busy or does not exit within a second."""
        if self.ready and self.task is None:
            try:
                self.conn.send_bytes(pickle.dumps(None))
                self.process.join(timeout=1.0)
            except OSError:
                pass
        self.kill()


def _stop_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class RewardPool:
    """Runs a reward function in ``num_workers`` sandboxed processes, with a hard per-call timeout.

    Use as a context manager (or call :meth:`close`)::

        with RewardPool("math_answer", num_workers=4, timeout_s=10.0) as pool:
            results = pool.score([RewardRequest(completion, answer) for completion in completions])

    ``function`` is a ``module:function`` spec or a registered name; it is imported here first, so a
    recipe naming a missing module fails before any worker starts. Failed calls (exception, timeout, NaN
    or infinite score, wrong type, unpicklable extras, dead worker) score ``failure_score`` and are counted
    in :attr:`num_errors`. One :meth:`score` at a time: the pool is not thread-safe.
    """

    def __init__(
        self,
        function: str,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        failure_score: float = 0.0,
    ) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers={num_workers!r} is not allowed; use an integer >= 1")
        if not isinstance(timeout_s, numbers.Real) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s!r} is not allowed; use a finite number of seconds > 0")
        if not isinstance(failure_score, numbers.Real) or not math.isfinite(failure_score):
            raise ValueError(f"failure_score={failure_score!r} is not allowed; use a finite number")
        self.function = resolve(function)
        load_function(self.function)  # fail here, with the import error, rather than in every worker
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self._num_errors = 0
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._spawned = 0
        self._closed = False
        # Stops the workers if the pool is garbage-collected or the interpreter exits without close().
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    @property
    def num_errors(self) -> int:
        """Failed calls since the pool was created (the ``reward/errors`` counter)."""
        return self._num_errors

    def start(self) -> None:
        """Start the worker processes now, rather than at the first :meth:`score` (returns at once)."""
        self._check_open()
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def score(self, requests: list[RewardRequest]) -> list[RewardResult]:
        """Score every request; the results come back in request order. Never raises for a failed call.

        Raises ``RuntimeError`` only when a worker cannot start at all (its import of the function fails
        or takes longer than ``WORKER_STARTUP_TIMEOUT_S``), which no later call would fix.
        """
        if not requests:
            self._check_open()
            return []
        self.start()
        results: list[RewardResult | None] = [None] * len(requests)
        pending = deque(range(len(requests)))
        while pending or any(worker.task is not None for worker in self._workers):
            for worker in self._workers:
                if pending and not worker.waiting:
                    index = pending.popleft()
                    results[index] = self._dispatch(worker, index, requests[index])
            self._wait_and_collect(results)
        return results  # type: ignore[return-value]  # every slot is filled once nothing is pending

    def close(self) -> None:
        """Stop the workers (killing any busy one). Idempotent; the pool cannot be used afterwards."""
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
        return _Worker(self._context, self.function, name=f"rlvr-reward-{self._spawned}")

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._spawn()

    def _failure(self, error: str) -> RewardResult:
        self._num_errors += 1
        return RewardResult(score=self.failure_score, extras={}, error=error)

    def _dispatch(self, worker: _Worker, index: int, request: RewardRequest) -> RewardResult | None:
        """Send one request to an idle worker; a result now only when it cannot be sent."""
        try:
            payload = pickle.dumps((request.completion, request.answer, dict(request.fields)))
        except Exception as error:
            return self._failure(_describe_exception("unpicklable request", error))
        try:
            worker.conn.send_bytes(payload)
        except OSError:  # it died while idle (OOM killer, or a thread of the user's code exited it)
            died = f"worker died: {worker.exit_description()}"
            self._replace(worker)
            return self._failure(died)
        worker.task = index
        worker.deadline = time.monotonic() + self.timeout_s
        return None

    def _wait_and_collect(self, results: list[RewardResult | None]) -> None:
        """Wait until a waited-on worker has news or a deadline passes, then handle every such worker."""
        waiting = [worker for worker in self._workers if worker.waiting]
        if not waiting:
            return
        timeout = max(0.0, min(worker.deadline for worker in waiting) - time.monotonic())
        ready = set(wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting], timeout=timeout))
        now = time.monotonic()
        for worker in waiting:
            if worker.conn in ready or worker.process.sentinel in ready:
                self._receive(worker, results)
            elif now >= worker.deadline:
                self._expire(worker, results)

    def _receive(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        try:
            if not worker.conn.poll():
                # Only the sentinel fired: the process exited. Its end of the pipe may close a moment
                # after the sentinel does, so reap it before deciding that there is nothing to read.
                worker.process.join(timeout=1.0)
                if not worker.conn.poll():
                    raise EOFError
            kind, body = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._worker_died(worker, results)
            return
        except Exception as error:  # the parent cannot unpickle the extras (e.g. a class it cannot import)
            results[worker.task] = self._failure(_describe_exception("unpicklable extras", error))
            worker.task = None
            return
        if kind == "ready":
            worker.ready = True
        elif kind == "failed":
            self.close()
            raise RuntimeError(
                f"a reward worker could not load the function that this process did load: {body}. "
                "The module must import the same way in a fresh interpreter"
            )
        else:
            score, extras, error = body
            results[worker.task] = (
                self._failure(error) if error is not None else RewardResult(score=score, extras=extras)
            )
            worker.task = None

    def _worker_died(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        exit_description = worker.exit_description()
        if not worker.ready:
            self.close()
            raise RuntimeError(
                f"a reward worker for {self.function!r} exited while starting ({exit_description}); "
                "its traceback is on stderr. The module must import cleanly in a fresh interpreter"
            )
        died = f"worker died: {exit_description}"
        if worker.task is not None:
            results[worker.task] = self._failure(died)
        self._replace(worker)

    def _expire(self, worker: _Worker, results: list[RewardResult | None]) -> None:
        if not worker.ready:
            self.close()
            raise RuntimeError(
                f"a reward worker for {self.function!r} did not start within {WORKER_STARTUP_TIMEOUT_S}s"
            )
        results[worker.task] = self._failure(f"timeout after {self.timeout_s}s")  # type: ignore[index]
        self._replace(worker)
