"""How benchmarks are sampled and graded, declared once: :class:`EvalSampling` holds the options that ``rlvr eval``
(:class:`EvalSettings`) and a recipe's ``eval`` section (:class:`rlvr.config.EvalConfig`) share. Torch-free, like
the recipe schema.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class EvalSampling(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    n: int = Field(1, ge=1, description="Samples per problem (avg@n; pass@k and maj@k for k = 1, 2, 4, ... n).")
    temperature: float = Field(0.6, gt=0.0, description="Sampling temperature (DeepSeek-R1's evaluation: 0.6); "
                               "greedy decoding is `greedy`.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (DeepSeek-R1's evaluation: 0.95).")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables it.")
    greedy: bool = Field(False, description="Also one greedy response per problem (the `greedy` metric).")
    reward: str = Field("math_answer", description="The grader: a reward name or 'module:function'; a response "
                        "is correct when its score is at least the correct threshold.")
    grader_workers: int = Field(2, ge=1, description="Grading processes.")
    grader_timeout_s: float = Field(10.0, gt=0.0, description="Hard limit per graded response, in seconds.")

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, value: str) -> str:
        from rlvr.rewards.registry import resolve

        resolve(value)
        return value


class EvalSettings(EvalSampling):
    """``rlvr eval``'s settings, and the runner's (:func:`rlvr.eval.runner.evaluate`). Defaults: one sample per
    problem at temperature 0.6, top-p 0.95 (DeepSeek-R1's evaluation setting), 4096 new tokens, the Qwen2.5-Math
    boxed chain-of-thought template, the math reward. A bad value raises ValueError naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(4096, ge=1, description="Response length limit in tokens.")
    template: str = Field("qwen-boxed", description="Prompt template name, or a format string with {problem}.")
    seed: int = Field(0, description="Sampling seed.")
    chunk_size: int = Field(256, ge=1, description="Requests per generate call; the progress bar moves once per "
                            "call, and --resume keeps or redoes whole calls.")
    correct_threshold: float = Field(1.0, description="A response is correct when its score is at least this.")

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')} "
                                       f"(got {e['input']!r})" for e in error.errors())) from None

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from rlvr.data.prompts import check_template

        return check_template(value)

    def ks(self) -> list[int]:
        """The k of pass@k and maj@k: 1, 2, 4, ... up to n, and n itself."""
        return sorted({2**i for i in range(int(math.log2(self.n)) + 1)} | {self.n})
