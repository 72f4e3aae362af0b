"""The command line as a user runs it: bad recipes fail at once, registries list what they hold."""

from __future__ import annotations

import subprocess
import sys
import time

from rlvr import algos
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
    assert f"algorithm.name: 'nope' is unknown; known algorithms: {', '.join(algos.names())}" in result.stderr
    assert "astar, capo, copo, dapo, dcpo, drgrpo, forking-tokens, grpo, gspo, rloo, scaf_grpo" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    assert seconds < 60


def test_misspelt_key_fails_naming_it(tmp_path):
    result, _ = _rlvr("train", RECIPE, "rollout.temprature=0.7", cwd=tmp_path)
    assert result.returncode == 2
    assert "rollout.temprature: unknown key (value 0.7)" in result.stderr
    assert "temperature" in result.stderr  # what is allowed


def test_list_algorithms_and_rewards(tmp_path):
    algorithms, _ = _rlvr("list", "algorithms", cwd=tmp_path)
    assert algorithms.returncode == 0
    lines = algorithms.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == algos.names()  # every registered preset, in order
    assert {"astar", "capo", "copo", "dapo", "dcpo", "drgrpo", "forking-tokens", "grpo", "gspo", "rloo",
            "scaf_grpo"} <= set(names)
    assert all(len(line.split(None, 1)[1]) > 30 for line in lines)  # a one-line description each
    assert "DCPO: dynamic per-token clip bounds" in algorithms.stdout
    rewards, _ = _rlvr("list", "rewards", cwd=tmp_path)
    assert rewards.returncode == 0 and "math_answer" in rewards.stdout
    assert "reward_fns.math_answer:reward" in rewards.stdout


def test_astar_without_its_stage_one_table_fails_at_once_naming_the_command(tmp_path):
    result, seconds = _rlvr("train", str(REPO / "recipes/tiny/astar.yaml"), f"trainer.output_dir={tmp_path}/run",
                            f"algorithm.values_path={tmp_path}/none.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert "run `rlvr prepare astar RECIPE` first" in result.stderr
    assert not (tmp_path / "run").exists()
    assert seconds < 60


def test_prepare_rejects_unknown_stages_and_other_algorithms(tmp_path):
    result, _ = _rlvr("prepare", "vstar", RECIPE, cwd=tmp_path)
    assert result.returncode == 2 and "prepare stage 'vstar' is unknown; known stages: astar" in result.stderr
    result, _ = _rlvr("prepare", "astar", RECIPE, cwd=tmp_path)
    assert result.returncode == 2 and "needs a recipe with algorithm.name: astar, not 'grpo'" in result.stderr
