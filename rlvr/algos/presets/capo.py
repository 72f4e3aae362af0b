"""CAPO's options and preset; the curvature model, its defaults and departures are described in
:mod:`rlvr.algos.capo`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlvr.algos.options import AggMode, ClippedOptions
from rlvr.algos.registry import Preset, register

if TYPE_CHECKING:
    from rlvr.config import Recipe


class CAPOOptions(ClippedOptions):
    name: Literal["capo"] = "capo"
    loss_agg: AggMode = Field("seq-mean-token-mean", description="TRL 'grpo' loss over the kept tokens: each "
                              "sequence's mean over its kept tokens, averaged over sequences (authors' code).")
    adv_eps: float = Field(1e-4, ge=0.0, description="Added to the group reward std (TRL and the authors: 1e-4).")
    dual_clip: float | None = Field(None, gt=1.0, description="TRL's loss has no dual clip (with one update per "
                                    "batch the ratio is 1 and no clip binds); null: off.")
    fisher_tau: float = Field(1e-4, ge=0.0, description="tau_F: keep a token only if its modelled policy shift "
                              "KL_t < tau_F (recipe fisher_token_mask_tau 1e-4); 0: no Fisher test.")
    hessian_tau: float = Field(0.01, ge=0.0, description="tau_H: keep a token only if its modelled objective "
                               "shift |dJ_t| < tau_H (recipe hessian_token_mask_tau 0.01); 0: no objective test.")
    hessian_symmetric_clipping: bool = Field(True, description="true: keep -tau_H < dJ_t < tau_H (recipe); "
                                             "false: keep 0 <= dJ_t < tau_H.")
    optimizer_model: Literal["adam", "sgd"] = Field(
        "adam", description="The modelled update direction: Adam with moments per LM-head row (recipe "
        "optim_model_type adam) or the raw per-token gradient.")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam model beta1; must equal learner.betas[0].")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam model beta2; must equal learner.betas[1].")
    adam_eps: float = Field(1e-8, gt=0.0, description="Adam model epsilon (torch AdamW and HF default 1e-8).")
    adam_cold_start: Literal["gradient", "adam"] = Field(
        "gradient", description="Direction while the Adam model holds no row: the raw gradient (authors' code) "
        "or Adam's bias-corrected step from zero moments.")
    top_k: int | None = Field(50, ge=1, description="LM-head rows modelled per token, the top k by logit "
                              "(authors: the generation top_k, transformers' default 50); null: the whole "
                              "vocabulary (k = V, small vocabularies only).")

    def problems(self, recipe: Recipe) -> list[str]:
        out = super().problems(recipe)
        masking = self.fisher_tau > 0 or self.hessian_tau > 0
        betas = tuple(recipe.learner.betas)
        if masking and self.optimizer_model == "adam" and betas != (self.adam_beta1, self.adam_beta2):
            out.append(f"algorithm.adam_beta1/adam_beta2 ({self.adam_beta1}, {self.adam_beta2}) differ from "
                       f"learner.betas {betas}: CAPO's optimiser model must track the learner's AdamW; set them "
                       "equal")
        return out


register(Preset("capo", "CAPO: GRPO that masks tokens whose modelled LM-head update moves the objective or policy too "
                "far.", CAPOOptions, masks=("curvature",), needs_hidden=True, metrics=("capo/rejection_rate",)))
