"""The command line as a user runs it: bad recipes fail at once, registries list what they hold."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO

RECIPE = str(REPO / "recipes/tiny/grpo.yaml")


def _rlvr(*args, cwd):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True,
                            timeout=120, cwd=cwd)
    return result, time.perf_counter() - started


def test_unknown_algorithm_fails_at_once_listing_the_known_ones(tmp_path):
    result, seconds = _rlvr("train", RECIPE, "algorithm.name=nope", f"trainer.output_dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "algorithm.name: 'nope' is unknown; known algorithms: grpo" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    assert seconds < 60


def test_misspelt_key_fails_naming_it(tmp_path):
    result, _ = _rlvr("train", RECIPE, "rollout.temprature=0.7", cwd=tmp_path)
    assert result.returncode == 2
    assert "rollout.temprature: unknown key (value 0.7)" in result.stderr
    assert "temperature" in result.stderr  # what is allowed


def test_list_algorithms_and_rewards(tmp_path):
    algorithms, _ = _rlvr("list", "algorithms", cwd=tmp_path)
    assert algorithms.returncode == 0 and algorithms.stdout.split()[0] == "grpo"
    rewards, _ = _rlvr("list", "rewards", cwd=tmp_path)
    assert rewards.returncode == 0 and "math_answer" in rewards.stdout
    assert "reward_fns.math_answer:reward" in rewards.stdout
