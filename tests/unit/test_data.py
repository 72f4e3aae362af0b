"""The tiny task's splits and the prompt stream's order and checkpointable position."""

import json
import random

import pytest

from rlvr.data.prompts import PromptStream, load_prompts
from rlvr.data.tasks import arithmetic
from rlvr.rewards.grading import grade


def test_heldout_split_is_fixed_large_and_disjoint_from_train():
    heldout = arithmetic.problems("heldout", arithmetic.HELDOUT_SIZE)
    assert len(heldout) >= 500 and len({p.problem for p in heldout}) == len(heldout)
    assert heldout == arithmetic.problems("heldout", arithmetic.HELDOUT_SIZE, seed=99)  # seed-independent
    train = {p.problem for p in arithmetic.problems("train", 20000, seed=0)}
    assert not train & {p.problem for p in heldout}


def test_answers_are_right_and_graded_by_the_math_grader():
    for p in arithmetic.problems("heldout", 50):
        assert eval(p.problem.rstrip("=")) == int(p.answer)
        assert grade(p.answer, p.answer)
        assert not grade(str(int(p.answer) + 1), p.answer)


def test_stream_replays_from_a_saved_position():
    prompts = load_prompts("tiny:train", limit=50)
    a = PromptStream(prompts, batch_size=8, seed=3)
    for _ in range(4):
        a.next_batch()
    state = a.state_dict()
    expected = [[p.id for p in a.next_batch()] for _ in range(6)]  # crosses an epoch boundary
    b = PromptStream(prompts, batch_size=8, seed=3)
    b.load_state_dict(state)
    assert [[p.id for p in b.next_batch()] for _ in range(6)] == expected
    epoch_ids = [p.id for _ in range(6) for p in PromptStream(prompts, 8, seed=3).next_batch()]
    assert len(set(epoch_ids[:8])) == 8


def test_jsonl_source_and_missing_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2", "level": 1}) + "\n")
    (prompt,) = load_prompts(str(path))
    assert (prompt.id, prompt.problem, prompt.answer, prompt.fields) == ("a", "1+1?", "2", {"level": 1})
    with pytest.raises(ValueError, match="has no field 'question'"):
        load_prompts(str(path), problem_key="question")
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_shared_math500_loads():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"the shared data sets are not beside this checkout ({SHARED_DATA})")
    prompts = load_prompts(str(SHARED_DATA / "math500.jsonl"))
    assert len(prompts) == 500 and prompts[0].id == "test/precalculus/807.json"
    assert "subject" in prompts[0].fields


def test_verl_style_rows_with_nested_answers_and_hint_columns(tmp_path):
    # The shape of Scaf-GRPO's data: raw question, gold answer inside reward_model, hint lists beside them.
    row = {"question": "What is 2+3?", "reward_model": {"ground_truth": "5", "style": "rule"},
           "knowledge_components_parts": ["addition", "counting on"], "prompt": [{"role": "user", "content": "x"}]}
    path = tmp_path / "scaf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [prompt] = load_prompts(str(path), "question", "reward_model.ground_truth")
    assert (prompt.problem, prompt.answer) == ("What is 2+3?", "5")
    assert prompt.fields["knowledge_components_parts"] == ["addition", "counting on"]
    with pytest.raises(ValueError, match="no field 'reward_model.answer'.*dotted key"):
        load_prompts(str(path), "question", "reward_model.answer")


def test_hint_ladder_levels_reveal_more_of_the_answer():
    ladder = arithmetic.hint_ladder("-52")
    assert ladder["knowledge"] == ["???", "-??", "-5?", "-52"]  # length, then from the leading character
    assert ladder["planning"] == ["??2", "?52", "-52", "-52"]  # from the ones digit
    assert ladder["solution"] == ["-52"] * 4
    for levels in ladder.values():
        revealed = [sum(c != "?" for c in level) for level in levels]
        assert revealed == sorted(revealed)  # cumulative
    # The warm start shows every pattern of the ladder (and nothing the ladder never shows).
    rng = random.Random(0)
    shown = {arithmetic.warmup_hint("-52", rng) for _ in range(500)}
    assert shown == {h for levels in ladder.values() for h in levels}
