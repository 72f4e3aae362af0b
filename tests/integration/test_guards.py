"""A run that diverges or whose reward is broken stops on its own (exit code 3) with its last good checkpoint named
and nothing unfit saved; a resume with a changed recipe refuses unless told, and keeps every recipe used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from rlvr.config import build_recipe
from rlvr.guards import Diverged
from rlvr.trainer import RecipeChanged, train
from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(out):
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_learning_rate_of_1e6_stops_at_its_first_step_with_exit_code_3_and_saves_nothing(tiny_model_dir,
                                                                                          tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", str(REPO / "recipes/tiny/grpo.yaml"),
                             *tiny_overrides(tiny_model_dir, out, **{"learner.lr": 1e6, "trainer.total_steps": 8,
                                                                     "trainer.save_every": 1})],
                            timeout=300, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 3, result.stderr
    assert "rlvr: step 1: its update multiplied the weights' norm by " in result.stderr
    assert "No checkpoint was written before it" in result.stderr and "Traceback" not in result.stderr
    assert [row["step"] for row in _rows(out)] == [0, 1]  # the step that diverged is recorded ...
    assert _rows(out)[1]["actor/weight_growth"] > 1e3
    assert _checkpoints(out) == []  # ... and its weights are not saved


def test_resume_refuses_a_recipe_that_changes_training_and_keeps_both_with_the_flag(tiny_model_dir, ray_session,
                                                                                   tmp_path):
    out = tmp_path / "run"
    common = {"trainer.save_every": 1}
    train(build_recipe({}, tiny_overrides(tiny_model_dir, out, **common)))
    before = (out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()

    changed = build_recipe({}, tiny_overrides(tiny_model_dir, out, **common, **{
        "trainer.total_steps": 3, "rollout.n": 2, "algorithm.name": "drgrpo"}))
    with pytest.raises(RecipeChanged, match=r"(?s)trained steps 1-2\) in fields that change what is trained:.*"
                                            r"algorithm.name: 'grpo' -> 'drgrpo'.*rollout.n: 4 -> 2.*"
                                            r"--allow-recipe-change") as refused:
        train(changed, resume=True)
    assert "total_steps" not in str(refused.value)  # an allowed change is not listed among the refused ones
    assert ((out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()) == before  # nothing touched

    train(changed, resume=True, allow_recipe_change=True)
    rows = _rows(out)
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert rows[2]["rollout/num_sampled"] == 8 * 4 and rows[3]["rollout/num_sampled"] == 8 * 2  # new n from step 3
    assert (out / "config.yaml").read_text() == before[0]  # the recipe of steps 1-2, as it was
    kept = yaml.safe_load((out / "config.step_2.yaml").read_text())  # the recipe of steps 3-
    assert kept["rollout"]["n"] == 2 and kept["algorithm"]["name"] == "drgrpo"

    # Only what a resume may change (how long it runs): no flag needed, and this recipe is kept too.
    longer = build_recipe({}, tiny_overrides(tiny_model_dir, out, **common, **{
        "trainer.total_steps": 4, "rollout.n": 2, "algorithm.name": "drgrpo"}))
    train(longer, resume=True)
    assert [row["step"] for row in _rows(out)] == [0, 1, 2, 3, 4]
    assert yaml.safe_load((out / "config.step_3.yaml").read_text())["trainer"]["total_steps"] == 4

    # A learning rate changed on resume applies (the checkpoint's optimizer state does not bring the old one back):
    # 1e6 diverges at the first resumed step, which is not saved, and the message names the last good checkpoint.
    diverging = build_recipe({}, tiny_overrides(tiny_model_dir, out, **common, **{
        "trainer.total_steps": 8, "rollout.n": 2, "algorithm.name": "drgrpo", "learner.lr": 1e6}))
    with pytest.raises(Diverged, match=rf"step 5: its update multiplied .* The last good checkpoint is "
                                       rf"{out / 'checkpoints' / 'step_4'} \(step 4\)"):
        train(diverging, resume=True, allow_recipe_change=True)
    assert _rows(out)[5]["actor/lr"] > 1e3
    assert _checkpoints(out) == ["step_1", "step_2", "step_3", "step_4"]


def test_a_reward_failing_on_every_call_stops_the_run_after_three_steps(tiny_model_dir, ray_session, tmp_path,
                                                                        monkeypatch):
    (tmp_path / "broken_reward.py").write_text(textwrap.dedent('''
        def reward(completion, answer, **fields):
            raise RuntimeError("the grader's server is down")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, out, **{
        "reward.function": "broken_reward:reward", "trainer.total_steps": 8, "trainer.save_every": 1}))
    with pytest.raises(Diverged, match=r"step 3: more than 50% of the reward calls failed in each of the last 3 "
                                       r"steps \(32 of 32 this step\).*The last good checkpoint is .*step_2"):
        train(recipe)
    assert [row["reward/errors"] for row in _rows(out)[1:]] == [32, 32, 32]
    assert _checkpoints(out) == ["step_1", "step_2"]
