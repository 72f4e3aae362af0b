"""Helpers shared by the token_logprobs tests: inputs, the float64 truth, comparisons."""

from __future__ import annotations

import torch

from rlvr.kernels import token_logprobs
from rlvr.kernels.logprob import token_logprobs_reference

N, H, V = 45, 32, 257  # 45 rows: chunk 7 leaves a remainder, chunk 64 exceeds N


def make_inputs(seed: int, n: int = N, h: int = H, v: int = V, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    # Scale so logits spread over roughly +-10: peaked rows and flat rows both occur.
    weight = (torch.randn(v, h, generator=gen) * 0.6).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    grad_logp = torch.randn(n, generator=gen)
    grad_entropy = torch.randn(n, generator=gen)
    return hidden, weight, targets, grad_logp, grad_entropy


def float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy):
    """(logp, entropy, grad_hidden, grad_weight) from full float64 logits; ``None`` grads count as zero."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp, entropy = token_logprobs_reference(h, w, targets, temperature)
    loss = torch.zeros((), dtype=torch.float64)
    if grad_logp is not None:
        loss = loss + (logp * grad_logp.double()).sum()
    if grad_entropy is not None:
        loss = loss + (entropy * grad_entropy.double()).sum()
    grad_h, grad_w = torch.autograd.grad(loss, (h, w))
    return logp.detach(), entropy.detach(), grad_h, grad_w


def run(hidden, weight, targets, temperature, grad_logp, grad_entropy, **kwargs):
    """Forward and backward of the kernel; returns (logp, entropy, grad_hidden, grad_weight)."""
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logp, entropy = token_logprobs(h, w, targets, temperature, **kwargs)
    outputs, grads = [], []
    if grad_logp is not None:
        outputs.append(logp)
        grads.append(grad_logp.to(logp.dtype))
    if grad_entropy is not None:
        outputs.append(entropy)
        grads.append(grad_entropy.to(entropy.dtype))
    torch.autograd.backward(outputs, grads)
    return logp.detach(), None if entropy is None else entropy.detach(), h.grad, w.grad


def assert_close(actual, expected, name, rel=1e-5):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    actual64, expected64 = actual.double(), expected.double()
    rel_err = ((actual64 - expected64).norm() / expected64.norm().clamp_min(1e-30)).item()
    assert rel_err < rel, f"{name}: relative error {rel_err:.3e} >= {rel:.0e}"
    # Elementwise too, so that one bad row cannot hide in the norm. An entry near zero (a gradient
    # that is a sum of cancelling terms) cannot have fp32 relative precision, so the floor is
    # `rel` times the tensor's largest entry.
    atol = rel * expected64.abs().max().item()
    torch.testing.assert_close(actual64, expected64, rtol=rel, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_matches_truth(result, truth, rel=1e-5):
    for name, actual, expected in zip(("logp", "entropy", "grad_hidden", "grad_weight"), result, truth):
        assert_close(actual, expected, name, rel)
