"""GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071): GRPO's group-normalised
advantages with the importance ratio and its clip taken per sequence, ``s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|)``
(loss ``gspo``, :func:`rlvr.algos.losses.gspo`). Defaults are the paper's (section 5.1): clip 3e-4 / 4e-4,
``seq-mean-token-mean``, no KL, no dual clip. The ratio leaves 1 only off policy, so GSPO differs from GRPO only
with several mini-batches per rollout batch (the paper uses 4: ``learner.mini_batch_size``) or epochs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlvr.algos.options import AggMode, ClippedOptions
from rlvr.algos.registry import Preset, register


class GSPOOptions(ClippedOptions):
    name: Literal["gspo"] = "gspo"
    clip_eps_low: float = Field(3e-4, ge=0.0, le=1.0, description="GSPO clip: s >= 1 - 3e-4 (paper section 5.1).")
    clip_eps_high: float = Field(4e-4, ge=0.0, description="GSPO clip: s <= 1 + 4e-4 (paper section 5.1).")
    dual_clip: float | None = Field(None, gt=1.0, description="GSPO has no dual clip; null: off.")
    loss_agg: AggMode = Field("seq-mean-token-mean", description="GSPO: each sequence's mean, averaged.")


register(Preset("gspo", "GSPO: GRPO with the importance ratio and its clip per sequence (geometric mean of the "
                "token ratios).", GSPOOptions, loss="gspo", metrics=("actor/clip_frac", "actor/ratio_mean")))
