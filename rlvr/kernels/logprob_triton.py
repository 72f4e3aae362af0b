"""Per-token log-probabilities and entropies from the LM head in Triton: the logits never reach memory.

Same contract as :func:`rlvr.kernels.logprob.token_logprobs` (the torch path, which documents the maths);
this module is what ``rlvr.kernels.token_logprobs`` runs on CUDA tensors.

Forward, one kernel. The grid is (row blocks) x (vocabulary splits). A program owns ``BLOCK_N`` rows and
one contiguous range of the vocabulary; it walks that range ``BLOCK_V`` columns at a time, builds the
``[BLOCK_N, BLOCK_V]`` logits tile in registers with ``tl.dot`` over ``BLOCK_K`` slices of ``H`` (bf16
or fp32 operands, fp32 accumulation), and folds the tile into four running numbers per row, all relative
to the running maximum ``m``::

    m      max_j z_j
    tail   sum_j exp(z_j - m), leaving out one entry equal to m (its exp(0) = 1)
    shift  sum_j exp(z_j - m) (z_j - m)            (<= 0)
    z_t    the target's logit (found in exactly one split)

``tail`` and ``shift`` are rescaled when ``m`` grows, as in an online softmax. Keeping the max entry out
of ``tail`` lets the epilogue use ``log1p(tail)``, so a nearly one-hot row keeps the relative precision
of its small entropy and its top-token log-prob (the torch path does the same). The splits' partial
statistics, ``4 x splits x N`` floats, are merged by a few torch ops into::

    lse = m + log1p(tail),   logp = (z_t - m) - log1p(tail),   entropy = log1p(tail) - shift / (1 + tail)

Backward. Rows whose upstream gradients (of the log-prob and of the entropy) are both zero contribute
nothing and are dropped first, so the backward's cost scales with the rows that matter. For the rest,
one kernel recomputes the logits tile by tile and writes ``dL/dz`` (times ``1/T``) for one slice of the
vocabulary at a time, ``[active rows, V slice]`` in the operand dtype; two GEMMs then give
``dL/dweight[slice] = dz^T @ hidden`` (complete for the slice, written once) and add
``dz @ weight[slice]`` to an fp32 ``dL/dhidden``. The slice is sized so that ``dz`` stays within
``_DZ_BYTES``: memory is bounded whatever ``N`` and ``V``, and the two GEMMs run on the vendor BLAS at
its full rate.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (fp32 only: the interpreter's bf16 ``tl.dot``
is wrong); that is how the tests check them on a machine without a GPU.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor

from rlvr.kernels import logprob
from rlvr.kernels.dispatch import interpreting

# Budget of one backward slice of dL/dz ([active rows x V slice], operand dtype).
_DZ_BYTES = 1024**3

__all__ = ["token_logprobs_triton"]


def _config(device: torch.device, dtype: torch.dtype) -> dict:
    """Tile sizes and ``tl.dot`` precision. fp32 operands get IEEE products (Triton's default on GPUs is
    TF32, ~1e-3 relative); bf16 / fp16 ones multiply exactly into fp32 anyway. The interpreter runs one
    numpy op per tile op, so it gets the smallest legal tiles."""
    precision = "ieee" if dtype == torch.float32 else "tf32"
    if interpreting() or device.type != "cuda":
        return {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16, "PRECISION": precision, "num_warps": 4,
                "num_stages": 1}
    if dtype == torch.float32:  # IEEE fp32 tiles take twice the registers and shared memory
        return {"BLOCK_N": 64, "BLOCK_V": 64, "BLOCK_K": 32, "PRECISION": precision, "num_warps": 8,
                "num_stages": 2}
    # 128 x 64 logits tiles: with 128 x 128 the epilogue's tile temporaries spill registers on sm_90
    # (ptxas, Triton 3.9); tests/unit/test_kernels_compile.py compiles these configs and checks for spills.
    return {"BLOCK_N": 128, "BLOCK_V": 64, "BLOCK_K": 64, "PRECISION": precision, "num_warps": 8,
            "num_stages": 3}


@triton.jit
def _logits_tile(hidden_ptr, weight_ptr, rows, row_ok, cols, col_ok, H, stride_hn, stride_hk, stride_wv, stride_wk,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """``hidden[rows] @ weight[cols].T`` as a ``[BLOCK_N, BLOCK_V]`` fp32 tile, over ``BLOCK_K`` slices of H."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(hidden_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * stride_wv + ks[None, :] * stride_wk,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _forward_kernel(
    hidden_ptr, weight_ptr, targets_ptr,
    max_ptr, tail_ptr, shift_ptr, target_logit_ptr,  # [SPLITS, N] fp32 partials
    N, V, H, cols_per_split,
    stride_hn, stride_hk, stride_wv, stride_wk,
    inv_temperature,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=-1)

    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    tail = tl.zeros((BLOCK_N,), tl.float32)
    shift = tl.zeros((BLOCK_N,), tl.float32)
    target_logit = tl.zeros((BLOCK_N,), tl.float32)

    v_start = split * cols_per_split
    v_end = tl.minimum(v_start + cols_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        acc = _logits_tile(hidden_ptr, weight_ptr, rows, row_ok, cols, col_ok, H, stride_hn, stride_hk,
                           stride_wv, stride_wk, BLOCK_N, BLOCK_V, BLOCK_K, PRECISION)
        z = tl.where(col_ok[None, :], acc * inv_temperature, float("-inf"))
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), axis=1)

        tile_max = tl.max(z, axis=1)
        tile_arg = tl.argmax(z, axis=1)
        new_max = tl.maximum(run_max, tile_max)
        grew = tile_max > run_max
        seen = run_max > float("-inf")
        scale = tl.exp(run_max - new_max)  # 0 before the first tile
        e = tl.exp(z - new_max[:, None])  # masked columns: exp(-inf) = 0
        d = tl.where(col_ok[None, :], z - new_max[:, None], 0.0)
        tile_all = tl.sum(e, axis=1)
        tile_tail = tl.sum(tl.where(cols[None, :] == (v0 + tile_arg)[:, None], 0.0, e), axis=1)
        tile_shift = tl.sum(e * d, axis=1)
        # When the max grows, the old max entry joins the tail with weight exp(m_old - m_new) and the new
        # one (exp(0) = 1, inside this tile) leaves it; old shifts move by (m_old - m_new) per unit mass.
        moved = tl.where(seen, run_max - new_max, 0.0)
        shift = tl.where(grew, scale * (shift + moved * (tail + 1.0)), shift) + tile_shift
        tail = tl.where(grew, (tail + 1.0) * scale + tile_tail, tail + tile_all)
        run_max = new_max

    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(tail_ptr + out, tail, mask=row_ok)
    tl.store(shift_ptr + out, shift, mask=row_ok)
    tl.store(target_logit_ptr + out, target_logit, mask=row_ok)


@triton.jit
def _dlogits_kernel(
    hidden_ptr, weight_ptr, targets_ptr, rows_ptr,  # rows_ptr: indices of the active rows
    lse_ptr, expected_ptr, grad_logp_ptr, grad_entropy_ptr,  # per original row, fp32
    dz_ptr,  # [n_active, v_count], row-major, operand dtype
    n_active, v_begin, v_count, H,
    stride_hn, stride_hk, stride_wv, stride_wk,
    inv_temperature,
    HAS_GRAD_LOGP: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    slots = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    slot_ok = slots < n_active
    rows = tl.load(rows_ptr + slots, mask=slot_ok, other=0)
    local_cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = local_cols < v_count
    cols = v_begin + local_cols

    acc = _logits_tile(hidden_ptr, weight_ptr, rows, slot_ok, cols, col_ok, H, stride_hn, stride_hk, stride_wv,
                       stride_wk, BLOCK_N, BLOCK_V, BLOCK_K, PRECISION)
    z = acc * inv_temperature
    lse = tl.load(lse_ptr + rows, mask=slot_ok, other=0.0)
    p = tl.exp(z - lse[:, None])
    grad = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    if HAS_GRAD_ENTROPY:
        g_ent = tl.load(grad_entropy_ptr + rows, mask=slot_ok, other=0.0)
        expected = tl.load(expected_ptr + rows, mask=slot_ok, other=0.0)
        grad -= g_ent[:, None] * p * (z - expected[:, None])
    if HAS_GRAD_LOGP:
        g_lp = tl.load(grad_logp_ptr + rows, mask=slot_ok, other=0.0)
        targets = tl.load(targets_ptr + rows, mask=slot_ok, other=-1)
        onehot = tl.where(cols[None, :] == targets[:, None], 1.0, 0.0)
        grad += g_lp[:, None] * (onehot - p)
    grad = grad * inv_temperature  # z = hidden @ weight.T / T: the chain factor, applied once here
    tl.store(dz_ptr + slots[:, None] * v_count + local_cols[None, :], grad.to(dz_ptr.dtype.element_ty),
             mask=slot_ok[:, None] & col_ok[None, :])


def _num_splits(n_rows: int, vocab: int, cfg: dict[str, int], device: torch.device) -> int:
    """Vocabulary splits: enough programs to fill the GPU (~4 per SM) when the row blocks alone do not."""
    row_blocks = triton.cdiv(n_rows, cfg["BLOCK_N"])
    col_blocks = triton.cdiv(vocab, cfg["BLOCK_V"])
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2  # the interpreter: exercise the merge of split partials
    return max(1, min(col_blocks, triton.cdiv(target, row_blocks)))


def _forward(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float):
    """(lse, logp, entropy, expected logit), fp32 [N] each."""
    n_rows, vocab, width = hidden.shape[0], weight.shape[0], hidden.shape[1]
    cfg = _config(hidden.device, hidden.dtype)
    splits = _num_splits(n_rows, vocab, cfg, hidden.device)
    cols_per_split = triton.cdiv(triton.cdiv(vocab, splits), cfg["BLOCK_V"]) * cfg["BLOCK_V"]
    splits = triton.cdiv(vocab, cols_per_split)
    parts = logprob.empty(4, splits, n_rows, dtype=torch.float32, device=hidden.device)
    run_max, tail, shift, target_logit = parts.unbind(0)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_N"]), splits)
    _forward_kernel[grid](
        hidden, weight, targets, run_max, tail, shift, target_logit,
        n_rows, vocab, width, cols_per_split,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        1.0 / temperature,
        **cfg,
    )
    # Merge the splits like the tiles: the split holding the global max keeps its tail as is, the others
    # join it whole (their own max entry included), scaled to the global max.
    top, top_split = run_max.max(dim=0)
    scale = torch.exp(run_max - top)
    is_top = torch.arange(splits, device=hidden.device)[:, None] == top_split[None, :]
    moved = torch.where(run_max > float("-inf"), run_max - top, 0.0)
    total_shift = (scale * (shift + moved * (tail + 1.0))).sum(dim=0)
    total_tail = torch.where(is_top, tail, (tail + 1.0) * scale).sum(dim=0)
    log_mass = torch.log1p(total_tail)
    lse = top + log_mass
    logp = (target_logit.sum(dim=0) - top) - log_mass  # not z_t - lse: lse would round log_mass away
    shifted_expected = total_shift / (1.0 + total_tail)
    return lse, logp, log_mass - shifted_expected, top + shifted_expected


def _backward(hidden, weight, targets, lse, expected, grad_logp, grad_entropy, temperature,
              need_hidden: bool, need_weight: bool):
    n_rows, vocab, width = hidden.shape[0], weight.shape[0], hidden.shape[1]
    active = torch.zeros(n_rows, dtype=torch.bool, device=hidden.device)
    if grad_logp is not None:
        active |= grad_logp != 0
    if grad_entropy is not None:
        active |= grad_entropy != 0
    rows = active.nonzero().squeeze(1)
    n_active = rows.numel()
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    if n_active == 0:
        return grad_hidden, grad_weight

    cfg = _config(hidden.device, hidden.dtype)
    dz_dtype = hidden.dtype  # the GEMMs' operand dtype (bf16 on GPUs)
    slice_cols = max(cfg["BLOCK_V"], _DZ_BYTES // (n_active * dz_dtype.itemsize))
    slice_cols = min(vocab, slice_cols // cfg["BLOCK_V"] * cfg["BLOCK_V"])
    dz = logprob.empty(n_active * slice_cols, dtype=dz_dtype, device=hidden.device)
    active_hidden = hidden.index_select(0, rows)
    grad_active = torch.zeros(n_active, width, dtype=torch.float32, device=hidden.device) if need_hidden else None
    dummy = lse  # an fp32 pointer for an absent upstream gradient (never read)
    g_lp = grad_logp.float().contiguous() if grad_logp is not None else dummy
    g_ent = grad_entropy.float().contiguous() if grad_entropy is not None else dummy
    for v_begin in range(0, vocab, slice_cols):
        v_count = min(slice_cols, vocab - v_begin)
        dz_slice = dz[: n_active * v_count].view(n_active, v_count)
        grid = (triton.cdiv(n_active, cfg["BLOCK_N"]), triton.cdiv(v_count, cfg["BLOCK_V"]))
        _dlogits_kernel[grid](
            hidden, weight, targets, rows, lse, expected, g_lp, g_ent, dz_slice,
            n_active, v_begin, v_count, width,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            1.0 / temperature,
            HAS_GRAD_LOGP=grad_logp is not None, HAS_GRAD_ENTROPY=grad_entropy is not None,
            **cfg,
        )
        cols = slice(v_begin, v_begin + v_count)
        if need_weight:
            torch.mm(dz_slice.T, active_hidden, out=grad_weight[cols])
        if need_hidden:
            grad_active += _mm_fp32(dz_slice, weight[cols])
    if need_hidden:
        grad_hidden.index_copy_(0, rows, grad_active.to(hidden.dtype))
    return grad_hidden, grad_weight


def _mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with an fp32 result: for bf16 operands on CUDA the GEMM writes fp32 directly."""
    if a.dtype == torch.float32:
        return a @ b
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError):  # a torch or device without out_dtype: bf16 result, then widened
        return (a @ b).float()


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, return_entropy):
        hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
        lse, logp, entropy, expected = _forward(hidden, weight, targets, temperature)
        ctx.set_materialize_grads(False)
        ctx.temperature = temperature
        ctx.save_for_backward(hidden, weight, targets, lse, expected)
        if not return_entropy:
            return logp, None
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, expected = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_hidden or need_weight) or (grad_logp is None and grad_entropy is None):
            return None, None, None, None, None
        grad_hidden, grad_weight = _backward(hidden, weight, targets, lse, expected, grad_logp, grad_entropy,
                                             ctx.temperature, need_hidden, need_weight)
        return grad_hidden, grad_weight, None, None, None


def token_logprobs_triton(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [N]
    temperature: float = 1.0,
    return_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(logp [N], entropy [N] or None)`` in fp32, by the Triton kernels. Inputs are checked by the caller
    (``rlvr.kernels.token_logprobs``); ``hidden`` and ``weight`` share one floating dtype."""
    if hidden.dtype != weight.dtype:
        raise TypeError(f"the Triton path needs hidden and weight in one dtype; got {hidden.dtype} and "
                        f"{weight.dtype}. Cast one of them, or use the torch path (impl='torch').")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton path takes float32, float16 or bfloat16 inputs; got {hidden.dtype}. "
                        "Use the torch path (impl='torch') for float64.")
    return _TritonTokenLogprobs.apply(hidden, weight, targets, float(temperature), bool(return_entropy))
