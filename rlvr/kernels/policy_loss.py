"""The clipped policy-gradient loss in one call: advantages, ratio bounds, PPO clip, dual clip, aggregation and
clip statistics (ALGORITHMS.md sections 0-2).

With ``A`` the advantage (per row or per token), ``r = exp(logp -
old_logp)`` and ratio bounds ``[lo, hi]`` (``[1 - eps_low, 1 + eps_high]``, or DCPO's per-token
``functional.dcpo_ratio_bounds(old_logp)``), the per-token loss is ``functional.clipped_pg_terms``'::

    l = max(-A r, -A clip(r, lo, hi)),    and for A < 0 with a dual clip c:  l = min(l, -c A)

and :func:`policy_loss` returns ``functional.aggregate(l, mask, agg, ...)``, differentiable in ``logp``.

Two implementations, one contract. ``torch`` composes the :mod:`rlvr.kernels.reference` functions (CPU, and
the reference). ``triton`` (CUDA) reads each input once: a forward kernel computes per row the masked loss
sum ``S_i``, its denominator count and the clip statistics, torch
finishes ``aggregate`` over those ``[N]`` vectors, and a backward kernel recomputes each token for
``dlogp``. Differences of the Triton path from the torch one:

* It computes in fp32 whatever the input dtypes (the torch path computes in the inputs' dtype), and takes
  ``old_logp`` and ``advantages`` as constants: only ``logp`` gets a gradient.
* Sums run in another order, so values agree to fp32 rounding, not bitwise; a ratio within rounding of a
  bound may fall on the other side of it (measure zero for continuous inputs).
* DCPO bounds are computed in fp32 (``dcpo_ratio_bounds`` uses fp64) in a form that never gives NaN:
  eps 0 gives the bound 1 even where ``q = exp(old_logp)`` underflows to 0 (torch: ``0 * inf`` = NaN), and
  an uncapped upper bound above about 1e19 (q below about 4 eps e^-89) is inf.

Gradients at ties follow torch's autograd of ``clipped_pg_terms`` exactly: ``torch.maximum`` /
``torch.minimum`` split the gradient half and half between equal arguments, and ``clamp`` passes it for
``lo <= r <= hi``. So ``dl/dlogp = -A r`` inside the bounds, 0 where the clip is active, ``-A r / 2`` where
the dual clip's bound ``-c A`` equals the loss exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from rlvr.kernels.dispatch import IMPLS, check_triton_device
from rlvr.kernels.reference import (aggregate, check_dcpo_bounds, check_dual_clip, clip_metrics, clipped_pg_terms,
                                    dcpo_bound_metrics, dcpo_ratio_bounds)

__all__ = ["PolicyLoss", "policy_loss"]

CLIP_MODES = ("fixed", "dcpo")


@dataclass
class PolicyLoss:
    """What :func:`policy_loss` returns."""

    loss: Tensor  # scalar, differentiable in logp
    stats: dict[str, float]  # clip statistics, the keys and values of functional.clip_metrics (+ dcpo bounds)


def policy_loss(
    logp: Tensor,  # [N,T] current policy log-probs, differentiable
    old_logp: Tensor,  # [N,T] behaviour policy
    mask: Tensor,  # [N,T] tokens whose loss is summed (float or bool)
    advantages: Tensor,  # [N] or [N,T]
    *,
    clip: str = "fixed",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    bound_cap: float | None = 10.0,
    dual_clip: float | None = 3.0,
    agg: str = "token-mean",
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    loss_scale: float | None = None,
    denominator_mask: Tensor | None = None,  # [N,T]
    stats_mask: Tensor | None = None,  # [N,T]
    impl: str = "auto",
) -> PolicyLoss:
    """The aggregated PPO-clipped loss of ``logp`` and its clip statistics (module docstring: maths).

    Args:
        advantages: per row or per token.
        clip: ``"fixed"``, the ratio in ``[1 - eps_low, 1 + eps_high]``; ``"dcpo"``, DCPO's per-token bounds
            ``dcpo_ratio_bounds(old_logp, eps_low, eps_high, bound_cap)`` (``bound_cap`` is unused by "fixed").
        dual_clip: the dual clip ``c > 1`` for negative advantages; None: off.
        agg, num_tokens, num_seqs, loss_scale, denominator_mask: as ``functional.aggregate``.
        stats_mask: the tokens the statistics count (default ``mask``).
        impl: ``"auto"`` (Triton for CUDA tensors when it is installed, else torch), ``"torch"`` or
            ``"triton"`` (CUDA tensors, or CPU ones under ``TRITON_INTERPRET=1``).

    Returns:
        :class:`PolicyLoss`. ``stats`` has ``actor/clip_frac_high`` (A > 0, r above its upper bound),
        ``actor/clip_frac_low`` (A < 0, below its lower bound), their sum ``actor/clip_frac``,
        ``actor/ratio_mean``, with a dual clip ``actor/clip_frac_dual`` (A < 0, r > c), and for DCPO
        ``dcpo/bound_low_mean`` / ``dcpo/bound_high_mean``; fractions of the valid tokens of ``stats_mask``.
    """
    _check(logp, old_logp, mask, advantages, denominator_mask, stats_mask, clip, impl)
    check_dual_clip(dual_clip)
    if clip == "dcpo":
        check_dcpo_bounds(eps_low, eps_high, bound_cap)
    stats_mask = mask if stats_mask is None else stats_mask
    aggregation = {"mode": agg, "num_tokens": num_tokens, "num_seqs": num_seqs, "loss_scale": loss_scale}
    run = _triton_policy_loss if _use_triton(impl, logp) else _torch_policy_loss
    return run(logp, old_logp, mask, advantages, clip, eps_low, eps_high, bound_cap, dual_clip, aggregation,
               denominator_mask, stats_mask)


def _torch_policy_loss(logp, old_logp, mask, advantages, clip, eps_low, eps_high, bound_cap, dual_clip, aggregation,
                       denominator_mask, stats_mask) -> PolicyLoss:
    """The functional composition (the reference the Triton path is tested against)."""
    if clip == "dcpo":
        low, high = dcpo_ratio_bounds(old_logp.detach(), eps_low, eps_high, bound_cap)
        per_token, _, ratio = clipped_pg_terms(logp, old_logp, advantages, 1.0 - low, high - 1.0, dual_clip)
    else:
        low, high = torch.tensor(1.0 - eps_low), torch.tensor(1.0 + eps_high)
        per_token, _, ratio = clipped_pg_terms(logp, old_logp, advantages, eps_low, eps_high, dual_clip)
    loss = aggregate(per_token, mask, denominator_mask=denominator_mask, **aggregation)
    with torch.no_grad():
        stats = clip_metrics({"ratio": ratio, "low": low, "high": high, "advantages": advantages}, stats_mask,
                             dual_clip)
        if clip == "dcpo":
            stats.update(dcpo_bound_metrics(low, high, stats_mask))
    return PolicyLoss(loss, stats)


def _check(logp, old_logp, mask, advantages, denominator_mask, stats_mask, clip, impl) -> None:
    if clip not in CLIP_MODES:
        raise ValueError(f"clip {clip!r} is unknown; use one of {', '.join(map(repr, CLIP_MODES))}")
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r} is unknown; use one of {', '.join(map(repr, IMPLS))}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N,T] (rows x response tokens), got shape {tuple(logp.shape)}")
    shape = tuple(logp.shape)
    for name, tensor in (("old_logp", old_logp), ("mask", mask), ("denominator_mask", denominator_mask),
                         ("stats_mask", stats_mask)):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but logp has {shape}; they must match")
    rows = shape[0]
    if tuple(advantages.shape) not in ((rows,), shape):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}; it must be [N] = ({rows},) or "
                         f"[N,T] = {shape}")
    for name, tensor in (("old_logp", old_logp), ("mask", mask), ("advantages", advantages),
                         ("denominator_mask", denominator_mask), ("stats_mask", stats_mask)):
        if tensor is not None and tensor.device != logp.device:
            raise ValueError(f"{name} is on {tensor.device} but logp on {logp.device}; put them on one device")


@functools.cache
def _triton_module() -> ModuleType | None:
    """``policy_loss_triton``, or None when Triton cannot be imported (imported on first use only)."""
    try:
        from rlvr.kernels import policy_loss_triton
    except ImportError:
        return None
    return policy_loss_triton


def _use_triton(impl: str, logp: Tensor) -> bool:
    if impl == "torch":
        return False
    if impl == "auto":
        return logp.is_cuda and _triton_module() is not None
    if _triton_module() is None:
        raise ImportError("policy_loss impl='triton' needs the triton package, which cannot be imported here "
                          "(pip install triton); or use impl='auto' or 'torch'")
    check_triton_device("policy_loss", "logp", logp)
    return True


def _triton_policy_loss(logp, old_logp, mask, advantages, clip, eps_low, eps_high, bound_cap, dual_clip, aggregation,
                        denominator_mask, stats_mask) -> PolicyLoss:
    kernels = _triton_module()
    scalars = kernels.KernelScalars.build(clip, eps_low, eps_high, bound_cap, dual_clip)
    rows, partials = kernels.row_losses(
        logp, old_logp, mask, advantages, None if denominator_mask is mask else denominator_mask,
        None if stats_mask is mask else stats_mask, scalars)
    index = kernels.PARTIAL
    if logp.dtype == torch.float64:
        rows = rows.to(torch.float64)
    # aggregate() over one "token" per row: sum S_i over C_i counted tokens gives the same reductions.
    loss = aggregate(rows[:, None], torch.ones_like(rows)[:, None],
                     denominator_mask=partials[index["denominator"]][:, None].to(rows.dtype), **aggregation)
    return PolicyLoss(loss, _stats(partials, index, clip == "dcpo", dual_clip is not None))


def _stats(partials: Tensor, index: dict[str, int], dcpo: bool, dual: bool) -> dict[str, float]:
    """:func:`functional.clip_metrics` (and ``dcpo_bound_metrics``) from the per-row partials, in one sync."""
    totals = partials.to(torch.float64).sum(dim=1).to(torch.float32)
    count = totals[index["valid"]]
    sums = torch.stack([totals[index[k]] for k in ("high", "low", "dual", "ratio", "bound_low", "bound_high")])
    values = torch.cat([sums / count.clamp(min=1), count[None]]).tolist()
    high, low, dual_frac, ratio_mean, bound_low, bound_high, valid = values
    out = {"actor/clip_frac_high": high, "actor/clip_frac_low": low, "actor/ratio_mean": ratio_mean,
           "actor/clip_frac": high + low}
    if dual:
        out["actor/clip_frac_dual"] = dual_frac
    if dcpo:
        out["dcpo/bound_low_mean"] = bound_low if valid > 0 else 0.0
        out["dcpo/bound_high_mean"] = bound_high if valid > 0 else 0.0
    return out
