"""The Triton ``token_logprobs`` kernels compiled for a real GPU: fp32 and bf16, and a Qwen-sized head.

Run on a GPU machine: ``python -m pytest -q tests/gpu``. Speed is measured by scripts/bench_kernels.py.
"""

from __future__ import annotations

import pytest
import torch

from rlvr.kernels import token_logprobs
from tests.unit.logprob_cases import assert_matches_truth, float64_truth, make_inputs

pytestmark = pytest.mark.gpu


def _run_cuda(hidden, weight, targets, temperature, grad_logp, grad_entropy, impl="auto"):
    h = hidden.cuda().requires_grad_()
    w = weight.cuda().requires_grad_()
    logp, entropy = token_logprobs(h, w, targets.cuda(), temperature, impl=impl)
    torch.autograd.backward([logp, entropy], [grad_logp.cuda(), grad_entropy.cuda()])
    return logp, entropy, h.grad, w.grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_matches_float64_reference(temperature):
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(1, n=300, h=128, v=5000)
    grad_logp[::3] = 0
    grad_entropy[::3] = 0
    result = _run_cuda(hidden, weight, targets, temperature, grad_logp, grad_entropy)
    assert "Triton" in type(result[0].grad_fn).__name__, "auto must pick the Triton kernels on CUDA"
    result = [t.detach().cpu() for t in result]
    assert_matches_truth(result, float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy))
    assert torch.all(result[2][::3] == 0)


def test_bf16_logits_accumulate_in_fp32():
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(2, n=1000, h=256, v=20000, dtype=torch.bfloat16)
    logp, entropy, grad_hidden, grad_weight = _run_cuda(hidden, weight, targets, 0.7, grad_logp, grad_entropy)
    assert logp.dtype == torch.float32 and grad_hidden.dtype == torch.bfloat16
    truth = float64_truth(hidden, weight, targets, 0.7, grad_logp, grad_entropy)
    # bf16 x bf16 products are exact in fp32: the forward is as accurate as for fp32 inputs.
    for name, actual, expected, rel in (("logp", logp, truth[0], 1e-5), ("entropy", entropy, truth[1], 1e-5),
                                        ("grad_hidden", grad_hidden, truth[2], 1e-2),
                                        ("grad_weight", grad_weight, truth[3], 1e-2)):
        err = ((actual.detach().cpu().double() - expected).norm() / expected.norm()).item()
        assert err < rel, f"{name}: relative error {err:.2e} >= {rel:.0e}"


def test_qwen_sized_head_agrees_with_torch_path_and_saves_memory():
    torch.manual_seed(0)
    n, h, v = 4096, 896, 151936
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(v, h, device="cuda") * h**-0.5).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device="cuda")
    grad_logp = torch.randn(n, device="cuda")
    grad_entropy = 0.01 * torch.randn(n, device="cuda")
    out = {}
    for impl in ("triton", "torch"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp, entropy = token_logprobs(hh, ww, targets, 0.7, impl=impl)
        torch.autograd.backward([logp, entropy], [grad_logp, grad_entropy])
        torch.cuda.synchronize()
        out[impl] = (logp.detach(), entropy.detach(), hh.grad, ww.grad, torch.cuda.max_memory_allocated() - base)
    for i, name in enumerate(("logp", "entropy", "grad_hidden", "grad_weight")):
        a, b = out["triton"][i].double(), out["torch"][i].double()
        err = ((a - b).norm() / b.norm()).item()
        assert err < (1e-5 if i < 2 else 2e-2), f"{name}: triton and torch paths differ by {err:.2e}"
    naive_logits_bytes = n * v * 4
    assert out["triton"][4] < naive_logits_bytes / 2, "the Triton path must not hold anything like full logits"
