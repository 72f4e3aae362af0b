"""Scaf-GRPO versus GRPO on a hard split of the tiny task: problems the warm-started model never solves.

1. Sample ``--samples`` responses (T=1) from the warm-started tiny model for each of the first ``--pool``
   problems of ``tiny:train``; the problems with no correct sample form the hard split. Its first
   ``--hard-train`` problems are trained on; the rest (up to ``--hard-eval``) are held out.
2. Train ``recipes/tiny/grpo.yaml`` and ``recipes/tiny/scaf_grpo.yaml`` on the hard training problems with
   the same seeds (``--seeds``) and number of steps.
3. Score each final checkpoint (and the initial model) on both parts of the hard split: the mean accuracy
   of ``--eval-samples`` samples per problem at T=1, and greedy accuracy; means over the seeds.

Prints a Markdown table and writes JSON (``--json``).

    python scripts/bench_scaf.py --work /tmp/scaf --json bench_scaf.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sample_accuracy(model_dir: Path, problems: list[tuple[str, str]], samples: int, temperature: float,
                    seed: int, max_new_tokens: int) -> list[float]:
    """Per problem, the fraction of ``samples`` responses graded correct."""
    from rlvr.models.loading import load_model, load_tokenizer
    from rlvr.rewards.grading import grade
    from rlvr.rollout.engine import SamplingParams
    from rlvr.rollout.hf import HFEngine

    tokenizer = load_tokenizer(model_dir)
    engine = HFEngine(load_model(model_dir, "float32"), tokenizer, batch_size=1024)
    requests = [tokenizer(problem, add_special_tokens=False).input_ids
                for problem, _ in problems for _ in range(samples)]
    completions = engine.generate(requests, SamplingParams(max_new_tokens, temperature, seed=seed, logprobs=False))
    return [sum(grade(c.text, answer) for c in completions[i * samples : (i + 1) * samples]) / samples
            for i, (_, answer) in enumerate(problems)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def screen_hard_split(base: Path, args, work: Path, max_new_tokens: int) -> dict[str, list]:
    """The problems of the pool with no correct sample in ``args.samples``, split into trained and held out."""
    from rlvr.data.tasks import arithmetic

    started = time.perf_counter()
    hard = arithmetic.problems("train", args.pool, seed=args.seed)
    # In rounds of at most 8 samples, each round on the problems still unsolved: the same split as
    # ``--samples`` samples of every problem, for a fraction of the cost.
    done = 0
    while done < args.samples:
        k = min(8, args.samples - done)
        screen = sample_accuracy(base, [(p.problem, p.answer) for p in hard], k, 1.0, 1 + done, max_new_tokens)
        hard = [p for p, accuracy in zip(hard, screen) if accuracy == 0.0]
        done += k
    if len(hard) < args.hard_train + 16:
        raise SystemExit(f"only {len(hard)} hard problems in a pool of {args.pool}; raise --pool")
    splits = {"hard_train": hard[: args.hard_train],
              "hard_eval": hard[args.hard_train : args.hard_train + args.hard_eval]}
    for name, rows in splits.items():
        write_jsonl(work / f"{name}.jsonl", [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in rows])
    print(f"hard split: {len(hard)} of {args.pool} problems with 0/{args.samples} correct "
          f"({time.perf_counter() - started:.0f} s); training on {len(splits['hard_train'])}, "
          f"holding out {len(splits['hard_eval'])}", flush=True)
    return splits


def train_and_score(name: str, seed: int, work: Path, steps: int, score) -> dict:
    """Train ``recipes/tiny/<name>.yaml`` on the hard training problems; score its last checkpoint."""
    import rlvr
    from rlvr import checkpoint

    run_dir = work / f"{name}-seed{seed}"
    overrides = [f"data.train={work / 'hard_train.jsonl'}", f"data.heldout={work / 'hard_eval.jsonl'}",
                 f"trainer.output_dir={run_dir}", f"trainer.total_steps={steps}", f"trainer.save_every={steps}",
                 "trainer.progress=false", f"trainer.seed={seed}"]
    started = time.perf_counter()
    rlvr.train(str(REPO / "recipes/tiny" / f"{name}.yaml"), overrides)
    result = {"wall_s": time.perf_counter() - started, **score(checkpoint.latest(run_dir))}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [row for row in rows if row["step"] > 0]
    result["train_accuracy_last10"] = statistics.mean(row["reward/accuracy"] for row in steps_rows[-10:])
    result["nonzero_adv_frac"] = statistics.mean(row["adv/nonzero_frac"] for row in steps_rows)
    hinted = [row for row in steps_rows if row.get("scaf/exempt") == 0.0]
    if hinted:
        fails = sum(row["scaf/all_fail_groups"] for row in hinted)
        result["scaf/all_fail_groups"] = float(fails)
        result["scaf/rescued_groups"] = float(sum(row["scaf/rescued_groups"] for row in hinted))
        result["scaf/rescued_frac"] = result["scaf/rescued_groups"] / max(fails, 1)
        result["scaf/hint_samples"] = float(sum(row["scaf/hint_samples"] for row in hinted))
        result["scaf/levels"] = {key.split("/")[-1]: sum(row[key] for row in hinted)
                                 for key in hinted[0] if key.startswith("scaf/level/")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=6144, help="tiny:train problems screened for the hard split")
    parser.add_argument("--samples", type=int, default=24, help="screening samples per problem (hard: none correct)")
    parser.add_argument("--hard-train", type=int, default=192, help="hard problems trained on")
    parser.add_argument("--hard-eval", type=int, default=256, help="hard problems held out (at most)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=16, help="samples per problem when scoring checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="screening seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (same for both)")
    parser.add_argument("--json", default="bench_scaf.json")
    parser.add_argument("--reuse-split", action="store_true", help="use the hard split already in --work")
    parser.add_argument("--work", default=None, help="data and run directories go here (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from rlvr.data.tasks import arithmetic
    from rlvr.models.tiny import ensure_tiny_model

    torch.set_num_threads(2)
    work = Path(args.work or tempfile.mkdtemp(prefix="rlvr-scaf-"))
    work.mkdir(parents=True, exist_ok=True)
    base = ensure_tiny_model()
    max_new_tokens = 8  # the tiny recipes' rollout.max_new_tokens

    if args.reuse_split and (work / "hard_train.jsonl").exists():
        splits = {name: [arithmetic.Problem(r["id"], r["problem"], r["answer"])
                         for r in map(json.loads, (work / f"{name}.jsonl").read_text().splitlines())]
                  for name in ("hard_train", "hard_eval")}
        print(f"reusing the hard split in {work}", flush=True)
    else:
        splits = screen_hard_split(base, args, work, max_new_tokens)

    def score(model_dir: Path) -> dict[str, float]:
        out = {}
        for name, rows in splits.items():
            problems = [(p.problem, p.answer) for p in rows]
            out[f"{name}/accuracy"] = statistics.mean(
                sample_accuracy(model_dir, problems, args.eval_samples, 1.0, 2, max_new_tokens))
            out[f"{name}/accuracy_greedy"] = statistics.mean(
                sample_accuracy(model_dir, problems, 1, 0.0, 2, max_new_tokens))
        sizes = {name: len(rows) for name, rows in splits.items()}
        for metric in ("accuracy", "accuracy_greedy"):  # the whole hard split, trained and held-out parts
            out[f"hard_all/{metric}"] = sum(out[f"{name}/{metric}"] * k for name, k in sizes.items()) / sum(
                sizes.values())
        return out

    results = {"initial": score(base)}
    for name in ("grpo", "scaf_grpo"):
        per_seed = []
        for seed in args.seeds:
            per_seed.append(train_and_score(name, seed, work, args.steps, score))
            print(json.dumps({name: {"seed": seed, **per_seed[-1]}}), flush=True)
        results[name] = {key: statistics.mean(r[key] for r in per_seed)
                         for key in per_seed[0] if isinstance(per_seed[0][key], float)}
        results[name]["per_seed"] = per_seed
        if "scaf/levels" in per_seed[0]:
            results[name]["scaf/levels"] = {level: sum(r["scaf/levels"][level] for r in per_seed)
                                            for level in per_seed[0]["scaf/levels"]}

    print(f"\nhard split of the tiny task: trained on {len(splits['hard_train'])} problems, "
          f"{len(splits['hard_eval'])} held out; {args.steps} steps; means over training seeds {args.seeds}\n")
    print("| model | hard train T=1 | hard train greedy | hard held-out T=1 | hard held-out greedy | "
          "whole hard split T=1 | greedy | rescued / all-fail groups | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rescued = (f"{r['scaf/rescued_groups']:.0f} / {r['scaf/all_fail_groups']:.0f} "
                   f"({r['scaf/rescued_frac']:.1%})" if "scaf/rescued_frac" in r else "-")
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        print(f"| {name} | {r['hard_train/accuracy']:.1%} | {r['hard_train/accuracy_greedy']:.1%} | "
              f"{r['hard_eval/accuracy']:.1%} | {r['hard_eval/accuracy_greedy']:.1%} | "
              f"{r['hard_all/accuracy']:.1%} | {r['hard_all/accuracy_greedy']:.1%} | {rescued} | {wall} |")
    for key in ("hard_train/accuracy", "hard_eval/accuracy",
                "hard_train/accuracy_greedy", "hard_eval/accuracy_greedy"):
        print(f"\nper seed, {key}: " + "; ".join(
            f"{name} " + " ".join(f"{r[key]:.1%}" for r in results[name]["per_seed"]) for name in ("grpo", "scaf_grpo")))
    if "scaf/levels" in results.get("scaf_grpo", {}):
        print("\nrescues per hint level:", results["scaf_grpo"]["scaf/levels"])
    Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
