"""The Triton ``policy_loss`` kernels compiled for a real GPU against the float64 reference and the torch path:
fp32 and bf16 inputs, long rows (several 1024-token tiles), the algorithms.

Run on a GPU machine: ``python -m pytest -q tests/gpu``.
"""

from __future__ import annotations

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs, RunInfo
from rlvr.algos.functional import AGG_MODES
from rlvr.algos.registry import Part
from rlvr.kernels.policy_loss import policy_loss
from tests.unit.test_policy_loss_kernel import (CLIPS, LOSS_SCALE, _assert_close, _assert_stats, _composed_loss,
                                                _expected_stats, _inputs, _reference)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run_cuda(logp, *args, **kwargs):
    lp = logp.detach().cuda().requires_grad_()
    out = policy_loss(lp, *[a.cuda() if isinstance(a, torch.Tensor) else a for a in args],
                      **{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
    out.loss.backward()
    return out.loss.detach().cpu(), lp.grad.cpu(), out


@pytest.mark.parametrize("clip", ["fixed", "dcpo"])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_fp32_matches_float64_and_auto_picks_triton(clip, agg):
    logp, old, mask, adv = _inputs(2000 + AGG_MODES.index(agg) + 10 * (clip == "dcpo"), CLIPS[clip], n=64, t=3000,
                                   zero_rows=(5, 6))
    loss, grad, out = _run_cuda(logp, old, mask, adv, **CLIPS[clip], agg=agg, loss_scale=LOSS_SCALE, impl="triton")
    expected = _reference(logp, old, mask, adv, CLIPS[clip], 3.0, agg)
    _assert_close(loss, grad, *expected)
    _assert_stats(out.stats, _expected_stats(logp, old, adv, mask, CLIPS[clip], 3.0))
    auto_loss, auto_grad, _ = _run_cuda(logp, old, mask, adv, **CLIPS[clip], agg=agg, loss_scale=LOSS_SCALE)
    assert torch.equal(auto_loss, loss) and torch.equal(auto_grad, grad), "auto must run the Triton kernels"
    torch_loss, torch_grad, torch_out = _run_cuda(logp, old, mask, adv, **CLIPS[clip], agg=agg,
                                                  loss_scale=LOSS_SCALE, impl="torch")
    _assert_close(torch_loss, torch_grad, *expected)
    _assert_stats(torch_out.stats, out.stats)


@pytest.mark.parametrize("clip", ["fixed", "dcpo"])
def test_bf16_inputs(clip):
    logp, old, mask, adv = _inputs(2100 + (clip == "dcpo"), CLIPS[clip], n=48, t=2500, adv="token")
    logp, old = logp.bfloat16(), old.bfloat16()
    loss, grad, _ = _run_cuda(logp, old, mask.bool(), adv, **CLIPS[clip], agg="seq-mean-token-mean", impl="triton")
    assert grad.dtype == torch.bfloat16
    expected = _reference(logp.float(), old.float(), mask, adv, CLIPS[clip], 3.0, "seq-mean-token-mean")
    _assert_close(loss, grad.float(), *expected, rel=2 ** -7)  # fp32 maths; the gradient is stored in bf16
    # The torch path computes in bf16 itself (its bf16 ratios move tokens across the clip bounds): close in
    # value, and its gradient further from the fp32 one than the kernel's.
    torch_loss, torch_grad, _ = _run_cuda(logp, old, mask.bool(), adv, **CLIPS[clip], agg="seq-mean-token-mean",
                                          impl="torch")
    assert abs(torch_loss.item() - expected[0].item()) <= 2e-2 * expected[2]
    assert (grad.double() - expected[1]).norm() < (torch_grad.double() - expected[1]).norm()


@pytest.mark.parametrize("name, options", [("grpo", {}), ("dcpo", {}), ("forking-tokens", {}),
                                           ("drgrpo", {"loss_agg_scope": "micro-batch"})])
def test_algorithm_loss_on_cuda(name, options, monkeypatch):
    logp, old, mask, adv = _inputs(2300, CLIPS["dcpo"], n=32, t=1500)
    entropy = torch.rand(mask.shape, generator=torch.Generator().manual_seed(2301))

    def run():
        inputs = LossInputs(logp=logp.cuda().requires_grad_(), old_logp=old.cuda(), entropy=entropy.cuda(),
                            mask=mask.cuda(), advantages=adv.cuda(), num_tokens=float(mask.sum()), num_seqs=32.0,
                            num_micro=2)
        loss, metrics = algorithm.loss(inputs)
        loss.backward()
        return loss.item(), inputs.logp.grad.cpu(), metrics

    algorithm = algos.build(name, run=RunInfo(max_new_tokens=1500), **options)
    fused = run()
    algorithm.loss_part = Part("composed", _composed_loss, meta=algorithm.loss_part.meta)
    unfused = run()
    assert fused[0] == pytest.approx(unfused[0], rel=1e-5)
    assert (fused[1] - unfused[1]).norm() <= 1e-5 * unfused[1].norm()
    for key, value in unfused[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
