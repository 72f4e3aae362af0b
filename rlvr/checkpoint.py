"""Checkpoints: ``checkpoints/step_N/`` holds the model in Hugging Face format (loadable by transformers
and vLLM), the tokenizer, the optimizer and scheduler, the algorithm's state, the data position and
``trainer_state.json``.

A checkpoint is written under a temporary name and renamed when complete, so a crash (even SIGKILL)
never leaves a half-written directory that :func:`latest` would pick. Randomness needs no saved state:
every step's sampling seed is derived from ``(trainer.seed, step)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_STEP_DIR = re.compile(r"step_(\d+)")
STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where step ``step`` is written before the rename; removed first if a crash left it behind."""
    path = checkpoint_dir(run_dir) / f".step_{step}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(run_dir: Path, step: int, staging: Path, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write the trainer state into ``staging``, fsync it, and rename it to ``step_<step>``."""
    with open(staging / STATE_FILE, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    final = checkpoint_dir(run_dir) / f"step_{step}"
    if final.exists():  # re-saving a step (after a resume) replaces it
        shutil.rmtree(final)
    os.replace(staging, final)
    if keep:
        for old in completed(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def completed(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.exists():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and (path / STATE_FILE).exists():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest(run_dir: Path) -> Path | None:
    done = completed(run_dir)
    return done[-1] if done else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())
