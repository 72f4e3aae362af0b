"""The algorithm plug-in interface: hooks the training loop and the learner call, and shared options.

An algorithm is a small class with a name in the registry (:func:`rlvr.algos.register`). The loop calls
its hooks in this order every step (DESIGN.md section 2)::

    driver:  rollout_plan -> [generate, score, shape_rewards] -> post_rollout -> advantages
    learner: per mini-batch minibatch_context; per micro-batch token_mask -> loss; after each
             optimizer step on_optimizer_step

All hooks but :meth:`Algorithm.advantages` and :meth:`Algorithm.loss` have defaults. Options common to
every algorithm (aggregation and its scope, KL, entropy bonus, PG coefficient, advantage normalisation,
DAPO's dynamic sampling and overlong shaping) live in :class:`AlgorithmOptions`; clipping and the
forking-token modifier in :class:`ClippedOptions`. An algorithm changes their defaults by subclassing the
options model, never by code of its own.

One instance lives on the driver (its state: e.g. DCPO's per-prompt statistics) and one in the learner
(e.g. CAPO's optimiser model); each saves its own :meth:`Algorithm.state_dict` into the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from rlvr.algos.functional import AdvNorm, AggMode, KLKind, aggregate, clip_metrics, clipped_pg_terms, kl_penalty

if TYPE_CHECKING:
    from rlvr.batch import RolloutBatch
    from rlvr.config import Recipe

AggScope = Literal["mini-batch", "micro-batch"]


class AlgorithmOptions(BaseModel):
    """Options every algorithm shares; defaults are verl's (ALGORITHMS.md 1.2)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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

    def problems(self, recipe: Recipe) -> list[str]:
        """What is wrong with these options in ``recipe`` (empty when nothing): checked before any work."""
        out = []
        if self.overlong_shaping and self.overlong_buffer is not None and \
                self.overlong_buffer >= recipe.rollout.max_new_tokens:
            out.append(f"algorithm.overlong_buffer: {self.overlong_buffer} must be smaller than "
                       f"rollout.max_new_tokens ({recipe.rollout.max_new_tokens}); the penalty ramps over the "
                       "last overlong_buffer tokens")
        if self.dynamic_sampling and recipe.rollout.n < 2:
            out.append("algorithm.dynamic_sampling needs rollout.n >= 2: a group of one sample never varies")
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
    tis_cap: float | None = Field(
        None, gt=0.0, description="Truncated importance sampling (Yao et al. 2025, 'Your efficient RL framework "
        "secretly brings you off-policy RL training'): weight each token's PG loss by min(pi_learner / "
        "pi_rollout, tis_cap), correcting the rollout engine's log-prob mismatch (vLLM bf16 vs the learner); "
        "the authors use 2; null: off. Needs the engine's log-probs (requested automatically).")


# Loss metrics a micro-batch reports as its contribution to the mini-batch's loss (micro-batch losses add up
# to the mini-batch loss in either aggregation scope): the learners sum these over micro-batches and ranks,
# and token-weight every other metric (per-micro-batch means such as entropy or clip fractions).
ADDITIVE_METRICS = frozenset({"actor/pg_loss", "actor/kl"})


@dataclass
class RunInfo:
    """What an algorithm may need to know about the run it is part of."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    n: int = 8
    batch_size: int = 32
    total_steps: int = 100


@dataclass
class LossInputs:
    """What the learner hands to :meth:`Algorithm.token_mask` and :meth:`Algorithm.loss` per micro-batch.

    ``num_tokens`` / ``num_seqs`` count the whole mini-batch and ``num_micro`` its micro-batches, so
    summing micro-batch losses gives the mini-batch's mean in either aggregation scope.
    """

    logp: Tensor  # [n,T] current policy, differentiable
    old_logp: Tensor  # [n,T] behaviour policy
    entropy: Tensor | None  # [n,T] differentiable, or None when not computed
    mask: Tensor  # [n,T] float, 1 on valid response tokens
    advantages: Tensor  # [n] or [n,T]
    num_tokens: float
    num_seqs: float
    num_micro: int = 1
    ref_logp: Tensor | None = None  # [n,T]
    lr: float = 0.0
    hidden: Tensor | None = None  # [n,T,H] last hidden states at response positions (needs_hidden)
    lm_head_weight: Tensor | None = None  # [V,H] (needs_hidden)
    response_tokens: Tensor | None = None  # [n,T] long
    extra: dict[str, Any] = field(default_factory=dict)  # the rows' batch.algo_fields + minibatch_context


class Algorithm:
    """Base class. Subclasses set ``name`` and ``Options`` and implement ``advantages`` and ``loss``.

    The class docstring's first line is what ``rlvr list algorithms`` prints.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions
    needs_entropy: ClassVar[bool] = True  # entropy is logged, so it is computed by default
    needs_hidden: ClassVar[bool] = False  # hidden states + LM-head weight in LossInputs (CAPO)

    def __init__(self, options: AlgorithmOptions | None = None, run: RunInfo | None = None, **kwargs: Any):
        self.options = options if options is not None else self.Options(**kwargs)
        self.run = run or RunInfo()
        self._metrics: dict[str, float] = {}

    # -- driver side -------------------------------------------------------------------------------
    def rollout_plan(self, num_prompts: int, n: int) -> list[int]:
        """Samples per prompt for this step (GRPO: ``n`` each)."""
        return [n] * num_prompts

    def shape_rewards(self, batch: RolloutBatch) -> None:
        """After scoring a freshly sampled batch: DAPO overlong shaping of ``batch.rewards`` (in place)."""
        o = self.options
        if not o.overlong_shaping:
            return
        max_len = self.run.max_new_tokens
        buffer = o.overlong_buffer if o.overlong_buffer is not None else max(1, max_len // 5)
        penalty = overlong_penalty(batch.response_mask.sum(1), max_len, buffer, o.overlong_penalty)
        batch.rewards = batch.rewards + penalty
        self.record({"reward/overlong_penalty_mean": float(penalty.mean())})

    def post_rollout(self, batch: RolloutBatch, source: RolloutSource) -> RolloutBatch:
        """After rewards, before advantages: may sample more, drop or splice rows. Default: DAPO dynamic
        sampling when ``dynamic_sampling`` is on, else the batch unchanged."""
        if not self.options.dynamic_sampling:
            return batch
        return dynamic_sampling(batch, source, self.options, self.run.batch_size, self.record)

    def reward_for_advantage(self, batch: RolloutBatch) -> Tensor:  # [N]
        """``batch.rewards``, less ``kl_coef * sum_t KL_t`` when the KL is placed in the reward."""
        o = self.options
        if o.kl_coef == 0 or o.kl_in != "reward":
            return batch.rewards
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, o.kl_kind) * batch.response_mask
        per_row = kl.sum(1)
        self.record({"actor/kl_in_reward": float(per_row.mean())})
        return batch.rewards - o.kl_coef * per_row

    def advantages(self, batch: RolloutBatch) -> Tensor:  # [N] or [N,T]
        raise NotImplementedError

    @property
    def needs_rollout_logprobs(self) -> bool:
        """Whether the loss uses the rollout engine's own log-probs (truncated importance sampling)."""
        return getattr(self.options, "tis_cap", None) is not None

    def importance_weights(self, batch: RolloutBatch) -> None:
        """Truncated importance-sampling weights of the learner's over the engine's log-probs, into
        ``batch.algo_fields["tis_weight"]``, with mismatch metrics; nothing when ``tis_cap`` is off."""
        cap = getattr(self.options, "tis_cap", None)
        if cap is None:
            return
        from rlvr.algos.functional import truncated_is_weights

        weights, metrics = truncated_is_weights(batch.old_logprobs, batch.rollout_logprobs, batch.response_mask, cap)
        batch.algo_fields["tis_weight"] = weights
        self.record(metrics)

    def effective_advantages(self, batch: RolloutBatch) -> Tensor:  # [N] or [N,T]
        """The advantage each row is actually trained with (COPO blends two), for adv/* metrics."""
        return batch.advantages

    @property
    def loss_moves_without_advantage(self) -> bool:
        """Whether the loss has a term that is not multiplied by the advantage: the KL to the reference in the
        loss, or the entropy bonus (A*-PO: its regression). Such a term has a gradient when every advantage is 0."""
        o = self.options
        return (o.kl_coef > 0 and o.kl_in == "loss") or o.entropy_coef != 0

    def update_would_move(self, batch: RolloutBatch) -> bool:
        """Whether an update on ``batch`` (advantages set) has any gradient: a term not multiplied by the
        advantage, or a non-zero advantage on a valid token of a policy-gradient term with ``pg_coef > 0``.
        False: the trainer skips the step's learner passes, update and weight sync (``train/skipped_no_signal``).

        Every term of the clipped losses is ``A`` times a function of the ratio (dual clip included), and the
        importance weights scale ``A``, so a zero advantage has an exactly zero gradient. Running that update
        would still move the weights through AdamW's momentum from earlier steps and its weight decay; skipping
        it leaves them, the optimizer state and the learning-rate schedule as they are."""
        return self.loss_moves_without_advantage or (
            self.options.pg_coef > 0 and has_signal(self.effective_advantages(batch), batch.response_mask))

    def prepare_prompts(self, prompts: list[Any], recipe: Recipe) -> list[Any]:
        """Once, when the run loads its training prompts: filter them or check side data (A*-PO's V*)."""
        return prompts

    def record(self, metrics: dict[str, float]) -> None:
        """Driver-side metrics of this step (advantage statistics, dynamic sampling, ...)."""
        self._metrics.update(metrics)

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    # -- learner side ------------------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.options.kl_coef > 0

    @property
    def needs_reference_before_advantages(self) -> bool:
        return self.options.kl_coef > 0 and self.options.kl_in == "reward"

    def minibatch_context(
        self, minibatch: RolloutBatch, micro_rows: list[list[int]], entropy_of: Callable[[RolloutBatch], Tensor]
    ) -> list[dict[str, Any]]:
        """Per micro-batch extras for :class:`LossInputs` computed over the whole mini-batch before its
        first backward (forking tokens at mini-batch scope). ``entropy_of(micro)`` runs a no-grad forward."""
        return [{} for _ in micro_rows]

    def token_mask(self, inputs: LossInputs) -> Tensor | None:  # [n,T] bool or None (keep inputs.mask)
        return None

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def on_optimizer_step(self) -> dict[str, float]:
        """After each optimizer step (CAPO updates its optimiser model); returns metrics."""
        return {}

    def regularizers(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        """KL-to-reference (in the loss) and entropy terms over all valid tokens, aggregated like the PG loss."""
        o = self.options
        total = torch.zeros((), dtype=inputs.logp.dtype)
        metrics: dict[str, float] = {}
        if o.kl_coef > 0 and o.kl_in == "loss":
            if inputs.ref_logp is None:
                raise RuntimeError("kl_coef > 0 but the learner passed no reference log-probs")
            kl = self.aggregate(kl_penalty(inputs.logp, inputs.ref_logp, o.kl_kind), inputs.mask, inputs)
            total = total + o.kl_coef * kl
            metrics["actor/kl"] = kl.item()
        if o.entropy_coef != 0:
            if inputs.entropy is None:
                raise RuntimeError("entropy_coef != 0 but the learner computed no entropy")
            total = total - o.entropy_coef * self.aggregate(inputs.entropy, inputs.mask, inputs)
        return total, metrics

    def aggregate(self, losses: Tensor, mask: Tensor, inputs: LossInputs, denominator_mask: Tensor | None = None,
                  num_tokens: float | None = None) -> Tensor:
        """``losses`` reduced by ``loss_agg`` in ``loss_agg_scope``. ``mask`` selects the summed tokens;
        ``denominator_mask`` (default ``mask``) the counted ones; ``num_tokens`` overrides the mini-batch
        token count of ``token-mean`` (forking tokens' kept count)."""
        return aggregate(losses, mask, self.options.loss_agg, **self.denominators(mask, inputs, denominator_mask,
                                                                                   num_tokens))

    def denominators(self, mask: Tensor, inputs: LossInputs, denominator_mask: Tensor | None = None,
                     num_tokens: float | None = None) -> dict[str, Any]:
        """The keyword arguments ``num_tokens``, ``num_seqs``, ``loss_scale`` and ``denominator_mask`` of
        :func:`~rlvr.algos.functional.aggregate` for ``loss_agg_scope`` (see :meth:`aggregate`)."""
        o = self.options
        denominator_mask = mask if denominator_mask is None else denominator_mask
        if o.loss_agg_scope == "micro-batch":
            tokens = denominator_mask.sum() * inputs.num_micro
            seqs = float(mask.shape[0] * inputs.num_micro)
        else:
            tokens = inputs.num_tokens if num_tokens is None else num_tokens
            seqs = inputs.num_seqs
        scale = o.loss_scale if o.loss_scale is not None else float(self.run.max_new_tokens)
        return {"num_tokens": tokens, "num_seqs": seqs, "loss_scale": scale, "denominator_mask": denominator_mask}

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"algorithm {self.name!r} keeps no state, but the checkpoint has {sorted(state)}")


class ClippedAlgorithm(Algorithm):
    """A PPO-clipped per-token loss with optional forking-token masking; subclasses change the advantages,
    :meth:`per_token_loss` or :meth:`token_mask`.

    :meth:`loss` computes the PG term with the fused kernel :func:`rlvr.kernels.policy_loss.policy_loss`
    (Triton on CUDA, the same functional composition elsewhere) whenever :meth:`clip_spec` describes
    :meth:`per_token_loss`. A subclass that overrides :meth:`per_token_loss` gets the unfused path unless it
    also overrides :meth:`clip_spec` (DCPO does, for its dynamic bounds).
    """

    Options: ClassVar[type[AlgorithmOptions]] = ClippedOptions

    def minibatch_context(self, minibatch, micro_rows, entropy_of):
        o = self.options
        if o.entropy_top_ratio is None:
            return super().minibatch_context(minibatch, micro_rows, entropy_of)
        from rlvr.algos.forking import minibatch_masks

        return minibatch_masks(minibatch, micro_rows, entropy_of, o.entropy_top_ratio, o.entropy_mask_scope)

    def forking_mask(self, inputs: LossInputs) -> Tensor | None:
        o = self.options
        if o.entropy_top_ratio is None:
            return None
        if "forking_mask" in inputs.extra:
            return inputs.extra["forking_mask"][:, : inputs.mask.shape[1]]
        from rlvr.algos.functional import forking_token_mask

        if inputs.entropy is None:
            raise RuntimeError("forking-token masking needs entropies, but the learner computed none")
        return forking_token_mask(inputs.entropy.detach(), inputs.mask, o.entropy_top_ratio)

    def clip_spec(self) -> dict[str, Any] | None:
        """The clip arguments of :func:`rlvr.kernels.policy_loss.policy_loss` that give :meth:`per_token_loss`,
        or None when the kernel cannot compute it (then :meth:`loss` aggregates :meth:`per_token_loss`)."""
        cls = type(self)
        if cls.per_token_loss is not ClippedAlgorithm.per_token_loss and cls.clip_spec is ClippedAlgorithm.clip_spec:
            return None  # a per-token loss of its own, and no word on it: the kernel does not know it
        o = self.options
        return {"clip": "fixed", "eps_low": o.clip_eps_low, "eps_high": o.clip_eps_high, "dual_clip": o.dual_clip}

    def per_token_loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-token loss [n,T] and, for metrics, ``ratio``, ``low``/``high`` (ratio bounds) tensors."""
        o = self.options
        loss, _, ratio = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.advantages, o.clip_eps_low,
                                          o.clip_eps_high, o.dual_clip)
        return loss, {"ratio": ratio, "low": torch.tensor(1.0 - o.clip_eps_low),
                      "high": torch.tensor(1.0 + o.clip_eps_high), "advantages": inputs.advantages}

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        inputs = importance_weighted(inputs)
        valid = inputs.mask
        mask = valid
        for extra_mask in (self.token_mask(inputs), self.forking_mask(inputs)):
            if extra_mask is not None:
                mask = mask * extra_mask.to(mask.dtype)
        if o.entropy_top_ratio is not None and o.entropy_mask_denominator == "all":
            denominators = self.denominators(mask, inputs, denominator_mask=valid)
        else:
            denominators = self.denominators(mask, inputs, num_tokens=inputs.extra.get("kept_tokens"))
        spec = self.clip_spec()
        if spec is None:
            per_token, parts = self.per_token_loss(inputs)
            pg = aggregate(per_token, mask, o.loss_agg, **denominators)
            with torch.no_grad():
                clip = self.clip_metrics(parts, valid)
        else:
            from rlvr.kernels.policy_loss import policy_loss  # lazily: rlvr.kernels imports rlvr.algos

            fused = policy_loss(inputs.logp, inputs.old_logp, mask, inputs.advantages, **spec, agg=o.loss_agg,
                                **denominators, stats_mask=valid)
            pg, clip = fused.loss, fused.stats
        extra, metrics = self.regularizers(inputs)
        with torch.no_grad():
            metrics.update(clip)
            metrics["actor/pg_loss"] = pg.item()
            metrics["actor/masked_token_frac"] = float(1.0 - mask.sum() / valid.sum().clamp(min=1.0))
        return o.pg_coef * pg + extra, metrics

    def clip_metrics(self, parts: dict[str, Tensor], valid: Tensor) -> dict[str, float]:
        """Metrics of :meth:`per_token_loss`'s ``parts`` over the valid tokens (DCPO adds its bounds)."""
        return clip_metrics(parts, valid, self.options.dual_clip)


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


def has_signal(advantages: Tensor, mask: Tensor) -> bool:  # advantages [N] or [N,T], mask [N,T]
    """Whether any valid response token has a non-zero advantage (NaN counts: the learner must see it)."""
    valid = mask.bool()
    if advantages.dim() == 1:
        return bool(((advantages != 0) & valid.any(1)).any())
    width = min(advantages.shape[1], mask.shape[1])
    return bool(((advantages[:, :width] != 0) & valid[:, :width]).any())


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float) -> Tensor:  # [N]
    """DAPO overlong reward shaping (verl ``reward_manager/dapo.py``): ``min(-(|y| - (L_max - L_buf)) /
    L_buf * f, 0)``, a penalty growing linearly from 0 to ``-f`` over the last ``L_buf`` tokens."""
    expected = max_len - buffer
    return torch.clamp(-(lengths.to(torch.float32) - expected) / buffer * factor, max=0.0)


class RolloutSource:
    """What :meth:`Algorithm.post_rollout` may call to sample more (the trainer implements it)."""

    step: int = 0  # the training step being sampled (1-based)

    def next_prompts(self) -> list[Any]:  # the next data.batch_size prompts of the stream
        raise NotImplementedError

    def prompt(self, prompt_id: str) -> Any:  # the Prompt of a row sampled this step
        raise NotImplementedError

    def sample(self, prompts: list[Any], plan: list[int] | None = None, record: bool = True) -> RolloutBatch:
        """``plan[i]`` samples of ``prompts[i]`` (default the algorithm's ``rollout_plan``), scored and shaped;
        group ids index ``prompts``. ``record=False``: not part of the step's rollout metrics (hinted
        samples), though their tokens count in ``tokens/generated``."""
        raise NotImplementedError


def dynamic_sampling(batch: RolloutBatch, source: RolloutSource, options: AlgorithmOptions, target_groups: int,
                     record: Callable[[dict[str, float]], None]) -> RolloutBatch:
    """DAPO dynamic sampling (verl DAPO recipe ``dapo_ray_trainer.py``): keep the groups whose metric
    varies, sample further prompt batches until ``target_groups`` groups are kept or ``max_gen_batches``
    rounds are spent, then truncate to exactly ``target_groups`` groups.

    Departure from verl, which raises when the rounds run out: the step trains on the groups that
    survived (``dynamic_sampling/kept_groups`` says how many), so a hard stretch of data cannot kill a run.
    """
    from rlvr.batch import concat_batches

    kept: list[RolloutBatch] = []
    num_kept = rounds = generated = 0
    while True:
        rounds += 1
        generated += int(torch.unique(batch.group).numel())
        informative = informative_groups(batch, options.dynamic_sampling_metric)
        if informative:
            kept.append(batch.select([i for i, g in enumerate(batch.group.tolist()) if g in informative]))
            num_kept += len(informative)
        if num_kept >= target_groups or rounds >= options.max_gen_batches:
            break
        offset = int(batch.group.max()) + 1 if len(batch) else 0
        batch = source.sample(source.next_prompts())
        batch.group = batch.group + offset  # group ids stay unique across rounds
    out = concat_batches(kept) if kept else batch.select([])
    groups = set(list(dict.fromkeys(out.group.tolist()))[:target_groups])
    out = out.select([i for i, g in enumerate(out.group.tolist()) if g in groups])
    record({"dynamic_sampling/gen_batches": float(rounds), "dynamic_sampling/kept_groups": float(len(groups)),
            "dynamic_sampling/kept_frac": num_kept / max(generated, 1)})
    return out


def informative_groups(batch: RolloutBatch, metric: str = "accuracy") -> set[int]:
    """Group ids whose rows do not all share the same ``metric`` value (correctness or reward)."""
    values = batch.correct.to(torch.float32) if metric == "accuracy" else batch.rewards.to(torch.float32)
    out = set()
    for g in torch.unique(batch.group).tolist():
        members = values[batch.group == g]
        if members.numel() > 1 and bool((members != members[0]).any()):
            out.add(int(g))
    return out
