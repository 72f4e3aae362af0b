"""Scaf-GRPO's options and preset; the hint search, its defaults and departures are described in
:mod:`rlvr.algos.scaf`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from rlvr.algos.options import ClippedOptions
from rlvr.algos.registry import Preset, register

if TYPE_CHECKING:
    from rlvr.config import Recipe

Tier = Literal["knowledge", "planning", "solution"]
TIERS: tuple[str, ...] = ("knowledge", "planning", "solution")
PAPER_TEMPLATE = "Question: {problem}\n{tier} Hints: {hint}"
DATASET_FIELDS = {"knowledge": "knowledge_components_parts", "planning": "planning_skeleton_parts",
                  "solution": "solution_breakdown_parts"}

HintLadder = list[tuple[str, int, str]]  # (tier, level from 1, hint text) in search order


class ScafGRPOOptions(ClippedOptions):
    name: Literal["scaf_grpo"] = "scaf_grpo"
    exemption_steps: int | None = Field(
        None, ge=0, description="Steps without hints (authors' code: 50); null: exemption_frac of total_steps.")
    exemption_frac: float = Field(0.15, ge=0.0, lt=1.0, description="Exemption as a fraction of "
                                  "trainer.total_steps (paper: 15%; 10-40% plateau, 0-5% worse).")
    hints: str = Field("fields", description="Where hints come from: 'fields' (dataset columns, hint_fields), "
                       "'arithmetic' (the tiny task's own ladder) or a 'module:function' spec returning "
                       "{tier: [level texts]} from fn(problem, answer, **fields).")
    hint_fields: dict[Tier, str] = Field(default_factory=lambda: dict(DATASET_FIELDS),
                                         description="hints: fields - the dataset column of each tier's items.")
    hint_tiers: list[Tier] = Field(list(TIERS), min_length=1, description="Tiers searched, in this order "
                                   "(authors' code: knowledge, solution).")
    hint_levels: int = Field(4, ge=1, description="Cumulative levels per tier (paper: 4).")
    hint_template: str | None = Field(
        None, description="The hinted problem, with {problem}, {hint} and optionally {tier}; default the "
        "authors' 'Question: {problem}\\n{tier} Hints: {hint}' (the arithmetic task: '{hint}|{problem}').")
    hint_join: str = Field(" ", description="hints: fields - how a level's items are joined (authors: space).")
    hint_search: Literal["parallel", "sequential"] = Field(
        "parallel", description="All levels sampled at once, lowest success wins (code), or level by level "
        "with early stop (paper).")
    replace_row: Literal["first", "random"] = Field("first", description="The failed row a rescue replaces: "
                                                    "the group's first (code) or a random one (paper).")

    @field_validator("hint_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            for name in ("{problem}", "{hint}"):
                if name not in value:
                    raise ValueError(f"must contain {name} (allowed placeholders: {{problem}}, {{hint}}, {{tier}})")
        return value

    @field_validator("hint_tiers")
    @classmethod
    def _unique_tiers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a tier twice ({value}); tiers are {', '.join(TIERS)}")
        return value

    @field_validator("hints")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in ("fields", "arithmetic") and ":" not in value:
            raise ValueError(f"{value!r} is not 'fields', 'arithmetic' or a 'package.module:function' spec")
        return value

    def problems(self, recipe: Recipe) -> list[str]:
        out = super().problems(recipe)
        if recipe.rollout.n < 2:
            out.append("algorithm: scaf_grpo needs rollout.n >= 2: a rescued group of one sample has no advantage")
        if self.dynamic_sampling:
            out.append("algorithm.dynamic_sampling: scaf_grpo rescues all-fail groups instead of dropping them; "
                       "use one or the other")
        return out

    def template(self) -> str:
        if self.hint_template is not None:
            return self.hint_template
        if self.hints == "arithmetic":
            from rlvr.data.tasks.arithmetic import HINT_TEMPLATE

            return HINT_TEMPLATE
        return PAPER_TEMPLATE


register(Preset("scaf_grpo", "Scaf-GRPO: GRPO whose all-fail groups are rescued by on-policy samples of tiered hinted "
                "prompts.", ScafGRPOOptions, filters=("scaf_hints",),
                metrics=("scaf/all_fail_groups", "scaf/rescued_frac", "scaf/hint_samples", "scaf/level/knowledge-1")))
