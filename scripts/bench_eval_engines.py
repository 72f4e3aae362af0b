"""``rlvr eval`` through each rollout engine on the same problems: accuracy, greedy agreement and speed, side by
side. Each engine runs in a process of its own, so neither inherits the other's memory or threads; prints a table
and writes JSON.

    python scripts/bench_eval_engines.py --model smollm2-135m-instruct --data-dir ../shared/data \\
        --benchmarks gsm8k,math500 --limit 50 --max-new-tokens 256 --template chat

Greedy only (one response per problem): the accuracies of two correct engines differ only where float
differences flip a near-tie, so they should agree to about a problem. ``generate tok/s`` counts the tokens of
the responses over the time spent inside the engine's generate calls (model load, vLLM's first-call compile
and grading excluded); ``wall s`` is the whole evaluation including the model load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One engine: load it, evaluate greedily, write timings and the greedy responses as JSON."""
    from rlvr.eval.benchmarks import load_benchmarks
    from rlvr.cli import add_eval_arguments
    from rlvr.eval.command import _load_engine
    from rlvr.eval.runner import EvalSettings, evaluate, read_samples

    out = Path(args.worker_output)
    started = time.perf_counter()
    eval_parser = argparse.ArgumentParser()
    add_eval_arguments(eval_parser)  # rlvr eval's own options and defaults
    engine_args = eval_parser.parse_args(
        ["--model", args.model, "--engine", args.worker, "--dtype", args.dtype, "--batch-size", str(args.batch_size),
         "--output", str(out / "eval"), *(["--kv-cache-gb", str(args.kv_cache_gb)] if args.kv_cache_gb else [])])
    engine, tokenizer, described = _load_engine(engine_args)
    load_s = time.perf_counter() - started
    timing = {"generate_s": 0.0, "tokens": 0, "calls": 0}

    def generate(prompts, sampling):
        begun = time.perf_counter()
        completions = engine.generate(prompts, sampling)
        timing["generate_s"] += time.perf_counter() - begun
        timing["tokens"] += sum(len(c.tokens) for c in completions)
        timing["calls"] += 1
        return completions

    # n=1 sampled response is required by the settings; temperature does not matter: only greedy is compared.
    settings = EvalSettings(n=1, max_new_tokens=args.max_new_tokens, template=args.template, greedy=True,
                            chunk_size=args.batch_size)
    benchmarks = load_benchmarks(args.benchmarks.split(","), args.data_dir, args.limit)
    results = evaluate(generate, tokenizer, benchmarks, settings, out / "eval", progress=False,
                       metadata={"engine": described})
    greedy = {(s["benchmark"], s["problem_id"]): s for s in read_samples(out / "eval" / "samples.jsonl")
              if s["sample"] == "greedy"}
    (out / "worker.json").write_text(json.dumps({
        "engine": described, "load_s": load_s, "wall_s": time.perf_counter() - started, **timing,
        "greedy_correct": {name: sum(s["correct"] for (b, _), s in greedy.items() if b == name)
                           for name in results["benchmarks"]},
        "problems": {name: len(prompts) for name, prompts in benchmarks.items()},
        "greedy": {f"{b}/{p}": [s["response"], s["correct"]] for (b, p), s in greedy.items()},
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--benchmarks", default="gsm8k,math500")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--template", default="chat")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kv-cache-gb", type=float, default=None)
    parser.add_argument("--json", default="bench_eval_engines.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    work = Path(tempfile.mkdtemp(prefix="rlvr-bench-eval-"))
    runs = {}
    for engine in args.engines.split(","):
        out = work / engine
        out.mkdir()
        command = [sys.executable, __file__, "--worker", engine, "--worker-output", str(out),
                   *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k not in ("worker", "worker_output", "engines", "json") and v is not None]]
        subprocess.run(command, check=True)
        runs[engine] = json.loads((out / "worker.json").read_text())

    names = list(next(iter(runs.values()))["problems"])
    print(f"{'engine':34s} {'load s':>7s} {'wall s':>7s} {'gen s':>7s} {'tokens':>7s} {'gen tok/s':>9s} "
          + " ".join(f"{name + ' greedy':>16s}" for name in names))
    for run in runs.values():
        print(f"{run['engine']:34s} {run['load_s']:7.1f} {run['wall_s']:7.1f} {run['generate_s']:7.1f} "
              f"{run['tokens']:7d} {run['tokens'] / run['generate_s']:9.1f} "
              + " ".join(f"{run['greedy_correct'][n]:>8d} / {run['problems'][n]:<5d}" for n in names))
    summary = {}
    if len(runs) == 2:
        (a, ra), (b, rb) = runs.items()
        keys = sorted(ra["greedy"])
        same_text = sum(ra["greedy"][k][0] == rb["greedy"][k][0] for k in keys)
        same_grade = sum(ra["greedy"][k][1] == rb["greedy"][k][1] for k in keys)
        summary = {"responses": len(keys), "identical_responses": same_text, "same_grade": same_grade,
                   "correct_difference": {n: ra["greedy_correct"][n] - rb["greedy_correct"][n] for n in names},
                   "speed_ratio": (ra["tokens"] / ra["generate_s"]) / (rb["tokens"] / rb["generate_s"])}
        print(f"\n{a} vs {b}: identical greedy responses {same_text}/{len(keys)}, same grade {same_grade}/{len(keys)}, "
              f"correct difference {summary['correct_difference']}, generate tok/s ratio {summary['speed_ratio']:.2f}")
    Path(args.json).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if "worker" not in k},
                                           "runs": {e: {k: v for k, v in r.items() if k != "greedy"}
                                                    for e, r in runs.items()},
                                           "comparison": summary}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
