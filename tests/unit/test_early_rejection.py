"""PRM early rejection on the real tiny model: token budget, scoring order, keep counts, merged log-probs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlvr.data.tasks import arithmetic
from rlvr.models.forward import response_logprobs
from rlvr.models.loading import load_model, load_tokenizer
from rlvr.rollout.controllers import plain
from rlvr.rollout.early_rejection import (
    EarlyRejection,
    beam_search,
    derive_seed,
    partial_beam_search,
    rollout_with_early_rejection,
)
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.rollout.prm import ArithmeticProgressScorer

MAX_NEW = 8
TAU = 2  # below every answer's length plus EOS, so every kept candidate needs a continuation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    problems = arithmetic.problems("heldout", 6)
    prompt_tokens = [tokenizer(p.problem, add_special_tokens=False).input_ids for p in problems]
    return SimpleNamespace(model=model, tokenizer=tokenizer, engine=HFEngine(model, tokenizer),
                           prompt_tokens=prompt_tokens, texts=[p.problem for p in problems])


class Log:
    """An engine and a scorer that record, in one list, every call made to them."""

    def __init__(self, engine, scores=None):
        self.engine, self.scores, self.calls = engine, scores, []

    def generate(self, requests, sampling):
        out = self.engine.generate(requests, sampling)
        self.calls.append(("generate", sampling.max_new_tokens, [list(r) for r in requests], out))
        return out

    def scorer(self, prompts, partials):
        scores = self.scores(len(partials)) if self.scores else [float(len(p)) for p in partials]
        self.calls.append(("score", list(prompts), list(partials), scores))
        return scores


def permuted(count: int) -> list[float]:
    """Distinct scores in a known, index-unrelated order."""
    return [float((i * 37) % 101) for i in range(count)]


def test_training_rollout_budget_order_and_keep(tiny):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    log = Log(engine, permuted)
    n, oversample = [1, 2, 0, 3, 1, 2], 4  # a per-prompt plan, zero included
    sampling = SamplingParams(MAX_NEW, temperature=1.0, seed=3)
    out = rollout_with_early_rejection(log.generate, prompt_tokens, texts, n, sampling, log.scorer, tokenizer,
                                       oversample=oversample, tau=TAU)
    kinds = [c[0] for c in log.calls]
    assert kinds == ["generate", "score", "generate"]  # partials, one scoring, then the continuations
    _, partial_budget, _, partials = log.calls[0]
    _, _, scored_partials, candidate_scores = log.calls[1]
    _, rest_budget, rest_requests, rests = log.calls[2]
    assert partial_budget == TAU and rest_budget == MAX_NEW - TAU
    assert len(partials) == sum(n) * oversample
    assert scored_partials == [c.text for c in partials]  # the scorer saw the partials, nothing more
    assert all(len(c.tokens) <= TAU for c in partials)

    # Exactly n_i rows per prompt: the n_i best of that prompt's candidates (distinct known scores).
    assert out.prompt_index == [i for i, k in enumerate(n) for _ in range(k)]
    assert len(out.completions) == sum(n)
    start = 0
    for i, k in enumerate(n):
        mine = list(range(start, start + k * oversample))
        best = sorted(sorted(mine, key=lambda j: -candidate_scores[j])[:k])
        rows = [r for r, p in enumerate(out.prompt_index) if p == i]
        assert [start + out.candidate_index[r] for r in rows] == best
        assert out.candidate_scores[i] == candidate_scores[start : start + k * oversample]
        for r, j in zip(rows, best):  # each kept row continues its own partial
            assert out.completions[r].tokens[: len(partials[j].tokens)] == partials[j].tokens
        start += k * oversample

    # Token accounting: every token the engine produced, and the rejected partials' share of it.
    assert out.tokens_generated == sum(len(c.tokens) for call in (partials, rests) for c in call)
    kept = {sum(n[:i]) * oversample + c for i, c in zip(out.prompt_index, out.candidate_index)}
    rejected = [j for j in range(len(partials)) if j not in kept]
    assert out.tokens_rejected == sum(len(partials[j].tokens) for j in rejected)
    assert out.rejected == len(rejected) and out.rejection_rate == pytest.approx(1 - 1 / oversample)
    assert rest_requests  # tau is below every answer: kept candidates did need more tokens
    for row in out.completions:
        assert 0 < len(row.tokens) <= MAX_NEW and len(row.tokens) == len(row.logprobs)
        assert row.text == tokenizer.decode(row.tokens, skip_special_tokens=True)
        assert (row.finish_reason == "stop") == (row.tokens[-1] == tokenizer.eos_token_id)
    assert out.metrics()["early_rejection/rejection_rate"] == pytest.approx(0.75)


def test_merged_logprobs_equal_one_pass_scoring(tiny):
    model = tiny.model
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    sampling = SamplingParams(MAX_NEW, temperature=0.7, seed=11)
    out = rollout_with_early_rejection(engine, prompt_tokens, texts, 2, sampling, ArithmeticProgressScorer(),
                                       tokenizer, oversample=2, tau=TAU)
    merged = [(prompt_tokens[i], row) for i, row in zip(out.prompt_index, out.completions)]
    assert any(len(row.tokens) > TAU for _, row in merged)
    for prompt, row in merged:
        with torch.no_grad():
            logp, _ = response_logprobs(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                        torch.tensor([row.tokens]), torch.ones(1, len(row.tokens), dtype=torch.long),
                                        sampling.temperature)
        assert logp[0].tolist() == pytest.approx(row.logprobs, abs=1e-4)


def test_rollout_is_reproducible_from_the_seed(tiny):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    scorer = ArithmeticProgressScorer()

    def run(seed):
        out = rollout_with_early_rejection(engine, prompt_tokens, texts, 2, SamplingParams(MAX_NEW, seed=seed),
                                           scorer, tokenizer, oversample=4, tau=3)
        return [c.tokens for c in out.completions]

    assert run(5) == run(5)
    assert run(5) != run(6)
    assert derive_seed(5, 0, 1) == derive_seed(5, 0, 1) != derive_seed(5, 0, 2)


def test_partial_beam_search_keeps_n_over_m_and_bounds_rejected_tokens(tiny):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    log = Log(engine, permuted)
    sampling = SamplingParams(MAX_NEW, seed=2)
    results = partial_beam_search(log.generate, prompt_tokens, texts, log.scorer, tokenizer, sampling,
                                  num_candidates=8, expansions=4, tau=TAU)
    _, _, _, partial_scores = log.calls[1]
    for p, result in enumerate(results):
        assert result.rounds == 1 and len(result.candidates) == 8
        kept = [j for j, c in enumerate(result.candidates) if c.kept]
        assert kept == sorted(sorted(range(8), key=lambda j: -partial_scores[8 * p + j])[:2])
        assert len(result.beams) == 2
        assert all(c.generated_tokens <= TAU for c in result.candidates if not c.kept)
        assert all(len(b.tokens) <= MAX_NEW and b.finish_reason in ("stop", "length") for b in result.beams)
        assert result.tokens_generated == sum(c.generated_tokens + c.continued_tokens for c in result.candidates)
        # The answer is the kept beam whose whole response scores best (the last scorer call).
        assert result.score == max(result.beam_scores) and result.response in [b.text for b in result.beams]
    generated = sum(len(c.tokens) for kind, *rest in log.calls if kind == "generate" for c in rest[-1])
    assert generated == sum(r.tokens_generated for r in results)


def test_full_generation_baseline_scores_whole_responses(tiny):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    engine_one_batch = HFEngine(engine.model, tokenizer, batch_size=1024)
    common = {"scorer": ArithmeticProgressScorer(), "decode": tokenizer, "sampling": SamplingParams(MAX_NEW, seed=4),
              "num_candidates": 8, "expansions": 4}
    full = beam_search(engine_one_batch, prompt_tokens, texts, **common)
    early = partial_beam_search(engine_one_batch, prompt_tokens, texts, tau=3, **common)
    for f, e in zip(full, early):
        assert all(c.generated_tokens == c.partial_tokens for c in f.candidates)  # nothing cut, nothing continued
        assert f.score == max(c.score for c in f.candidates)  # best of N
        # Paired sampling: the partials are the first tau tokens of the full candidates.
        assert all(cf.text.startswith(ce.text) for cf, ce in zip(f.candidates, e.candidates))
    assert sum(r.tokens_generated for r in early) < sum(r.tokens_generated for r in full)


def test_steps_cut_at_the_delimiter(tiny):
    """With a step delimiter (a space: the tiny model answers, then rambles after a space), a step ends right
    after its first delimiter, tokens generated past it are counted, and later rounds extend the kept beams."""
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    results = partial_beam_search(engine, prompt_tokens, texts, ArithmeticProgressScorer(), tokenizer,
                                  SamplingParams(16, seed=7), num_candidates=4, expansions=2, tau=4, max_steps=3,
                                  step_delimiter=" ", chunk_tokens=4)
    candidates = [c for r in results for c in r.candidates]
    assert any(r.rounds > 1 for r in results)
    assert any(c.generated_tokens > c.partial_tokens for c in candidates)  # something was cut off and counted
    for c in candidates:
        assert c.partial_tokens <= c.generated_tokens <= 4
        assert c.text.count(" ") <= c.round + 1  # at most one step, so one delimiter, per round
        if c.round == 0 and " " in c.text:
            assert c.text.index(" ") == len(c.text) - 1  # cut right after the delimiter
    for r in results:
        assert len(r.beams) == 2
        assert r.tokens_generated == sum(c.generated_tokens + c.continued_tokens for c in r.candidates)
        assert all(len(b.tokens) == len(b.logprobs) <= 16 for b in r.beams)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_candidates": 6, "expansions": 4}, "multiple of expansions"),
    ({"tau": 0}, "tau"),
    ({"tau": MAX_NEW}, "below sampling.max_new_tokens"),
    ({"max_steps": 0}, "max_steps"),
    ({"step_delimiter": ""}, "step_delimiter"),
])
def test_bad_arguments_are_named(tiny, kwargs, message):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    with pytest.raises(ValueError, match=message):
        partial_beam_search(engine, prompt_tokens, texts, ArithmeticProgressScorer(), tokenizer,
                            SamplingParams(MAX_NEW), **{"tau": TAU, **kwargs})


def test_bad_training_arguments_and_scorers_are_named(tiny):
    tokenizer, engine, prompt_tokens, texts = tiny.tokenizer, tiny.engine, tiny.prompt_tokens, tiny.texts
    sampling = SamplingParams(MAX_NEW)
    with pytest.raises(ValueError, match="one count per prompt"):
        rollout_with_early_rejection(engine, prompt_tokens, texts, [1, 2], sampling, ArithmeticProgressScorer(),
                                     tokenizer, tau=2)
    with pytest.raises(ValueError, match="oversample"):
        rollout_with_early_rejection(engine, prompt_tokens, texts, 2, sampling, ArithmeticProgressScorer(),
                                     tokenizer, oversample=0, tau=2)
    with pytest.raises(ValueError, match="prompt texts"):
        rollout_with_early_rejection(engine, prompt_tokens, texts[:2], 2, sampling, ArithmeticProgressScorer(),
                                     tokenizer, tau=2)
    with pytest.raises(ValueError, match="returned 1 scores"):
        rollout_with_early_rejection(engine, prompt_tokens, texts, 2, sampling, lambda prompts, partials: [0.0],
                                     tokenizer, tau=2)


def test_controllers_answer_alike_prompt_major_with_every_token_counted(tiny):
    """Training samples through a controller over the workers' generate: the plain one samples each prompt
    ``plan[i]`` times in one call; early rejection is the same rollout as the function, its record attached."""
    tokenizer, prompt_tokens, texts = tiny.tokenizer, tiny.prompt_tokens, tiny.texts
    plan, sampling = [2, 0, 1, 3, 1, 1], SamplingParams(MAX_NEW, temperature=1.0, seed=5)
    log = Log(tiny.engine)
    out = plain(log.generate, prompt_tokens, texts, plan, sampling)
    assert [c[0] for c in log.calls] == ["generate"] and out.details is None
    assert out.prompt_index == [0, 0, 2, 3, 3, 3, 4, 5]
    assert log.calls[0][2] == [prompt_tokens[i] for i in out.prompt_index]
    assert out.tokens_generated == sum(len(c.tokens) for c in out.completions) > 0

    controller = EarlyRejection(ArithmeticProgressScorer(), tokenizer, oversample=3, tau=TAU)
    controlled = controller(tiny.engine.generate, prompt_tokens, texts, plan, sampling)
    direct = rollout_with_early_rejection(tiny.engine.generate, prompt_tokens, texts, plan, sampling,
                                          ArithmeticProgressScorer(), tokenizer, oversample=3, tau=TAU)
    assert [c.tokens for c in controlled.completions] == [c.tokens for c in direct.completions]
    assert controlled.prompt_index == direct.prompt_index == out.prompt_index
    assert controlled.tokens_generated == direct.tokens_generated > sum(len(c.tokens) for c in direct.completions)
    assert controlled.details.rejected == direct.rejected == sum(plan) * 2
