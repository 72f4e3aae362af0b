"""Forking tokens (Wang et al. 2025, "Beyond the 80/20 Rule"): DAPO trained only on the top 20% of tokens by
entropy. The mask itself is a modifier of every clipped loss (``algorithm.entropy_top_ratio``): see
:mod:`rlvr.algos.forking`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlvr.algos.presets.grpo import DAPOOptions
from rlvr.algos.registry import Preset, register


class ForkingOptions(DAPOOptions):
    name: Literal["forking-tokens"] = "forking-tokens"  # type: ignore[assignment]
    entropy_top_ratio: float | None = Field(0.2, gt=0.0, le=1.0, description="Top rho of tokens by entropy "
                                            "that train the PG loss (authors' recipe 0.2).")


register(Preset("forking-tokens", "Forking tokens: DAPO trained only on the top-20% highest-entropy tokens (Beyond "
                "the 80/20 Rule).", ForkingOptions, metrics=("actor/masked_token_frac",)))
