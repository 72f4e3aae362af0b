"""Generation controllers: how a step's requests become completions through the workers' ``generate``.

A controller is called with ``generate`` (:meth:`rlvr.workers.placement.Workers.generate`, or any engine's), the
rendered prompt ids, the problem texts (what a scorer reads), a plan (samples per prompt, zeros allowed) and the
sampling parameters, and returns :class:`Controlled`: the completions, prompt-major, with each row's prompt. The
plain controller samples each prompt ``plan[i]`` times in one call; PRM early rejection
(:class:`rlvr.rollout.early_rejection.EarlyRejection`) oversamples, stops at a token budget, scores the partial
responses and continues only the best (DESIGN.md section 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlvr.rollout.engine import Completion, SamplingParams

Generate = Callable[[list[list[int]], SamplingParams], list[Completion]]


@dataclass
class Controlled:
    """A controller's answer: ``completions[j]`` is a response to prompt ``prompt_index[j]``, prompt-major;
    ``tokens_generated`` counts every token the engine generated (rejected partials included); ``details`` is the
    controller's own record (early rejection's counts), None for the plain controller."""

    completions: list[Completion]
    prompt_index: list[int]
    tokens_generated: int
    details: Any = None


class Controller(Protocol):
    def __call__(self, generate: Generate, requests: Sequence[list[int]], problems: Sequence[str],
                 plan: Sequence[int], sampling: SamplingParams) -> Controlled: ...


def plain(generate: Generate, requests: Sequence[list[int]], problems: Sequence[str], plan: Sequence[int],
          sampling: SamplingParams) -> Controlled:
    """``plan[i]`` samples of ``requests[i]``, all in one ``generate`` call (a group is ``n`` requests of one
    prompt, so engines that share prefixes can cache them)."""
    index = [i for i, count in enumerate(plan) for _ in range(count)]
    completions = generate([requests[i] for i in index], sampling)
    return Controlled(completions, index, sum(len(c.tokens) for c in completions))
