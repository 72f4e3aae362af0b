"""``VLLMEngine.load_weights`` (the host-array weight sync: split placement's Ray object-store road, and every
sync on vLLM's CPU build) with its three roads side by side: an engine core in this process takes the tensors
by reference (``in_process=True``, the CPU build's default); one in processes of its own (vLLM's default on
GPUs) gets each chunk staged as a file in shared memory (the default there) or its bytes inside the RPC
messages (``weight_staging_dir=None``). The roads alternate, so all see the same machine; prints a table and
writes JSON.

    python scripts/bench_weight_sync.py --model smollm2-135m-instruct --repeats 5

After each load, the engine's greedy log-probs on a few prompts are checked against the weights sent (each
round sends the original weights plus a fresh perturbation), so a fast road that loaded nothing would fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model path, .gguf, known name or 'tiny'")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5, help="loads per road")
    parser.add_argument("--kv-cache-gb", type=float, default=0.25)
    parser.add_argument("--output", default="runs/bench_weight_sync.json")
    args = parser.parse_args()

    import torch

    from rlvr.models.loading import load_model, load_tokenizer, resolve_model_path
    from rlvr.rollout.engine import SamplingParams
    from rlvr.rollout.vllm import SHARED_MEMORY_DIR, VLLMEngine
    from rlvr.transfer.arrays import named_arrays

    model_dir = resolve_model_path(args.model)
    model = load_model(model_dir, args.dtype).eval()
    tokenizer = load_tokenizer(model_dir)
    options = dict(dtype=args.dtype, kv_cache_gb=args.kv_cache_gb, enforce_eager=True, max_model_len=1024,
                   distributed_executor_backend="uni")  # as a training run's engine
    engines = {"in process": VLLMEngine(model_dir, in_process=True, **options),
               "processes": VLLMEngine(model_dir, in_process=False, **options)}
    probes = [tokenizer.encode(text) for text in ("12 + 7 =", "The capital of France is", "def add(a, b):")]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)  # greedy; log-probs at temperature 1
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nbytes = sum(array.nbytes for array in named_arrays(model).values())
    roads = {"in process": ("in process", None), "shared-memory file": ("processes", SHARED_MEMORY_DIR),
             "bytes in the RPC": ("processes", None)}
    seconds: dict[str, list[float]] = {road: [] for road in roads}
    for round_ in range(args.repeats):
        for road, (kind, staging_dir) in roads.items():
            with torch.no_grad():
                generator = torch.Generator().manual_seed(round_)
                for name, parameter in model.named_parameters():
                    parameter.copy_(original[name] + torch.randn(parameter.shape, generator=generator) * 0.01)
            arrays = named_arrays(model)
            engine = engines[kind]
            engine.weight_staging_dir = staging_dir
            started = time.perf_counter()
            engine.load_weights(arrays)
            seconds[road].append(time.perf_counter() - started)
            check(engine, model, probes, greedy)

    rows = {road: {"median_s": statistics.median(times), "times_s": times,
                   "MB_per_s": nbytes / 1e6 / statistics.median(times)} for road, times in seconds.items()}
    base = rows["bytes in the RPC"]["median_s"]
    print(f"\nload_weights of {args.model} ({nbytes / 2**20:.0f} MiB, {args.dtype}), {args.repeats} loads per road")
    print(f"{'road':<22}{'median s':>10}{'MB/s':>8}{'speed-up':>10}")
    for road, row in rows.items():
        print(f"{road:<22}{row['median_s']:>10.2f}{row['MB_per_s']:>8.0f}{base / row['median_s']:>9.1f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "dtype": args.dtype, "bytes": nbytes, "roads": rows}, indent=2))
    print(f"wrote {out}")


def check(engine, model, probes, greedy) -> None:
    """The engine's greedy log-probs equal the learner model's on the probes (the weights really arrived)."""
    import torch

    for prompt, completion in zip(probes, engine.generate(probes, greedy)):
        ids = torch.tensor([prompt + completion.tokens])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:-1].float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion.tokens)[:, None])[:, 0]
        gap = (expected - torch.tensor(completion.logprobs)).abs().max().item()
        if gap > 1e-3:
            raise SystemExit(f"the engine's log-probs differ from the weights sent by {gap:.2e}")


if __name__ == "__main__":  # an engine core in processes of its own is spawned: the guard is required
    main()
