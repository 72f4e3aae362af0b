"""CAPO, Curvature-Aware Policy Optimization (Melo, Abate, Gal 2025, arXiv 2510.00819; ALGORITHMS.md section 3).

GRPO whose policy-gradient loss drops the tokens whose own update, as a second-order model of the LM head
and of the optimiser predicts it, would move the objective or the policy too far.

The model (authors' code: luckeciano/stable-pg-llm ``src/open_r1/grpo_entropy_trainer.py``). Only the LM
head ``W`` [V,H] moves. The logits ``z_t = W h_t / T`` of a response position are restricted to its top-k
vocabulary rows ``K_t`` (by logit); ``pi_t`` is the softmax over those k logits, ``a_t`` the sampled token,
``v_t = e_{a_t} - pi_t`` (``e_{a_t}`` is 0 on all of K_t when ``a_t`` is not in it), ``A_i`` the advantage of
the token's row and ``eta`` the learning rate of the coming optimizer step:

* per-token gradient of the token's objective ``A_i log pi_t(a_t)`` w.r.t. the rows K_t
  (``_compute_token_level_gradients``): ``g_t = A_i v_t (outer) h_t / T``, k x H (:func:`token_gradients`);
* the optimiser's direction ``G_t`` for it: SGD ``G_t = g_t``; Adam, from first/second moments ``m, s`` kept
  per vocabulary row after ``n`` updates (:class:`SparseAdamMoments`, the authors' ``SparseAdamModel``):
  ``m' = b1 m + (1-b1) g_t``, ``s' = b2 s + (1-b2) g_t^2``,
  ``G_t = (m' / (1 - b1^(n+1))) / (sqrt(s' / (1 - b2^(n+1))) + eps)`` (:func:`adam_direction`);
* predicted logit change per unit step ``u_t = G_t h_t / T`` (k entries) and ``F_t = diag(pi_t) - pi_t pi_t^T``:
  objective shift ``dJ_t = eta <g_t, G_t> + eta^2 / 2 * A_i [(v_t . u_t)^2 - u_t^T F_t u_t]``
  (``_compute_and_log_hessian_coefficient``), policy shift ``KL_t = eta^2 / 2 * (v_t . u_t)^2``
  (``_compute_and_log_fisher_curvature``) (:func:`curvature_shifts`);
* the token is kept iff ``KL_t < tau_F`` and ``-tau_H < dJ_t < tau_H`` (``hessian_symmetric_clipping``; else
  ``0 <= dJ_t < tau_H``); a tau of 0 switches its test off (``_compute_hessian_token_mask``,
  ``_compute_fisher_token_mask``; :func:`curvature_keep`);
* after the optimizer step the Adam model takes one step, ``n += 1``, with, for every vocabulary row, the mean
  of ``g_t`` over the kept tokens' top-k entries that hit that row (``_sparsify_global_gradients``,
  ``aggregate_global_dict``, ``update_effective_gradient_moments``).

The loss is GRPO's as TRL computes it (``compute_loss``, ``_compute_final_loss``): ``A_i = (R_i - mean) /
(std + 1e-4)`` per group, PPO clip 0.2 without dual clip, no KL, and ``seq-mean-token-mean`` over the kept
tokens, ``(1/B) sum_i [sum_t m l / sum_t m]`` with ``m`` = response mask x curvature mask, which is what
the shared objective (:mod:`rlvr.algos.objective`) computes with this module's mask.

Defaults: the authors' recipe ``config_grpo_efficient_grpo_adam_fisher_mask_token_1e-4_hessian_mask_token_0.01
.yaml``: tau_F 1e-4, tau_H 0.01, symmetric, Adam model with the trainer's betas 0.9 / 0.999 and eps 1e-8
(Hugging Face ``TrainingArguments``, which are also the real AdamW's). ``top_k`` 50: the code takes
``k = generation_config.top_k`` and the trainer builds its ``GenerationConfig`` without ``top_k``, so
transformers' default 50 applies (the code's own comment: "K = 50").

Code behaviours followed, some of which the paper does not state:

* While the Adam model holds no row at all (before its first update with a kept token) ``G_t = g_t``: the
  authors' ``densify_gradient_dict`` returns None on an empty dict and the raw gradient is used.
  ``adam_cold_start: adam`` applies the bias-corrected formula from zero moments instead (~sign(g), what a
  real first Adam step does).
* The moments take the per-row *mean* over occurrences, not the loss's gradient (whose per-token weight is
  ``1/(B |o_i|)``), only rows present in the batch are updated and absent rows are not decayed; the step
  counter advances every optimizer step, with or without kept tokens.
* The Fisher test uses the sampled-action form ``(v.u)^2``, not ``u^T F u`` (ALGORITHMS.md 3.7.2), and keeps
  tokens of *small* ``|dJ|``, where the paper's theorem accepts updates of large ``m_H`` (3.7.1).
* Both taus 0 computes nothing and never updates the optimiser model (the code's ``curvature_masking``):
  CAPO is then GRPO exactly.

Where rlvr departs from the paper and the authors' code (the code's rule is the default throughout; the two
departures from the paper are in the list above: small ``|dJ|`` kept, and the sampled-action Fisher form):

* ``top_k`` 50 is transformers' default generation ``top_k``, which is what the authors' code reads.
* Temperature: the authors' training forward never divides the logits by the sampling temperature; rlvr's
  learner does, so ``g`` and ``u`` carry ``1/T`` and are the exact derivatives of rlvr's loss. Same at T = 1.
* The curvature is computed in fp32 (fp64 for fp64 inputs), with the k selected logits recomputed in that
  precision; the authors work in the model's dtype (bf16).
* One optimiser-model step per optimizer step, from the kept tokens of all the mini-batch's micro-batches;
  each micro-batch's mask uses the model as it was at the mini-batch's start. The authors' recipe has one
  micro-batch per step and gathers row sums and counts across ranks, which is the same thing.
* Like the authors' model, it ignores the real optimizer's weight decay and gradient clipping, the PPO ratio
  (it assumes ratio 1: ``learner.epochs`` 1, their ``num_iterations`` 1) and every parameter but the LM head.
* Only the token-level masks. The sentence- and batch-level masks, curvature regularisers (``*_lambda``) and
  sequential masking (identical with token masks only) are off in the recipe and left out; so is the AdamW
  model, which the authors left unimplemented.
* ``loss_agg: token-mean`` at ``mini-batch`` scope divides by all valid tokens of the mini-batch (its kept
  count is unknown before the first backward); ``loss_agg_scope: micro-batch`` gives a kept-token mean.

Memory: the k x H per-token temporaries are built in chunks of tokens (about ``CHUNK_ELEMENTS`` elements
each, :attr:`CurvatureMask.chunk_size` to set it); the moments grow, as the authors' dicts do, up to 2 x V x H floats
(4.4 GB in fp32 for a 152k x 3584 LM head), on the learner's device, and are saved with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from rlvr.algos.registry import token_mask

CHUNK_ELEMENTS = 1 << 24  # elements of one [tokens, k, H] temporary when no chunk size is given


# -- pure functions ------------------------------------------------------------------------------------------


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def topk_policy(
    hidden: Tensor,  # [N,H]
    weight: Tensor,  # [V,H]
    tokens: Tensor,  # [N] sampled token ids
    top_k: int | None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:  # ids [N,k] long, pi [N,k], one-hot of the sampled token [N,k]
    """The top-k LM-head rows by logit at each position, the softmax ``pi`` over their logits ``W h / T``
    (renormalised over the k rows, as the authors' ``_compute_entropy``) and the sampled token's one-hot
    over them (all zero when it is not among them). ``top_k`` None: the whole vocabulary."""
    dtype = _compute_dtype(hidden)
    k = weight.shape[0] if top_k is None else min(top_k, weight.shape[0])
    ids = (hidden.to(weight.dtype) @ weight.T).topk(k, dim=-1).indices
    logits = torch.einsum("nkh,nh->nk", weight[ids].to(dtype), hidden.to(dtype)) / temperature
    return ids, torch.softmax(logits, dim=-1), (ids == tokens[:, None]).to(dtype)


def token_gradients(
    hidden: Tensor,  # [N,H]
    score: Tensor,  # [N,k] v = e_a - pi
    advantages: Tensor,  # [N]
    temperature: float = 1.0,
) -> Tensor:  # [N,k,H]
    """``g_t = A_t v_t (outer) h_t / T``: the gradient of ``A_t log pi_t(a_t)`` w.r.t. the k modelled rows."""
    return (advantages[:, None] * score / temperature)[:, :, None] * hidden[:, None, :]


def adam_direction(
    grad: Tensor,  # [..., H]
    exp_avg: Tensor,  # [..., H] m
    exp_avg_sq: Tensor,  # [..., H] s
    step: int,  # updates the moments have had
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> Tensor:  # [..., H]
    """Adam's prospective direction: the moments advanced with ``grad`` without storing them, bias-corrected
    at step ``step + 1`` (``SparseAdamModel.batch_compute_effective_token_gradients``)."""
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    s = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return (m / (1.0 - beta1 ** (step + 1))) / ((s / (1.0 - beta2 ** (step + 1))).sqrt() + eps)


def curvature_shifts(
    grad_dot_direction: Tensor,  # [N] <g_t, G_t>
    u: Tensor,  # [N,k] G_t h_t / T
    score: Tensor,  # [N,k] v_t = e_a - pi
    pi: Tensor,  # [N,k]
    advantages: Tensor,  # [N]
    lr: float,
) -> tuple[Tensor, Tensor]:  # dJ [N], KL [N]
    """``dJ_t = lr <g,G> + lr^2/2 A [(v.u)^2 - u^T F u]`` and ``KL_t = lr^2/2 (v.u)^2``, ``F = diag(pi) - pi pi^T``
    (so ``u^T F u = sum pi u^2 - (pi.u)^2``)."""
    vu = (score * u).sum(-1)
    u_f_u = (pi * u * u).sum(-1) - (pi * u).sum(-1) ** 2
    dj = lr * grad_dot_direction + 0.5 * lr**2 * advantages * (vu**2 - u_f_u)
    return dj, 0.5 * lr**2 * vu**2


def curvature_keep(
    dj: Tensor,  # [N]
    kl: Tensor,  # [N]
    hessian_tau: float,
    fisher_tau: float,
    symmetric: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # keep, keep by the objective test, keep by the Fisher test; [N] bool
    """Tokens kept by ``-tau_H < dJ < tau_H`` (``symmetric``; else ``0 <= dJ < tau_H``) and ``KL < tau_F``;
    a tau of 0 switches its test off."""
    keep_h = torch.ones_like(dj, dtype=torch.bool)
    keep_f = torch.ones_like(kl, dtype=torch.bool)
    if hessian_tau != 0:
        keep_h = (dj < hessian_tau) & ((dj > -hessian_tau) if symmetric else (dj >= 0))
    if fisher_tau != 0:
        keep_f = kl < fisher_tau
    return keep_h & keep_f, keep_h, keep_f


class SparseAdamMoments:
    """Adam's moments of the LM-head rows seen so far, keyed by vocabulary id (the authors' ``SparseAdamModel``).

    ``ids`` [R] sorted, ``exp_avg`` / ``exp_avg_sq`` [R,H], ``step`` the number of updates. Rows never updated
    read as zero moments. The moments keep the dtype of the first gradient they take (fp32 in training) and
    follow the device of the data they meet.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.reset()

    def reset(self) -> None:
        """No rows, step 0."""
        self.step = 0
        self.ids = torch.zeros(0, dtype=torch.long)
        self.exp_avg = torch.zeros(0, 0)
        self.exp_avg_sq = torch.zeros(0, 0)

    def __len__(self) -> int:
        return int(self.ids.numel())

    def _to(self, device: torch.device) -> None:
        if self.ids.device != device:
            self.ids, self.exp_avg, self.exp_avg_sq = (t.to(device) for t in (self.ids, self.exp_avg, self.exp_avg_sq))

    def moments(self, ids: Tensor, hidden_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:  # [...,H] x2
        """The moments of the rows ``ids`` (any shape), zero for rows never updated."""
        shape = (*ids.shape, hidden_size)
        if not len(self):
            zeros = torch.zeros(shape, dtype=dtype, device=ids.device)
            return zeros, zeros
        self._to(ids.device)
        flat = ids.reshape(-1)
        pos = torch.searchsorted(self.ids, flat).clamp(max=len(self) - 1)
        found = (self.ids[pos] == flat).to(dtype)[:, None]
        return ((self.exp_avg[pos].to(dtype) * found).reshape(shape),
                (self.exp_avg_sq[pos].to(dtype) * found).reshape(shape))

    def direction(self, grad: Tensor, ids: Tensor) -> Tensor:  # grad [...,H], ids [...] -> [...,H]
        """:func:`adam_direction` of ``grad`` with the rows' current moments."""
        m, s = self.moments(ids, grad.shape[-1], grad.dtype)
        return adam_direction(grad, m, s, self.step, self.beta1, self.beta2, self.eps)

    @torch.no_grad()
    def update(self, ids: Tensor, grad: Tensor) -> None:  # ids [U] distinct, grad [U,H]
        """One Adam moment step for the rows ``ids`` with their gradients; other rows keep their moments."""
        self.step += 1
        if ids.numel() == 0:
            return
        self._to(ids.device)
        if not len(self):
            self.exp_avg = torch.zeros(0, grad.shape[1], dtype=grad.dtype, device=ids.device)
            self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        grad = grad.to(self.exp_avg.dtype)
        merged, inverse = torch.unique(torch.cat([self.ids, ids]), sorted=True, return_inverse=True)
        old, new = inverse[: len(self)], inverse[len(self):]
        exp_avg = self.exp_avg.new_zeros(merged.numel(), grad.shape[1])
        exp_avg_sq = torch.zeros_like(exp_avg)
        exp_avg[old], exp_avg_sq[old] = self.exp_avg, self.exp_avg_sq
        exp_avg[new] = self.beta1 * exp_avg[new] + (1.0 - self.beta1) * grad
        exp_avg_sq[new] = self.beta2 * exp_avg_sq[new] + (1.0 - self.beta2) * grad * grad
        self.ids, self.exp_avg, self.exp_avg_sq = merged, exp_avg, exp_avg_sq

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ids": self.ids.cpu().clone(), "exp_avg": self.exp_avg.cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.reset()
            return
        missing = {"step", "ids", "exp_avg", "exp_avg_sq"} - set(state)
        if missing:
            raise ValueError(f"CAPO optimiser-model state lacks {sorted(missing)}; was it saved by another algorithm?")
        ids, exp_avg, exp_avg_sq = state["ids"], state["exp_avg"], state["exp_avg_sq"]
        if exp_avg.shape != exp_avg_sq.shape or exp_avg.shape[0] != ids.numel():
            raise ValueError(f"CAPO optimiser-model state is inconsistent: {ids.numel()} ids, moments "
                             f"{tuple(exp_avg.shape)} and {tuple(exp_avg_sq.shape)}")
        self.step = int(state["step"])
        self.ids, self.exp_avg, self.exp_avg_sq = ids.clone(), exp_avg.clone(), exp_avg_sq.clone()


@dataclass
class TokenCurvature:
    """The model's per-token output: shifts and, for the optimiser-model update, ``g_t = coef (outer) h_t``."""

    dj: Tensor  # [N]
    kl: Tensor  # [N]
    ids: Tensor  # [N,k] modelled LM-head rows
    coef: Tensor  # [N,k] A v / T


def _chunks(n: int, k: int, hidden_size: int, chunk_size: int | None) -> list[slice]:
    size = chunk_size or max(1, CHUNK_ELEMENTS // max(1, k * hidden_size))
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


@torch.no_grad()
def token_curvature(
    hidden: Tensor,  # [N,H]
    weight: Tensor,  # [V,H]
    tokens: Tensor,  # [N]
    advantages: Tensor,  # [N]
    lr: float,
    temperature: float = 1.0,
    top_k: int | None = 50,
    moments: SparseAdamMoments | None = None,  # None: the SGD model
    cold_start: Literal["gradient", "adam"] = "gradient",
    chunk_size: int | None = None,  # tokens per [tokens, k, H] temporary
) -> TokenCurvature:
    """``dJ_t`` and ``KL_t`` of every token, in chunks of tokens so that the k x H temporaries stay bounded."""
    dtype = _compute_dtype(hidden)
    n, hidden_size = hidden.shape
    k = weight.shape[0] if top_k is None else min(top_k, weight.shape[0])
    use_adam = moments is not None and (len(moments) > 0 or cold_start == "adam")
    out = TokenCurvature(hidden.new_zeros(n, dtype=dtype), hidden.new_zeros(n, dtype=dtype),
                         torch.zeros(n, k, dtype=torch.long, device=hidden.device), hidden.new_zeros(n, k, dtype=dtype))
    for rows in _chunks(n, k, hidden_size, chunk_size):
        h, adv = hidden[rows].to(dtype), advantages[rows].to(dtype)
        ids, pi, onehot = topk_policy(h, weight, tokens[rows], k, temperature)
        score = onehot - pi
        coef = adv[:, None] * score / temperature
        if use_adam:
            grad = coef[:, :, None] * h[:, None, :]
            direction = moments.direction(grad, ids)
            grad_dot_direction = (grad * direction).sum((1, 2))
            u = torch.einsum("nkh,nh->nk", direction, h) / temperature
        else:  # G = g = coef (outer) h: no k x H temporary needed
            h_sq = (h * h).sum(-1)
            grad_dot_direction = (coef * coef).sum(-1) * h_sq
            u = coef * h_sq[:, None] / temperature
        out.dj[rows], out.kl[rows] = curvature_shifts(grad_dot_direction, u, score, pi, adv, lr)
        out.ids[rows], out.coef[rows] = ids, coef
    return out


@dataclass
class RowSums:
    """Per-row sums of ``g_t`` over token entries, and how many entries hit each row."""

    ids: Tensor  # [U] distinct
    sums: Tensor  # [U,H]
    counts: Tensor  # [U]

    def merge(self, other: RowSums) -> RowSums:
        ids, inverse = torch.unique(torch.cat([self.ids, other.ids]), return_inverse=True)
        sums = torch.cat([self.sums, other.sums])
        sums = sums.new_zeros(ids.numel(), sums.shape[1]).index_add_(0, inverse, sums)
        counts = torch.cat([self.counts, other.counts])
        counts = counts.new_zeros(ids.numel()).index_add_(0, inverse, counts)
        return RowSums(ids, sums, counts)

    def means(self) -> Tensor:  # [U,H]
        return self.sums / self.counts[:, None].to(self.sums.dtype)


@torch.no_grad()
def row_gradient_sums(
    ids: Tensor,  # [M,k] rows of the kept tokens
    coef: Tensor,  # [M,k]
    hidden: Tensor,  # [M,H]
    chunk_size: int | None = None,
) -> RowSums:
    """Sum of ``g_t = coef (outer) h_t`` per LM-head row over all (token, top-k entry) pairs, and their count."""
    flat_ids, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    hidden = hidden.to(coef.dtype)
    sums = coef.new_zeros(flat_ids.numel(), hidden.shape[1])
    for rows in _chunks(ids.shape[0], ids.shape[1], hidden.shape[1], chunk_size):
        grad = coef[rows, :, None] * hidden[rows, None, :]
        sums.index_add_(0, inverse[rows].reshape(-1), grad.reshape(-1, hidden.shape[1]))
    counts = torch.bincount(inverse.reshape(-1), minlength=flat_ids.numel())
    return RowSums(flat_ids, sums, counts)


# -- the token mask ------------------------------------------------------------------------------------------


@token_mask("curvature", tis="CAPO's curvature model scores tokens with the per-row advantage")
class CurvatureMask:
    """CAPO's keep-mask from the curvature model, with the Adam model that tracks the optimiser. Its statistics go
    into the loss's metrics; the kept tokens' row gradients of a mini-batch update the model after its optimizer
    step (:meth:`after_step`). Truncated importance sampling is not offered: the model scores tokens with the
    per-row advantage."""

    chunk_size: int | None = None  # tokens per k x H temporary; None: about CHUNK_ELEMENTS elements

    def __init__(self, ctx):
        self.options, self.run = ctx.options, ctx.run
        o = self.options
        self.moments = SparseAdamMoments(o.adam_beta1, o.adam_beta2, o.adam_eps)
        self._rows: RowSums | None = None  # kept-token row sums of the current mini-batch

    @property
    def masking(self) -> bool:
        return self.options.fisher_tau > 0 or self.options.hessian_tau > 0

    def minibatch(self, minibatch, micro_rows, entropy_of) -> list[dict[str, Any]]:
        self._rows = None  # a skipped optimizer step must not carry its rows into the next mini-batch
        return [{} for _ in micro_rows]

    def mask(self, inputs) -> tuple[Tensor | None, dict[str, float]]:  # [n,T] bool
        """The curvature keep-mask and its statistics; adds the kept tokens' row gradients to the mini-batch's
        sums for :meth:`after_step`."""
        o = self.options
        if not self.masking:
            return None, {"capo/rejection_rate": 0.0}
        if inputs.hidden is None or inputs.lm_head_weight is None or inputs.response_tokens is None:
            raise RuntimeError("capo needs the last hidden states, the LM-head weight and the response tokens in "
                               "LossInputs (needs_hidden = True), but the learner passed none")
        valid = inputs.mask.bool()
        adv = inputs.advantages.detach()
        adv = adv[:, None].expand(valid.shape) if adv.dim() == 1 else adv
        hidden = inputs.hidden.detach()[valid]
        adam = o.optimizer_model == "adam"
        curvature = token_curvature(hidden, inputs.lm_head_weight.detach(), inputs.response_tokens[valid], adv[valid],
                                    inputs.lr, self.run.temperature, o.top_k, self.moments if adam else None,
                                    o.adam_cold_start, self.chunk_size)
        keep, keep_h, keep_f = curvature_keep(curvature.dj, curvature.kl, o.hessian_tau, o.fisher_tau,
                                              o.hessian_symmetric_clipping)
        if adam:
            rows = row_gradient_sums(curvature.ids[keep], curvature.coef[keep], hidden[keep], self.chunk_size)
            self._rows = rows if self._rows is None else self._rows.merge(rows)
        count = max(int(keep.numel()), 1)
        metrics = {
            "capo/rejection_rate": float((~keep).sum()) / count,
            "capo/rejection_rate_hessian": float((~keep_h).sum()) / count,
            "capo/rejection_rate_fisher": float((~keep_f).sum()) / count,
            "capo/kl_mean": float(curvature.kl.sum()) / count,
            "capo/dj_mean": float(curvature.dj.sum()) / count,
            "capo/dj_abs_mean": float(curvature.dj.abs().sum()) / count,
        }
        mask = torch.zeros_like(valid)
        mask[valid] = keep.to(valid.device)
        return mask, metrics

    def denominators(self, inputs) -> dict[str, Any]:
        return {}  # the shared aggregation: token-mean's mini-batch count is all valid tokens (module docstring)

    def after_step(self) -> dict[str, float]:
        """One Adam-model step with the per-row mean gradient of the mini-batch's kept tokens."""
        if not self.masking or self.options.optimizer_model != "adam":
            return {}
        rows, self._rows = self._rows, None
        if rows is None:
            self.moments.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, 0))
            updated = 0
        else:
            self.moments.update(rows.ids, rows.means())
            updated = rows.ids.numel()
        return {"capo/adam_rows": float(len(self.moments)), "capo/adam_rows_updated": float(updated)}

    def state_dict(self) -> dict[str, Any]:
        if self.moments.step == 0 and not len(self.moments):
            return {}
        return {"optimizer_model": self.moments.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"optimizer_model"}
        if unknown:
            raise ValueError(f"capo keeps only 'optimizer_model' state, but the checkpoint has {sorted(unknown)}")
        self.moments.load_state_dict(state.get("optimizer_model", {}))
        self._rows = None
