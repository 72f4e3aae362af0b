"""Training data the way users keep it: datasets written by ``datasets`` itself (save_to_disk, parquet, csv,
a multi-config dataset directory, verl's chat parquet, GSM8K's ``####`` answers) each train 2 steps."""

from __future__ import annotations

import json

import pytest

from rlvr.config import build_recipe
from rlvr.data.prompts import load_prompts
from rlvr.data.tasks import arithmetic
from rlvr.trainer import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

PROBLEMS = arithmetic.problems("train", 16, seed=5)
MULTI_README = """---
configs:
- config_name: easy
  data_files: easy/*.parquet
- config_name: hard
  data_files: hard/*.parquet
---
Two configurations of one dataset, as on the hub.
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Each form on disk, written with ``datasets``; load_dataset's cache goes to a temporary directory."""
    import datasets

    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "cache"))
        table = datasets.Dataset.from_list([{"id": p.id, "problem": p.problem, "answer": p.answer,
                                             "expected": p.answer} for p in PROBLEMS])
        table.to_parquet(root / "train.parquet")
        table.to_csv(root / "train.csv", index=False)
        table.to_json(root / "train.jsonl")
        datasets.DatasetDict({"train": table, "test": table.select(range(4))}).save_to_disk(root / "saved")
        (root / "multi").mkdir()
        (root / "multi" / "README.md").write_text(MULTI_README)
        table.select(range(8)).to_parquet(root / "multi" / "easy" / "data.parquet")
        table.select(range(8, 16)).to_parquet(root / "multi" / "hard" / "data.parquet")
        verl = [{"data_source": "tiny/arithmetic", "prompt": [{"role": "user", "content": p.problem}],
                 "ability": "math", "reward_model": {"style": "rule", "ground_truth": p.answer},
                 "extra_info": {"split": "train", "index": i, "answer": p.answer}} for i, p in enumerate(PROBLEMS)]
        datasets.Dataset.from_list(verl).to_parquet(root / "verl.parquet")
        (root / "gsm8k.jsonl").write_text("".join(
            json.dumps({"question": p.problem, "answer": f"Add them: <<{p.problem}{p.answer}>>.\n#### {p.answer}",
                        "expected": p.answer}) + "\n" for p in PROBLEMS))
        yield root


# Form -> (the data section, relative to the data directory, and the rows it must read).
FORMS = {
    "save_to_disk": ({"train": {"path": "{d}/saved", "split": "train"}}, slice(0, 16)),
    "parquet": ({"train": {"path": "parquet", "data_files": "{d}/train.parquet", "split": "train"}}, slice(0, 16)),
    "csv": ({"train": {"path": "csv", "data_files": "{d}/train.csv"}}, slice(0, 16)),
    "multi_config": ({"train": {"path": "{d}/multi", "name": "hard", "split": "train"}}, slice(8, 16)),
    "verl_parquet": ({"train": {"path": "parquet", "data_files": "{d}/verl.parquet"}, "problem_key": "prompt",
                      "answer_key": "reward_model.ground_truth"}, slice(0, 16)),
    "gsm8k_answers": ({"train": "{d}/gsm8k.jsonl", "problem_key": "question", "answer_format": "gsm8k"},
                      slice(0, 16)),
}


def _filled(value, directory):
    if isinstance(value, dict):
        return {k: _filled(v, directory) for k, v in value.items()}
    return value.replace("{d}", str(directory)) if isinstance(value, str) else value


@pytest.mark.parametrize("form", FORMS)
def test_each_dataset_form_trains_two_steps(form, data_dir, tiny_model_dir, ray_session, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(data_dir / "cache"))
    section, rows = FORMS[form]
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "run", **{
        "data.heldout": "null", "data.batch_size": 4, "rollout.n": 2, "rollout.max_new_tokens": 4,
        "reward.function": "tests.rewards_for_tests:checks_answer"})
    recipe = build_recipe({"data": _filled(section, data_dir)}, overrides)

    data = recipe.data
    prompts = load_prompts(data.train, data.problem_key, data.answer_key, answer_format=data.answer_format)
    assert [(p.problem, p.answer) for p in prompts] == [(p.problem, p.answer) for p in PROBLEMS[rows]]
    if form == "verl_parquet":  # the chat column is the prompt, its other columns reach the reward
        assert prompts[0].messages == [{"role": "user", "content": PROBLEMS[0].problem}]
        assert prompts[0].fields["reward_model"]["style"] == "rule" and prompts[0].fields["data_source"]
    else:
        assert prompts[0].messages is None

    summary = train(recipe)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in metrics if row["step"] > 0]
    assert summary["steps"] == 2 and [row["step"] for row in steps] == [1, 2]
    for row in steps:  # every reward call saw the row's own gold answer (a mismatch is an error)
        assert row["reward/errors"] == 0 and row["reward/mean"] > 0, row
