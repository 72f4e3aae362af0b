"""The Triton ``token_logprobs`` kernels against naive float64 logits, run by Triton's interpreter on CPU.

tests/conftest.py sets ``TRITON_INTERPRET=1`` on machines without CUDA; with CUDA the same tests compile
the kernels for real (and tests/gpu adds bf16 and large shapes). fp32 only: the interpreter's bf16
``tl.dot`` is wrong.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from rlvr.kernels import logprob_triton, token_logprobs  # noqa: E402
from tests.unit.logprob_cases import (  # noqa: E402
    N,
    assert_close,
    assert_matches_truth,
    float64_truth,
    make_inputs,
    run,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("poisoned_outputs")


def on_device(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def run_triton(hidden, weight, targets, temperature, grad_logp, grad_entropy, **kwargs):
    hidden, weight, targets, grad_logp, grad_entropy = on_device(hidden, weight, targets, grad_logp, grad_entropy)
    result = run(hidden, weight, targets, temperature, grad_logp, grad_entropy, impl="triton", **kwargs)
    return [None if t is None else t.cpu() for t in result]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_float64_reference_with_partly_zero_upstream_gradients(temperature):
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(100 + int(temperature * 10))
    grad_logp[:9] = 0
    grad_entropy[:9] = 0  # rows that the backward skips
    grad_logp[20:26] = 0  # entropy gradient only
    grad_entropy[30:36] = 0  # log-prob gradient only
    result = run_triton(hidden, weight, targets, temperature, grad_logp, grad_entropy)
    assert all(t.dtype == torch.float32 for t in result)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, temperature, grad_logp, grad_entropy))
    assert torch.all(result[2][:9] == 0)


@pytest.mark.parametrize(("n", "v"), [(1, 33), (16, 32), (17, 1000), (40, 31)])
def test_shapes_that_do_not_fill_the_tiles(n, v):
    # Tiles are 16 rows x 32 columns in the interpreter: partial row and column tiles, one column, and a
    # vocabulary split into several ranges whose partial statistics are merged.
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(200 + n, n=n, h=19, v=v)
    result = run_triton(hidden, weight, targets, 0.9, grad_logp, grad_entropy)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 0.9, grad_logp, grad_entropy))


def test_backward_in_vocabulary_slices(monkeypatch):
    # A small dL/dz budget forces several vocabulary slices, the last one partial.
    monkeypatch.setattr(logprob_triton, "_DZ_BYTES", 20 * 64 * 4)
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(301)
    result = run_triton(hidden, weight, targets, 0.7, grad_logp, grad_entropy)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 0.7, grad_logp, grad_entropy))


def test_only_logp_and_return_entropy_false():
    hidden, weight, targets, grad_logp, _ = make_inputs(401)
    truth = float64_truth(hidden, weight, targets, 0.8, grad_logp, None)
    result = run_triton(hidden, weight, targets, 0.8, grad_logp, None)
    assert_matches_truth(result, truth)
    logp, entropy, grad_hidden, grad_weight = run_triton(hidden, weight, targets, 0.8, grad_logp, None,
                                                         return_entropy=False)
    assert entropy is None
    for name, actual, expected in zip(("logp", "grad_hidden", "grad_weight"), (logp, grad_hidden, grad_weight),
                                      (truth[0], truth[2], truth[3])):
        assert_close(actual, expected, name)


def test_only_entropy_in_graph():
    hidden, weight, targets, _, grad_entropy = make_inputs(402)
    result = run_triton(hidden, weight, targets, 1.3, None, grad_entropy)
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 1.3, None, grad_entropy))


def test_all_upstream_gradients_zero_give_zero_grads():
    hidden, weight, targets, _, _ = make_inputs(403)
    zeros = torch.zeros(N)
    _, _, grad_hidden, grad_weight = run_triton(hidden, weight, targets, 1.0, zeros, zeros)
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)


def test_non_contiguous_inputs():
    hidden, weight, targets, grad_logp, grad_entropy = make_inputs(404)
    wide = torch.randn(N, 2 * hidden.shape[1])
    wide[:, ::2] = hidden  # hidden as a strided view
    h = wide[:, ::2].to(DEVICE).requires_grad_()
    w = weight.T.contiguous().T.to(DEVICE).requires_grad_()
    logp, entropy = token_logprobs(h, w, targets.to(DEVICE), 0.7, impl="triton")
    torch.autograd.backward([logp, entropy], [grad_logp.to(DEVICE), grad_entropy.to(DEVICE)])
    result = [logp.detach().cpu(), entropy.detach().cpu(), h.grad.cpu(), w.grad.cpu()]
    assert_matches_truth(result, float64_truth(hidden, weight, targets, 0.7, grad_logp, grad_entropy))


def test_nearly_one_hot_rows_keep_relative_precision():
    hidden, weight, targets, _, _ = make_inputs(5)
    hidden = hidden * 4
    targets[::2] = (hidden @ weight.T).argmax(dim=-1)[::2]
    h, w, t = on_device(hidden, weight, targets)
    logp, entropy = token_logprobs(h, w, t, impl="triton")
    truth_logp, truth_entropy, _, _ = float64_truth(hidden, weight, targets, 1.0, None, torch.ones(N))
    assert truth_entropy.min() < 1e-9 and truth_logp.max() > -1e-9, "inputs should include nearly one-hot rows"
    torch.testing.assert_close(entropy.cpu().double(), truth_entropy, rtol=1e-4, atol=0)
    top = torch.arange(N) % 2 == 0
    torch.testing.assert_close(logp.cpu().double()[top], truth_logp[top], rtol=1e-4, atol=1e-12)


def test_dispatch_and_errors():
    hidden, weight, targets, _, _ = make_inputs(405)
    # auto takes the torch path on CPU tensors (the interpreter is for tests, not for training)
    torch_logp, _ = token_logprobs(hidden, weight, targets, impl="auto")
    assert torch_logp.grad_fn is None or "Chunked" in type(torch_logp.grad_fn).__name__
    with pytest.raises(ValueError, match="impl must be one of auto, torch, triton"):
        token_logprobs(hidden, weight, targets, impl="cuda")
    with pytest.raises(TypeError, match="one dtype"):
        token_logprobs(hidden, weight.double(), targets, impl="triton")
    with pytest.raises(TypeError, match="float64"):
        token_logprobs(hidden.double(), weight.double(), targets, impl="triton")
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0, impl="triton")
