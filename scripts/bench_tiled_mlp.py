"""Tiled gated MLPs (``model.tiled_mlp``) against the model's own MLPs: one update's peak memory and time. Prints a
table, writes JSON.

    python scripts/bench_tiled_mlp.py                       # SmolLM2-135M-Instruct, 16 rows x 238 tokens, fp32
    python scripts/bench_tiled_mlp.py --rows 8 --tokens 512 --blocks 256 512 2048

Each variant runs in a fresh process (peak resident sets do not mix): the model loaded as the torch learner loads it
(gradient checkpointing on), AdamW's state made by one update first, then ``--repeats`` updates of a random batch,
each a forward and backward through rlvr's log-prob path, gradient clipping and an AdamW step, inside the learner's
memory phase (rlvr.memory.learner_phase). Reported: the peak resident set added over the set before the
update (the largest over the repeats) and the median seconds per update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MiB = 2**20


def one(model: str, rows: int, tokens: int, block: int | None, repeats: int) -> dict[str, float]:
    """One variant in this process: ``block`` None is the model's own MLP."""
    import torch

    from rlvr.memory import learner_phase, peak_resident_bytes, release_free_memory, resident_bytes
    from rlvr.models.forward import response_logprobs
    from rlvr.models.loading import load_model, resolve_model_path

    torch.manual_seed(0)
    policy = load_model(resolve_model_path(model), "float32", True, tiled_mlp=block is not None,
                        tiled_mlp_tokens=block or 1)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
    vocab, prompt = policy.config.vocab_size, tokens // 2
    prompt_tokens = torch.randint(0, vocab, (rows, prompt))
    response_tokens = torch.randint(0, vocab, (rows, tokens - prompt))
    prompt_mask, response_mask = torch.ones_like(prompt_tokens), torch.ones(rows, tokens - prompt)

    def update() -> None:
        with learner_phase():
            logp, _ = response_logprobs(policy, prompt_tokens, prompt_mask, response_tokens, response_mask, 1.0)
            (logp * response_mask).sum().backward()
            del logp
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    update()  # AdamW's moments exist from here on
    peaks, seconds = [], []
    for _ in range(repeats):
        release_free_memory()
        before = resident_bytes()
        peak_resident_bytes(reset=True)
        start = time.perf_counter()
        update()
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_resident_bytes() - before)
    return {"peak_added_mib": max(peaks) / MiB, "seconds": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=238, help="padded width of a row, prompt and response")
    parser.add_argument("--blocks", type=int, nargs="+", default=[512, 1024], help="model.tiled_mlp_tokens values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench_tiled_mlp.json")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a variant, in a child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.model, args.rows, args.tokens, args.one or None, args.repeats)))
        return
    results = {}
    for block in [0, *args.blocks]:
        child = subprocess.run([sys.executable, __file__, "--model", args.model, "--rows", str(args.rows), "--tokens",
                                str(args.tokens), "--repeats", str(args.repeats), "--one", str(block)],
                               capture_output=True, text=True, check=True)
        results["own MLP" if block == 0 else f"tiled, {block} tokens"] = json.loads(child.stdout.splitlines()[-1])
    own = results["own MLP"]
    print(f"{args.model}: one update of {args.rows} rows x {args.tokens} tokens, fp32, gradient checkpointing")
    print(f"{'MLP':<20}{'peak added MiB':>16}{'s / update':>12}{'vs own':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['peak_added_mib']:>16.0f}{r['seconds']:>12.2f}{r['seconds'] / own['seconds']:>9.2f}x")
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
