"""The chunked torch ``token_logprobs`` against naive float64 logits differentiated by autograd."""

from __future__ import annotations

import pytest
import torch

from rlvr.kernels import token_logprobs
from rlvr.kernels.logprob import default_chunk_size
from tests.unit.logprob_cases import (
    H,
    N,
    V,
    assert_close,
    assert_matches_truth,
    float64_truth,
    make_inputs,
    run,
)

pytestmark = pytest.mark.usefixtures("poisoned_outputs")


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_float64_reference(chunk_size, temperature):
    seed = 1000 * (chunk_size or 0) + int(temperature * 10)
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(seed)
    result = run(hidden, weight, targets, temperature, grad_logp, grad_entropy, chunk_size=chunk_size)
    assert result[0].dtype == torch.float32 and result[1].dtype == torch.float32
    assert result[2].dtype == torch.float32 and result[3].dtype == torch.float32
    assert_matches_truth(result, float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy))


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_rows_with_zero_upstream_gradient(chunk_size):
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(7 + chunk_size)
    both_zero = torch.zeros(N, dtype=torch.bool)
    both_zero[:12] = True  # whole chunks of zero rows for chunk_size 1 and 5
    both_zero[20:23] = True
    grad_logp[both_zero] = 0
    grad_entropy[both_zero] = 0
    grad_logp[30:35] = 0  # entropy gradient only
    grad_entropy[35:40] = 0  # logp gradient only

    result = run(hidden, weight, targets, 1.0, grad_logp, grad_entropy, chunk_size=chunk_size)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 1.0, grad_logp, grad_entropy))
    assert torch.all(result[2][both_zero] == 0)
    assert torch.all(result[2][~both_zero].abs().sum(dim=1) > 0)


def test_all_upstream_gradients_zero_give_zero_grads():
    hidden, weight, targets, _, _ = make_inputs(11)
    zeros = torch.zeros(N)
    _, _, grad_hidden, grad_weight = run(hidden, weight, targets, 1.0, zeros, zeros, chunk_size=8)
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_only_logp_in_graph(temperature):
    hidden, weight, targets, grad_logp, _ = make_inputs(21)
    result = run(hidden, weight, targets, temperature, grad_logp, None, chunk_size=6)
    truth = float64_truth(hidden, weight, targets, temperature, grad_logp, None)
    assert_matches_truth(result, truth)


def test_only_entropy_in_graph():
    hidden, weight, targets, _, grad_entropy = make_inputs(22)
    result = run(hidden, weight, targets, 1.3, None, grad_entropy, chunk_size=6)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 1.3, None, grad_entropy))


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_return_entropy_false(chunk_size):
    hidden, weight, targets, grad_logp, _ = make_inputs(31)
    logp, entropy, grad_hidden, grad_weight = run(
        hidden, weight, targets, 0.7, grad_logp, None, return_entropy=False, chunk_size=chunk_size
    )
    assert entropy is None
    truth_logp, _, truth_gh, truth_gw = float64_truth(hidden, weight, targets, 0.7, grad_logp, None)
    assert_close(logp, truth_logp, "logp")
    assert_close(grad_hidden, truth_gh, "grad_hidden")
    assert_close(grad_weight, truth_gw, "grad_weight")


def test_bfloat16_inputs_compute_in_float32():
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(41, dtype=torch.bfloat16)
    logp, entropy, grad_hidden, grad_weight = run(
        hidden, weight, targets, 0.7, grad_logp, grad_entropy, chunk_size=10
    )
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert grad_hidden.dtype == torch.bfloat16 and grad_weight.dtype == torch.bfloat16
    # bf16 -> fp64 is exact, so fp32 logits must agree with the fp64 truth as tightly as for fp32
    # inputs; bf16 logits would be off by ~1e-2.
    truth = float64_truth(hidden, weight, targets, 0.7, grad_logp, grad_entropy)
    assert_close(logp, truth[0], "logp")
    assert_close(entropy, truth[1], "entropy")
    # Gradients are rounded to bf16 (8 mantissa bits) only at the end.
    for name, actual, expected in (("grad_hidden", grad_hidden, truth[2]), ("grad_weight", grad_weight, truth[3])):
        rel_err = ((actual.double() - expected).norm() / expected.norm()).item()
        assert rel_err < 1e-2, f"{name}: relative error {rel_err:.3e}"


def test_gradcheck_float64():
    hidden, weight, targets, _, _ = make_inputs(51, n=9, h=6, v=11, dtype=torch.float64)
    hidden.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: token_logprobs(h, w, targets, 0.7, chunk_size=4), (hidden, weight))


def test_grad_only_for_inputs_that_require_it():
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(61)
    truth = float64_truth(hidden, weight, targets, 1.0, grad_logp, grad_entropy)

    h = hidden.clone().requires_grad_()
    logp, entropy = token_logprobs(h, weight, targets, chunk_size=7)
    torch.autograd.backward([logp, entropy], [grad_logp, grad_entropy])
    assert weight.grad is None
    assert_close(h.grad, truth[2], "grad_hidden")

    w = weight.clone().requires_grad_()
    logp, entropy = token_logprobs(hidden, w, targets, chunk_size=7)
    torch.autograd.backward([logp, entropy], [grad_logp, grad_entropy])
    assert hidden.grad is None
    assert_close(w.grad, truth[3], "grad_weight")


def test_saves_only_inputs_and_per_row_statistics():
    hidden, weight, targets, _, _ = make_inputs(71)
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
    hidden, weight, targets, _, _ = make_inputs(81)
    with torch.no_grad():
        logp, entropy = token_logprobs(hidden.requires_grad_(), weight, targets)
    assert logp.grad_fn is None and entropy.grad_fn is None
    truth = float64_truth(hidden, weight, targets, 1.0, torch.ones(N), None)
    assert_close(logp, truth[0], "logp")

    h = torch.zeros(0, H, requires_grad=True)
    logp, entropy = token_logprobs(h, weight, torch.zeros(0, dtype=torch.long))
    assert logp.shape == (0,) and entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert h.grad.shape == (0, H)


def test_default_chunk_size_bounds_logits_memory():
    for vocab in (1, 1000, 151_936, 10**9):
        rows = default_chunk_size(vocab)
        assert rows >= 1
        assert rows == 1 or rows * vocab * 4 <= 32 * 1024**2


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
    hidden, weight, targets, _, _ = make_inputs(91)
    args = {"hidden": hidden, "weight": weight, "targets": targets, "temperature": 1.0, "chunk_size": None}
    args.update(change)
    with pytest.raises(error, match=match):
        token_logprobs(**args)


def test_nearly_one_hot_rows_keep_relative_precision():
    # Large logits (|z| up to ~60) make some rows nearly one-hot: entropy and the most likely
    # token's log-prob are then tiny. From unshifted logits (lse - E_p[z]) or with the top token's
    # mass summed into 1 they would carry an absolute error ~ 1e-7 .. 1e-6 and no correct digit.
    hidden, weight, targets, _, _ = make_inputs(5)
    hidden = hidden * 4
    targets[::2] = (hidden @ weight.T).argmax(dim=-1)[::2]
    logp, entropy = token_logprobs(hidden, weight, targets)
    truth_logp, truth_entropy, _, _ = float64_truth(hidden, weight, targets, 1.0, None, torch.ones(N))
    assert truth_entropy.min() < 1e-9 and truth_logp.max() > -1e-9, "inputs should include nearly one-hot rows"
    torch.testing.assert_close(entropy.double(), truth_entropy, rtol=1e-4, atol=0)
    top = torch.arange(N) % 2 == 0
    # The float64 reference's own log_softmax rounds max(z) + lse' at ~1e-14, hence the atol.
    torch.testing.assert_close(logp.double()[top], truth_logp[top], rtol=1e-4, atol=1e-12)
