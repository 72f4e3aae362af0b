"""DCPO's options and preset; the algorithm (dynamic clip bounds, smooth advantage standardisation, OTM loss) and
its departures are described in :mod:`rlvr.algos.dcpo`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlvr.algos.options import AggMode, ClippedOptions
from rlvr.algos.registry import Preset, register

if TYPE_CHECKING:
    from rlvr.config import Recipe


class DCPOOptions(ClippedOptions):
    name: Literal["dcpo"] = "dcpo"
    clip_eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="DCPO eps_low of the dynamic lower bound.")
    clip_eps_high: float = Field(0.28, ge=0.0, description="DCPO eps_high of the dynamic upper bound.")
    dual_clip: float | None = Field(10.0, gt=1.0, description="Dual clip c for A<0 (recipe clip_ratio_c 10).")
    loss_agg: AggMode = Field("seq-mean-token-sum", description="OTM: token sums averaged over sequences.")
    clip_type: Literal["dynamic", "fixed"] = Field(
        "dynamic", description="dynamic: DCPO's per-token bounds; fixed: PPO's [1-eps_low, 1+eps_high].")
    bound_cap: float | None = Field(10.0, gt=1.0, description="Upper cap on r_high (authors' code 10); null: "
                                    "uncapped, as in the paper.")
    smooth_advantages: bool = Field(True, description="SAS with per-prompt statistics across steps; false: "
                                    "each group standardised alone (the released scripts).")

    def problems(self, recipe: Recipe) -> list[str]:
        out = super().problems(recipe)
        if recipe.rollout.n < 2:
            out.append("algorithm dcpo needs rollout.n >= 2: it standardises rewards within each prompt's group")
        if self.adv_norm == "batch":
            out.append("algorithm.adv_norm: dcpo standardises per prompt; use 'group' (default) or 'none'")
        return out


register(Preset("dcpo", "DCPO: dynamic per-token clip bounds, smooth advantage standardisation across steps, OTM "
                "loss.", DCPOOptions, estimator="dcpo", loss="dcpo",
                metrics=("dcpo/bound_low_mean", "dcpo/bound_high_mean", "dcpo/prompts_tracked")))
