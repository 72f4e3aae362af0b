"""The sampler: prompts in, a scored :class:`~rlvr.batch.RolloutBatch` out. It renders the prompts with the recipe's
template, hands the requests to a generation controller (:mod:`rlvr.rollout.controllers`) over the workers'
``generate``, assembles the batch and scores it in the reward pool. Training rollouts, the held-out check and
``rlvr prepare`` sample through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlvr.batch import RolloutBatch
from rlvr.data.prompts import Prompt, render
from rlvr.rewards.pool import RewardPool, RewardRequest
from rlvr.rollout.controllers import Controlled, Controller, Generate, plain
from rlvr.rollout.engine import Completion, SamplingParams

# Sends requests to the engines now; the function it returns waits for their completions.
Submit = Callable[[list[list[int]], SamplingParams], Callable[[], list[Completion]]]


class Sampler:
    """``generate`` (the workers'), the tokenizer and prompt ``template``, the reward ``pool`` and the score that
    counts as correct; ``controller`` samples unless a call names another (the held-out check samples plainly)."""

    def __init__(self, generate: Generate, tokenizer, template: str, pool: RewardPool, correct_threshold: float,
                 controller: Controller = plain):
        self.generate_fn, self.tokenizer, self.template, self.pool = generate, tokenizer, template, pool
        self.correct_threshold, self.controller = correct_threshold, controller

    def generate(self, prompts: Sequence[Prompt], plan: Sequence[int], sampling: SamplingParams,
                 controller: Controller | None = None) -> tuple[RolloutBatch, Controlled]:
        """``plan[i]`` responses to ``prompts[i]`` as one batch whose group ids index the prompts (unscored), and
        the controller's answer."""
        tokens = [render(p, self.template, self.tokenizer) for p in prompts]
        out = (controller or self.controller)(self.generate_fn, tokens, [p.problem for p in prompts], plan, sampling)
        return self._assemble(prompts, tokens, out), out

    def submit(self, prompts: Sequence[Prompt], plan: Sequence[int], sampling: SamplingParams, submit: Submit
               ) -> Callable[[], tuple[RolloutBatch, Controlled]]:
        """:meth:`generate` with the plain controller, in two halves: the requests go to the engines now
        (``submit`` sends them and returns what gathers their completions), the batch is assembled when the
        returned function is called. Sampling ahead (``rollout.max_staleness``) sends a step's requests before the
        weight sync that must not reach them."""
        tokens = [render(p, self.template, self.tokenizer) for p in prompts]
        index = [i for i, count in enumerate(plan) for _ in range(count)]
        gather = submit([tokens[i] for i in index], sampling)

        def finish() -> tuple[RolloutBatch, Controlled]:
            completions = gather()
            out = Controlled(completions, index, sum(len(c.tokens) for c in completions))
            return self._assemble(prompts, tokens, out), out

        return finish

    def _assemble(self, prompts: Sequence[Prompt], tokens: list[list[int]], out: Controlled) -> RolloutBatch:
        rows = [(i, prompts[i]) for i in out.prompt_index]
        return assemble_batch(rows, [tokens[i] for i in out.prompt_index], out.completions, self.tokenizer.pad_token_id)

    def score(self, batch: RolloutBatch) -> int:
        """Fills ``rewards``, ``reward_extras`` and ``correct``; returns the number of failed reward calls."""
        requests = [RewardRequest(text, answer, fields) for text, answer, fields
                    in zip(batch.response_text, batch.answer, batch.fields)]
        results = self.pool.score(requests)
        batch.rewards = torch.tensor([r.score for r in results], dtype=torch.float32)
        batch.reward_extras = [r.extras for r in results]
        batch.correct = batch.rewards >= self.correct_threshold
        return sum(r.error is not None for r in results)


def assemble_batch(rows: list[tuple[int, Prompt]], prompt_tokens: list[list[int]],
                   completions: list[Completion], pad_id: int) -> RolloutBatch:
    """Pad prompts left and responses right into a :class:`RolloutBatch`; ``rows[j] = (group, prompt)``."""
    n = len(rows)
    p_width = max(len(t) for t in prompt_tokens)
    t_width = max(1, max(len(c.tokens) for c in completions))
    prompt = torch.full((n, p_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, p_width), dtype=torch.long)
    response = torch.full((n, t_width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, t_width))
    logprobs = torch.zeros((n, t_width))
    for j, (tokens, c) in enumerate(zip(prompt_tokens, completions)):
        prompt[j, p_width - len(tokens):] = torch.tensor(tokens)
        prompt_mask[j, p_width - len(tokens):] = 1
        response[j, : len(c.tokens)] = torch.tensor(c.tokens, dtype=torch.long)
        response_mask[j, : len(c.tokens)] = 1.0
        # NaN where the engine returned none (none were asked for), so a misuse cannot pass as data.
        logprobs[j, : len(c.tokens)] = torch.tensor(c.logprobs) if c.logprobs else torch.nan
    return RolloutBatch(
        prompt_id=[p.id for _, p in rows],
        group=torch.tensor([g for g, _ in rows], dtype=torch.long),
        prompt_tokens=prompt, prompt_mask=prompt_mask,
        response_tokens=response, response_mask=response_mask, rollout_logprobs=logprobs,
        answer=[p.answer for _, p in rows],
        response_text=[c.text for c in completions],
        finished=torch.tensor([c.finish_reason == "stop" for c in completions]),
        fields=[p.fields for _, p in rows],
    )
