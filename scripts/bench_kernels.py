"""Time, TFLOP/s and peak memory of per-token log-probs + entropies from the LM head, side by side.

Implementations, each run on the same inputs in one invocation:

* ``naive``: what verl and TRL do, ``logits = (hidden @ weight.T).float() / T``, ``log_softmax``,
  ``gather``, entropy from the softmax; autograd keeps the ``[N, V]`` fp32 tensors for backward.
* ``rlvr``: ``rlvr.kernels.token_logprobs`` as the learner calls it (Triton on CUDA, chunked torch on CPU).
* ``rlvr-torch``: the chunked torch path forced on CUDA (the fallback), for reference.
* ``liger``: Liger-Kernel's fused linear cross-entropy (reduction ``sum``), where it is installed and a GPU
  is present. It returns a loss, not per-token log-probs and entropies, and computes its gradient inside
  the forward call, so only its forward+backward time is comparable.

Per implementation: forward, backward and forward+backward time (medians over ``--repeats``), TFLOP/s and
the peak memory above the inputs (CUDA allocator peak; on CPU the peak resident set of a fresh process).
The upstream gradients are random per row, as a policy-gradient loss with an entropy term gives them; a
second run makes 80% of them zero (masked or zero-advantage tokens) and times the backward alone.
The dense matmul ``[N, H] @ [H, V]`` is timed too, as the rate to compare with.

TFLOP/s are executed FLOPs over time: the forward's logits GEMM is ``2 N V H``; the backward's two
gradient GEMMs ``4 N V H``, and rlvr's backward recomputes the logits first (``2 N V H`` more, for the
active rows only); Liger computes its gradient in the forward call, ``6 N V H`` in all. ``% mm`` compares
that rate with the dense matmul's. Model FLOPs (``2 N V H`` / ``6 N V H``) are in the JSON too.

    python scripts/bench_kernels.py --device cpu --shape 0.5b
    python scripts/bench_kernels.py --device cuda --shape 7b --json bench_kernels_7b.json
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import torch

SHAPES = {  # N tokens, H hidden, V vocabulary (Qwen2.5 0.5B / 1.5B / 7B heads)
    "0.5b": (4096, 896, 151936),
    "1.5b": (16384, 1536, 151936),
    "7b": (16384, 3584, 152064),
    "smoke": (256, 64, 4096),  # seconds on a CPU: checks that the script runs
}
TEMPERATURE = 0.7
ACTIVE_FRAC = 0.2


# -- the implementations ---------------------------------------------------------------------------------
def naive(hidden, weight, targets):
    logits = (hidden @ weight.T).float() / TEMPERATURE
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


def rlvr(hidden, weight, targets, impl="auto"):
    from rlvr.kernels import token_logprobs

    return token_logprobs(hidden, weight, targets, TEMPERATURE, impl=impl)


def liger_loss(hidden, weight, targets):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden / TEMPERATURE, targets)


def liger_installed() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


# -- measuring -------------------------------------------------------------------------------------------
class Memory:
    """Peak bytes above a baseline: the CUDA allocator's peak, or this process's peak resident set."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _proc_status("VmRSS")
            try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_extra(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated() - self.base)
        return int(_proc_status("VmHWM") - self.base)


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _inputs(shape: str, dtype: torch.dtype, device: torch.device, active_frac: float, seed: int = 0):
    n, h, v = SHAPES[shape]
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, device=device, dtype=torch.float32).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=gen, device=device, dtype=torch.float32)
    weight = weight.mul_(1.5 / h**0.5).to(dtype).requires_grad_()  # logits with a std of about 1.5 / T
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    grad_logp = torch.randn(n, generator=gen, device=device)
    grad_entropy = 0.01 * torch.randn(n, generator=gen, device=device)
    if active_frac < 1.0:
        inactive = torch.rand(n, generator=gen, device=device) >= active_frac
        grad_logp[inactive] = 0
        grad_entropy[inactive] = 0
    return hidden, weight, targets, grad_logp, grad_entropy


def measure(impl: str, shape: str, dtype: str, device: str, active_frac: float, repeats: int, warmup: int) -> dict:
    """Forward / backward times (ms) and peak extra bytes of one implementation, in this process."""
    dev = torch.device(device)
    hidden, weight, targets, grad_logp, grad_entropy = _inputs(shape, getattr(torch, dtype), dev, active_frac)
    memory = Memory(dev)
    fwd, bwd = [], []
    memory.reset()
    for i in range(warmup + repeats):
        hidden.grad = weight.grad = None
        _sync(dev)
        start = time.perf_counter()
        if impl == "liger":
            loss = liger_loss(hidden, weight, targets)
            outputs, grads = [loss], [torch.ones_like(loss)]
        else:
            fn = {"naive": naive, "rlvr": rlvr, "rlvr-torch": lambda *a: rlvr(*a, impl="torch")}[impl]
            logp, entropy = fn(hidden, weight, targets)
            outputs, grads = [logp, entropy], [grad_logp, grad_entropy]
        _sync(dev)
        middle = time.perf_counter()
        torch.autograd.backward(outputs, grads)
        _sync(dev)
        end = time.perf_counter()
        del outputs
        if i >= warmup:
            fwd.append((middle - start) * 1e3)
            bwd.append((end - middle) * 1e3)
    fwd_ms, bwd_ms = statistics.median(fwd), statistics.median(bwd)
    return {"fwd_ms": fwd_ms, "bwd_ms": bwd_ms, "fwd_bwd_ms": statistics.median(f + b for f, b in zip(fwd, bwd)),
            "peak_extra_bytes": memory.peak_extra()}


def matmul_rate(shape: str, dtype: str, device: str, repeats: int) -> float:
    """TFLOP/s of the dense ``[N, H] @ [H, V]`` product in ``dtype`` (the rate a fused kernel compares with)."""
    n, h, v = SHAPES[shape]
    dev = torch.device(device)
    a = torch.randn(n, h, device=dev).to(getattr(torch, dtype))
    b = torch.randn(v, h, device=dev).to(getattr(torch, dtype))
    times = []
    for i in range(repeats + 1):
        _sync(dev)
        start = time.perf_counter()
        out = a @ b.T
        _sync(dev)
        if i:
            times.append(time.perf_counter() - start)
        del out
    return 2 * n * h * v / statistics.median(times) / 1e12


def _child(queue, *args) -> None:
    queue.put(measure(*args))


def run_isolated(*args) -> dict:
    """``measure`` in a fresh process (CPU): one implementation's peak resident set cannot hide another's."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# -- report ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="operand dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (cuda 5, cpu 2)")
    parser.add_argument("--impls", default=None, help="comma-separated subset of naive,rlvr,rlvr-torch,liger")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="where to write the results (default bench_kernels_*.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    repeats = args.repeats or (5 if cuda else 2)
    warmup = 2 if cuda else 0
    impls = ["naive", "rlvr"] + (["rlvr-torch"] if cuda else []) + (["liger"] if cuda and liger_installed() else [])
    if args.impls:
        impls = [name.strip() for name in args.impls.split(",")]
    n, h, v = SHAPES[args.shape]
    print(f"shape {args.shape}: N={n} H={h} V={v}, {dtype}, {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)"))
    print(f"fp32 logits would take {n * v * 4 / 2**30:.2f} GiB; one [N,V,H] GEMM is {2 * n * v * h / 1e12:.2f} "
          "TFLOP (forward 1, backward 2, rlvr's backward 3 with its recompute)")

    run = (lambda *a: measure(*a)) if cuda else run_isolated
    rate = matmul_rate(args.shape, dtype, args.device, repeats)
    print(f"dense matmul [N,H]@[H,V] {dtype}: {rate:.2f} TFLOP/s")
    results: dict[str, dict] = {}
    for impl in impls:
        results[impl] = run(impl, args.shape, dtype, args.device, 1.0, repeats, warmup)
        if impl.startswith("rlvr"):
            sparse = run(impl, args.shape, dtype, args.device, ACTIVE_FRAC, repeats, warmup)
            results[impl]["bwd_active20_ms"] = sparse["bwd_ms"]
        r = results[impl]
        unit = 2 * n * v * h  # one [N, V, H] GEMM
        executed_bwd = 3 * unit if impl.startswith("rlvr") else 2 * unit
        r["fwd_tflops"] = unit / r["fwd_ms"] / 1e9
        r["fwd_bwd_tflops"] = (unit + executed_bwd) / r["fwd_bwd_ms"] / 1e9
        r["fwd_bwd_model_tflops"] = 3 * unit / r["fwd_bwd_ms"] / 1e9
        r["fwd_frac_of_matmul"] = r["fwd_tflops"] / rate
        r["fwd_bwd_frac_of_matmul"] = r["fwd_bwd_tflops"] / rate
        if impl == "liger":  # its forward call runs the backward's GEMMs too
            for key in ("fwd_ms", "bwd_ms", "fwd_tflops", "fwd_frac_of_matmul"):
                r[key] = None
        if "bwd_active20_ms" in r:
            r["bwd_active20_frac_of_dense"] = r["bwd_active20_ms"] / r["bwd_ms"]

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    header = (f"{'impl':<11}{'fwd ms':>10}{'bwd ms':>10}{'fwd+bwd ms':>12}{'fwd TF/s':>10}{'f+b TF/s':>10}"
              f"{'% mm f/fb':>12}{'peak extra':>12}{'bwd@20%':>10}")
    print(header)
    print("-" * len(header))
    for impl, r in results.items():
        frac = f"{cell(r['fwd_frac_of_matmul'], '.0%')}/{r['fwd_bwd_frac_of_matmul']:.0%}"
        sparse = f"{r['bwd_active20_frac_of_dense']:.0%}" if "bwd_active20_frac_of_dense" in r else "-"
        print(f"{impl:<11}{cell(r['fwd_ms'], '10.1f')}{cell(r['bwd_ms'], '10.1f')}{r['fwd_bwd_ms']:12.1f}"
              f"{cell(r['fwd_tflops'], '10.3f')}{r['fwd_bwd_tflops']:10.3f}{frac:>12}"
              f"{r['peak_extra_bytes'] / 2**20:10.0f}Mi{sparse:>10}")
    out = {"device": args.device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
           "threads": torch.get_num_threads(), "shape": args.shape, "N": n, "H": h, "V": v, "dtype": dtype,
           "temperature": TEMPERATURE, "repeats": repeats, "matmul_tflops": rate, "results": results}
    if "naive" in results and "rlvr" in results:
        naive_r, rlvr_r = results["naive"], results["rlvr"]
        out["peak_extra_bytes_naive"] = naive_r["peak_extra_bytes"]
        out["peak_extra_bytes_rlvr"] = rlvr_r["peak_extra_bytes"]
        out["peak_extra_ratio_rlvr_over_naive"] = rlvr_r["peak_extra_bytes"] / max(naive_r["peak_extra_bytes"], 1)
        out["fwd_bwd_speedup_rlvr_over_naive"] = naive_r["fwd_bwd_ms"] / rlvr_r["fwd_bwd_ms"]
        print(f"rlvr / naive: peak extra memory {out['peak_extra_ratio_rlvr_over_naive']:.3f}x, "
              f"forward+backward {out['fwd_bwd_speedup_rlvr_over_naive']:.2f}x as fast")
    path = Path(args.json or f"bench_kernels_{args.device}_{args.shape}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
