"""COPO, Consistency-Aware Policy Optimization (arXiv 2508.04138; ALGORITHMS.md section 5).

GRPO's advantage is zero for a prompt whose samples all agree, so such prompts teach nothing. COPO adds a
global advantage: each prompt's group accuracy standardised across the prompts of the step batch, and
blends the two clipped surrogates per row::

    l = (1 - w~) l_clip(A_glob) + w~ l_clip(A_loc),     w(q) = sigmoid(k (H(q) - b))

where ``H(q)`` is the entropy (bits) of the group's extracted final answers, so consistent groups lean on
the global term. ``mode`` picks ``w~`` (:func:`~rlvr.algos.functional.copo_advantages`); the default
``soft with zero`` (the released scripts) gives incorrect responses only the global term.

Defaults are the authors' ``verl/run_copo.sh``: k=5, b=1, clip 0.2/0.2, dual clip 3, seq-mean-token-mean,
no KL. The reward must return the extracted answer of each response (``math_answer`` returns it as
``extracted``); the consistency coefficient ``(1 - lambda H)`` on the global reward is off in every
released script and not implemented.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor

from rlvr.algos.base import AlgorithmOptions, ClippedAlgorithm, ClippedOptions, LossInputs, has_signal
from rlvr.algos.functional import AggMode, CopoMode, clipped_pg_terms, copo_advantages
from rlvr.algos.registry import register


class COPOOptions(ClippedOptions):
    loss_agg: AggMode = Field("seq-mean-token-mean", description="COPO scripts: seq-mean-token-mean.")
    k: float = Field(5.0, description="Steepness of the blend weight sigmoid(k (H - b)) (run_copo.sh 5).")
    b: float = Field(1.0, description="Answer-entropy midpoint of the blend weight, in bits (run_copo.sh 1).")
    mode: CopoMode = Field("soft with zero", description="Which rows use the local term: 'soft with zero' "
                           "(default), 'soft with forced', 'only soft', 'only zero', 'only forced', "
                           "'only global', 'no global' (= GRPO).")
    answer_field: str = Field("extracted", description="The reward extra that holds each response's final "
                              "answer (math_answer: 'extracted').")

    @field_validator("mode", mode="before")
    @classmethod
    def _spaces(cls, value: object) -> object:
        """``soft-with-zero`` (as the authors' run_copo.sh spells it) means ``soft with zero``."""
        return value.replace("-", " ") if isinstance(value, str) else value

    def problems(self, recipe) -> list[str]:
        out = super().problems(recipe)
        if self.tis_cap is not None:
            out.append("algorithm.tis_cap: COPO blends a global and a local advantage per row; truncated "
                       "importance sampling is available for grpo, dapo, drgrpo, dcpo, forking-tokens and "
                       "scaf_grpo")
        return out


@register
class COPO(ClippedAlgorithm):
    """COPO: a batch-level consistency advantage blended with GRPO's by answer entropy."""

    name = "copo"
    Options: ClassVar[type[AlgorithmOptions]] = COPOOptions

    def advantages(self, batch) -> Tensor:  # [N] local; global and weight ride in algo_fields
        o = self.options
        field = o.answer_field
        missing = [i for i, extras in enumerate(batch.reward_extras) if field not in (extras or {})]
        if missing:
            raise ValueError(f"copo needs each response's extracted answer, but the reward returned no "
                             f"{field!r} for {len(missing)} of {len(batch)} rows; return a dict with "
                             f"'score' and {field!r} (as math_answer does) or set algorithm.answer_field")
        answers = [str(extras[field]) for extras in batch.reward_extras]
        local, glob, weight = copo_advantages(self.reward_for_advantage(batch), batch.group, answers, o.k, o.b,
                                              o.mode)
        batch.algo_fields["copo_global"] = glob
        batch.algo_fields["copo_weight"] = weight
        self.record({"copo/weight_mean": float(weight.mean()), "copo/global_abs_mean": float(glob.abs().mean()),
                     "copo/global_nonzero_frac": float((glob != 0).float().mean())})
        return local

    def effective_advantages(self, batch) -> Tensor:  # [N]
        weight = batch.algo_fields["copo_weight"]
        return (1.0 - weight) * batch.algo_fields["copo_global"] + weight * batch.advantages

    def update_would_move(self, batch) -> bool:
        """Each surrogate by itself: a blend whose effective advantage is 0 can still have a gradient once
        the ratio leaves 1 (later mini-batches, clipping), unless both its weighted terms are 0."""
        weight = batch.algo_fields["copo_weight"]
        local, glob = weight * batch.advantages, (1.0 - weight) * batch.algo_fields["copo_global"]
        return self.loss_moves_without_advantage or (
            self.options.pg_coef > 0 and (has_signal(local, batch.response_mask)
                                          or has_signal(glob, batch.response_mask)))

    def clip_spec(self) -> None:
        """None: the blend of two clipped terms is not the fused kernel's loss; :meth:`per_token_loss` it is."""
        return None

    def per_token_loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        weight = inputs.extra["copo_weight"].to(inputs.logp.dtype)[:, None]
        local, _, ratio = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.advantages, o.clip_eps_low,
                                           o.clip_eps_high, o.dual_clip)
        glob, _, _ = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.extra["copo_global"], o.clip_eps_low,
                                      o.clip_eps_high, o.dual_clip)
        blended = (1.0 - weight) * glob + weight * local
        effective = (1.0 - weight[:, 0]) * inputs.extra["copo_global"] + weight[:, 0] * inputs.advantages
        return blended, {"ratio": ratio, "low": torch.tensor(1.0 - o.clip_eps_low),
                         "high": torch.tensor(1.0 + o.clip_eps_high), "advantages": effective}
