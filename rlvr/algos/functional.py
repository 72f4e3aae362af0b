"""Pure tensor functions behind the algorithms, so the maths can be checked against other implementations.

Shapes: N rows (responses), T response tokens (right-padded), ``mask`` is 1.0 on valid response tokens.
Formulas and defaults follow ../shared/ALGORITHMS.md sections 0 and 1 (verl's ``core_algos.py`` where the
papers leave a choice open).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = AggMode.__args__  # type: ignore[attr-defined]
AdvNorm = Literal["group", "batch", "none"]
KLKind = Literal["k1", "k2", "k3", "k3+"]


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
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(num_groups).index_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros(num_groups).index_add_(0, index, rewards)
    mean = total / count
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
) -> Tensor:  # scalar
    """Reduce a per-token loss matrix to a scalar (ALGORITHMS.md section 0).

    ``num_tokens`` / ``num_seqs`` are the denominators' scope: pass the counts of the whole mini-batch
    (across micro-batches and ranks) to get the global mean when micro-batch losses are summed by
    gradient accumulation; leave them None for the local (micro-batch) mean.
    ``loss_scale`` is the constant ``L_max`` of ``seq-mean-token-sum-norm`` (Dr.GRPO).
    """
    mask = mask.to(losses.dtype)
    masked = losses * mask
    if mode == "token-mean":
        denominator = mask.sum() if num_tokens is None else num_tokens
        return masked.sum() / torch.clamp(torch.as_tensor(denominator, dtype=losses.dtype), min=1.0)
    rows = losses.shape[0] if num_seqs is None else num_seqs
    rows = torch.clamp(torch.as_tensor(rows, dtype=losses.dtype), min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / rows
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
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (verl clip_ratio_c, default 3.0), got {dual_clip}")
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
        clipped = clipped | dual
    return loss, clipped, ratio


def clipped_pg_loss(
    logp: Tensor,  # [N,T]
    old_logp: Tensor,  # [N,T]
    advantages: Tensor,  # [N] or [N,T]
    mask: Tensor,  # [N,T]
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    dual_clip: float | None = None,
    agg: AggMode = "token-mean",
    loss_scale: float | None = None,
) -> Tensor:  # scalar
    """:func:`clipped_pg_terms` aggregated with ``agg`` (local denominators)."""
    loss, _, _ = clipped_pg_terms(logp, old_logp, advantages, eps_low, eps_high, dual_clip)
    return aggregate(loss, mask, agg, loss_scale=loss_scale)


def kl_penalty(
    logp: Tensor,  # [N,T]
    ref_logp: Tensor,  # [N,T]
    kind: KLKind = "k3",
) -> Tensor:  # [N,T]
    """Per-token KL(pi_theta || pi_ref) estimates with ``d = logp - ref_logp`` (verl ``kl_penalty``).

    k1 ``d``; k2 ``d^2 / 2``; k3 ``exp(-d) + d - 1`` with ``-d`` clamped to [-20, 20] and the result to
    [-10, 10] (verl ``low_var_kl``); ``k3+`` has k3's value and k2's gradient (straight-through), since k1
    and k3 are unbiased for the KL's value but not for its gradient.
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    if kind in ("k3", "k3+"):
        k3 = torch.clamp(torch.exp(torch.clamp(-d, -20, 20)) + d - 1, -10, 10)
        if kind == "k3":
            return k3
        k2 = 0.5 * d.square()
        return k2 + (k3 - k2).detach()
    raise ValueError(f"KL estimator {kind!r} is unknown; use 'k1', 'k2', 'k3' or 'k3+'")
