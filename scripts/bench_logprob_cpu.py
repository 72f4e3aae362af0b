"""Time and peak memory of the chunked torch ``token_logprobs`` against full logits, on CPU.

Each implementation runs forward + backward in a fresh process, so the peak resident memory
(``ru_maxrss``) of one does not hide the other's. Example::

    python scripts/bench_logprob_cpu.py --rows 4096 --hidden 512 --vocab 32000 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import torch


def _measure(impl: str, rows: int, hidden_size: int, vocab: int, dtype: str, repeats: int, queue) -> None:
    from rlvr.kernels import token_logprobs
    from rlvr.kernels.logprob import token_logprobs_reference

    fn = token_logprobs if impl == "chunked" else token_logprobs_reference
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, hidden_size, generator=gen).to(getattr(torch, dtype)).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.05).to(getattr(torch, dtype)).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        logp, entropy = fn(hidden, weight, targets, 0.7)
        (logp.sum() + 0.01 * entropy.sum()).backward()
        times.append(time.perf_counter() - start)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    queue.put((impl, min(times), peak_mib))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    full_logits_mib = args.rows * args.vocab * 4 / 1024**2
    print(f"N={args.rows} H={args.hidden} V={args.vocab} {args.dtype}; fp32 logits would be {full_logits_mib:.0f} MiB")
    ctx = multiprocessing.get_context("spawn")
    for impl in ("chunked", "reference"):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_measure,
            args=(impl, args.rows, args.hidden, args.vocab, args.dtype, args.repeats, queue),
        )
        proc.start()
        name, seconds, peak_mib = queue.get()
        proc.join()
        print(f"{name:>9}: forward+backward {seconds * 1000:8.1f} ms, peak memory above inputs {peak_mib:8.0f} MiB")


if __name__ == "__main__":
    main()
