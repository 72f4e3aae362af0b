"""The rollout engine protocol: what every engine (Hugging Face generate, vLLM) provides.

Requests are prompt token ids, one completion per request (a group of ``n`` samples is ``n`` requests of
the same prompt, so engines that share prefixes can cache them). Completions carry the response token
ids and the sampling policy's per-token log-probs at the sampling temperature, before top-p/top-k
truncation (what the learner's ratio is computed against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0
    logprobs: bool = True  # False: the caller does not need them (engines that pay for them may skip)


@dataclass
class Completion:
    tokens: list[int]  # the response, including EOS when it stopped
    logprobs: list[float]  # one per token; empty when the request asked for none
    text: str  # decoded response without special tokens
    finish_reason: Literal["stop", "length"]


class RolloutEngine(Protocol):
    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]: ...

    def load_weights(self, named_arrays: dict[str, np.ndarray]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...
