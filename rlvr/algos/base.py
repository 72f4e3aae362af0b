"""The algorithm plug-in interface: hooks the training loop and the learner call, and shared options.

An algorithm is a small class with a name in the registry (:func:`rlvr.algos.register`). The loop calls
its hooks in this order every step (DESIGN.md section 2)::

    rollout_plan -> [generate, score] -> post_rollout -> advantages -> learner: token_mask -> loss

All hooks but :meth:`Algorithm.advantages` and :meth:`Algorithm.loss` have defaults. Options common to
every policy-gradient method (clipping, aggregation, KL, entropy bonus, PG coefficient, advantage
normalisation) live in :class:`AlgorithmOptions`, not in each algorithm's code; an algorithm changes its
defaults by subclassing the options model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from rlvr.algos.functional import AdvNorm, AggMode, KLKind, aggregate, kl_penalty

if TYPE_CHECKING:
    from rlvr.batch import RolloutBatch


class AlgorithmOptions(BaseModel):
    """Options every policy-gradient algorithm shares; defaults are verl's (ALGORITHMS.md 1.2)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    clip_eps_low: float = Field(0.2, ge=0.0, le=1.0, description="PPO clip: ratio >= 1 - eps_low.")
    clip_eps_high: float = Field(0.2, ge=0.0, description="PPO clip: ratio <= 1 + eps_high (DAPO: 0.28).")
    dual_clip: float | None = Field(
        3.0, gt=1.0, description="Dual clip c for negative advantages (verl clip_ratio_c 3.0); null: off."
    )
    loss_agg: AggMode = Field("token-mean", description="Loss aggregation (ALGORITHMS.md section 0).")
    loss_scale: float | None = Field(
        None, gt=0.0, description="Constant L_max of seq-mean-token-sum-norm; default rollout.max_new_tokens."
    )
    adv_norm: AdvNorm = Field("group", description="Advantage std: per group, over the batch, or none.")
    adv_eps: float = Field(1e-6, ge=0.0, description="Added to the std (verl 1e-6, TRL 1e-4).")
    kl_coef: float = Field(0.0, ge=0.0, description="KL-to-reference coefficient in the loss; 0 disables it.")
    kl_estimator: KLKind = Field("k3", description="KL estimator (verl low_var_kl = k3).")
    entropy_coef: float = Field(0.0, description="Entropy bonus: loss -= coef * agg(entropy).")
    pg_coef: float = Field(1.0, ge=0.0, description="Policy-gradient term coefficient (0: entropy only).")


@dataclass
class LossInputs:
    """What the learner hands to :meth:`Algorithm.token_mask` and :meth:`Algorithm.loss` per micro-batch.

    ``num_tokens`` / ``num_seqs`` count the whole mini-batch, so summing micro-batch losses gives the
    mini-batch's global mean (the denominator scope of ALGORITHMS.md section 0).
    """

    logp: Tensor  # [n,T] current policy, differentiable
    old_logp: Tensor  # [n,T] behaviour policy
    entropy: Tensor | None  # [n,T] differentiable, or None when not computed
    mask: Tensor  # [n,T] float, 1 on valid response tokens
    advantages: Tensor  # [n] or [n,T]
    num_tokens: float
    num_seqs: float
    ref_logp: Tensor | None = None  # [n,T]
    lr: float = 0.0
    hidden: Tensor | None = None  # [n,T,H] last hidden states at response positions, when asked for
    lm_head_weight: Tensor | None = None  # [V,H]
    extra: dict[str, Any] = field(default_factory=dict)


class Algorithm:
    """Base class. Subclasses set ``name`` and ``Options`` and implement ``advantages`` and ``loss``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions
    needs_entropy: ClassVar[bool] = True  # entropy is logged, so it is computed by default

    def __init__(self, options: AlgorithmOptions | None = None, **kwargs: Any):
        self.options = options if options is not None else self.Options(**kwargs)

    # -- rollout side ------------------------------------------------------------------------------
    def rollout_plan(self, num_prompts: int, n: int) -> list[int]:
        """Samples per prompt for this step (GRPO: ``n`` each)."""
        return [n] * num_prompts

    def post_rollout(self, batch: RolloutBatch, generate: Any = None, score: Any = None) -> RolloutBatch:
        """After rewards, before advantages: may regenerate, drop or splice rows. Default: unchanged."""
        return batch

    def advantages(self, batch: RolloutBatch) -> Tensor:  # [N] or [N,T]
        raise NotImplementedError

    # -- learner side ------------------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.options.kl_coef > 0

    def token_mask(self, inputs: LossInputs) -> Tensor | None:  # [n,T] or None (keep inputs.mask)
        return None

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def regularizers(self, inputs: LossInputs, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """KL-to-reference and entropy terms, aggregated like the PG loss (shared by every algorithm)."""
        o = self.options
        total = torch.zeros((), dtype=inputs.logp.dtype)
        metrics: dict[str, float] = {}
        if o.kl_coef > 0:
            if inputs.ref_logp is None:
                raise RuntimeError("kl_coef > 0 but the learner passed no reference log-probs")
            kl = self.aggregate(kl_penalty(inputs.logp, inputs.ref_logp, o.kl_estimator), mask, inputs)
            total = total + o.kl_coef * kl
            metrics["actor/kl"] = kl.item()
        if o.entropy_coef != 0:
            if inputs.entropy is None:
                raise RuntimeError("entropy_coef != 0 but the learner computed no entropy")
            total = total - o.entropy_coef * self.aggregate(inputs.entropy, mask, inputs)
        return total, metrics

    def aggregate(self, losses: Tensor, mask: Tensor, inputs: LossInputs) -> Tensor:
        o = self.options
        return aggregate(losses, mask, o.loss_agg, inputs.num_tokens, inputs.num_seqs, o.loss_scale)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"algorithm {self.name!r} keeps no state, but the checkpoint has {sorted(state)}")
