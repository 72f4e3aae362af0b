"""What every loss shares, applied once per micro-batch: token masks, truncated importance weights, the aggregation
and its scope, the KL-to-reference and entropy terms, and the PG coefficient (DESIGN.md section 4).

:func:`objective` calls the preset's registered per-token loss with an :class:`Aggregation` (the mask and the
denominators the options ask for) and adds the regularisers::

    loss = pg_coef * pg(inputs, agg) + kl_coef * agg(KL) - entropy_coef * agg(entropy)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlvr.algos.functional import aggregate, kl_penalty

if TYPE_CHECKING:
    from rlvr.algos.algorithm import Context, LossInputs
    from rlvr.algos.registry import Part

# Loss metrics a micro-batch reports as its contribution to the mini-batch's loss (micro-batch losses add up
# to the mini-batch loss in either aggregation scope): the learners sum these over micro-batches and ranks,
# and token-weight every other metric (per-micro-batch means such as entropy or clip fractions).
ADDITIVE_METRICS = frozenset({"actor/pg_loss", "actor/kl"})


@dataclass
class Aggregation:
    """How a per-token loss becomes the micro-batch's share of the mini-batch loss: ``mode`` over the tokens of
    ``mask``, with the denominators of the options' scope (:func:`~rlvr.algos.functional.aggregate`)."""

    mode: str
    mask: Tensor  # [n,T] the tokens summed: valid tokens times every token mask
    num_tokens: Any
    num_seqs: float
    loss_scale: float
    denominator_mask: Tensor  # [n,T] the tokens counted by the local token means

    def __call__(self, losses: Tensor) -> Tensor:
        return aggregate(losses, self.mask, self.mode, **self.denominators())

    def denominators(self) -> dict[str, Any]:
        """The keyword arguments ``num_tokens``, ``num_seqs``, ``loss_scale`` and ``denominator_mask`` of
        :func:`~rlvr.algos.functional.aggregate` and of the fused kernel."""
        return {"num_tokens": self.num_tokens, "num_seqs": self.num_seqs, "loss_scale": self.loss_scale,
                "denominator_mask": self.denominator_mask}


def aggregation(ctx: Context, inputs: LossInputs, mask: Tensor, denominator_mask: Tensor | None = None,
                num_tokens: float | None = None) -> Aggregation:
    """The :class:`Aggregation` of ``mask`` in ``loss_agg_scope``: ``denominator_mask`` (default ``mask``) selects
    the counted tokens; ``num_tokens`` overrides the mini-batch token count of ``token-mean`` (forking tokens' kept
    count)."""
    o = ctx.options
    denominator_mask = mask if denominator_mask is None else denominator_mask
    if o.loss_agg_scope == "micro-batch":
        tokens = denominator_mask.sum() * inputs.num_micro
        seqs = float(mask.shape[0] * inputs.num_micro)
    else:
        tokens = inputs.num_tokens if num_tokens is None else num_tokens
        seqs = inputs.num_seqs
    scale = o.loss_scale if o.loss_scale is not None else float(ctx.run.max_new_tokens)
    return Aggregation(o.loss_agg, mask, tokens, seqs, scale, denominator_mask)


def objective(inputs: LossInputs, ctx: Context, loss: Part, masks: list[Any]) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch's loss and metrics: the preset's ``loss`` under the token ``masks``, plus the shared terms."""
    o = ctx.options
    if loss.meta.get("tis", False):
        inputs = importance_weighted(inputs)
    valid = inputs.mask
    mask = valid
    mask_metrics: dict[str, float] = {}
    denominators: dict[str, Any] = {}  # a mask may change what the aggregation counts (forking tokens' kept count)
    for token_mask in masks:
        keep, metrics = token_mask.mask(inputs)
        mask_metrics.update(metrics)
        denominators.update(token_mask.denominators(inputs))
        if keep is not None:
            mask = mask * keep.to(mask.dtype)
    agg = aggregation(ctx, inputs, mask, **denominators)
    pg, loss_metrics = loss.fn(inputs, ctx, agg)
    extra, metrics = regularizers(inputs, ctx, agg)
    with torch.no_grad():
        metrics.update(loss_metrics)
        metrics["actor/pg_loss"] = pg.item()
        metrics.setdefault("actor/masked_token_frac", float(1.0 - mask.sum() / valid.sum().clamp(min=1.0)))
        metrics.update(mask_metrics)
    return o.pg_coef * pg + extra, metrics


def regularizers(inputs: LossInputs, ctx: Context, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
    """KL-to-reference (in the loss) and entropy terms over all valid tokens, aggregated like the PG loss."""
    o = ctx.options
    total = torch.zeros((), dtype=inputs.logp.dtype)
    metrics: dict[str, float] = {}
    if o.kl_coef > 0 and o.kl_in == "loss":
        if inputs.ref_logp is None:
            raise RuntimeError("kl_coef > 0 but the learner passed no reference log-probs")
        kl = _over_valid(kl_penalty(inputs.logp, inputs.ref_logp, o.kl_kind), ctx, inputs)
        total = total + o.kl_coef * kl
        metrics["actor/kl"] = kl.item()
    if o.entropy_coef != 0:
        if inputs.entropy is None:
            raise RuntimeError("entropy_coef != 0 but the learner computed no entropy")
        total = total - o.entropy_coef * _over_valid(inputs.entropy, ctx, inputs)
    return total, metrics


def _over_valid(losses: Tensor, ctx: Context, inputs: LossInputs) -> Tensor:
    return aggregation(ctx, inputs, inputs.mask)(losses)


def importance_weighted(inputs: LossInputs) -> LossInputs:
    """``inputs`` with per-token advantages ``A * w`` when the rows carry truncated importance-sampling weights
    ``w`` (``extra["tis_weight"]``). The clipped surrogate, dual clip included, is positively homogeneous in
    ``A``, so scaling the advantage by ``w > 0`` scales each token's PG loss by ``w`` and nothing else."""
    weights = inputs.extra.get("tis_weight")
    if weights is None:
        return inputs
    advantages = inputs.advantages if inputs.advantages.dim() == 2 else inputs.advantages[:, None]
    width = inputs.mask.shape[1]
    return replace(inputs, advantages=advantages[:, :width] * weights[:, :width].to(advantages.dtype))
