"""Time from ``rlvr train`` to the first training step's start, with a warm cache: the command's interpreter start,
imports, recipe and data checks, the reward processes, the private Ray instance and the actors (model load), and the
step-0 held-out measurement where the recipe has one. Prints a table and writes JSON.

    python scripts/bench_startup.py                                  # recipes/tiny/grpo.yaml, 5 runs
    python scripts/bench_startup.py --runs 5 recipes/tiny/grpo.yaml placement.mode=split

Each run is ``python -m rlvr.cli train RECIPE ...`` in a child process (as a user types it, through the CLI) whose
``Trainer.train_step`` prints the wall-clock time when step 1 starts; the clock starts just before the child is
launched. Runs alternate between the recipe as it is and the recipe without its held-out set (``data.heldout=null``),
so that both columns see the same conditions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
import rlvr.trainer as trainer

train_step = trainer.Trainer.train_step

def first(self, step):
    if step == 1:
        print("FIRST_STEP", time.time(), flush=True)
        raise SystemExit(0)
    return train_step(self, step)

trainer.Trainer.train_step = first
from rlvr.cli import main
sys.argv = ["rlvr", "train", *sys.argv[1:]]
main()
"""


def one_run(recipe: str, overrides: list[str], work: Path) -> float:
    out = tempfile.mkdtemp(dir=work)
    started = time.time()
    result = subprocess.run([sys.executable, "-c", CHILD, recipe, *overrides, f"trainer.output_dir={out}",
                             "trainer.progress=false"], capture_output=True, text=True, timeout=600)
    marks = [line for line in result.stdout.splitlines() if line.startswith("FIRST_STEP")]
    if not marks:
        raise RuntimeError(f"the run did not reach step 1:\n{result.stderr[-3000:]}")
    return float(marks[0].split()[1]) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(REPO / "recipes/tiny/grpo.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default="bench_startup.json")
    args = parser.parse_args()

    from rlvr.models.tiny import ensure_tiny_model

    ensure_tiny_model()  # a warm cache
    times: dict[str, list[float]] = {"with held-out": [], "no held-out": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.runs):
            times["with held-out"].append(one_run(args.recipe, args.overrides, Path(work)))
            times["no held-out"].append(one_run(args.recipe, [*args.overrides, "data.heldout=null"], Path(work)))
    print(f"{'':15s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  runs")
    for name, values in times.items():
        print(f"{name:15s} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}  "
              + " ".join(f"{v:.2f}" for v in values))
    result = {"recipe": args.recipe, "overrides": args.overrides,
              "median_s_with_heldout": statistics.median(times["with held-out"]),
              "median_s_no_heldout": statistics.median(times["no held-out"]), "runs_s": times}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
