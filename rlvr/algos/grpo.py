"""GRPO (DeepSeekMath; verl/TRL defaults): group-normalised outcome advantages and the PPO clipped loss.

Advantages: ``A_i = (R_i - mean_g R) / (std_g R + eps)`` per group of samples of one prompt
(:func:`~rlvr.algos.functional.group_advantages`). Loss: the per-token clipped surrogate with dual clip,
aggregated by ``loss_agg`` (verl's default ``token-mean``, not the paper's ``seq-mean-token-mean``: set
``loss_agg: seq-mean-token-mean`` for the paper), plus the shared KL and entropy terms (both off by
default, as in verl and TRL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.base import Algorithm, LossInputs
from rlvr.algos.functional import clipped_pg_terms, group_advantages
from rlvr.algos.registry import register


@register
class GRPO(Algorithm):
    """GRPO: group-normalised outcome advantages, PPO clipped loss (verl defaults)."""

    name = "grpo"

    def advantages(self, batch) -> Tensor:  # [N]
        return group_advantages(batch.rewards, batch.group, self.options.adv_norm, self.options.adv_eps)

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        mask = inputs.mask
        custom = self.token_mask(inputs)
        if custom is not None:
            mask = mask * custom
        per_token, clipped, ratio = clipped_pg_terms(
            inputs.logp, inputs.old_logp, inputs.advantages, o.clip_eps_low, o.clip_eps_high, o.dual_clip
        )
        pg = self.aggregate(per_token, mask, inputs)
        extra, metrics = self.regularizers(inputs, mask)
        valid = mask.sum().clamp(min=1.0)
        with torch.no_grad():
            metrics["actor/pg_loss"] = pg.item()
            metrics["actor/clip_frac"] = ((clipped.float() * mask).sum() / valid).item()
            metrics["actor/ratio_mean"] = ((ratio * mask).sum() / valid).item()
        return o.pg_coef * pg + extra, metrics
