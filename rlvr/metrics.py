"""Per-step metrics: phase timers, ``metrics.jsonl`` in the run directory, and the live progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PHASES = ("generate", "reward", "old_logprob", "ref", "update", "sync")


class PhaseTimer:
    """``with timer("generate"): ...`` -> ``time/generate`` seconds; every phase of DESIGN.md is present."""

    def __init__(self) -> None:
        self.seconds = {phase: 0.0 for phase in PHASES}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def add(self, seconds: dict[str, float], out_of: str | None = None) -> None:
        """Phases timed elsewhere (a learner's passes inside one call), moved ``out_of`` the phase that timed the
        whole call."""
        for phase, value in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + value
            if out_of is not None:
                self.seconds[out_of] -= value

    def metrics(self) -> dict[str, float]:
        out = {f"time/{phase}": seconds for phase, seconds in self.seconds.items()}
        out["time/step"] = time.perf_counter() - self.started
        return out


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, one line per step (step 0: before training)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                break
        return rows

    def keep_until(self, step: int) -> None:
        """Drop rows after ``step`` (a resumed run recomputes them)."""
        kept = [row for row in self.rows() if row["step"] <= step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def append(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


class ProgressBar:
    """Step, reward, accuracy and step time, live on stderr (tqdm)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                        file=sys.stderr, desc="rlvr train")

    def update(self, row: dict[str, Any]) -> None:
        self.bar.set_postfix(
            reward=f"{row.get('reward/mean', 0):.3f}",
            acc=f"{row.get('reward/accuracy', 0):.3f}",
            step_s=f"{row.get('time/step', 0):.2f}",
            refresh=False,
        )
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
