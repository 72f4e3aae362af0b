"""Train every ``recipes/tiny/<algorithm>.yaml`` on the CPU and tabulate what each one learned.

Per algorithm: steps, held-out accuracy before and after (one sample at T=1, and greedy), wall time
(A*-PO: stage 1 and stage 2 separately), the mean non-zero-advantage fraction over the steps and the
algorithm's own statistics (clip fractions, masked-token fraction, CAPO rejection rate, COPO blend
weight, DCPO bounds). Prints a Markdown table and writes JSON.

    python scripts/bench_algorithms.py                          # every tiny recipe, as written
    python scripts/bench_algorithms.py --only dcpo,capo --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("actor/clip_frac_low", "actor/clip_frac_high", "actor/masked_token_frac", "capo/rejection_rate",
         "copo/weight_mean", "dcpo/bound_low_mean", "dcpo/bound_high_mean", "dynamic_sampling/gen_batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all in recipes/tiny)")
    parser.add_argument("--steps", type=int, default=None, help="default: each recipe's trainer.total_steps")
    parser.add_argument("--json", default="bench_algorithms.json")
    parser.add_argument("--work", default=None, help="run directories go here (default: a temporary directory)")
    args = parser.parse_args()

    import rlvr
    from rlvr.config import load_recipe
    from rlvr.prepare import prepare

    work = Path(args.work or tempfile.mkdtemp(prefix="rlvr-algos-"))
    names = args.only.split(",") if args.only else sorted(p.stem for p in (REPO / "recipes/tiny").glob("*.yaml"))
    results = {}
    for name in names:
        recipe_path = REPO / "recipes/tiny" / f"{name}.yaml"
        overrides = [f"trainer.output_dir={work / name}", "trainer.progress=false"]
        if args.steps:
            overrides.append(f"trainer.total_steps={args.steps}")
        result: dict = {}
        if load_recipe(recipe_path).algorithm.name == "astar":
            overrides.append(f"algorithm.values_path={work / name}-values.jsonl")
            started = time.perf_counter()
            prepare("astar", load_recipe(recipe_path, overrides))
            result["stage1_s"] = time.perf_counter() - started
        started = time.perf_counter()
        summary = rlvr.train(str(recipe_path), overrides)
        result["wall_s"] = time.perf_counter() - started
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        steps = [row for row in rows if row["step"] > 0]
        result.update({
            "algorithm": load_recipe(recipe_path).algorithm.name,
            "steps": len(steps),
            "heldout_before": summary.get("heldout_before"),
            "heldout_after": summary.get("heldout_after"),
            "heldout_greedy_before": rows[0].get("heldout/accuracy_greedy"),
            "heldout_greedy_after": rows[-1].get("heldout/accuracy_greedy"),
            "nonzero_adv_frac": statistics.mean(row["adv/nonzero_frac"] for row in steps if "adv/nonzero_frac" in row),
            "median_step_s": statistics.median(row["time/step"] for row in steps),
        })
        for key in SHOWN:
            values = [row[key] for row in steps if key in row]
            if values:
                result[key] = statistics.mean(values)
        results[name] = result
        print(json.dumps({name: result}), flush=True)

    print("\n| recipe | steps | held-out T=1 before -> after | greedy before -> after | wall (s) | "
          "non-zero-adv frac | algorithm statistics (mean over steps) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        stats = ", ".join(f"{k.split('/')[-1]} {r[k]:.3f}" for k in SHOWN if k in r)
        wall = f"{r['wall_s']:.0f}" + (f" (+{r['stage1_s']:.0f} stage 1)" if "stage1_s" in r else "")
        print(f"| {name} | {r['steps']} | {r['heldout_before']:.1%} -> {r['heldout_after']:.1%} | "
              f"{r['heldout_greedy_before']:.1%} -> {r['heldout_greedy_after']:.1%} | {wall} | "
              f"{r['nonzero_adv_frac']:.3f} | {stats} |")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
