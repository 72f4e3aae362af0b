"""Why a run stops before ``trainer.total_steps``, on purpose: the divergence and failure guards
(``trainer.guards``) and the signals a user sends.

:class:`Guards` reads each step's metrics row after the step and says whether the run should stop: a loss or
gradient norm non-finite for K steps in a row, one update multiplying the weights' norm (a learning rate far too
high), the reward failing on most calls for K steps, held-out accuracy or the reward collapsing against the run's
start. It reads the run's earlier rows too, so that a resumed run goes on with the same streaks. The trainer then
stops with :class:`Diverged` (exit code 3) before it saves that step: the last checkpoint on disk is the last
good one.

:class:`Signals` turns the first SIGINT / SIGTERM into a request that the loop honours after the current step
(:class:`Interrupted`, exit code 130 / 143) and the second into an immediate stop.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from typing import Any

from rlvr.config import GuardsConfig

log = logging.getLogger("rlvr")


class RunStopped(Exception):
    """The run stopped before its last step on purpose; the CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class Diverged(RunStopped):
    exit_code = 3


class Interrupted(RunStopped):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def update_failed(row: dict[str, Any]) -> bool:
    """Whether the step's update was skipped for a non-finite loss or gradient (or left non-finite weights)."""
    if "actor/skipped_steps" not in row:  # no update ran (no signal): neither good nor bad
        return False
    return bool(row["actor/skipped_steps"]) or not _finite(row.get("actor/weight_norm", 0.0))


def runaway(row: dict[str, Any], cfg: GuardsConfig) -> str | None:
    """Why the weights after this step are broken, or None: not finite, or one update grew their norm past
    ``cfg.max_weight_growth``."""
    if "actor/skipped_steps" not in row:
        return None
    if not _finite(row.get("actor/weight_norm", 0.0)):
        return "its weights are not finite"
    growth = row.get("actor/weight_growth")
    if cfg.max_weight_growth is not None and _finite(growth) and growth > cfg.max_weight_growth:
        return f"its update multiplied the weights' norm by {growth:.3g}"
    return None


def unsafe_weights(row: dict[str, Any], cfg: GuardsConfig) -> str | None:
    """Why the weights after this step must not be saved, or None: :func:`runaway`, or produced by a skipped
    update only."""
    if "actor/skipped_steps" in row and row["actor/skipped_steps"]:
        return runaway(row, cfg) or "its update was skipped (non-finite loss or gradient)"
    return runaway(row, cfg)


def _streak(rows: list[dict[str, Any]], counts) -> int:
    """How many of the last ``rows`` in a row ``counts`` (True); a row it says None of is passed over."""
    streak = 0
    for row in reversed(rows):
        verdict = counts(row)
        if verdict is None:
            continue
        if not verdict:
            break
        streak += 1
    return streak


class Guards:
    """``trainer.guards`` over a run's metrics rows: :meth:`check` each new row; ``history`` are the rows the run
    already has (step 0 and, after a resume, the steps before it)."""

    def __init__(self, cfg: GuardsConfig, history: list[dict[str, Any]] = ()):
        self.cfg = cfg
        self.rows = [dict(row) for row in history]
        self.warned: set[str] = set()

    def check(self, row: dict[str, Any]) -> str | None:
        """Why the run should stop after ``row``'s step, or None. With ``enabled: false`` each kind of reason is
        logged once as a warning and None is returned."""
        self.rows.append(dict(row))
        for kind, reason in self._reasons(row):
            if self.cfg.enabled:
                return reason
            if kind not in self.warned:
                self.warned.add(kind)
                log.warning("%s (trainer.guards.enabled is false: the run goes on)", reason)
        return None

    def _reasons(self, row: dict[str, Any]):
        cfg, step = self.cfg, row["step"]
        trained = [r for r in self.rows if r.get("step", 0) > 0]
        # A step without an update (no signal) neither breaks nor extends the streak of failed updates.
        failed = _streak(trained, lambda r: update_failed(r) if "actor/skipped_steps" in r else None)
        if failed >= cfg.nonfinite_steps:
            yield "nonfinite", (f"step {step}: the loss or gradient norm was non-finite in {failed} steps in a row, so "
                                "their updates were skipped; the run has diverged (a learning rate too high? "
                                "learner.lr is the usual cause; trainer.guards.nonfinite_steps sets the count)")
        weights = runaway(row, cfg)
        if weights:
            yield "weights", (f"step {step}: {weights} in one step (learner.lr too high?); such weights are not "
                              "saved (trainer.guards.max_weight_growth sets the limit)")
        if cfg.reward_error_frac is not None:
            streak = _streak(trained, lambda r: (r.get("reward/errors", 0) / r["rollout/num_sampled"]
                                                 > cfg.reward_error_frac) if r.get("rollout/num_sampled") else False)
            if streak >= cfg.reward_error_steps:
                yield "reward_errors", (
                    f"step {step}: more than {cfg.reward_error_frac:.0%} of the reward calls failed in each of the "
                    f"last {streak} steps ({row.get('reward/errors')} of {row.get('rollout/num_sampled')} this step): "
                    "the reward function is broken or too slow for reward.timeout_s; see the reward errors above "
                    "(trainer.guards.reward_error_frac / reward_error_steps set the limit)")
        if cfg.collapse_frac is not None:
            yield from self._collapse(row, trained)

    def _collapse(self, row: dict[str, Any], trained: list[dict[str, Any]]):
        cfg, step, k = self.cfg, row["step"], self.cfg.collapse_steps
        rewards = [r["reward/mean"] for r in trained if _finite(r.get("reward/mean"))]
        if len(rewards) >= 2 * k:
            start, recent = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
            if start > 0 and recent < cfg.collapse_frac * start:
                yield "reward_collapse", (
                    f"step {step}: the mean reward of the last {k} steps ({recent:.3g}) fell below "
                    f"{cfg.collapse_frac:g} x its mean over the first {k} ({start:.3g}); the policy has collapsed "
                    "(trainer.guards.collapse_frac sets the limit)")
        heldout = [r["heldout/accuracy"] for r in self.rows if _finite(r.get("heldout/accuracy"))]
        if len(heldout) >= 2 and "heldout/accuracy" in row and heldout[0] > 0:
            if heldout[-1] < cfg.collapse_frac * heldout[0]:
                yield "heldout_collapse", (
                    f"step {step}: held-out accuracy fell to {heldout[-1]:.1%} from {heldout[0]:.1%} at the start "
                    "of the run; the policy has collapsed (trainer.guards.collapse_frac sets the limit)")


class Signals:
    """Within the ``with`` block, the first SIGINT or SIGTERM is remembered (:attr:`received`) for the loop to
    honour after the current step; a second one raises ``KeyboardInterrupt`` at once. Outside the main thread
    (a notebook's worker thread) nothing is installed."""

    NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if self.enabled:
            for signum in self.NAMES:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s: stopping after the current step, with a checkpoint; press Ctrl-C again to stop at once",
                    self.NAMES.get(signum, f"signal {signum}"))
