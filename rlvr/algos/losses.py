"""Learner-side per-token losses shared by several presets, registered by name: ``fn(inputs, ctx, agg) ->
(pg_loss, metrics)`` (:mod:`rlvr.algos.registry`), ``agg`` the aggregation chosen by :mod:`rlvr.algos.objective`.
Losses of one algorithm live in that algorithm's module (DCPO, COPO, A*-PO).

Registration flags: ``tis`` (the loss is positively homogeneous in the advantage, so truncated importance weights
may scale it), ``moves_without_advantage`` (a zero advantage still has a gradient), ``needs_reference``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.algos.functional import clip_metrics, clipped_pg_terms
from rlvr.algos.registry import loss


def fused_clipped_loss(inputs, agg, spec: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
    """The PPO-clipped surrogate of ``spec``'s clip by the fused kernel :func:`rlvr.kernels.policy_loss.policy_loss`
    (Triton on CUDA, the same functional composition elsewhere), aggregated by ``agg``, with its clip metrics over
    the valid tokens."""
    from rlvr.kernels.policy_loss import policy_loss  # lazily: rlvr.kernels imports rlvr.algos

    fused = policy_loss(inputs.logp, inputs.old_logp, agg.mask, inputs.advantages, **spec, agg=agg.mode,
                        **agg.denominators(), stats_mask=inputs.mask)
    return fused.loss, fused.stats


@loss("clipped", tis=True)
def clipped(inputs, ctx, agg) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`` with the dual clip ``c`` for
    ``A < 0`` (:func:`~rlvr.algos.functional.clipped_pg_terms`), computed by the fused kernel."""
    o = ctx.options
    return fused_clipped_loss(inputs, agg, {"clip": "fixed", "eps_low": o.clip_eps_low, "eps_high": o.clip_eps_high,
                                            "dual_clip": o.dual_clip})


@loss("gspo", tis=True)
def gspo(inputs, ctx, agg) -> tuple[Tensor, dict[str, float]]:
    """GSPO's sequence-level clipped surrogate (Zheng et al. 2025, eq. 7, in verl's token form
    ``compute_policy_loss_gspo``): with the sequence ratio ``s_i = exp(mean_t (logp - old_logp))`` over the row's
    valid tokens, each token carries ``s_{i,t} = sg[s_i] * pi / sg[pi]``, whose value is ``s_i`` and whose gradient is
    ``s_i`` times the token's score, and the loss is PPO's clip of it, ``max(-A s, -A clip(s, 1 - eps_low,
    1 + eps_high))`` (with the dual clip if set). Aggregated by ``agg`` (GSPO: ``seq-mean-token-mean``, which makes
    each sequence's gradient ``s_i A_i`` times its mean token score). The log-ratio is capped at 10, as verl does."""
    o = ctx.options
    valid = inputs.mask.to(inputs.logp.dtype)
    seq_log_ratio = ((inputs.logp - inputs.old_logp) * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)
    log_ratio = torch.clamp(seq_log_ratio.detach()[:, None] + inputs.logp - inputs.logp.detach(), max=10.0)
    per_token, _, ratio = clipped_pg_terms(log_ratio, torch.zeros_like(log_ratio), inputs.advantages,
                                           o.clip_eps_low, o.clip_eps_high, o.dual_clip)
    pg = agg(per_token)
    with torch.no_grad():
        parts = {"ratio": ratio, "low": torch.tensor(1.0 - o.clip_eps_low), "high": torch.tensor(1.0 + o.clip_eps_high),
                 "advantages": inputs.advantages}
        return pg, clip_metrics(parts, inputs.mask, o.dual_clip)
