"""GSPO (Zheng et al. 2025): the sequence-level ratio and clip against hand-computed values, and GRPO with
seq-mean-token-mean on policy, where the ratio is 1."""

import math

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs

F64 = torch.float64


def _inputs(logp, old, advantages):
    mask = torch.ones_like(old)
    return LossInputs(logp=logp.clone().requires_grad_(), old_logp=old, entropy=None, mask=mask,
                      advantages=torch.tensor(advantages, dtype=F64), num_tokens=float(mask.sum()),
                      num_seqs=float(mask.shape[0]))


def test_defaults_are_the_papers():
    o = algos.build("gspo").options
    assert (o.clip_eps_low, o.clip_eps_high, o.dual_clip, o.loss_agg, o.kl_coef) == \
        (3e-4, 4e-4, None, "seq-mean-token-mean", 0.0)
    assert algos.get("gspo").estimator == "grpo"


def test_on_policy_it_is_grpo_with_sequence_means():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g, dtype=F64) * 2
    mask = torch.ones(3, 5, dtype=F64)
    mask[1, 2:] = 0
    grpo = algos.build("grpo", loss_agg="seq-mean-token-mean", dual_clip=None)
    out = []
    for algorithm in (algos.build("gspo"), grpo):
        inputs = _inputs(old, old, [1.0, -2.0, 0.5])
        inputs.mask = mask
        loss, metrics = algorithm.loss(inputs)
        loss.backward()
        out.append((loss.item(), inputs.logp.grad, metrics["actor/ratio_mean"]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-12, atol=0) and out[0][2] == out[1][2] == 1.0


def test_off_policy_by_hand():
    old = torch.zeros(2, 2, dtype=F64)
    logp = torch.tensor([[0.1, 0.3], [-1e-4, 1e-4]], dtype=F64)  # sequence log-ratios 0.2 and 0
    inputs = _inputs(logp, old, [1.0, -1.0])
    loss, metrics = algos.build("gspo").loss(inputs)
    loss.backward()
    s0 = math.exp(0.2)  # row 0: A > 0 and s above 1 + 4e-4: clipped, the loss is -A (1 + 4e-4), no gradient
    expected = (-(1 + 4e-4) + 1.0) / 2  # row 1: s = 1 inside the bounds, -A s = 1; each row's token mean, averaged
    assert loss.item() == pytest.approx(expected, abs=1e-7)  # the clip bound 1 + 4e-4 is computed in float32
    # d/dlogp_t of -A s_t is -A s (the token's score scaled by the sequence ratio), over T_i = 2 and B = 2
    assert inputs.logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25], rel=1e-12)
    assert metrics["actor/ratio_mean"] == pytest.approx((2 * s0 + 2) / 4, rel=1e-12)
    assert metrics["actor/clip_frac_high"] == 0.5 and metrics["actor/clip_frac_low"] == 0.0


def test_the_ratio_is_the_geometric_mean_of_the_token_ratios():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(1, 4, generator=g, dtype=F64)
    logp = old + 0.01 * torch.randn(1, 4, generator=g, dtype=F64)
    wide = algos.build("gspo", clip_eps_low=0.5, clip_eps_high=0.5)  # no clip binds
    _, metrics = wide.loss(_inputs(logp, old, [1.0]))
    token_ratios = torch.exp(logp - old)[0].tolist()
    assert metrics["actor/ratio_mean"] == pytest.approx(math.prod(token_ratios) ** (1 / 4), rel=1e-12)
