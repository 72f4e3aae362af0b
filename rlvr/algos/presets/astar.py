"""A*-PO's options and preset; the two stages and their departures are described in :mod:`rlvr.algos.astar`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlvr.algos.options import AlgorithmOptions
from rlvr.algos.registry import Preset, register

if TYPE_CHECKING:
    from rlvr.config import Recipe


class AStarOptions(AlgorithmOptions):
    name: Literal["astar"] = "astar"
    beta1: float = Field(0.5, description="Temperature of V* = beta1 log mean exp(r / beta1); 0: the plain mean, "
                         "< 0: V* = 0 (authors' code).")
    beta2: float = Field(1e-3, gt=0.0, description="KL-regularisation strength of the regression target.")
    num_ref_samples: int = Field(8, ge=1, description="Stage 1: reference samples per prompt (data.num_gen_to_use).")
    values_path: str | None = Field(None, description="Stage-1 rewards table (JSON Lines); default "
                                    "<trainer.output_dir>/astar_values.jsonl.")
    filter_incorrect: bool = Field(False, description="Drop prompts whose reference samples all scored 0.")
    entropy_coef: float = Field(0.001, description="Entropy bonus (authors' code 0.001).")

    def problems(self, recipe: Recipe) -> list[str]:
        out = super().problems(recipe)
        if self.kl_coef > 0:
            out.append("algorithm.kl_coef: astar has no separate KL term (beta2 regularises towards the "
                       "reference); leave kl_coef at 0")
        if self.dynamic_sampling:
            out.append("algorithm.dynamic_sampling: astar samples one response per prompt, so groups never vary")
        return out


register(Preset("astar", "A*-PO: one sample per prompt, least-squares regression onto the optimal advantage "
                "r - V*(x).", AStarOptions, estimator="astar", loss="astar", samples_per_prompt=1,
                metrics=("astar/value_mean", "astar/residual_abs_mean")))
