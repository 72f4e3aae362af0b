"""Driver-side advantage estimators shared by several presets, registered by name: ``fn(batch, rewards, ctx) ->
(advantages, metrics)`` (:mod:`rlvr.algos.registry`). ``rewards`` are the batch's, less the KL when it is placed
in the reward. Estimators of one algorithm live in that algorithm's module (DCPO, COPO, A*-PO)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.functional import group_advantages, group_stats
from rlvr.algos.registry import estimator


@estimator("grpo")
def grpo(batch, rewards: Tensor, ctx) -> tuple[Tensor, dict[str, float]]:  # [N]
    """GRPO's outcome advantages: each reward less its group's mean, over the group's (or the batch's) std
    (:func:`~rlvr.algos.functional.group_advantages`, ``adv_norm`` / ``adv_eps``)."""
    o = ctx.options
    return group_advantages(rewards, batch.group, o.adv_norm, o.adv_eps), {}


@estimator("rloo")
def rloo(batch, rewards: Tensor, ctx) -> tuple[Tensor, dict[str, float]]:  # [N]
    """RLOO's leave-one-out advantages, ``A_i = R_i - mean_{j != i} R_j = G / (G - 1) (R_i - mean_g R)`` for a group
    of ``G`` samples (verl ``compute_rloo_outcome_advantage``); a group of one keeps its reward, as verl does."""
    rewards = rewards.to(torch.float32)
    index, count, mean = group_stats(rewards, batch.group)
    size = count[index]
    leave_one_out = size / (size - 1).clamp(min=1) * (rewards - mean[index])
    return torch.where(size > 1, leave_one_out, rewards), {}
