"""vLLM's CPU build with its engine core and worker in the calling process (``VLLMEngine(in_process=True)``, the
CPU default) against vLLM's own processes (``in_process=False``): seconds to start, to the first generation,
and per generation of 64 prompts x ``--tokens`` sampled tokens. Each mode runs ``--repeats`` times in a fresh
subprocess, alternating, so both see the same machine; prints a table and writes JSON.

    python scripts/bench_vllm_process.py --model smollm2-135m-instruct --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one(model: str, in_process: bool, tokens: int, dtype: str, kv_cache_gb: float) -> dict[str, float]:
    """One engine's timings, in this process."""
    started = time.perf_counter()
    from rlvr.models.loading import load_tokenizer, resolve_model_path
    from rlvr.rollout.engine import SamplingParams
    from rlvr.rollout.vllm import VLLMEngine

    model_dir = resolve_model_path(model)
    tokenizer = load_tokenizer(model_dir)
    imported = time.perf_counter()
    engine = VLLMEngine(model_dir, dtype=dtype, enforce_eager=True, kv_cache_gb=kv_cache_gb, in_process=in_process,
                        max_model_len=min(1024, tokenizer.model_max_length))
    built = time.perf_counter()
    requests = [tokenizer.encode(f"Question {i}: what is {i * 7} + {i * 13}? Answer:") for i in range(64)]
    engine.generate(requests[:4], SamplingParams(8, 1.0, seed=0))
    first = time.perf_counter()
    times, count = [], 0
    for seed in range(3):
        began = time.perf_counter()
        completions = engine.generate(requests, SamplingParams(tokens, 1.0, seed=seed))
        times.append(time.perf_counter() - began)
        count = sum(len(c.tokens) for c in completions)
    engine.shutdown()
    return {"import_s": imported - started, "start_s": built - imported, "first_generate_s": first - built,
            "generate_s": statistics.median(times), "tokens": count, "tokens_per_s": count / statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model path, .gguf, known name or 'tiny'")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per mode")
    parser.add_argument("--kv-cache-gb", type=float, default=0.5)
    parser.add_argument("--output", default="runs/bench_vllm_process.json")
    parser.add_argument("--child", choices=["in-process", "processes"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.model, args.child == "in-process", args.tokens, args.dtype, args.kv_cache_gb)))
        return

    runs: dict[str, list[dict[str, float]]] = {"in-process": [], "processes": []}
    for _ in range(args.repeats):
        for mode in runs:
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--dtype",
                                   args.dtype, "--tokens", str(args.tokens), "--kv-cache-gb", str(args.kv_cache_gb)],
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = ["start_s", "first_generate_s", "generate_s", "tokens_per_s"]
    rows = {mode: {key: statistics.median(run[key] for run in results) for key in keys} | {"runs": results}
            for mode, results in runs.items()}
    print(f"\nvLLM CPU build, {args.model} ({args.dtype}), 64 prompts x {args.tokens} sampled tokens; "
          f"medians of {args.repeats} fresh processes per mode")
    print(f"{'mode':<12}{'start s':>9}{'1st gen s':>11}{'gen s':>8}{'tokens/s':>10}")
    for mode, row in rows.items():
        print(f"{mode:<12}{row['start_s']:>9.1f}{row['first_generate_s']:>11.1f}{row['generate_s']:>8.2f}"
              f"{row['tokens_per_s']:>10.0f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "dtype": args.dtype, "tokens": args.tokens, "modes": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":  # the engine core in processes of its own is spawned: the guard is required
    main()
