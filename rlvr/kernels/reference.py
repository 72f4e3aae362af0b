"""The torch maths the fused loss kernel implements, and its reference: PPO's clipped terms with the dual clip, DCPO's
per-token ratio bounds, the four loss aggregations and the clip statistics (ALGORITHMS.md sections 0-2).

They live here, below the algorithms, because :func:`rlvr.kernels.policy_loss.policy_loss` composes them on a CPU and
is tested against them; the algorithms import them from here, and ``rlvr.algos.functional`` (and ``rlvr.algos.dcpo``
for the DCPO functions) re-export them under their usual names.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The loss aggregations (rlvr.algos.options.AggMode spells the same four; a unit test keeps them equal).
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(
    losses: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    mode: str = "token-mean",
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


def dcpo_ratio_bounds(
    old_logp: Tensor,  # [N,T]
    eps_low: float,
    eps_high: float,
    cap: float | None = 10.0,
) -> tuple[Tensor, Tensor]:  # low [N,T], high [N,T]
    """DCPO dynamic-adaptive clipping (DAC) bounds on the ratio ``r`` (ALGORITHMS.md 2.1(a)).

    DCPO bounds ``|(r - 1) p| <= eps`` with ``p = r q`` the new probability and ``q = exp(old_logp)`` the
    old probability of the sampled token, instead of PPO's ``|r - 1| <= eps``. Solving the quadratics:

        r_low(q)  = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q, 0))
        r_high(q) = min(1/2 + 1/2 sqrt(1 + 4 eps_high / q), cap)

    so ``(r_high - 1) r_high q = eps_high`` exactly (before the cap), and ``(1 - r_low) r_low q = eps_low``
    while ``q > 4 eps_low`` (below that ``r_low = 0.5``). Compared with fixed bounds
    ``[1 - eps_low, 1 + eps_high]``: rare tokens get a much wider upper bound (q=0.01, eps_high=0.2 ->
    5.0), likely ones a slightly tighter one (q=1 -> 1.171); the lower bound is never tighter than
    ``(1 + sqrt(1 - 4 eps_low)) / 2`` (0.724 for eps_low=0.2, below 0.8) and is 0.5 once ``q <= 4 eps_low``.
    Output dtype follows ``old_logp`` (computed in float64).
    Feed the result to :func:`clipped_pg_terms` as ``1 - low`` and ``high - 1`` with ``dual_clip=10``.

    Authors' code (lime-RL/DCPO ``core_algos.get_clip_low_high``, which names its argument
    ``ref_logprob`` but receives the old log-prob) clamps ``r_high <= max(clip_ratio_c, 10)``; ``cap``
    is that value (10 with the recipe's ``clip_ratio_c=10``); the paper has no cap: pass ``cap=None``.
    Departure from the code: a token with ``q == 0`` (old log-prob -inf or underflowed) gets the limits
    ``r_low = 0.5`` and ``r_high = cap``; the code's ``where(q != 0, ...)`` gives it ``r_low = 1``.
    """
    check_dcpo_bounds(eps_low, eps_high, cap)
    inv_q = torch.exp(-old_logp.to(torch.float64))  # 1/q; inf when q underflows, which the formulas absorb
    low = 0.5 + 0.5 * torch.sqrt(torch.clamp(1.0 - 4.0 * eps_low * inv_q, min=0.0))
    high = 0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * eps_high * inv_q)
    if cap is not None:
        high = torch.clamp(high, max=cap)
    dtype = old_logp.dtype if old_logp.is_floating_point() else torch.float32
    return low.to(dtype), high.to(dtype)


def check_dcpo_bounds(eps_low: float, eps_high: float, cap: float | None) -> None:
    """Raise unless the arguments of :func:`dcpo_ratio_bounds` are in range."""
    if eps_low < 0 or eps_low >= 1:
        raise ValueError(f"dcpo eps_low must be in [0, 1), got {eps_low} (the recipe uses 0.2)")
    if eps_high < 0:
        raise ValueError(f"dcpo eps_high must be >= 0, got {eps_high} (the recipe uses 0.28)")
    if cap is not None and not cap > 1.0:
        raise ValueError(f"dcpo cap on the upper ratio bound must be > 1 or None, got {cap} (code: 10)")


def dcpo_bound_metrics(low: Tensor, high: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean DCPO ratio bounds ``low``/``high`` [N,T] over the valid tokens of ``mask`` [N,T] (0 when none)."""
    keep = mask.bool()
    if not keep.any():
        return {"dcpo/bound_low_mean": 0.0, "dcpo/bound_high_mean": 0.0}
    return {"dcpo/bound_low_mean": float(low[keep].mean()), "dcpo/bound_high_mean": float(high[keep].mean())}
