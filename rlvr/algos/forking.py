"""Forking-token masking ("Beyond the 80/20 Rule", Wang et al. 2025; ALGORITHMS.md section 7).

Train the policy-gradient term only on the top ``rho`` of response tokens by entropy, the "forking"
tokens where the reasoning path branches. It is a modifier of every clipped loss: set
``algorithm.entropy_top_ratio`` on grpo, dapo, dcpo, copo, ... The registered ``forking-tokens`` preset is the
authors' recipe: DAPO with ``rho = 0.2``.

Authors' code (Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR, verl fork, ``get_global_entropy_top_mask``):
exact top-k, ``k = ceil(rho * valid tokens)``, within each micro-batch, with the loss normalised by the
kept tokens. Options: ``entropy_mask_scope: mini-batch`` ranks over the whole mini-batch (the paper's
"batch"; costs one no-grad forward per mini-batch) and ``entropy_mask_denominator: all`` normalises by
all valid tokens (TRL's ``top_entropy_quantile``).

Where rlvr departs from the paper and the authors' code:

* The code ranks within each per-GPU micro-batch; rlvr's ``micro-batch`` scope is its learner micro-batch
  (``learner.micro_batch_size`` rows), so the scope changes with that setting.
* Ties at the threshold go to the earlier position (the code's top-k leaves them unspecified; TRL keeps every
  token ``>=`` the quantile, which can keep more).
* Only the PG term is masked: the KL and entropy terms keep every token.
* Entropies come from the policy as it is at the start of the mini-batch (the code: likewise the current policy,
  not the behaviour policy).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from rlvr.algos.registry import token_mask


def forking_token_mask(
    entropy: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    rho: float,
) -> Tensor:  # [N,T] bool
    """Keep the top-``rho`` fraction of valid tokens by entropy ("Beyond the 80/20 Rule", ALGORITHMS.md 7.1).

    Authors' code (Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR ``get_global_entropy_top_mask``): over all
    valid tokens of the tensor passed in (the code passes the per-GPU micro-batch; the paper says the
    batch, so the scope is the caller's choice of rows), keep exactly ``k = max(1, int(n rho + 0.9999))``
    (a ceil that forgives float noise) tokens, by top-k. Ties at the threshold are broken towards the
    earlier position in row-major order (``torch.topk`` leaves them unspecified); TRL instead keeps every
    token ``>= quantile(1 - rho)``, which can keep more than ``k``. Masked tokens are never selected;
    no valid tokens gives an all-False mask; ``rho = 1`` returns the valid mask. How the loss is then
    normalised (kept tokens in the code, all tokens in TRL) is :func:`aggregate`'s business.
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"forking-token rho must be in (0, 1], got {rho} (the paper's default is 0.2)")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy shape {tuple(entropy.shape)} differs from mask shape {tuple(mask.shape)}")
    valid = mask.bool()
    flat_valid = valid.flatten()
    n = int(flat_valid.sum())
    out = torch.zeros_like(flat_valid)
    if n == 0:
        return out.view_as(valid)
    k = kept_count(n, rho)
    positions = flat_valid.nonzero(as_tuple=True)[0]
    order = torch.sort(entropy.flatten()[positions], descending=True, stable=True).indices
    out[positions[order[:k]]] = True
    return out.view_as(valid)


def kept_count(num_valid: int, rho: float) -> int:
    """Tokens :func:`forking_token_mask` keeps out of ``num_valid``."""
    return 0 if num_valid == 0 else max(1, int(num_valid * rho + 0.9999))


def minibatch_masks(
    minibatch,
    micro_rows: list[list[int]],
    entropy_of: Callable[[Any], Tensor],
    rho: float,
    scope: str,
) -> list[dict[str, Any]]:
    """Per micro-batch ``kept_tokens`` (the mini-batch's kept count, the denominator of ``token-mean``
    over kept tokens) and, at ``mini-batch`` scope, the ``forking_mask`` rows ranked over the mini-batch."""
    if scope == "micro-batch":
        kept = sum(kept_count(int(minibatch.response_mask[rows].sum()), rho) for rows in micro_rows)
        return [{"kept_tokens": float(kept)} for _ in micro_rows]
    width = minibatch.response_tokens.shape[1]
    entropy = minibatch.response_mask.new_zeros(minibatch.response_mask.shape)
    for rows in micro_rows:
        micro = minibatch.select(rows).trimmed()
        part = entropy_of(micro).detach().float()
        entropy[rows, : part.shape[1]] = part
    mask = forking_token_mask(entropy, minibatch.response_mask, rho)
    kept = float(mask.sum())
    return [{"kept_tokens": kept, "forking_mask": mask[rows][:, :width]} for rows in micro_rows]


@token_mask("forking")
class ForkingMask:
    """The top ``entropy_top_ratio`` of valid tokens by entropy, ranked within each micro-batch or over the
    mini-batch (``entropy_mask_scope``); the loss is normalised by the kept tokens unless
    ``entropy_mask_denominator: all``."""

    def __init__(self, ctx):
        self.options = ctx.options

    def minibatch(self, minibatch, micro_rows, entropy_of) -> list[dict[str, Any]]:
        o = self.options
        return minibatch_masks(minibatch, micro_rows, entropy_of, o.entropy_top_ratio, o.entropy_mask_scope)

    def mask(self, inputs) -> tuple[Tensor, dict[str, float]]:  # [n,T] bool
        if "forking_mask" in inputs.extra:
            return inputs.extra["forking_mask"][:, : inputs.mask.shape[1]], {}
        if inputs.entropy is None:
            raise RuntimeError("forking-token masking needs entropies, but the learner computed none")
        return forking_token_mask(inputs.entropy.detach(), inputs.mask, self.options.entropy_top_ratio), {}

    def denominators(self, inputs) -> dict[str, Any]:
        """The aggregation's counts: all valid tokens (``entropy_mask_denominator: all``), or the mini-batch's kept
        tokens that :meth:`minibatch` put in the context (without that context, every valid token's)."""
        if self.options.entropy_mask_denominator == "all":
            return {"denominator_mask": inputs.mask}
        return {"num_tokens": inputs.extra.get("kept_tokens")}

    def after_step(self) -> dict[str, float]:
        return {}
