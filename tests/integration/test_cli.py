"""The command line as a user runs it: bad recipes fail at once, registries list what they hold. In process
(``rlvr.cli.main``), with one run of the installed entry point in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from rlvr import algos
from rlvr.cli import main
from tests.conftest import REPO

RECIPE = str(REPO / "recipes/tiny/grpo.yaml")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def rlvr(capsys, monkeypatch, tmp_path):
    """``rlvr ARGS`` in this process, from ``tmp_path``: its exit code and output, and the seconds it took."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        capsys.readouterr()
        started = time.perf_counter()
        code = main(list(args))
        out = capsys.readouterr()
        return Result(code, out.out, out.err), time.perf_counter() - started

    return run


def test_the_installed_command_runs_in_a_process_of_its_own(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlvr.cli", "list", "algorithms"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and "grpo" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", RECIPE, "algorithm.name=nope"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "algorithm.name: 'nope' is unknown" in bad.stderr


def test_unknown_algorithm_fails_at_once_listing_the_known_ones(rlvr, tmp_path):
    result, seconds = rlvr("train", RECIPE, "algorithm.name=nope", f"trainer.output_dir={tmp_path}/run")
    assert result.returncode == 2
    assert f"algorithm.name: 'nope' is unknown; known algorithms: {', '.join(algos.names())}" in result.stderr
    assert "astar, capo, copo, dapo, dcpo, drgrpo, forking-tokens, grpo, gspo, rloo, scaf_grpo" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    assert seconds < 60


def test_misspelt_key_fails_naming_it(rlvr):
    result, _ = rlvr("train", RECIPE, "rollout.temprature=0.7")
    assert result.returncode == 2
    assert "rollout.temprature: unknown key (value 0.7)" in result.stderr
    assert "temperature" in result.stderr  # what is allowed


def test_list_algorithms_and_rewards(rlvr):
    algorithms, _ = rlvr("list", "algorithms")
    assert algorithms.returncode == 0
    lines = algorithms.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == algos.names()  # every registered preset, in order
    assert {"astar", "capo", "copo", "dapo", "dcpo", "drgrpo", "forking-tokens", "grpo", "gspo", "rloo",
            "scaf_grpo"} <= set(names)
    assert all(len(line.split(None, 1)[1]) > 30 for line in lines)  # a one-line description each
    assert "DCPO: dynamic per-token clip bounds" in algorithms.stdout
    rewards, _ = rlvr("list", "rewards")
    assert rewards.returncode == 0 and "math_answer" in rewards.stdout
    for what, names in (("engines", ["hf", "vllm"]), ("learners", ["torch", "deepspeed"])):
        listed, _ = rlvr("list", what)
        assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()] == names
    assert "reward_fns.math_answer:reward" in rewards.stdout


def test_astar_without_its_stage_one_table_fails_at_once_naming_the_command(rlvr, tmp_path):
    result, seconds = rlvr("train", str(REPO / "recipes/tiny/astar.yaml"), f"trainer.output_dir={tmp_path}/run",
                           f"algorithm.values_path={tmp_path}/none.jsonl")
    assert result.returncode == 2
    assert "run `rlvr prepare astar RECIPE` first" in result.stderr
    assert not (tmp_path / "run").exists()
    assert seconds < 60


def test_prepare_rejects_unknown_stages_and_other_algorithms(rlvr):
    result, _ = rlvr("prepare", "vstar", RECIPE)
    assert result.returncode == 2 and "prepare stage 'vstar' is unknown; known stages: astar" in result.stderr
    result, _ = rlvr("prepare", "astar", RECIPE)
    assert result.returncode == 2 and "needs a recipe with algorithm.name: astar, not 'grpo'" in result.stderr


def test_resume_of_a_run_that_does_not_exist_says_so_instead_of_starting_one(rlvr, tmp_path):
    result, seconds = rlvr("train", RECIPE, "--resume", f"trainer.output_dir={tmp_path}/nothing-here")
    assert result.returncode == 2
    assert f"--resume: {tmp_path}/nothing-here holds no run (no checkpoint, metrics.jsonl or config.yaml); leave " \
           "out --resume to start a new run there" in result.stderr
    assert not (tmp_path / "nothing-here").exists()  # nothing started, nothing written
    assert seconds < 60


def test_flags_and_overrides_mix_in_any_order(rlvr, tmp_path, capsys):
    # --resume between overrides (argparse alone stops the override list at the first flag)
    result, _ = rlvr("train", RECIPE, "rollout.n=2", "--resume", f"trainer.output_dir={tmp_path}/x", "rollout.n=3")
    assert "unrecognized arguments" not in result.stderr and "holds no run" in result.stderr
    with pytest.raises(SystemExit) as stopped:
        rlvr("train", RECIPE, "--resume", "--no-such-flag")
    assert stopped.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
