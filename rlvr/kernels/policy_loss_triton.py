"""Triton kernels behind :func:`rlvr.kernels.policy_loss.policy_loss` (whose docstring has the maths).

Forward: one program per row (sequence). It reads the row's advantage (per row, or per token as it goes), then
walks the row's tokens
``BLOCK_T`` at a time and writes ``NUM_PARTIALS`` fp32 numbers per row: the masked loss sum ``S_i``, the
denominator count ``C_i`` and the clip statistics' counts and sums. The wrapper reduces these ``[N]``
vectors with torch. Backward: one program per row recomputes each token's ratio, bounds and branch and
writes ``dlogp = dL/dS_i * mask * dloss/dlogp``; rows with ``dL/dS_i = 0`` only keep their zeros.

Everything is computed in fp32 whatever the input dtypes (bf16 inputs are upcast on load); the gradient is
stored in ``logp``'s dtype. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors, which is how the
tests check them on a machine without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from rlvr.kernels.dispatch import interpreting

__all__ = ["NUM_PARTIALS", "PARTIAL", "KernelScalars", "row_losses"]

# Rows of the [NUM_PARTIALS, N] per-row partials the forward kernel writes.
PARTIAL = {"loss": 0, "denominator": 1, "valid": 2, "high": 3, "low": 4, "dual": 5, "ratio": 6,
           "bound_low": 7, "bound_high": 8}
NUM_PARTIALS = len(PARTIAL)

# 1/q = exp(-old_logp) is taken directly below this exponent and through logs above it (fp32 exp overflows
# near 88.7), so that no bound is NaN whatever old_logp holds.
_EXP_LIMIT = 80.0


def _config(device: torch.device) -> dict[str, int]:
    """Tile sizes. The interpreter gets small tiles, so that the tests' short rows span several of them."""
    if interpreting() or device.type != "cuda":
        return {"BLOCK_T": 32, "num_warps": 1}
    return {"BLOCK_T": 1024, "num_warps": 4}


@dataclass(frozen=True)
class KernelScalars:
    """The clip arguments as the kernels take them (fp32 scalars and compile-time switches)."""

    dcpo: bool
    clamp_low: float  # fixed clip: the clamp bounds as torch forms them, 1 - fp32(eps_low) in fp32
    clamp_high: float
    stat_low: float  # fixed clip: the bounds clip_metrics compares with, fp32(1 - eps_low)
    stat_high: float
    four_eps_low: float  # dcpo: 4 eps and log(4 eps) (0 when eps is 0)
    four_eps_high: float
    log_four_eps_low: float
    log_four_eps_high: float
    cap: float | None  # dcpo: upper cap on r_high
    dual_clip: float | None

    @classmethod
    def build(cls, clip: str, eps_low: float, eps_high: float, bound_cap: float | None,
              dual_clip: float | None) -> KernelScalars:
        def log4(eps: float) -> float:
            return math.log(4.0 * eps) if eps > 0 else 0.0

        return cls(dcpo=clip == "dcpo",
                   clamp_low=float(1.0 - torch.as_tensor(eps_low)), clamp_high=float(1.0 + torch.as_tensor(eps_high)),
                   stat_low=float(torch.tensor(1.0 - eps_low)), stat_high=float(torch.tensor(1.0 + eps_high)),
                   four_eps_low=4.0 * eps_low, four_eps_high=4.0 * eps_high,
                   log_four_eps_low=log4(eps_low), log_four_eps_high=log4(eps_high),
                   cap=bound_cap if clip == "dcpo" else None, dual_clip=dual_clip)


@triton.jit
def _dcpo_bound_x(neg_old, four_eps, log_four_eps, EXP_LIMIT: tl.constexpr):
    """``4 eps / q`` with ``q = exp(old_logp)``: never NaN (0 when eps is 0, inf when it overflows)."""
    direct = four_eps * tl.exp(tl.minimum(neg_old, EXP_LIMIT))
    via_log = tl.exp(log_four_eps + neg_old)
    return tl.where(four_eps > 0, tl.where(neg_old <= EXP_LIMIT, direct, via_log), 0.0)


@triton.jit
def _bounds(old, clamp_low, clamp_high, stat_low, stat_high, four_eps_low, four_eps_high, log_four_eps_low,
            log_four_eps_high, cap, DCPO: tl.constexpr, HAS_CAP: tl.constexpr, EXP_LIMIT: tl.constexpr):
    """(clamp low, clamp high, reported low, reported high) ratio bounds of the tokens ``old`` (old log-probs).

    DCPO: ``functional.dcpo_ratio_bounds``, then ``1 - (1 - low)`` and ``1 + (high - 1)`` for the clamp as
    ``clipped_pg_terms`` receives them."""
    if DCPO:
        neg_old = -old
        x_low = _dcpo_bound_x(neg_old, four_eps_low, log_four_eps_low, EXP_LIMIT)
        x_high = _dcpo_bound_x(neg_old, four_eps_high, log_four_eps_high, EXP_LIMIT)
        low = 0.5 + 0.5 * tl.sqrt(tl.maximum(1.0 - x_low, 0.0))
        high = 0.5 + 0.5 * tl.sqrt(1.0 + x_high)
        if HAS_CAP:
            high = tl.minimum(high, cap)
        return 1.0 - (1.0 - low), 1.0 + (high - 1.0), low, high
    else:
        return clamp_low, clamp_high, stat_low, stat_high


@triton.jit
def _load_tokens(logp_ptr, old_ptr, mask_ptr, adv_ptr, base, cols, inside, adv_row,
                 ADV_PER_TOKEN: tl.constexpr, BLOCK_T: tl.constexpr):
    """One tile of a row: fp32 logp, old logp, mask and advantage (per token, or the row's broadcast)."""
    logp = tl.load(logp_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + base + cols, mask=inside, other=0).to(tl.float32)
    if ADV_PER_TOKEN:
        adv = tl.load(adv_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    else:
        adv = tl.zeros((BLOCK_T,), tl.float32) + adv_row
    return logp, old, m, adv


@triton.jit
def _forward_kernel(
    logp_ptr, old_ptr, mask_ptr, den_ptr, stats_ptr, adv_ptr,  # [N,T]; adv [N] or [N,T]
    partials_ptr,  # [NUM_PARTIALS, N] fp32
    N, T,
    clamp_low, clamp_high, stat_low, stat_high, four_eps_low, four_eps_high, log_four_eps_low, log_four_eps_high,
    cap, dual_clip,
    ADV_PER_TOKEN: tl.constexpr, HAS_DEN: tl.constexpr, HAS_STATS: tl.constexpr, DCPO: tl.constexpr,
    HAS_CAP: tl.constexpr, DUAL: tl.constexpr, EXP_LIMIT: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * T
    adv_row = 0.0  # per token: read tile by tile
    if not ADV_PER_TOKEN:
        adv_row = tl.load(adv_ptr + row).to(tl.float32)
    offs = tl.arange(0, BLOCK_T)
    acc_loss = tl.zeros((BLOCK_T,), tl.float32)
    acc_den = tl.zeros((BLOCK_T,), tl.float32)
    acc_valid = tl.zeros((BLOCK_T,), tl.float32)
    acc_high = tl.zeros((BLOCK_T,), tl.float32)
    acc_low = tl.zeros((BLOCK_T,), tl.float32)
    acc_dual = tl.zeros((BLOCK_T,), tl.float32)
    acc_ratio = tl.zeros((BLOCK_T,), tl.float32)
    acc_bound_low = tl.zeros((BLOCK_T,), tl.float32)
    acc_bound_high = tl.zeros((BLOCK_T,), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        cols = t0 + offs
        inside = cols < T
        logp, old, m, adv = _load_tokens(logp_ptr, old_ptr, mask_ptr, adv_ptr, base, cols, inside, adv_row,
                                         ADV_PER_TOKEN, BLOCK_T)
        if HAS_DEN:
            d = tl.load(den_ptr + base + cols, mask=inside, other=0).to(tl.float32)
        else:
            d = m
        if HAS_STATS:
            s = tl.load(stats_ptr + base + cols, mask=inside, other=0).to(tl.float32)
        else:
            s = m
        ratio = tl.exp(logp - old)
        lo, hi, low, high = _bounds(old, clamp_low, clamp_high, stat_low, stat_high, four_eps_low, four_eps_high,
                                    log_four_eps_low, log_four_eps_high, cap, DCPO, HAS_CAP, EXP_LIMIT)
        unclipped = -adv * ratio
        clipped = -adv * tl.minimum(tl.maximum(ratio, lo), hi)
        loss = tl.maximum(unclipped, clipped)
        if DUAL:
            loss = tl.where(adv < 0, tl.minimum(loss, -adv * dual_clip), loss)
        acc_loss += loss * m
        acc_den += d
        valid = s != 0
        acc_valid += tl.where(valid, 1.0, 0.0)
        acc_high += tl.where(valid & (adv > 0) & (ratio > high), 1.0, 0.0)
        acc_low += tl.where(valid & (adv < 0) & (ratio < low), 1.0, 0.0)
        if DUAL:
            acc_dual += tl.where(valid & (adv < 0) & (ratio > dual_clip), 1.0, 0.0)
        acc_ratio += ratio * s
        if DCPO:
            acc_bound_low += tl.where(valid, low, 0.0)
            acc_bound_high += tl.where(valid, high, 0.0)
    tl.store(partials_ptr + 0 * N + row, tl.sum(acc_loss, axis=0))
    tl.store(partials_ptr + 1 * N + row, tl.sum(acc_den, axis=0))
    tl.store(partials_ptr + 2 * N + row, tl.sum(acc_valid, axis=0))
    tl.store(partials_ptr + 3 * N + row, tl.sum(acc_high, axis=0))
    tl.store(partials_ptr + 4 * N + row, tl.sum(acc_low, axis=0))
    tl.store(partials_ptr + 5 * N + row, tl.sum(acc_dual, axis=0))
    tl.store(partials_ptr + 6 * N + row, tl.sum(acc_ratio, axis=0))
    tl.store(partials_ptr + 7 * N + row, tl.sum(acc_bound_low, axis=0))
    tl.store(partials_ptr + 8 * N + row, tl.sum(acc_bound_high, axis=0))


@triton.jit
def _backward_kernel(
    grad_rows_ptr,  # [N] fp32, dL/dS_i
    logp_ptr, old_ptr, mask_ptr, adv_ptr,  # [N,T]; adv [N] or [N,T]
    dlogp_ptr,  # [N,T] in logp's dtype, zero-filled
    T,
    clamp_low, clamp_high, four_eps_low, four_eps_high, log_four_eps_low, log_four_eps_high, cap, dual_clip,
    ADV_PER_TOKEN: tl.constexpr, DCPO: tl.constexpr, HAS_CAP: tl.constexpr, DUAL: tl.constexpr,
    EXP_LIMIT: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)
    g = tl.load(grad_rows_ptr + row)
    if g != 0:
        base = row.to(tl.int64) * T
        adv_row = 0.0
        if not ADV_PER_TOKEN:
            adv_row = tl.load(adv_ptr + row).to(tl.float32)
        offs = tl.arange(0, BLOCK_T)
        for t0 in range(0, T, BLOCK_T):
            cols = t0 + offs
            inside = cols < T
            logp, old, m, adv = _load_tokens(logp_ptr, old_ptr, mask_ptr, adv_ptr, base, cols, inside, adv_row,
                                             ADV_PER_TOKEN, BLOCK_T)
            ratio = tl.exp(logp - old)
            lo, hi, _low, _high = _bounds(old, clamp_low, clamp_high, clamp_low, clamp_high, four_eps_low,
                                          four_eps_high, log_four_eps_low, log_four_eps_high, cap, DCPO, HAS_CAP,
                                          EXP_LIMIT)
            unclipped = -adv * ratio
            clipped = -adv * tl.minimum(tl.maximum(ratio, lo), hi)
            # torch.maximum sends the gradient to the larger argument, half to each at a tie; clamp passes
            # it where lo <= ratio <= hi. Inside the bounds clamp(ratio) == ratio, so both branches tie.
            tie = unclipped == clipped
            weight = tl.where(unclipped > clipped, 1.0, tl.where(tie, 0.5, 0.0))
            in_range = (ratio >= lo) & (ratio <= hi)
            weight += tl.where(in_range, tl.where(clipped > unclipped, 1.0, tl.where(tie, 0.5, 0.0)), 0.0)
            if DUAL:
                loss = tl.maximum(unclipped, clipped)
                bound = -adv * dual_clip
                # torch.minimum(loss, bound), taken where A < 0
                dual = tl.where(loss < bound, 1.0, tl.where(loss == bound, 0.5, 0.0))
                weight = tl.where(adv < 0, weight * dual, weight)
            grad = g * m * (-adv * ratio * weight)
            tl.store(dlogp_ptr + base + cols, grad.to(dlogp_ptr.dtype.element_ty), mask=inside)


def _launch_args(s: KernelScalars) -> dict[str, object]:
    return {"four_eps_low": s.four_eps_low, "four_eps_high": s.four_eps_high,
            "log_four_eps_low": s.log_four_eps_low, "log_four_eps_high": s.log_four_eps_high,
            "cap": s.cap if s.cap is not None else 0.0, "dual_clip": s.dual_clip if s.dual_clip is not None else 0.0,
            "DCPO": s.dcpo, "HAS_CAP": s.cap is not None, "DUAL": s.dual_clip is not None, "EXP_LIMIT": _EXP_LIMIT}


def _loadable(mask: Tensor) -> Tensor:
    """A mask Triton can load: bool viewed as uint8 (no copy), contiguous."""
    mask = mask.contiguous()
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


class _RowLosses(torch.autograd.Function):
    """logp [N,T] -> S [N] (per-row masked loss sums), with the per-row partials."""

    @staticmethod
    def forward(ctx, logp, old_logp, mask, advantages, denominator_mask, stats_mask, scalars):
        n, t = logp.shape
        logp, old_logp, mask = logp.contiguous(), old_logp.contiguous(), _loadable(mask)
        advantages = advantages.contiguous()
        den = None if denominator_mask is None else _loadable(denominator_mask)
        stats = None if stats_mask is None else _loadable(stats_mask)
        partials = torch.empty(NUM_PARTIALS, n, dtype=torch.float32, device=logp.device)  # every entry written
        cfg = _config(logp.device)
        if n > 0:
            _forward_kernel[(n,)](
                logp, old_logp, mask, mask if den is None else den, mask if stats is None else stats, advantages,
                partials, n, t, scalars.clamp_low, scalars.clamp_high, scalars.stat_low, scalars.stat_high,
                ADV_PER_TOKEN=advantages.dim() == 2, HAS_DEN=den is not None, HAS_STATS=stats is not None,
                BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"], **_launch_args(scalars))
        ctx.save_for_backward(logp, old_logp, mask, advantages)
        ctx.scalars = scalars
        ctx.mark_non_differentiable(partials)
        return partials[0].clone(), partials

    @staticmethod
    def backward(ctx, grad_rows, _grad_partials):
        logp, old_logp, mask, used = ctx.saved_tensors
        dlogp = torch.zeros_like(logp)
        n, t = logp.shape
        if grad_rows is not None and n > 0:
            cfg = _config(logp.device)
            s = ctx.scalars
            _backward_kernel[(n,)](
                grad_rows.to(torch.float32).contiguous(), logp, old_logp, mask, used, dlogp, t,
                s.clamp_low, s.clamp_high, ADV_PER_TOKEN=used.dim() == 2, BLOCK_T=cfg["BLOCK_T"],
                num_warps=cfg["num_warps"], **_launch_args(s))
        return (dlogp,) + (None,) * 6


def row_losses(
    logp: Tensor,  # [N,T]
    old_logp: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    advantages: Tensor,  # [N] or [N,T]
    denominator_mask: Tensor | None,  # [N,T]
    stats_mask: Tensor | None,  # [N,T]
    scalars: KernelScalars,
) -> tuple[Tensor, Tensor]:  # S [N] fp32 (differentiable in logp), partials [NUM_PARTIALS, N]
    """Per-row masked loss sums and the per-row partials. Arguments are checked by the caller."""
    return _RowLosses.apply(logp, old_logp, mask, advantages, denominator_mask, stats_mask, scalars)
