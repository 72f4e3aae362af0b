"""COPO's options and preset; the algorithm (a batch-level consistency advantage blended with GRPO's by answer
entropy) and its departures are described in :mod:`rlvr.algos.copo`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlvr.algos.options import AggMode, ClippedOptions
from rlvr.algos.registry import Preset, register

CopoMode = Literal[
    "soft with zero", "soft with forced", "only soft", "only zero", "only forced", "only global", "no global"
]
COPO_MODES: tuple[str, ...] = CopoMode.__args__  # type: ignore[attr-defined]


class COPOOptions(ClippedOptions):
    name: Literal["copo"] = "copo"
    loss_agg: AggMode = Field("seq-mean-token-mean", description="COPO scripts: seq-mean-token-mean.")
    k: float = Field(5.0, description="Steepness of the blend weight sigmoid(k (H - b)) (run_copo.sh 5).")
    b: float = Field(1.0, description="Answer-entropy midpoint of the blend weight, in bits (run_copo.sh 1).")
    mode: CopoMode = Field("soft with zero", description="Which rows use the local term: 'soft with zero' "
                           "(default), 'soft with forced', 'only soft', 'only zero', 'only forced', "
                           "'only global', 'no global' (= GRPO).")
    answer_field: str = Field("extracted", description="The reward extra that holds each response's final "
                              "answer (math_answer: 'extracted').")

    @field_validator("mode", mode="before")
    @classmethod
    def _spaces(cls, value: object) -> object:
        """``soft-with-zero`` (as the authors' run_copo.sh spells it) means ``soft with zero``."""
        return value.replace("-", " ") if isinstance(value, str) else value


register(Preset("copo", "COPO: a batch-level consistency advantage blended with GRPO's by answer entropy.",
                COPOOptions, estimator="copo", loss="copo", metrics=("copo/weight_mean",)))
