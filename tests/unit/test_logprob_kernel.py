"""The chunked torch ``token_logprobs`` against naive float64 logits differentiated by autograd."""

from __future__ import annotations

import pytest
import torch

from rlvr.kernels import token_logprobs
from rlvr.kernels.logprob import default_chunk_size, token_logprobs_reference

N, H, V = 45, 32, 257  # 45 rows: chunk 7 leaves a remainder, chunk 64 exceeds N


def _inputs(seed: int, n: int = N, h: int = H, v: int = V, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    # Scale so logits spread over roughly +-10: peaked rows and flat rows both occur.
    weight = (torch.randn(v, h, generator=gen) * 0.6).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    grad_logp = torch.randn(n, generator=gen)
    grad_entropy = torch.randn(n, generator=gen)
    return hidden, weight, targets, grad_logp, grad_entropy


def _float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy):
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


def _run(hidden, weight, targets, temperature, grad_logp, grad_entropy, **kwargs):
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


def _assert_close(actual, expected, name, rel=1e-5):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    actual64, expected64 = actual.double(), expected.double()
    rel_err = ((actual64 - expected64).norm() / expected64.norm().clamp_min(1e-30)).item()
    assert rel_err < rel, f"{name}: relative error {rel_err:.3e} >= {rel:.0e}"
    # Elementwise too, so that one bad row cannot hide in the norm. An entry near zero (a gradient
    # that is a sum of cancelling terms) cannot have fp32 relative precision, so the floor is
    # `rel` times the tensor's largest entry.
    atol = rel * expected64.abs().max().item()
    torch.testing.assert_close(actual64, expected64, rtol=rel, atol=atol, msg=lambda m: f"{name}: {m}")


def _assert_matches_truth(result, truth, rel=1e-5):
    for name, actual, expected in zip(("logp", "entropy", "grad_hidden", "grad_weight"), result, truth):
        _assert_close(actual, expected, name, rel)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_float64_reference(chunk_size, temperature):
    seed = 1000 * (chunk_size or 0) + int(temperature * 10)
    hidden, weight, targets, grad_logp, grad_entropy = _inputs(seed)
    result = _run(hidden, weight, targets, temperature, grad_logp, grad_entropy, chunk_size=chunk_size)
    assert result[0].dtype == torch.float32 and result[1].dtype == torch.float32
    assert result[2].dtype == torch.float32 and result[3].dtype == torch.float32
    _assert_matches_truth(result, _float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy))


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_rows_with_zero_upstream_gradient(chunk_size):
    hidden, weight, targets, grad_logp, grad_entropy = _inputs(7 + chunk_size)
    both_zero = torch.zeros(N, dtype=torch.bool)
    both_zero[:12] = True  # whole chunks of zero rows for chunk_size 1 and 5
    both_zero[20:23] = True
    grad_logp[both_zero] = 0
    grad_entropy[both_zero] = 0
    grad_logp[30:35] = 0  # entropy gradient only
    grad_entropy[35:40] = 0  # logp gradient only

    result = _run(hidden, weight, targets, 1.0, grad_logp, grad_entropy, chunk_size=chunk_size)
    _assert_matches_truth(result, _float64_truth(hidden, weight, targets, 1.0, grad_logp, grad_entropy))
    assert torch.all(result[2][both_zero] == 0)
    assert torch.all(result[2][~both_zero].abs().sum(dim=1) > 0)


def test_all_upstream_gradients_zero_give_zero_grads():
    hidden, weight, targets, _, _ = _inputs(11)
    zeros = torch.zeros(N)
    _, _, grad_hidden, grad_weight = _run(hidden, weight, targets, 1.0, zeros, zeros, chunk_size=8)
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_only_logp_in_graph(temperature):
    hidden, weight, targets, grad_logp, _ = _inputs(21)
    result = _run(hidden, weight, targets, temperature, grad_logp, None, chunk_size=6)
    truth = _float64_truth(hidden, weight, targets, temperature, grad_logp, None)
    _assert_matches_truth(result, truth)


def test_only_entropy_in_graph():
    hidden, weight, targets, _, grad_entropy = _inputs(22)
    result = _run(hidden, weight, targets, 1.3, None, grad_entropy, chunk_size=6)
    _assert_matches_truth(result, _float64_truth(hidden, weight, targets, 1.3, None, grad_entropy))


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_return_entropy_false(chunk_size):
    hidden, weight, targets, grad_logp, _ = _inputs(31)
    logp, entropy, grad_hidden, grad_weight = _run(
        hidden, weight, targets, 0.7, grad_logp, None, return_entropy=False, chunk_size=chunk_size
    )
    assert entropy is None
    truth_logp, _, truth_gh, truth_gw = _float64_truth(hidden, weight, targets, 0.7, grad_logp, None)
    _assert_close(logp, truth_logp, "logp")
    _assert_close(grad_hidden, truth_gh, "grad_hidden")
    _assert_close(grad_weight, truth_gw, "grad_weight")


def test_bfloat16_inputs_compute_in_float32():
    hidden, weight, targets, grad_logp, grad_entropy = _inputs(41, dtype=torch.bfloat16)
    logp, entropy, grad_hidden, grad_weight = _run(
        hidden, weight, targets, 0.7, grad_logp, grad_entropy, chunk_size=10
    )
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert grad_hidden.dtype == torch.bfloat16 and grad_weight.dtype == torch.bfloat16
    # bf16 -> fp64 is exact, so fp32 logits must agree with the fp64 truth as tightly as for fp32
    # inputs; bf16 logits would be off by ~1e-2.
    truth = _float64_truth(hidden, weight, targets, 0.7, grad_logp, grad_entropy)
    _assert_close(logp, truth[0], "logp")
    _assert_close(entropy, truth[1], "entropy")
    # Gradients are rounded to bf16 (8 mantissa bits) only at the end.
    for name, actual, expected in (("grad_hidden", grad_hidden, truth[2]), ("grad_weight", grad_weight, truth[3])):
        rel_err = ((actual.double() - expected).norm() / expected.norm()).item()
        assert rel_err < 1e-2, f"{name}: relative error {rel_err:.3e}"


def test_gradcheck_float64():
    hidden, weight, targets, _, _ = _inputs(51, n=9, h=6, v=11, dtype=torch.float64)
    hidden.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: token_logprobs(h, w, targets, 0.7, chunk_size=4), (hidden, weight))


def test_grad_only_for_inputs_that_require_it():
    hidden, weight, targets, grad_logp, grad_entropy = _inputs(61)
    truth = _float64_truth(hidden, weight, targets, 1.0, grad_logp, grad_entropy)

    h = hidden.clone().requires_grad_()
    logp, entropy = token_logprobs(h, weight, targets, chunk_size=7)
    torch.autograd.backward([logp, entropy], [grad_logp, grad_entropy])
    assert weight.grad is None
    _assert_close(h.grad, truth[2], "grad_hidden")

    w = weight.clone().requires_grad_()
    logp, entropy = token_logprobs(hidden, w, targets, chunk_size=7)
    torch.autograd.backward([logp, entropy], [grad_logp, grad_entropy])
    assert hidden.grad is None
    _assert_close(w.grad, truth[3], "grad_weight")


def test_saves_only_inputs_and_per_row_statistics():
    hidden, weight, targets, _, _ = _inputs(71)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp, entropy = token_logprobs(h, w, targets, chunk_size=8)
    assert sorted(saved_shapes) == sorted([(N, H), (V, H), (N,), (N,), (N,)])
    (logp.sum() + entropy.sum()).backward()


def test_no_grad_and_empty_input():
    hidden, weight, targets, _, _ = _inputs(81)
    with torch.no_grad():
        logp, entropy = token_logprobs(hidden.requires_grad_(), weight, targets)
    assert logp.grad_fn is None and entropy.grad_fn is None
    truth = _float64_truth(hidden, weight, targets, 1.0, torch.ones(N), None)
    _assert_close(logp, truth[0], "logp")

    h = torch.zeros(0, H, requires_grad=True)
    logp, entropy = token_logprobs(h, weight, torch.zeros(0, dtype=torch.long))
    assert logp.shape == (0,) and entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert h.grad.shape == (0, H)


def test_default_chunk_size_bounds_logits_memory():
    for vocab in (1, 1000, 151_936, 10**9):
        rows = default_chunk_size(vocab)
        assert rows >= 1
        assert rows == 1 or rows * vocab * 4 <= 128 * 1024**2


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"weight": torch.randn(V, H + 1)}, ValueError, r"\(45, 32\).*\(257, 33\)"),
        ({"weight": torch.randn(H, V)}, ValueError, "disagree on H"),
        ({"hidden": torch.randn(3, N, H)}, ValueError, "2-D"),
        ({"targets": torch.zeros(N + 1, dtype=torch.long)}, ValueError, "targets"),
        ({"targets": torch.zeros(N)}, TypeError, "integer"),
        ({"targets": torch.full((N,), V)}, ValueError, r"\[0, V\)"),
        ({"targets": torch.full((N,), -100)}, ValueError, r"\[0, V\)"),
        ({"hidden": torch.zeros(N, H, dtype=torch.long)}, TypeError, "floating point"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_invalid_inputs_raise(change, error, match):
    hidden, weight, targets, _, _ = _inputs(91)
    args = {"hidden": hidden, "weight": weight, "targets": targets, "temperature": 1.0, "chunk_size": None}
    args.update(change)
    with pytest.raises(error, match=match):
        token_logprobs(**args)


def test_nearly_one_hot_rows_keep_relative_precision():
    # Large logits (|z| up to ~60) make some rows nearly one-hot: entropy and the most likely
    # token's log-prob are then tiny. From unshifted logits (lse - E_p[z]) or with the top token's
    # mass summed into 1 they would carry an absolute error ~ 1e-7 .. 1e-6 and no correct digit.
    hidden, weight, targets, _, _ = _inputs(5)
    hidden = hidden * 4
    targets[::2] = (hidden @ weight.T).argmax(dim=-1)[::2]
    logp, entropy = token_logprobs(hidden, weight, targets)
    truth_logp, truth_entropy, _, _ = _float64_truth(hidden, weight, targets, 1.0, None, torch.ones(N))
    assert truth_entropy.min() < 1e-9 and truth_logp.max() > -1e-9, "inputs should include nearly one-hot rows"
    torch.testing.assert_close(entropy.double(), truth_entropy, rtol=1e-4, atol=0)
    top = torch.arange(N) % 2 == 0
    # The float64 reference's own log_softmax rounds max(z) + lse' at ~1e-14, hence the atol.
    torch.testing.assert_close(logp.double()[top], truth_logp[top], rtol=1e-4, atol=1e-12)
