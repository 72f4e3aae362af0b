"""RLOO, REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): each sample's
baseline is the mean reward of the other samples of its prompt, ``A_i = R_i - mean_{j != i} R_j`` (estimator
``rloo``, :func:`rlvr.algos.estimators.rloo`), with no std division, trained with the PPO clipped loss (verl's
``rloo`` estimator and defaults: token-mean, clip 0.2, dual clip 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlvr.algos.options import AdvNorm, ClippedOptions
from rlvr.algos.registry import Preset, register

if TYPE_CHECKING:
    from rlvr.config import Recipe


class RLOOOptions(ClippedOptions):
    name: Literal["rloo"] = "rloo"
    adv_norm: AdvNorm = Field("none", description="RLOO: the leave-one-out baseline, no std division.")

    def problems(self, recipe: Recipe) -> list[str]:
        out = super().problems(recipe)
        if self.adv_norm != "none":
            out.append(f"algorithm.adv_norm: {self.adv_norm!r}; rloo's advantage is the reward less the mean of the "
                       "group's other rewards, not divided by a std: leave adv_norm at 'none' (or use grpo)")
        if recipe.rollout.n < 2:
            out.append("algorithm rloo needs rollout.n >= 2: a leave-one-out baseline needs another sample")
        return out


register(Preset("rloo", "RLOO: REINFORCE with a leave-one-out baseline (the mean reward of the prompt's other "
                "samples), PPO clipped loss.", RLOOOptions, estimator="rloo", metrics=("actor/clip_frac",)))
