"""The options every algorithm shares, as pydantic models that import no torch (``import rlvr.config`` stays light).

A preset's options model (``rlvr/algos/presets/<name>.py``) subclasses :class:`AlgorithmOptions` or
:class:`ClippedOptions`, sets ``name`` to its own literal and changes defaults by redeclaring fields, never by code.
The recipe's ``algorithm`` section is the union of these models, told apart by ``name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from rlvr.config import Recipe

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = AggMode.__args__  # type: ignore[attr-defined]
AggScope = Literal["mini-batch", "micro-batch"]
AdvNorm = Literal["group", "batch", "none"]
KLKind = Literal["k1", "k2", "k3", "k1+", "k3+"]


class AlgorithmOptions(BaseModel):
    """Options every algorithm shares; defaults are verl's (ALGORITHMS.md 1.2)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(description="Registered algorithm name (`rlvr list algorithms`).")
    loss_agg: AggMode = Field("token-mean", description="Loss aggregation (ALGORITHMS.md section 0).")
    loss_agg_scope: AggScope = Field(
        "mini-batch", description="Denominators over the whole mini-batch (current verl, TRL 'dapo') or each "
        "micro-batch, averaged over micro-batches (older verl, TRL 'bnpo').")
    loss_scale: float | None = Field(
        None, gt=0.0, description="Constant L_max of seq-mean-token-sum-norm; default rollout.max_new_tokens.")
    adv_norm: AdvNorm = Field("group", description="Advantage std: per group, over the batch, or none.")
    adv_eps: float = Field(1e-6, ge=0.0, description="Added to the std (verl 1e-6, TRL 1e-4).")
    kl_coef: float = Field(0.0, ge=0.0, description="KL-to-reference coefficient; 0 disables it.")
    kl_estimator: KLKind | None = Field(None, description="KL estimator; default k3 in the loss (verl low_var_kl), "
                                        "k1 in the reward (verl kl_penalty 'kl'); k2, or the "
                                        "straight-through k1+ / k3+ (their value, k2's gradient).")
    kl_in: Literal["loss", "reward"] = Field(
        "loss", description="KL in the loss (GRPO; aggregated like the PG loss) or subtracted from the reward "
        "(PPO-style: R <- R - kl_coef * sum_t KL_t of the behaviour policy, before advantages).")
    entropy_coef: float = Field(0.0, description="Entropy bonus: loss -= coef * agg(entropy) (1-shot RLVR 0.001).")
    pg_coef: float = Field(1.0, ge=0.0, description="Policy-gradient term coefficient (0: entropy only).")
    tis_cap: float | None = Field(
        None, gt=0.0, description="Truncated importance sampling (Yao et al. 2025, 'Your efficient RL framework "
        "secretly brings you off-policy RL training'): weight each token's PG loss by min(pi_learner / "
        "pi_rollout, tis_cap), correcting the rollout engine's log-prob mismatch (vLLM bf16 vs the learner); "
        "the authors use 2; null: off. Needs the engine's log-probs (requested automatically).")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose metric is all-equal and sample "
                                   "more prompts until data.batch_size groups survive.")
    dynamic_sampling_metric: Literal["accuracy", "reward"] = Field(
        "accuracy", description="What must vary within a kept group (verl 'acc' / 'score').")
    max_gen_batches: int = Field(10, ge=1, description="Dynamic sampling: generation rounds per step at most; "
                                 "past them the step trains on the groups that survived.")
    overlong_shaping: bool = Field(False, description="DAPO overlong reward shaping: responses reaching into "
                                   "the last overlong_buffer tokens before rollout.max_new_tokens lose reward.")
    overlong_buffer: int | None = Field(None, ge=1, description="Overlong shaping: L_buf in tokens; default a "
                                        "fifth of rollout.max_new_tokens (the DAPO recipe's 4096 of 20480).")
    overlong_penalty: float = Field(1.0, ge=0.0, description="Overlong shaping: the penalty at the limit.")

    @property
    def kl_kind(self) -> str:
        """The KL estimator in use: ``kl_estimator``, else verl's default for the placement."""
        return self.kl_estimator or ("k1" if self.kl_in == "reward" else "k3")

    @property
    def kl_in_reward(self) -> bool:
        """Whether the advantages read the reference log-probs (the KL subtracted from the reward)."""
        return self.kl_coef > 0 and self.kl_in == "reward"

    def problems(self, recipe: Recipe) -> list[str]:
        """What is wrong with these options in ``recipe`` (empty when nothing): checked before any work."""
        from rlvr.algos.registry import get, tis_presets, tis_refusal

        out = []
        if self.overlong_shaping and self.overlong_buffer is not None and \
                self.overlong_buffer >= recipe.rollout.max_new_tokens:
            out.append(f"algorithm.overlong_buffer: {self.overlong_buffer} must be smaller than "
                       f"rollout.max_new_tokens ({recipe.rollout.max_new_tokens}); the penalty ramps over the "
                       "last overlong_buffer tokens")
        if self.dynamic_sampling and recipe.rollout.n < 2:
            out.append("algorithm.dynamic_sampling needs rollout.n >= 2: a group of one sample never varies")
        filters = [*(["algorithm.dynamic_sampling"] if self.dynamic_sampling else []),
                   *(f"{self.name}'s {name} filter" for name in get(self.name).filters)]
        if recipe.rollout.max_staleness and filters:
            out.append(f"rollout.max_staleness: {recipe.rollout.max_staleness} does not combine with "
                       f"{', '.join(filters)}, which samples more within a step; use rollout.max_staleness 0")
        if self.tis_cap is not None and tis_refusal(self.name):
            out.append(f"algorithm.tis_cap: {self.name} cannot weight its loss by truncated importance sampling: "
                       f"{tis_refusal(self.name)}; it is available for {', '.join(tis_presets())}")
        return out


class ClippedOptions(AlgorithmOptions):
    """Options of the PPO-clipped losses: clip range, dual clip and the forking-token modifier."""

    clip_eps_low: float = Field(0.2, ge=0.0, le=1.0, description="PPO clip: ratio >= 1 - eps_low.")
    clip_eps_high: float = Field(0.2, ge=0.0, description="PPO clip: ratio <= 1 + eps_high (DAPO: 0.28).")
    dual_clip: float | None = Field(
        3.0, gt=1.0, description="Dual clip c for negative advantages (verl clip_ratio_c 3.0); null: off.")
    entropy_top_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="Forking tokens: train the PG loss only on the top rho of tokens by "
        "entropy (paper 0.2); null: off.")
    entropy_mask_scope: AggScope = Field(
        "micro-batch", description="Forking tokens: rank entropies within each micro-batch (authors' verl "
        "code) or the whole mini-batch (the paper's 'batch'; one extra forward).")
    entropy_mask_denominator: Literal["kept", "all"] = Field(
        "kept", description="Forking tokens: normalise the PG loss by the kept tokens (authors' code) or by "
        "all valid tokens (TRL).")
