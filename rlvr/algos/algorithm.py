"""An algorithm at run time: a preset's registered parts with their options, called by the loop and the learner.

The loop calls it in this order every step (DESIGN.md section 2)::

    driver:  rollout_plan -> [generate, score, shape_rewards] -> post_rollout -> advantages
    learner: per mini-batch minibatch_context; per micro-batch loss; after each optimizer step on_optimizer_step

Each call returns its metrics with its result. One instance lives on the driver (the estimator's and the rollout
filters' state, e.g. DCPO's per-prompt statistics) and one in the learner (the token masks' state, e.g. CAPO's
optimiser model); :meth:`Algorithm.state_dict` holds whichever parts keep state, and the run saves both halves in
one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from rlvr.algos import registry
from rlvr.algos.functional import kl_penalty, truncated_is_weights
from rlvr.algos.objective import objective
from rlvr.algos.options import AlgorithmOptions

if TYPE_CHECKING:
    from rlvr.batch import RolloutBatch
    from rlvr.config import Recipe


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
class Context:
    """What a part is called with besides its data: the options, the run, and its own state (or None)."""

    options: Any
    run: RunInfo
    state: Any = None


@dataclass
class LossInputs:
    """What the learner hands to :meth:`Algorithm.loss` per micro-batch.

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


class RolloutSource:
    """What a rollout filter may call to sample more (the trainer implements it)."""

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


class Algorithm:
    """A preset's parts and options. Build one with :func:`rlvr.algos.build` or :func:`rlvr.algos.from_recipe`."""

    needs_entropy = True  # entropy is logged, so the learner computes it

    def __init__(self, preset: registry.Preset, options: AlgorithmOptions, run: RunInfo | None = None):
        self.preset, self.options, self.run = preset, options, run or RunInfo()
        self.name = preset.name
        self.needs_hidden = preset.needs_hidden
        self.estimator = registry.part(registry.ESTIMATORS, preset.estimator, "advantage estimator")
        self.loss_part = registry.part(registry.LOSSES, preset.loss, "loss")
        filters = [*(["dynamic_sampling"] if options.dynamic_sampling else []), *preset.filters]
        self.filters = [registry.part(registry.FILTERS, name, "rollout filter") for name in filters]
        masks = [*preset.masks, *(["forking"] if getattr(options, "entropy_top_ratio", None) is not None else [])]
        mask_parts = [registry.part(registry.MASKS, name, "token mask") for name in masks]
        # Per-run state, one object per part that keeps any, under the part's name.
        self.states: dict[str, Any] = {p.name: p.state() for p in (self.estimator, *self.filters) if p.state}
        self.masks = [p.fn(self._context(p.name)) for p in mask_parts]
        self.states.update((p.name, m) for p, m in zip(mask_parts, self.masks) if hasattr(m, "state_dict"))

    def _context(self, part: str) -> Context:
        return Context(self.options, self.run, self.states.get(part))

    # -- what the loop and the learner ask ----------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.options.kl_coef > 0 or self.loss_part.meta.get("needs_reference", False)

    @property
    def needs_rollout_logprobs(self) -> bool:
        """Whether the loss uses the rollout engine's own log-probs (truncated importance sampling)."""
        return self.options.tis_cap is not None

    # -- driver side -------------------------------------------------------------------------------
    def prepare_prompts(self, prompts: list[Any], recipe: Recipe) -> list[Any]:
        """Once, when the run loads its training prompts: the parts filter them or check their side data."""
        for name, state in self.states.items():
            if hasattr(state, "prepare"):
                prompts = state.prepare(prompts, recipe, self.options)
        return prompts

    def rollout_plan(self, num_prompts: int, n: int) -> list[int]:
        """Samples per prompt for this step (GRPO: ``n`` each; A*-PO: one)."""
        return [self.preset.samples_per_prompt or n] * num_prompts

    def shape_rewards(self, batch: RolloutBatch) -> dict[str, float]:
        """After scoring a freshly sampled batch: DAPO overlong shaping of ``batch.rewards`` (in place)."""
        o = self.options
        if not o.overlong_shaping:
            return {}
        from rlvr.algos.filters import overlong_penalty

        max_len = self.run.max_new_tokens
        buffer = o.overlong_buffer if o.overlong_buffer is not None else max(1, max_len // 5)
        penalty = overlong_penalty(batch.response_mask.sum(1), max_len, buffer, o.overlong_penalty)
        batch.rewards = batch.rewards + penalty
        return {"reward/overlong_penalty_mean": float(penalty.mean())}

    def post_rollout(self, batch: RolloutBatch, source: RolloutSource) -> tuple[RolloutBatch, dict[str, float]]:
        """After rewards, before advantages: the rollout filters (dynamic sampling, Scaf-GRPO's hints) may sample
        more, drop or splice rows."""
        metrics: dict[str, float] = {}
        for part in self.filters:
            batch, part_metrics = part.fn(batch, source, self._context(part.name))
            metrics.update(part_metrics)
        return batch, metrics

    def advantages(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:  # [N] or [N,T]
        """The estimator's advantages of ``batch`` (its state moves with every call), from the rewards less the KL
        when it is placed in the reward."""
        rewards, metrics = self.reward_for_advantage(batch)
        advantages, estimator_metrics = self.estimator.fn(batch, rewards, self._context(self.estimator.name))
        return advantages, {**metrics, **estimator_metrics}

    def reward_for_advantage(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:  # [N]
        """``batch.rewards``, less ``kl_coef * sum_t KL_t`` when the KL is placed in the reward."""
        o = self.options
        if not o.kl_in_reward:
            return batch.rewards, {}
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, o.kl_kind) * batch.response_mask
        per_row = kl.sum(1)
        return batch.rewards - o.kl_coef * per_row, {"actor/kl_in_reward": float(per_row.mean())}

    def importance_weights(self, batch: RolloutBatch) -> dict[str, float]:
        """Truncated importance-sampling weights of the learner's over the engine's log-probs, into
        ``batch.algo_fields["tis_weight"]``, with mismatch metrics; nothing when ``tis_cap`` is off."""
        cap = self.options.tis_cap
        if cap is None:
            return {}
        weights, metrics = truncated_is_weights(batch.old_logprobs, batch.rollout_logprobs, batch.response_mask, cap)
        batch.algo_fields["tis_weight"] = weights
        return metrics

    def effective_advantages(self, batch: RolloutBatch) -> Tensor:  # [N] or [N,T]
        """The advantage each row is actually trained with (COPO blends two), for adv/* metrics."""
        effective = self.estimator.meta.get("effective")
        return effective(batch) if effective else batch.advantages

    def update_would_move(self, batch: RolloutBatch) -> bool:
        """Whether an update on ``batch`` has a non-zero gradient: a loss that moves the weights without any
        advantage (A*-PO's regression), or an entropy/KL term in the loss, or a non-zero advantage on some valid
        token of a policy-gradient term with ``pg_coef > 0``. False: the trainer skips the step's learner passes,
        update and weight sync (``train/skipped_no_signal``).

        Every term of the clipped losses is ``A`` times a function of the ratio (dual clip included), and the
        importance weights scale ``A``, so a zero advantage has an exactly zero gradient. Running that update
        would still move the weights through AdamW's momentum from earlier steps and its weight decay; skipping
        it leaves them, the optimizer state and the learning-rate schedule as they are. An estimator whose loss
        blends several advantages names each (``signals``: COPO's weighted local and global terms)."""
        o = self.options
        if self.loss_part.meta.get("moves_without_advantage", False) or o.entropy_coef != 0 or \
                (o.kl_coef > 0 and o.kl_in == "loss"):
            return True
        signals = self.estimator.meta.get("signals")
        terms = signals(batch) if signals else [batch.advantages]
        return o.pg_coef > 0 and any(has_signal(term, batch.response_mask) for term in terms)

    # -- learner side ------------------------------------------------------------------------------
    def minibatch_context(
        self, minibatch: RolloutBatch, micro_rows: list[list[int]], entropy_of: Callable[[RolloutBatch], Tensor]
    ) -> list[dict[str, Any]]:
        """Per micro-batch extras for :class:`LossInputs` computed over the whole mini-batch before its first
        backward (forking tokens at mini-batch scope). ``entropy_of(micro)`` runs a no-grad forward."""
        contexts: list[dict[str, Any]] = [{} for _ in micro_rows]
        for token_mask in self.masks:
            for context, extra in zip(contexts, token_mask.minibatch(minibatch, micro_rows, entropy_of)):
                context.update(extra)
        return contexts

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        """One micro-batch's loss and metrics (:func:`rlvr.algos.objective.objective`)."""
        return objective(inputs, self._context(self.loss_part.name), self.loss_part, self.masks)

    def on_optimizer_step(self) -> dict[str, float]:
        """After each optimizer step (CAPO updates its optimiser model); returns metrics."""
        metrics: dict[str, float] = {}
        for token_mask in self.masks:
            metrics.update(token_mask.after_step())
        return metrics

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state of every part that keeps any, by part name (parts with nothing yet are left out)."""
        out = {name: state.state_dict() for name, state in self.states.items()}
        return {name: state for name, state in out.items() if state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - set(self.states)
        if unknown:
            raise ValueError(f"algorithm {self.name!r} keeps state only for {sorted(self.states) or 'no part'}, but "
                             f"the checkpoint has {sorted(unknown)}")
        for name, part_state in self.states.items():
            part_state.load_state_dict(state.get(name, {}))


def has_signal(advantages: Tensor, mask: Tensor) -> bool:  # advantages [N] or [N,T], mask [N,T]
    """Whether any valid response token has a non-zero advantage (NaN counts: the learner must see it)."""
    valid = mask.bool()
    if advantages.dim() == 1:
        return bool(((advantages != 0) & valid.any(1)).any())
    width = min(advantages.shape[1], mask.shape[1])
    return bool(((advantages[:, :width] != 0) & valid[:, :width]).any())


def build(name: str, run: RunInfo | None = None, **options: Any) -> Algorithm:
    """An algorithm by registered name, with its options validated: ``build("grpo", clip_eps_high=0.28)``."""
    preset = registry.get(name)
    return Algorithm(preset, preset.options(**{"name": name, **options}), run)


def from_recipe(recipe: Recipe) -> Algorithm:
    """The recipe's algorithm, told the run's response length, temperature, group size and batch size."""
    r = recipe.rollout
    run = RunInfo(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, n=r.n,
                  batch_size=recipe.data.batch_size, total_steps=recipe.trainer.total_steps)
    return Algorithm(registry.get(recipe.algorithm.name), recipe.algorithm, run)

