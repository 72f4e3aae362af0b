"""The GRPO family (ALGORITHMS.md section 1): GRPO, Dr.GRPO and DAPO, presets of the shared options.

* GRPO (DeepSeekMath; verl/TRL defaults): ``A_i = (R_i - mean_g R) / (std_g R + eps)`` per group of samples of one
  prompt (:func:`~rlvr.algos.functional.group_advantages`), the PPO clipped surrogate with dual clip, aggregated by
  ``loss_agg`` (verl's ``token-mean``, not the paper's ``seq-mean-token-mean``: set ``loss_agg:
  seq-mean-token-mean`` and ``kl_coef: 0.04`` for the paper).
* Dr.GRPO (Liu et al. 2025): no std division (``adv_norm: none``) and a constant length normaliser
  (``seq-mean-token-sum-norm`` with ``L_max = loss_scale``, default ``rollout.max_new_tokens``, as TRL's
  ``max_completion_length``; verl divides by the padded length unless ``loss_scale_factor`` is set).
* DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), dual clip 10, ``token-mean`` over the mini-batch, dynamic
  sampling (drop all-equal groups, sample more) and overlong reward shaping, no KL.

Where rlvr departs from the papers and the authors' code:

* GRPO: the defaults are verl's, not the paper's. The paper aggregates ``seq-mean-token-mean`` and keeps a k3 KL
  in the loss with beta 0.04 (G 64, lr 1e-6, one update per batch); verl (and so ``grpo``) uses ``token-mean``, no
  KL, and a dual clip of 3. For the paper: ``loss_agg: seq-mean-token-mean``, ``kl_coef: 0.04``,
  ``kl_estimator: k3``. The std epsilon is verl's 1e-6 (TRL: 1e-4, ``adv_eps``).
* Dr.GRPO: ``L_max`` defaults to the response limit, as the authors' code (``generate_max_length``) and TRL
  (``max_completion_length``) do; verl divides by the padded length of each batch unless ``loss_scale_factor``
  is set, which varies between batches. The clip settings are the shared (verl) ones.
* DAPO: dynamic sampling samples rounds of ``data.batch_size`` prompts and, when its rounds run out, trains on
  the groups that survived where verl raises (:func:`rlvr.algos.filters.dynamic_sampling`). The overlong buffer
  defaults to a fifth of the response limit instead of 4096 tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlvr.algos.options import AdvNorm, AggMode, ClippedOptions
from rlvr.algos.registry import Preset, register

CLIP_METRICS = ("actor/clip_frac_low", "actor/clip_frac_high")


class GRPOOptions(ClippedOptions):
    name: Literal["grpo"] = "grpo"


class DrGRPOOptions(ClippedOptions):
    name: Literal["drgrpo"] = "drgrpo"
    adv_norm: AdvNorm = Field("none", description="Dr.GRPO: rewards minus the group mean, no std division.")
    loss_agg: AggMode = Field("seq-mean-token-sum-norm", description="Dr.GRPO: token sums over B * L_max.")


class DAPOOptions(ClippedOptions):
    name: Literal["dapo"] = "dapo"
    clip_eps_high: float = Field(0.28, ge=0.0, description="DAPO clip-higher: ratio <= 1 + 0.28.")
    dual_clip: float | None = Field(10.0, gt=1.0, description="DAPO recipe clip_ratio_c 10.")
    dynamic_sampling: bool = Field(True, description="DAPO: drop all-equal groups and sample more prompts.")
    overlong_shaping: bool = Field(True, description="DAPO: linear penalty over the last overlong_buffer tokens.")


register(Preset("grpo", "GRPO: group-normalised advantages, PPO clipped loss (verl defaults: token-mean, dual clip 3).",
                GRPOOptions, metrics=CLIP_METRICS))
register(Preset("drgrpo", "Dr.GRPO: GRPO without std normalisation and with a constant length normaliser (GRPO "
                "done right).", DrGRPOOptions, metrics=("actor/clip_frac_high",)))
register(Preset("dapo", "DAPO: clip-higher, token-mean loss, dynamic sampling and overlong reward shaping.",
                DAPOOptions, metrics=("dynamic_sampling/kept_groups", "reward/overlong_penalty_mean")))
