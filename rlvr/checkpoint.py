"""Checkpoints: ``checkpoints/step_N/`` holds the model in Hugging Face format (loadable by transformers
and vLLM), the tokenizer, the optimizer and scheduler, the algorithm's state, the data position and
``trainer_state.json``.

A checkpoint is written under a temporary name and renamed when complete, so a crash (even SIGKILL)
never leaves a half-written directory that :func:`latest` would pick. Randomness needs no saved state:
every step's sampling seed is derived from ``(trainer.seed, step)``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_STEP_DIR = re.compile(r"step_(\d+)")
_RECIPE_FILE = re.compile(r"config\.step_(\d+)\.yaml")
STATE_FILE = "trainer_state.json"
RECIPE_FILE = "config.yaml"

# errno -> what it means for a checkpoint write.
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EFBIG: "a file grew past the size limit", errno.EIO: "an I/O error"}
_WRITE_ERROR_TEXT = {os.strerror(code): meaning for code, meaning in _WRITE_ERRORS.items()}
LOW_SPACE_BYTES = 1 << 20  # a write that fails with less than this free failed for want of space


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message names the path, the cause and the free space."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_path(run_dir: Path, step: int) -> Path:
    """Where step ``step`` is written before the rename."""
    return checkpoint_dir(run_dir) / f".step_{step}.tmp"


def staging_dir(run_dir: Path, step: int) -> Path:
    """:func:`staging_path`, made empty (a crash may have left it behind)."""
    path = staging_path(run_dir, step)
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


def write_error(run_dir: Path, step: int, staging: Path, error: BaseException) -> CheckpointError:
    """The error to raise when writing checkpoint ``step`` into ``staging`` failed with ``error``: the partial
    directory removed, one message naming the path, the cause (disk full, read-only, ...), the free space and the
    checkpoint a ``--resume`` continues from."""
    try:
        free = shutil.disk_usage(staging if staging.exists() else run_dir).free
    except OSError:
        free = None
    cause = _write_cause(error)
    if cause is None and free is not None and free < LOW_SPACE_BYTES:
        cause = _WRITE_ERRORS[errno.ENOSPC]  # torch's zip writer says only "unexpected pos"
    shutil.rmtree(staging, ignore_errors=True)
    last = latest(run_dir)
    space = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
    return CheckpointError(
        f"could not write the checkpoint of step {step} to {staging.parent}: "
        f"{cause or _short(error)}{space}. The partial checkpoint was removed; "
        + (f"the last complete one is {last.name}: after fixing this, run the same command with --resume to "
           f"continue from step {read_state(last)['step']} exactly" if last else "no checkpoint was completed"))


def _write_cause(error: BaseException) -> str | None:
    """What an OS error somewhere in ``error``'s chain (Ray's task errors included) says about the write."""
    seen, stack = set(), [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ERRORS:
            return _WRITE_ERRORS[current.errno]
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    text = str(error)
    return next((meaning for message, meaning in _WRITE_ERROR_TEXT.items() if message in text), None)


def _short(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


# -- the recipes a run was trained with --------------------------------------------------------------------------
def recipe_files(run_dir: Path) -> dict[int, Path]:
    """``config.yaml`` (as step 0) and every ``config.step_N.yaml``: the recipe a run used from step N+1 on."""
    found = {0: run_dir / RECIPE_FILE} if (run_dir / RECIPE_FILE).exists() else {}
    if run_dir.exists():
        for path in run_dir.iterdir():
            match = _RECIPE_FILE.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def recipe_in_effect(run_dir: Path, step: int) -> Path | None:
    """The recipe file that trained step ``step`` (and the ones before it, back to the previous change)."""
    earlier = [path for start, path in recipe_files(run_dir).items() if start < step]
    return earlier[-1] if earlier else None


def record_recipe(run_dir: Path, text: str, resumed_at: int | None, changed: bool) -> None:
    """Keep the recipe a run goes on with: a new run's as ``config.yaml`` (dropping any left by an earlier start);
    a resume at step N that changed it as ``config.step_N.yaml``. Files from step N on describe steps the resume
    replays, and are removed first."""
    for start, path in recipe_files(run_dir).items():
        if start > 0 and (resumed_at is None or start >= resumed_at):
            path.unlink()
    if resumed_at is None:
        (run_dir / RECIPE_FILE).write_text(text)
    elif changed:
        (run_dir / f"config.step_{resumed_at}.yaml").write_text(text)
