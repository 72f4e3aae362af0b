"""Forking-token masking ("Beyond the 80/20 Rule", Wang et al. 2025; ALGORITHMS.md section 7).

Train the policy-gradient term only on the top ``rho`` of response tokens by entropy, the "forking"
tokens where the reasoning path branches. It is a modifier of every clipped loss: set
``algorithm.entropy_top_ratio`` on grpo, dapo, dcpo, copo, ... The registered ``forking-tokens`` is the
authors' recipe: DAPO with ``rho = 0.2``.

Authors' code (Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR, verl fork, ``get_global_entropy_top_mask``):
exact top-k, ``k = ceil(rho * valid tokens)``, within each micro-batch, with the loss normalised by the
kept tokens. Options: ``entropy_mask_scope: mini-batch`` ranks over the whole mini-batch (the paper's
"batch"; costs one no-grad forward per mini-batch) and ``entropy_mask_denominator: all`` normalises by
all valid tokens (TRL's ``top_entropy_quantile``). Only the PG term is masked; the KL and entropy terms
keep every token. Entropies come from the current policy at the mini-batch's start.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import Field
from torch import Tensor

from rlvr.algos.base import AlgorithmOptions
from rlvr.algos.functional import forking_token_mask
from rlvr.algos.grpo import DAPO, DAPOOptions
from rlvr.algos.registry import register
from rlvr.batch import RolloutBatch


def kept_count(num_valid: int, rho: float) -> int:
    """Tokens :func:`~rlvr.algos.functional.forking_token_mask` keeps out of ``num_valid``."""
    return 0 if num_valid == 0 else max(1, int(num_valid * rho + 0.9999))


def minibatch_masks(
    minibatch: RolloutBatch,
    micro_rows: list[list[int]],
    entropy_of: Callable[[RolloutBatch], Tensor],
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


class ForkingOptions(DAPOOptions):
    entropy_top_ratio: float | None = Field(0.2, gt=0.0, le=1.0, description="Top rho of tokens by entropy "
                                            "that train the PG loss (authors' recipe 0.2).")


@register
class ForkingTokens(DAPO):
    """Forking tokens: DAPO trained only on the top-20% highest-entropy tokens (Beyond the 80/20 Rule)."""

    name = "forking-tokens"
    Options: ClassVar[type[AlgorithmOptions]] = ForkingOptions

