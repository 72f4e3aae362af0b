"""The math-verify check and its time bound: the one comparison that can be slow, made safe to call anywhere.

math-verify parses both cleaned answers to sympy and compares them; sympy can run for minutes on some inputs
(``2^{2^{2^{2^{2^{10}}}}}``), so each call runs under ``timeout_s``. In a process's main thread a ``SIGALRM``
interval timer interrupts it (any earlier handler and timer are put back); in any other thread it goes to
one helper process per parent process (spawned on first use, shared under a lock), which is killed and
replaced when it passes the bound or dies. A call past its bound returns False.

The helper's state (:data:`_HELPER`: its process, pipe and lock) lives here and only here. The helper is
started with ``spawn`` and runs :func:`_helper_main` by its module path, so the child imports ``rlvr`` (whose
schema loads lazily), this package (regexes and fractions) and math-verify: never torch.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable

from rlvr.rewards.grading.limits import HELPER_START_TIMEOUT_S, HELPER_WAIT_S

logger = logging.getLogger(__name__)

# After the first alarm, the SIGALRM timer fires again at this period until the call returns, in case some
# library code catches and drops the first exception.
_ALARM_REPEAT_S = 0.05


def _import_math_verify():
    """math-verify's ``parse`` and ``verify``, imported on first use (sympy: ~0.5 s integers never need)."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # Its own signal.alarm timeouts are off (they only work in the main thread and would replace ours);
    # this says the warning about that has been shown, since the bound is this module's.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify.parse, math_verify.verify


@functools.lru_cache(maxsize=1)
def _extraction_config():
    """Parse a ``\\boxed{}`` answer; math-verify's own unit stripping is off (ours ran, and its list has
    "east", "d" and "t" in it, which are answers)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    normalization = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
    )
    return (LatexExtractionConfig(boxed_match_priority=0, normalization_config=normalization), ExprExtractionConfig())


def _math_verify_equal(answer: str, gold: str) -> bool:
    """math-verify's verdict on two cleaned answers, each parsed as the content of a ``\\boxed{}``; unbounded.

    An interval gold may be answered by a relation (``allow_set_relation_comp``). Any exception inside
    math-verify counts as not equal.
    """
    parse, verify = _import_math_verify()
    try:
        config = _extraction_config()
        parsed_gold = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=None)
        parsed_answer = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None)
        if not parsed_gold or not parsed_answer:
            return False
        return bool(verify(parsed_gold, parsed_answer, allow_set_relation_comp=True, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - a comparison math-verify cannot do is "not equal"
        return False


class _DeadlinePassed(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that ``except Exception`` in libraries lets it through."""


def _signals_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_signal_deadline(compare: Callable[[], bool], timeout_s: float) -> bool:
    """``compare()`` interrupted by ``SIGALRM`` after ``timeout_s`` (then False); main thread only.

    The previous SIGALRM handler is put back afterwards, and a timer that was running is re-armed with what
    was left of it (at least a millisecond), so a caller's own alarm still fires, at most ``timeout_s`` late.
    """
    armed = [True]

    def on_alarm(signum, frame) -> None:
        if armed[0]:
            raise _DeadlinePassed

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s, _ALARM_REPEAT_S)
    started = time.monotonic()
    try:
        try:
            return compare()
        finally:
            armed[0] = False  # first, so that a late alarm cannot interrupt the clean-up below
    except _DeadlinePassed:
        logger.warning("grading took longer than %.1fs and counts as wrong", timeout_s)
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL)
        if previous_delay > 0:
            left = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _helper_main(connection) -> None:
    """The helper process: answer ``(answer, gold)`` requests with math-verify verdicts until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills this process
    _math_verify_equal("1", "1")  # imports and warms sympy before saying it is ready
    connection.send("ready")
    while True:
        try:
            answer, gold = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(_math_verify_equal(answer, gold))


class _Helper:
    """One spawned process that runs the math-verify check for threads that cannot use signals.

    Calls take turns under a lock. A call that passes its bound, or finds the process dead, kills it and
    returns False; the next call starts a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def forget(self) -> None:
        """After ``fork``: the parent's helper is not this process's to use or kill."""
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def compare(self, answer: str, gold: str, timeout_s: float) -> bool:
        """The helper's verdict, or False when it cannot be had within the waits and ``timeout_s``."""
        if not self._lock.acquire(timeout=HELPER_WAIT_S):
            logger.warning("the grading helper stayed busy for %.0fs; this comparison counts as wrong", HELPER_WAIT_S)
            return False
        try:
            if self._process is None and not self._start():
                return False
            return self._ask(answer, gold, timeout_s)
        finally:
            self._lock.release()

    def _start(self) -> bool:
        context = multiprocessing.get_context("spawn")
        connection, child_connection = context.Pipe()
        try:
            process = context.Process(target=_helper_main, args=(child_connection,), name="rlvr-grading", daemon=True)
            process.start()
        except (AssertionError, OSError) as error:  # e.g. "daemonic processes are not allowed to have children"
            logger.error("cannot start the grading helper process (%s); symbolic comparisons count as wrong", error)
            connection.close()
            return False
        finally:
            child_connection.close()
        self._process, self._connection = process, connection
        try:
            if connection.poll(HELPER_START_TIMEOUT_S) and connection.recv() == "ready":
                return True
        except (EOFError, OSError):
            pass
        logger.error("the grading helper did not start within %.0fs", HELPER_START_TIMEOUT_S)
        self._stop()
        return False

    def _ask(self, answer: str, gold: str, timeout_s: float) -> bool:
        try:
            self._connection.send((answer, gold))
            if self._connection.poll(timeout_s):
                return bool(self._connection.recv())
            logger.warning("grading took longer than %.1fs and counts as wrong; restarting its helper", timeout_s)
        except (EOFError, OSError):
            logger.warning("the grading helper died; restarting it")
        self._stop()
        return False

    def _stop(self) -> None:
        self._process.kill()
        self._process.join(timeout=5)
        self._connection.close()
        self._process = self._connection = None


_HELPER = _Helper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELPER.forget)


def bounded_math_verify_equal(answer: str, gold: str, timeout_s: float) -> bool:
    """:func:`_math_verify_equal` within ``timeout_s``: by signal in the main thread, else in the helper."""
    if _signals_usable():
        _import_math_verify()  # outside the bound: import time is not the input's fault
        return _call_with_signal_deadline(lambda: _math_verify_equal(answer, gold), timeout_s)
    return _HELPER.compare(answer, gold, timeout_s)
