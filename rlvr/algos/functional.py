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


def aggregate(
    losses: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    mode: AggMode = "token-mean",
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    loss_scale: float | None = None,
    denominator_mask: Tensor | None = None,  # [N,T], default ``mask``
) -> Tensor:  # scalar
    """Reduce a per-token loss matrix to a scalar (ALGORITHMS.md section 0).

    ``num_tokens`` / ``num_seqs`` are the denominators' scope: pass the counts of the whole mini-batch
    (across micro-batches and ranks) to get the global mean when micro-batch losses are summed by
    gradient accumulation; leave them None for the local (micro-batch) mean.
    ``loss_scale`` is the constant ``L_max`` of ``seq-mean-token-sum-norm`` (Dr.GRPO).
    ``mask`` selects the tokens summed; ``denominator_mask`` the tokens counted by the local ``token-mean``
    and by ``seq-mean-token-mean`` (token masks such as forking tokens may normalise by all valid tokens).
    """
    mask = mask.to(losses.dtype)
    counted = mask if denominator_mask is None else denominator_mask.to(losses.dtype)
    masked = losses * mask
    if mode == "token-mean":
        denominator = counted.sum() if num_tokens is None else num_tokens
        return masked.sum() / torch.clamp(torch.as_tensor(denominator, dtype=losses.dtype), min=1.0)
    rows = losses.shape[0] if num_seqs is None else num_seqs
    rows = torch.clamp(torch.as_tensor(rows, dtype=losses.dtype), min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / counted.sum(-1).clamp(min=1.0)).sum() / rows
    if mode == "seq-mean-token-sum":
        return masked.sum() / rows
    if mode == "seq-mean-token-sum-norm":
        if loss_scale is None:
            raise ValueError("seq-mean-token-sum-norm needs loss_scale (the constant L_max, e.g. max_new_tokens)")
        return masked.sum() / (rows * loss_scale)
    raise ValueError(f"loss aggregation {mode!r} is unknown; use one of {', '.join(AGG_MODES)}")


def clipped_pg_terms(
    logp: Tensor,  # [N,T]
    old_logp: Tensor,  # [N,T]
    advantages: Tensor,  # [N] or [N,T]
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # loss [N,T], clipped [N,T] bool, ratio [N,T]
    """Per-token PPO clipped loss ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``, with optional dual
    clip ``min(., -c A)`` for ``A < 0`` (Ye et al. 2019; verl ``clip_ratio_c``).

    ``eps_low``/``eps_high`` may be tensors of shape [N,T] (DCPO's per-token bounds).
    ``clipped`` marks tokens whose gradient the clip removed.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - torch.as_tensor(eps_low), 1.0 + torch.as_tensor(eps_high))
    clipped_loss = -advantages * clipped_ratio
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if dual_clip is not None:
        check_dual_clip(dual_clip)
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
        clipped = clipped | dual
    return loss, clipped, ratio


def check_dual_clip(dual_clip: float | None) -> None:
    """Raise unless ``dual_clip`` is None (off) or > 1."""
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (verl clip_ratio_c, default 3.0) or None, got {dual_clip}")


def clip_metrics(parts: dict[str, Tensor], mask: Tensor, dual_clip: float | None) -> dict[str, float]:
    """Fractions of valid tokens whose gradient a clip removed: ``high`` (A>0, ratio above its upper
    bound), ``low`` (A<0, below its lower bound), ``dual`` (A<0, above the dual clip c); and the ratio mean.

    ``parts``: ``ratio`` [N,T], ``low``/``high`` (the ratio bounds, scalars or [N,T]) and ``advantages``
    ([N] or [N,T]); ``mask`` [N,T] marks the valid tokens.
    """
    ratio, low, high = parts["ratio"], parts["low"], parts["high"]
    adv = parts["advantages"]
    adv = adv[:, None] if adv.dim() == 1 else adv
    valid = mask.bool()
    count = valid.sum().clamp(min=1).float()

    def frac(condition: Tensor) -> float:
        return float((condition & valid).sum() / count)

    out = {
        "actor/clip_frac_high": frac((adv > 0) & (ratio > high)),
        "actor/clip_frac_low": frac((adv < 0) & (ratio < low)),
        "actor/ratio_mean": float((ratio * mask).sum() / count),
    }
    out["actor/clip_frac"] = out["actor/clip_frac_high"] + out["actor/clip_frac_low"]
    if dual_clip is not None:
        out["actor/clip_frac_dual"] = frac((adv < 0) & (ratio > dual_clip))
    return out


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
