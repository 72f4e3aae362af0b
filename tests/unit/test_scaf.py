"""Scaf-GRPO's hint search on the real tiny model: which levels are sampled and in what order, which row a
rescue replaces, and the prompt that row then carries (the hinted one, so its ratio is on-policy)."""

from __future__ import annotations

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import RolloutSource, RunInfo
from rlvr.algos.scaf import PAPER_TEMPLATE, HintSearch, exemption_end, field_hints, hinted
from rlvr.config import RecipeError, build_recipe
from rlvr.data.prompts import Prompt, render
from rlvr.data.tasks.arithmetic import HINT_TEMPLATE, hint_ladder
from rlvr.rollout.sampler import assemble_batch


class EngineSource(RolloutSource):
    """Samples with the real tiny model; a row is "correct" when ``is_correct(prompt text)`` says so, so the
    test decides which hint levels succeed while the responses are the model's own."""

    def __init__(self, model_dir, prompts, is_correct, step=10):
        from rlvr.models.loading import load_model, load_tokenizer
        from rlvr.rollout.hf import HFEngine

        self.tokenizer = load_tokenizer(model_dir)
        self.engine = HFEngine(load_model(model_dir, "float32"), self.tokenizer)
        self.prompts = {p.id: p for p in prompts}
        self.is_correct, self.step, self.calls = is_correct, step, []

    def prompt(self, prompt_id):
        return self.prompts[prompt_id]

    def sample(self, prompts, plan=None, record=True):
        from rlvr.rollout.engine import SamplingParams

        plan = plan or [4] * len(prompts)
        self.calls.append([p.problem for p in prompts])
        rows = [(i, p) for i, (p, k) in enumerate(zip(prompts, plan)) for _ in range(k)]
        tokens = [render(p, "plain", self.tokenizer) for _, p in rows]
        completions = self.engine.generate(tokens, SamplingParams(6, 1.0, seed=len(self.calls)))
        batch = assemble_batch(rows, tokens, completions, self.tokenizer.pad_token_id)
        batch.correct = torch.tensor([self.is_correct(p.problem) for _, p in rows])
        batch.rewards = batch.correct.float()
        batch.reward_extras = [{} for _ in rows]
        return batch


PROMPTS = [Prompt("a", "47+38=", "85"), Prompt("b", "7*83=", "581"), Prompt("c", "12+10=", "22")]


def _scaf(**options):
    options = {"hints": "arithmetic", "exemption_steps": 2, **options}
    return algos.build("scaf_grpo", RunInfo(n=4, total_steps=20), **options)


def _knowledge_level(problem: str, level: int) -> bool:
    """Correct exactly when the prompt shows at least ``level`` - 1 revealed characters of the answer."""
    hint = problem.split("|")[0] if "|" in problem else None
    return hint is not None and sum(c != "?" for c in hint) >= level - 1


@pytest.fixture(scope="module")
def source_factory(tiny_model_dir):
    return lambda is_correct, step=10: EngineSource(tiny_model_dir, PROMPTS, is_correct, step)


def test_ladder_is_three_tiers_of_four_cumulative_levels():
    assert hint_ladder("581") == {"knowledge": ["???", "5??", "58?", "581"], "planning": ["??1", "?81", "581", "581"],
                                  "solution": ["581"] * 4}
    scaf = _scaf()
    ladder = HintSearch().ladder(PROMPTS[0], scaf.options)
    assert [(tier, level) for tier, level, _ in ladder] == [(t, lv) for t in ("knowledge", "planning", "solution")
                                                            for lv in range(1, 5)]
    assert hinted(PROMPTS[0], "knowledge", "?5", scaf.options).problem == "?5|47+38=" == HINT_TEMPLATE.format(
        hint="?5", problem="47+38=")
    # Dataset hints: level l joins the first l items (the paper's C_c^l), in the authors' prompt.
    fields = {"knowledge_components_parts": ["k1", "k2", "k3", "k4"], "solution_breakdown_parts": ["s1", "s2"]}
    levels = field_hints(fields, {"knowledge": "knowledge_components_parts", "planning": "planning_skeleton_parts",
                                  "solution": "solution_breakdown_parts"}, " ")
    assert levels == {"knowledge": ["k1", "k1 k2", "k1 k2 k3", "k1 k2 k3 k4"], "solution": ["s1", "s1 s2"]}
    paper = algos.build("scaf_grpo", RunInfo(), hint_tiers=["knowledge", "solution"])
    prompt = Prompt("x", "What is 2+2?", "4", fields)
    assert [lv for _, lv, _ in HintSearch().ladder(prompt, paper.options)] == [1, 2, 3, 4, 1, 2]
    assert hinted(prompt, "solution", "s1 s2", paper.options).problem == PAPER_TEMPLATE.format(
        problem="What is 2+2?", tier="Solution", hint="s1 s2") == "Question: What is 2+2?\nSolution Hints: s1 s2"


def test_parallel_search_samples_every_level_once_and_keeps_the_lowest_success(source_factory):
    source = source_factory(lambda problem: _knowledge_level(problem, 3))
    scaf = _scaf()
    batch = source.sample(PROMPTS)  # all fail: no prompt carries a hint
    out, metrics = scaf.post_rollout(batch, source)
    assert len(source.calls) == 2
    assert len(source.calls[1]) == 3 * 12  # one call: every level of every all-fail prompt, one sample each
    assert metrics["scaf/all_fail_groups"] == 3 and metrics["scaf/rescued_frac"] == 1.0
    assert metrics["scaf/hint_samples"] == 36
    # Knowledge level 3 is the first to reveal two characters ("85" for 47+38, "58?" for 7*83).
    assert metrics["scaf/level/knowledge-3"] == 3
    assert sum(v for k, v in metrics.items() if k.startswith("scaf/level/")) == 3
    _check_replacement(batch, out, source, {0: "85|47+38=", 1: "58?|7*83=", 2: "22|12+10="})


def test_sequential_search_stops_each_prompt_at_its_first_success(source_factory):
    # "c" succeeds at knowledge level 2, "a" at planning level 1 (after the 4 knowledge levels), "b" never.
    def is_correct(problem):
        return problem in ("?5|47+38=", "2?|12+10=")

    source = source_factory(is_correct)
    scaf = _scaf(hint_search="sequential")
    batch = source.sample(PROMPTS)
    out, metrics = scaf.post_rollout(batch, source)
    hinted_calls = source.calls[1:]
    assert [len(c) for c in hinted_calls] == [3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    assert hinted_calls[0] == ["??|47+38=", "???|7*83=", "??|12+10="]
    assert hinted_calls[1] == ["8?|47+38=", "5??|7*83=", "2?|12+10="]
    assert not any("12+10" in p for c in hinted_calls[2:] for p in c)
    assert hinted_calls[4] == ["?5|47+38=", "??1|7*83="] and not any("47+38" in p for c in hinted_calls[5:] for p in c)
    assert metrics["scaf/rescued_groups"] == 2 and metrics["scaf/rescued_frac"] == pytest.approx(2 / 3)
    assert metrics["scaf/level/knowledge-2"] == 1 and metrics["scaf/level/planning-1"] == 1
    assert metrics["scaf/hint_samples"] == 3 + 3 + 2 + 2 + 2 + 1 * 7
    _check_replacement(batch, out, source, {0: "?5|47+38=", 2: "2?|12+10="})


def _check_replacement(before, after, source, rescued: dict[int, str]):
    """One row per rescued group (its first) now holds the hinted prompt and a response sampled from it."""
    assert len(after) == len(before) and torch.equal(after.group, before.group)
    assert after.prompt_id == before.prompt_id
    tokenizer = source.tokenizer
    for i, g in enumerate(before.group.tolist()):
        first = i == int((before.group == g).nonzero()[0, 0])
        prompt = tokenizer.decode(after.prompt_tokens[i][after.prompt_mask[i].bool()])
        if g in rescued and first:
            assert prompt == rescued[g]
            assert bool(after.correct[i]) and after.rewards[i] == 1.0
            length = int(after.response_mask[i].sum())
            response = tokenizer.decode(after.response_tokens[i, :length], skip_special_tokens=True)
            assert after.response_text[i] == response
        else:
            assert prompt == PROMPTS[g].problem
            length = int(before.response_mask[i].sum())
            assert torch.equal(after.response_tokens[i, :length], before.response_tokens[i, :length])
            assert not bool(after.correct[i])
    # GRPO on the rescued group: the hinted row carries all the positive advantage.
    adv = _scaf().advantages(after)[0]
    for g in rescued:
        rows = (after.group == g).nonzero().flatten().tolist()
        assert adv[rows[0]] > 0 and all(adv[r] < 0 for r in rows[1:])


def test_replace_random_picks_a_failed_row_reproducibly(source_factory):
    source = source_factory(lambda problem: problem.startswith("85|"))
    batch = source.sample(PROMPTS)
    outs = [_scaf(replace_row="random").post_rollout(batch, source)[0] for _ in range(2)]
    def prompts(b):
        return [source.tokenizer.decode(t[m.bool()]) for t, m in zip(b.prompt_tokens, b.prompt_mask)]

    changed = [i for i, (x, y) in enumerate(zip(prompts(batch), prompts(outs[0]))) if x != y]
    assert len(changed) == 1 and int(batch.group[changed[0]]) == 0 and prompts(outs[0])[changed[0]] == "85|47+38="
    assert prompts(outs[0]) == prompts(outs[1])


def test_no_hints_during_exemption_and_no_search_without_all_fail_groups(source_factory):
    source = source_factory(lambda problem: True, step=2)
    scaf = _scaf()  # exemption_steps 2
    batch = source.sample(PROMPTS)
    batch.correct[:] = False
    out, metrics = scaf.post_rollout(batch, source)
    assert out is batch and len(source.calls) == 1 and metrics == {"scaf/exempt": 1.0}
    source.step = 3
    batch.correct[::4] = True  # one correct row in every group
    out, metrics = scaf.post_rollout(batch, source)
    assert out is batch and len(source.calls) == 1 and metrics["scaf/all_fail_groups"] == 0
    assert exemption_end(algos.build("scaf_grpo").options, total_steps=200) == 30  # 15% of training


def test_bad_options_fail_before_any_work(tmp_path):
    with pytest.raises(RecipeError, match="hint_template"):
        build_recipe({"algorithm": {"name": "scaf_grpo", "hint_template": "Q: {problem}"}})
    with pytest.raises(RecipeError, match="hints"):
        build_recipe({"algorithm": {"name": "scaf_grpo", "hints": "nonsense"}})
    with pytest.raises(RecipeError, match="rollout.n >= 2"):
        build_recipe({"algorithm": {"name": "scaf_grpo"}, "rollout": {"n": 1}})
    scaf = algos.build("scaf_grpo", RunInfo())  # hints: fields, but the tiny task has no hint columns
    recipe = build_recipe({"algorithm": {"name": "scaf_grpo"}})
    with pytest.raises(ValueError, match="knowledge_components_parts.*hints: arithmetic"):
        scaf.prepare_prompts([Prompt("a", "1+1=", "2")], recipe)
