"""Time the tiny recipe end to end, per rollout engine and placement: model build, held-out accuracy before and
after, and the median time of every phase of a step. Prints a table and writes JSON.

    python scripts/bench_tiny_train.py                       # HF engine, both placements, the recipe's 200 steps
    python scripts/bench_tiny_train.py --engines hf,vllm     # vLLM (its CPU build here) beside the HF engine
    python scripts/bench_tiny_train.py --steps 50 --modes colocated --fresh-cache

``--fresh-cache`` starts from an empty cache (the "nothing cached" case): the default tiny model is copied from the
package (``rlvr/models/tiny_model``), a changed ``TinySpec`` is built; the time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("generate", "reward", "old_logprob", "ref", "update", "sync", "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes/tiny/grpo.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's trainer.total_steps")
    parser.add_argument("--modes", default="colocated,split")
    parser.add_argument("--engines", default="hf", help="rollout.engine values, comma-separated: hf, vllm")
    parser.add_argument("--fresh-cache", action="store_true")
    parser.add_argument("--json", default="bench_tiny_train.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlvr-bench-"))
    results: dict[str, dict] = {}
    if args.fresh_cache:
        os.environ["RLVR_CACHE_DIR"] = str(work / "cache")
    from rlvr.models.tiny import ensure_tiny_model

    started = time.perf_counter()
    ensure_tiny_model()
    build_s = time.perf_counter() - started

    import rlvr

    runs = [(engine, mode) for engine in args.engines.split(",") for mode in args.modes.split(",")]
    for engine, mode in runs:
        name = f"{engine}/{mode}"
        overrides = [f"rollout.engine={engine}", f"placement.mode={mode}", f"trainer.output_dir={work / name}",
                     "trainer.progress=false"]
        if args.steps:
            overrides.append(f"trainer.total_steps={args.steps}")
        started = time.perf_counter()
        summary = rlvr.train(args.recipe, overrides)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        steps = [row for row in rows if row["step"] > 0]
        results[name] = {
            "wall_s": wall,
            "steps": len(steps),
            "heldout_before": summary.get("heldout_before"),
            "heldout_after": summary.get("heldout_after"),
            "heldout_greedy_before": rows[0].get("heldout/accuracy_greedy"),
            "heldout_greedy_after": rows[-1].get("heldout/accuracy_greedy"),
            # The first step includes the reward processes' start-up; medians leave it out.
            **{f"median_{p}_s": statistics.median(r[f"time/{p}"] for r in steps[1:] or steps) for p in PHASES},
            "median_tokens_per_s": statistics.median(r["throughput/tokens_per_s"] for r in steps),
            "peak_memory_bytes": max(r["memory/peak_bytes"] for r in steps),
        }

    print(f"tiny model (copy or build): {build_s:.1f}s ({'fresh cache' if args.fresh_cache else 'cached if built before'})")
    header = f"{'engine/mode':15s} {'steps':>5s} {'wall s':>7s} {'held-out':>15s} {'greedy':>15s} " + " ".join(
        f"{p:>11s}" for p in PHASES) + f" {'tok/s':>7s} {'peak MiB':>8s}"
    print(header)
    for name, r in results.items():
        print(f"{name:15s} {r['steps']:5d} {r['wall_s']:7.1f} "
              f"{r['heldout_before']:6.1%} -> {r['heldout_after']:6.1%} "
              f"{r['heldout_greedy_before']:6.1%} -> {r['heldout_greedy_after']:6.1%} "
              + " ".join(f"{r[f'median_{p}_s']:11.3f}" for p in PHASES)
              + f" {r['median_tokens_per_s']:7.0f} {r['peak_memory_bytes'] / 2**20:8.0f}")
    Path(args.json).write_text(json.dumps({"build_s": build_s, "fresh_cache": args.fresh_cache,
                                           "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
