"""Per-token log-probabilities and entropies from the last hidden states, chunked over rows (torch path).

An LM head turns ``N`` hidden states into ``N x V`` logits; with ``N`` in the tens of thousands and
``V`` around 150k, those logits in fp32 take tens of GB, and autograd through ``log_softmax`` keeps
them (and the softmax) alive until backward. The policy-gradient loss only needs, per row, the
log-probability of the sampled token and the entropy, so this module computes those one chunk of rows
at a time and keeps per row only what backward needs to recompute the rest.

This is the CPU / fallback implementation; ``rlvr.kernels.token_logprobs`` is the public entry and is
where a device-specific kernel gets chosen.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

# Budget for one chunk's fp32 logits. Forward and backward each hold about two [rows x V] fp32
# buffers at a time, so the transient peak is roughly twice this. 32 MiB (170 rows of a 49k vocabulary)
# runs as fast on a CPU as 128 MiB did (measured at 1024 rows, forward and backward) and holds 200 MB
# less beside a small model, e.g. next to its gradients when micro-batches accumulate (docs/memory.md).
_CHUNK_LOGITS_BYTES = 32 * 1024**2

__all__ = ["token_logprobs", "token_logprobs_reference"]


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised memory for a kernel's outputs; every entry must be written. (Tests replace this with a
    NaN-filled allocation, so that an entry a kernel forgets to write shows.)"""
    return torch.empty(*shape, dtype=dtype, device=device)


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk such that one chunk's fp32 logits take at most ``_CHUNK_LOGITS_BYTES``."""
    return max(1, _CHUNK_LOGITS_BYTES // (4 * max(vocab_size, 1)))


def token_logprobs(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [N], integer token ids in [0, V)
    temperature: float = 1.0,
    return_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of each target token, and the entropy of each row's distribution.

    With ``z = hidden @ weight.T / temperature`` (the logits, ``[N, V]``) and ``p = softmax(z)``::

        logp[i]    = z[i, targets[i]] - logsumexp(z[i])
        entropy[i] = -sum_j p[i, j] * log p[i, j]  =  logsumexp(z[i]) - sum_j p[i, j] * z[i, j]

    Logits are computed in fp32 whatever the input dtype (bf16 / fp16 operands are upcast, products
    accumulate in fp32); fp64 inputs are computed in fp64. The full ``[N, V]`` logits never exist:
    rows go through in chunks of ``chunk_size`` (default: enough rows for about 32 MiB of fp32
    logits). For backward only the inputs and two fp32 numbers per row are kept (the log-sum-exp
    and, when the entropy is returned, the expected logit ``sum_j p_j z_j``); each chunk's logits are
    recomputed there. Rows whose upstream gradients are all zero (masked tokens) are skipped.

    Numerics: each row is shifted by its max logit and the max entry's mass is kept out of the
    softmax sum (``log1p``), so a nearly one-hot row's entropy and top-token log-prob keep their
    relative precision instead of an absolute error of ``eps * |z|``.

    Gradients, with ``g`` the upstream gradient of ``logp[i]`` and ``e`` that of ``entropy[i]``
    (``t = targets[i]``, row index dropped)::

        dlogp/dz_j    = 1[j = t] - p_j
        dentropy/dz_j = -p_j * (z_j - sum_k p_k z_k)
        dL/dz_j       = g * (1[j = t] - p_j) - e * p_j * (z_j - sum_k p_k z_k)
        dL/dhidden    = dL/dz @ weight / temperature,   dL/dweight = dL/dz.T @ hidden / temperature

    ``dL/dweight`` accumulates in fp32 over all chunks and is cast to ``weight.dtype`` at the end.
    The backward is not itself differentiable (no double backward).

    Args:
        hidden: last hidden states, ``[N, H]`` (flatten batch and sequence first).
        weight: LM-head weight, ``[V, H]`` (``nn.Linear(H, V).weight``).
        targets: token whose log-probability is wanted, per row, ``[N]``.
        temperature: logits are divided by it, as the sampler did; must be > 0.
        return_entropy: also return the per-row entropy (costs one more pass over each chunk).
        chunk_size: rows per chunk; ``None`` picks one from ``V``.

    Returns:
        ``(logp, entropy)``: ``[N]`` each, fp32 (fp64 for fp64 inputs); ``entropy`` is ``None``
        when ``return_entropy`` is false.
    """
    check_inputs(hidden, weight, targets, temperature, chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    logp, entropy = _ChunkedTokenLogprobs.apply(
        hidden, weight, targets, float(temperature), bool(return_entropy), int(chunk_size)
    )
    return logp, entropy


def token_logprobs_reference(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [N]
    temperature: float = 1.0,
    return_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The same quantities as ``token_logprobs`` through full ``[N, V]`` logits and plain autograd.

    Memory grows with ``N * V``: for tests and benchmarks only. Pass fp64 inputs for a ground truth.
    """
    check_inputs(hidden, weight, targets, temperature, None)
    dtype = _compute_dtype(hidden, weight)
    logits = (hidden.to(dtype) @ weight.to(dtype).T) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if not return_entropy:
        return logp, None
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, return_entropy, chunk_size):
        dtype = _compute_dtype(hidden, weight)
        n_rows = hidden.shape[0]
        # No-op for fp32. For bf16 the copy is transient and its size does not grow with N; casting
        # once is cheaper than per chunk, and CPU has no bf16 x bf16 -> fp32 matmul
        # (torch.mm(out_dtype=...) is CUDA-only), while bf16 logits would be off by ~0.05 at |z| ~ 10.
        weight_c = weight.to(dtype)
        targets = targets.long()

        logp = empty(n_rows, dtype=dtype, device=hidden.device)
        lse = empty(n_rows, dtype=dtype, device=hidden.device)
        expected_z = empty(n_rows, dtype=dtype, device=hidden.device) if return_entropy else None
        entropy = empty(n_rows, dtype=dtype, device=hidden.device) if return_entropy else None
        # Two [chunk x V] work buffers for all chunks: a fresh allocation of that size per chunk would be
        # mapped anew by the OS each time, and its page faults cost about as much as the elementwise work.
        z_buf, exp_buf = _work_buffers(min(chunk_size, n_rows), weight.shape[0], dtype, hidden.device)
        for start in range(0, n_rows, chunk_size):
            rows = slice(start, start + chunk_size)
            n = min(chunk_size, n_rows - start)
            # Scaling the [rows x H] operand by 1/T is cheaper than scaling the [rows x V] product.
            z = torch.mm(hidden[rows].to(dtype) / temperature, weight_c.T, out=z_buf[:n])
            # Work with z' = z - max(z) <= 0 and keep the max entry's exp(0) = 1 out of the sum
            # (log1p instead): in a nearly one-hot row the rest of the mass, ~ the entropy, would
            # otherwise be rounded against 1. Then lse' >= 0 and E_p[z'] <= 0, so the entropy
            # lse' - E_p[z'] adds two non-negative numbers and keeps its relative precision,
            # where lse - E_p[z] would lose ~ eps * |z| to cancellation.
            row_max, argmax = z.max(dim=-1)
            z.sub_(row_max.unsqueeze(1))
            exp_z = torch.exp(z, out=exp_buf[:n]).scatter_(1, argmax.unsqueeze(1), 0.0)
            tail_mass = exp_z.sum(dim=-1)
            shifted_lse = torch.log1p(tail_mass)
            logp[rows] = z.gather(1, targets[rows].unsqueeze(1)).squeeze(1) - shifted_lse
            lse[rows] = row_max + shifted_lse
            if return_entropy:
                # The left-out max entry has z' = 0 and adds nothing to E_p[z'].
                shifted_expected_z = exp_z.mul_(z).sum(dim=-1) / (1 + tail_mass)
                entropy[rows] = shifted_lse - shifted_expected_z
                expected_z[rows] = row_max + shifted_expected_z
        del z_buf, exp_buf

        ctx.set_materialize_grads(False)  # an unused output (often the entropy) gets grad None
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.return_entropy = return_entropy
        if return_entropy:
            ctx.save_for_backward(hidden, weight, targets, lse, expected_z)
            return logp, entropy
        ctx.save_for_backward(hidden, weight, targets, lse)
        return logp, None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        if ctx.return_entropy:
            hidden, weight, targets, lse, expected_z = ctx.saved_tensors
        else:
            hidden, weight, targets, lse = ctx.saved_tensors
            expected_z = None
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_hidden or need_weight) or (grad_logp is None and grad_entropy is None):
            return None, None, None, None, None, None

        dtype = lse.dtype
        temperature = ctx.temperature
        weight_c = weight.to(dtype)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None

        # Masked tokens (prompt, padding) have zero upstream gradient and contribute nothing;
        # gathering only the active rows packs the chunks densely.
        active = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        if grad_logp is not None:
            active |= grad_logp != 0
        if grad_entropy is not None:
            active |= grad_entropy != 0
        active_rows = active.nonzero().squeeze(1)

        z_buf, p_buf = _work_buffers(min(ctx.chunk_size, active_rows.numel()), weight.shape[0], dtype, hidden.device)
        for start in range(0, active_rows.numel(), ctx.chunk_size):
            idx = active_rows[start : start + ctx.chunk_size]
            n = idx.numel()
            g_lp = None if grad_logp is None else grad_logp.index_select(0, idx).to(dtype).unsqueeze(1)
            g_ent = None if grad_entropy is None else grad_entropy.index_select(0, idx).to(dtype).unsqueeze(1)
            h_scaled = hidden.index_select(0, idx).to(dtype) / temperature
            row_lse = lse.index_select(0, idx).unsqueeze(1)
            # log p = z - lse, in place; then dL/dz = g_lp * (onehot - p) - g_ent * p * (z - E_p[z])
            #                                      = p * (-g_ent * (log p + lse - E_p[z]) - g_lp) + g_lp * onehot,
            # built in the two work buffers, one pass per operation.
            log_p = torch.mm(h_scaled, weight_c.T, out=z_buf[:n]).sub_(row_lse)
            p = torch.exp(log_p, out=p_buf[:n])
            if g_ent is not None:
                grad_z = log_p.add_(row_lse - expected_z.index_select(0, idx).unsqueeze(1)).mul_(-g_ent)
                if g_lp is not None:
                    grad_z.sub_(g_lp)
                grad_z.mul_(p)
            else:
                grad_z = p.mul_(-g_lp)
            if g_lp is not None:
                grad_z.scatter_add_(1, targets.index_select(0, idx).unsqueeze(1), g_lp)

            # z = (hidden / T) @ weight.T, so the 1/T chain factor is already in h_scaled for
            # grad_weight and is applied once to the small [rows x H] product for grad_hidden.
            if need_hidden:
                grad_h = (grad_z @ weight_c).div_(temperature)
                grad_hidden.index_copy_(0, idx, grad_h.to(hidden.dtype))
            if need_weight:
                grad_weight.addmm_(grad_z.T, h_scaled)
        del z_buf, p_buf

        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def _work_buffers(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Two ``[rows, vocab]`` scratch buffers, reused by every chunk of one call."""
    return (torch.empty(rows, vocab, dtype=dtype, device=device),
            torch.empty(rows, vocab, dtype=dtype, device=device))


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def check_inputs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int | None
) -> None:
    if hidden.dim() != 2:
        raise ValueError(
            f"hidden must be 2-D [N, H]; got shape {tuple(hidden.shape)}. "
            "Flatten batch and sequence first, e.g. hidden.reshape(-1, hidden.shape[-1])."
        )
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, H] (the LM-head weight); got shape {tuple(weight.shape)}.")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [N, H] and weight [V, H] disagree on H: hidden has shape {tuple(hidden.shape)}, "
            f"weight has shape {tuple(weight.shape)}. Pass the LM-head weight as [V, H], not transposed."
        )
    if weight.shape[0] == 0:
        raise ValueError(f"weight has an empty vocabulary: shape {tuple(weight.shape)}.")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"targets must be 1-D [N] with N = hidden.shape[0] = {hidden.shape[0]}; "
            f"got shape {tuple(targets.shape)}."
        )
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"hidden and weight must be floating point; got {hidden.dtype} and {weight.dtype}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids; got dtype {targets.dtype}.")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(
            f"hidden, weight and targets must be on one device; got {hidden.device}, {weight.device}, "
            f"{targets.device}."
        )
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
    if targets.numel() > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(
                f"targets must lie in [0, V) with V = {weight.shape[0]}; got values in [{low}, {high}]. "
                "Masked positions need a valid id (e.g. 0) and a zero weight in the loss."
            )
