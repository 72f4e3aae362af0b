"""Pure tensor functions behind the algorithms, so the maths can be checked against other implementations.

Shapes: N rows (responses), T response tokens (right-padded), ``mask`` is 1.0 on valid response tokens.
Formulas and defaults follow ../shared/ALGORITHMS.md sections 0 and 1 (verl's ``core_algos.py`` where the
papers leave a choice open).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor

from rlvr.algos.options import AGG_MODES, AdvNorm, AggMode, KLKind
from rlvr.kernels.reference import aggregate, check_dual_clip, clip_metrics, clipped_pg_terms

# One algorithm's maths lives in that algorithm's module; the names stay importable from here.
_MOVED = {
    "dcpo_ratio_bounds": "rlvr.algos.dcpo", "check_dcpo_bounds": "rlvr.algos.dcpo",
    "dcpo_bound_metrics": "rlvr.algos.dcpo", "dcpo_smooth_advantages": "rlvr.algos.dcpo",
    "forking_token_mask": "rlvr.algos.forking",
    "astar_values": "rlvr.algos.astar", "copo_advantages": "rlvr.algos.copo", "COPO_MODES": "rlvr.algos.presets.copo",
    "CopoMode": "rlvr.algos.presets.copo",
}

__all__ = ["AGG_MODES", "AdvNorm", "AggMode", "KLKind", "aggregate", "check_dual_clip", "clip_metrics",
           "clipped_pg_terms", "group_advantages", "group_stats", "kl_penalty", "truncated_is_weights", *_MOVED]


def group_advantages(
    rewards: Tensor,  # [N]
    group: Tensor,  # [N] int, rows of one prompt share a value; groups may differ in size
    norm: AdvNorm = "group",
    eps: float = 1e-6,
) -> Tensor:  # [N]
    """GRPO outcome advantages ``(R_i - mean_g R) / (std + eps)``.

    ``std`` is the unbiased (n-1) estimator as in verl and TRL: over the row's group for ``"group"``, over
    the whole batch for ``"batch"`` (TRL ``scale_rewards="batch"``), and no division for ``"none"``
    (Dr.GRPO). A group of one row gets mean 0 and std 1 (verl), so its advantage is its reward.
    """
    if norm not in ("group", "batch", "none"):
        raise ValueError(f"advantage norm {norm!r} is unknown; use 'group', 'batch' or 'none'")
    rewards = rewards.to(torch.float32)
    index, count, mean = group_stats(rewards, group)
    num_groups = count.numel()
    centred = rewards - mean[index]
    singleton = count[index] < 2
    centred = torch.where(singleton, rewards, centred)
    if norm == "none":
        return centred
    if norm == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.tensor(1.0)
        return _safe_divide(centred, std + eps)
    squares = torch.zeros(num_groups).index_add_(0, index, (rewards - mean[index]) ** 2)
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    std = torch.where(count < 2, torch.ones_like(std), std)
    return _safe_divide(centred, std[index] + eps)


def group_stats(
    values: Tensor,  # [N] float
    group: Tensor,  # [N] int, rows of one prompt share a value
) -> tuple[Tensor, Tensor, Tensor]:  # index [N] long, count [G], mean [G]
    """Each row's group index (groups numbered in sorted order of their ids), and each group's row count and mean
    of ``values``, in ``values``' dtype."""
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    count = values.new_zeros(num_groups).index_add_(0, index, torch.ones_like(values))
    mean = values.new_zeros(num_groups).index_add_(0, index, values) / count
    return index, count, mean


def _safe_divide(centred: Tensor, scale: Tensor) -> Tensor:
    """``centred / scale``, with 0 (not NaN) for a uniform group when eps is 0."""
    return torch.where(centred == 0, torch.zeros_like(centred), centred / scale)


def truncated_is_weights(
    learner_logp: Tensor,  # [N,T] the learner's log-probs of the sampled tokens (old_logprobs)
    rollout_logp: Tensor,  # [N,T] the rollout engine's log-probs of the same tokens
    mask: Tensor,  # [N,T] valid response tokens
    cap: float,
) -> tuple[Tensor, dict[str, float]]:  # weights [N,T] (1 off the mask), metrics
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): ``w = min(exp(learner_logp - rollout_logp), cap)`` per token, detached.

    Also measures the mismatch itself: ``rollout/mismatch_k3`` (the k3 estimate of KL(rollout || learner)
    per token), ``rollout/logprob_abs_diff``, and ``tis/weight_mean`` / ``tis/clip_frac`` (tokens whose
    ratio exceeded the cap). Raises ValueError when the engine returned no log-probs (NaN).
    """
    valid = mask.bool()
    diff = (learner_logp - rollout_logp).float()
    if torch.isnan(diff[valid]).any():
        raise ValueError("truncated importance sampling (algorithm.tis_cap) needs the rollout engine's log-probs, "
                         "and some response tokens have none")
    ratio = torch.exp(diff.masked_fill(~valid, 0.0))
    weights = torch.clamp(ratio, max=cap).masked_fill(~valid, 1.0).detach()
    count = valid.sum().clamp(min=1)
    # k3 of KL(rollout || learner) with d = learner - rollout: exp(d) - 1 - d, as kl_penalty's k3.
    k3 = (torch.exp(diff) - 1.0 - diff).masked_fill(~valid, 0.0)
    metrics = {
        "rollout/mismatch_k3": float(k3.sum() / count),
        "rollout/logprob_abs_diff": float(diff.abs().masked_fill(~valid, 0.0).sum() / count),
        "tis/weight_mean": float(weights.masked_fill(~valid, 0.0).sum() / count),
        "tis/clip_frac": float(((ratio > cap) & valid).sum() / count),
    }
    return weights, metrics


def kl_penalty(
    logp: Tensor,  # [N,T]
    ref_logp: Tensor,  # [N,T]
    kind: KLKind = "k3",
) -> Tensor:  # [N,T]
    """Per-token KL(pi_theta || pi_ref) estimates with ``d = logp - ref_logp`` (verl ``kl_penalty``).

    k1 ``d``; k2 ``d^2 / 2``; k3 ``exp(-d) + d - 1`` with ``-d`` clamped to [-20, 20] and the result to
    [-10, 10] (verl ``low_var_kl``); ``k1+`` / ``k3+`` have k1's / k3's value and k2's gradient
    (straight-through, verl's ``+`` suffix), since k1 and k3 are unbiased for the KL's value but not for
    its gradient.
    """
    d = logp - ref_logp
    if kind not in ("k1", "k2", "k3", "k1+", "k3+"):
        raise ValueError(f"KL estimator {kind!r} is unknown; use 'k1', 'k2', 'k3', 'k1+' or 'k3+'")
    if kind.startswith("k1"):
        value = d
    elif kind == "k2":
        return 0.5 * d.square()
    else:
        value = torch.clamp(torch.exp(torch.clamp(-d, -20, 20)) + d - 1, -10, 10)
    if not kind.endswith("+"):
        return value
    k2 = 0.5 * d.square()
    return k2 + (value - k2).detach()


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
