"""DCPO, Dynamic Clipping Policy Optimization (Yang et al. 2025, arXiv 2509.02333; ALGORITHMS.md section 2).

Three changes to GRPO/DAPO:

* Dynamic-adaptive clipping: token-specific ratio bounds from the old probability ``q`` of the sampled
  token, ``r_low = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q, 0))``, ``r_high = 1/2 + 1/2 sqrt(1 + 4 eps_high / q)``
  (capped at 10 as the authors' code does; ``bound_cap: null`` for the paper), with the dual clip c=10
  (:func:`~rlvr.algos.functional.dcpo_ratio_bounds`).
* Smooth advantage standardisation: per-prompt reward statistics kept across steps (keyed by the stable
  prompt id) blend the current group's standardised reward with the all-appearances one
  (:func:`~rlvr.algos.functional.dcpo_smooth_advantages`). On by default, as the paper describes; the
  released scripts leave it off (``use_old_mean.enable=False``): set ``smooth_advantages: false`` for that.
  The statistics are saved in checkpoints and restored by ``--resume``.
* OTM aggregation: ``seq-mean-token-sum`` (the paper's definition; the code switched to ``token-mean``
  in Dec 2025: set ``loss_agg: token-mean`` for it).

Defaults are the authors' ``recipe/dcpo/run_dcpo.sh``: eps 0.2 / 0.28, c = 10, no KL, no entropy bonus.
Departure: a prompt that appears twice within one step updates its statistics once per group, in order.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlvr.algos.base import AlgorithmOptions, ClippedAlgorithm, ClippedOptions, LossInputs
from rlvr.algos.functional import (AggMode, clipped_pg_terms, dcpo_bound_metrics, dcpo_ratio_bounds,
                                   dcpo_smooth_advantages)
from rlvr.algos.registry import register


class DCPOOptions(ClippedOptions):
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

    def problems(self, recipe) -> list[str]:
        out = super().problems(recipe)
        if recipe.rollout.n < 2:
            out.append("algorithm dcpo needs rollout.n >= 2: it standardises rewards within each prompt's group")
        if self.adv_norm == "batch":
            out.append("algorithm.adv_norm: dcpo standardises per prompt; use 'group' (default) or 'none'")
        return out


@register
class DCPO(ClippedAlgorithm):
    """DCPO: dynamic per-token clip bounds, smooth advantage standardisation across steps, OTM loss."""

    name = "dcpo"
    Options: ClassVar[type[AlgorithmOptions]] = DCPOOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stats: dict[str, tuple[int, float, float]] = {}  # prompt id -> (times seen, mean, std)

    def advantages(self, batch) -> Tensor:  # [N]
        o = self.options
        rewards = self.reward_for_advantage(batch)
        known = [self.stats.get(pid, (0, 0.0, 0.0)) if o.smooth_advantages else (0, 0.0, 0.0)
                 for pid in batch.prompt_id]
        times = torch.tensor([k[0] for k in known], dtype=torch.float64)
        adv, mean, std = dcpo_smooth_advantages(rewards, batch.group, times,
                                                torch.tensor([k[1] for k in known], dtype=torch.float64),
                                                torch.tensor([k[2] for k in known], dtype=torch.float64),
                                                norm=o.adv_norm != "none")
        if o.smooth_advantages:
            first_row: dict[int, int] = {}
            for i, g in enumerate(batch.group.tolist()):
                first_row.setdefault(g, i)
            for g, i in first_row.items():
                pid = batch.prompt_id[i]
                self.stats[pid] = (int(times[i]) + 1, float(mean[i]), float(std[i]))
            self.record({"dcpo/seen_before_frac": float((times > 0).float().mean()),
                         "dcpo/prompts_tracked": float(len(self.stats))})
        return adv

    def clip_spec(self) -> dict[str, Any] | None:
        """The fused kernel's DCPO bounds (``clip="dcpo"``), or PPO's fixed ones for ``clip_type: fixed``."""
        o = self.options
        if o.clip_type == "fixed":
            return super().clip_spec()
        return {"clip": "dcpo", "eps_low": o.clip_eps_low, "eps_high": o.clip_eps_high, "bound_cap": o.bound_cap,
                "dual_clip": o.dual_clip}

    def per_token_loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        if o.clip_type == "fixed":
            return super().per_token_loss(inputs)
        low, high = dcpo_ratio_bounds(inputs.old_logp.detach(), o.clip_eps_low, o.clip_eps_high, o.bound_cap)
        loss, _, ratio = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.advantages, 1.0 - low, high - 1.0,
                                          o.dual_clip)
        return loss, {"ratio": ratio, "low": low, "high": high, "advantages": inputs.advantages}

    def clip_metrics(self, parts: dict[str, Tensor], valid: Tensor) -> dict[str, float]:
        metrics = super().clip_metrics(parts, valid)
        if self.options.clip_type == "dynamic":
            metrics.update(dcpo_bound_metrics(parts["low"], parts["high"], valid))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats)} if self.stats else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = dict(state.get("stats", {}))
