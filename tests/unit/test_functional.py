"""The GRPO maths against hand-computed values (ALGORITHMS.md sections 0 and 1)."""

import math

import pytest
import torch

from rlvr.algos.functional import aggregate, clipped_pg_terms, group_advantages, kl_penalty


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    group = torch.tensor([0, 0, 0, 7, 7, 3])  # groups of 3, 2 and 1 rows; ids need not be contiguous
    adv = group_advantages(rewards, group, "group", eps=0.0)
    # group 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    std0 = math.sqrt(1 / 3)
    expected = [(2 / 3) / std0, (-1 / 3) / std0, (-1 / 3) / std0, 0.0, 0.0, 0.5]  # singleton: mean 0, std 1
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_modes():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1])
    assert group_advantages(rewards, group, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    batch = group_advantages(rewards, group, "batch", eps=0.0)
    assert batch.tolist() == pytest.approx((torch.tensor([0.5, -0.5, 0, 0]) / rewards.std()).tolist())
    with pytest.raises(ValueError, match="'group', 'batch' or 'none'"):
        group_advantages(rewards, group, "mean")


def test_aggregation_modes_by_hand():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(losses, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(losses, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(losses, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(losses, mask, "seq-mean-token-sum-norm", loss_scale=8).item() == pytest.approx(10 / 16)
    # Global scope: a micro-batch divided by the whole mini-batch's token count.
    assert aggregate(losses, mask, "token-mean", num_tokens=20).item() == pytest.approx(10 / 20)
    with pytest.raises(ValueError, match="loss_scale"):
        aggregate(losses, mask, "seq-mean-token-sum-norm")


def test_clipped_loss_clips_only_where_it_should():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 1.1, 1.5, 1.5]]))  # ratios 0.5, 1.1, 1.5, 1.5
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    loss, clipped, ratio = clipped_pg_terms(logp, old, adv, 0.2, 0.2)
    # A>0: min(r, 1.2) objective -> loss -min(...). r=0.5 is not clipped for A>0 (pessimistic bound).
    assert loss.tolist()[0] == pytest.approx([-0.5, -1.1, -1.2, 1.5])
    assert clipped.tolist()[0] == [False, False, True, False]
    # Dual clip bounds the loss of a negative advantage at c * |A|.
    loss, clipped, _ = clipped_pg_terms(torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1), torch.tensor([-1.0]), 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx(3.0) and clipped.item()


def test_clip_gradient_vanishes_outside_the_trust_region():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _, _ = clipped_pg_terms(logp, old, torch.tensor([1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -1.0])


def test_kl_estimators():
    logp, ref = torch.tensor([[0.0, -1.0]]), torch.tensor([[-0.5, -1.0]])
    d = 0.5
    assert kl_penalty(logp, ref, "k1").tolist()[0] == pytest.approx([d, 0.0])
    assert kl_penalty(logp, ref, "k2").tolist()[0] == pytest.approx([d * d / 2, 0.0])
    assert kl_penalty(logp, ref, "k3").tolist()[0] == pytest.approx([math.exp(-d) + d - 1, 0.0])
    x = logp.clone().requires_grad_()
    kl_penalty(x, ref, "k3+").sum().backward()
    assert x.grad.tolist()[0] == pytest.approx([d, 0.0])  # k2's gradient
