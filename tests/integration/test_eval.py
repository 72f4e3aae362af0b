"""``rlvr eval`` as a user runs it, and a recipe's ``eval:`` section during training: the real tiny model,
real reward processes grading, the project's MATH500 copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlvr.cli import main
from rlvr.config import build_recipe
from rlvr.data.tasks import arithmetic
from rlvr.rewards.grading import grade
from rlvr.trainer import train
from tests.conftest import REPO, SHARED_DATA, tiny_overrides

SAMPLE_FIELDS = {"benchmark", "problem_id", "sample", "prompt", "response", "extracted", "correct", "gold",
                 "finish_reason", "num_tokens", "grader_error"}


def _rlvr_eval(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "rlvr.cli", "eval", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.mark.slow
def test_eval_of_the_tiny_model_on_20_math500_problems_writes_table_results_and_samples(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    result = _rlvr_eval("--model", tiny_model_dir, "--benchmarks", "math500", "--limit", "20", "--n", "2",
                        "--max-new-tokens", "12", "--template", "plain", "--data-dir", str(SHARED_DATA),
                        "--output", str(out), "--greedy", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The terminal table: a header, one row for the benchmark, then MATH500's subject and level breakdowns.
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "problems", "avg@2", "pass@1", "pass@2", "maj@2", "greedy", "no",
                                "answer", "truncated"]
    assert lines[2].split()[:2] == ["math500", "20"]
    assert "math500 by subject" in result.stdout and "math500 by level" in result.stdout

    results = json.loads((out / "results.json").read_text())
    math500 = results["benchmarks"]["math500"]
    assert (math500["num_problems"], math500["n"], math500["k"]) == (20, 2, 2)
    for key in ("avg@2", "pass@2", "maj@2", "greedy"):
        assert 0.0 <= math500[key] <= 1.0
    assert set(math500["pass@k"]) == {"1", "2"} and math500["pass@k"]["1"] == pytest.approx(math500["avg@2"])
    assert math500["counts"]["samples"] == 40
    assert sum(g["num_problems"] for g in math500["by_level"].values()) == 20
    assert set(math500["by_level"]) <= {"1", "2", "3", "4", "5"}
    assert sum(g["num_problems"] for g in math500["by_subject"].values()) == 20
    assert results["settings"]["n"] == 2 and results["model"] == tiny_model_dir

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 * 2 + 20  # n samples and one greedy response per problem
    assert all(set(s) == SAMPLE_FIELDS for s in samples)
    first20 = [json.loads(line)["id"] for line in (SHARED_DATA / "math500.jsonl").read_text().splitlines()[:20]]
    assert [s["problem_id"] for s in samples if s["sample"] == 0] == first20
    assert all(s["prompt"] for s in samples)
    # The results agree with the samples they summarise.
    assert math500["counts"]["correct"] == sum(s["correct"] for s in samples if s["sample"] != "greedy")
    assert math500["counts"]["no_answer"] == sum(s["extracted"] is None for s in samples if s["sample"] != "greedy")

    again = _rlvr_eval("--model", tiny_model_dir, "--benchmarks", "math500", "--limit", "2", "--data-dir",
                       str(SHARED_DATA), "--output", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # results are never silently replaced
    assert results["complete"] is True and results["resumed_samples"] == 0


@pytest.mark.slow
def test_an_eval_killed_halfway_resumes_to_the_results_of_an_uninterrupted_run(tiny_model_dir, tmp_path, capsys):
    """SIGKILL once a few chunks are on disk, then ``--resume``: the graded samples stay, only the rest is
    generated, and results.json equals a run that was never interrupted. Grading sleeps 0.1 s a response
    (tests.rewards_for_tests:slow_math), so the run is seconds from its end when it is killed."""
    args = ["--model", tiny_model_dir, "--benchmarks", "math500,gsm8k", "--limit", "6", "--n", "2", "--greedy",
            "--max-new-tokens", "8", "--template", "plain", "--data-dir", str(SHARED_DATA), "--batch-size", "2",
            "--reward", "tests.rewards_for_tests:slow_math", "--grader-workers", "1", "--no-progress"]
    total = 2 * 6 * (2 + 1)  # 18 chunks of 2
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the test reward imports in the eval and its graders

    def start(out):
        return subprocess.Popen([sys.executable, "-m", "rlvr.cli", "eval", *args, "--output", str(out)], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    whole, cut = start(tmp_path / "whole"), start(tmp_path / "cut")  # side by side: the outputs do not depend on it
    samples = tmp_path / "cut" / "samples.jsonl"
    deadline = time.monotonic() + 240
    while not samples.exists() or samples.read_bytes().count(b"\n") < 4:
        assert cut.poll() is None, "the evaluation ended before it could be killed"
        assert time.monotonic() < deadline, "no samples on disk after 240 s"
        time.sleep(0.01)
    cut.send_signal(signal.SIGKILL)
    assert cut.wait() == -signal.SIGKILL
    graded_before = [line for line in samples.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 4 <= len(graded_before) < total
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["complete"] is False

    # Refused before the model loads (so run in this process): a re-run without --resume, and other settings.
    assert main(["eval", *args, "--output", str(tmp_path / "cut")]) == 2
    assert "holds an interrupted evaluation; pass --resume" in capsys.readouterr().err
    assert main(["eval", *args, "--output", str(tmp_path / "cut"), "--resume", "--max-new-tokens", "9"]) == 2
    assert "max_new_tokens: 8 there, 9 now" in capsys.readouterr().err

    resumed = subprocess.run([sys.executable, "-m", "rlvr.cli", "eval", *args, "--output", str(tmp_path / "cut"),
                              "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=300) == 0
    kept = 2 * (len(graded_before) // 2)  # whole chunks only: a chunk cut by the kill is generated again
    assert f"{kept} of {total} responses graded there; generating {total - kept}" in resumed.stderr
    after = (tmp_path / "cut" / "samples.jsonl").read_text()
    assert after.startswith("".join(graded_before[:kept])) and after.count("\n") == total
    assert after == (tmp_path / "whole" / "samples.jsonl").read_text()

    def without_timing(path):
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("time_s", "resumed_samples")}

    assert json.loads((tmp_path / "cut" / "results.json").read_text())["resumed_samples"] == kept
    assert without_timing(tmp_path / "cut" / "results.json") == without_timing(tmp_path / "whole" / "results.json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmarks", "math500,aime2024"], "benchmark 'aime2024' is unknown; known: math500, aime24, aime25"),
        (["--benchmarks", "math500", "--n", "0"], "n: Input should be greater than or equal to 1 (got 0)"),
        (["--benchmarks", "math500", "--template", "qwen"], "prompt template 'qwen' is unknown"),
        (["--benchmarks", "math500", "--reward", "nope"], "reward function 'nope' is neither a registered name"),
        (["--benchmarks", "aime25", "--data-dir", "{data}"], "aime25"),
    ],
)
def test_bad_eval_arguments_fail_before_the_model_loads(tmp_path, args, message):
    args = [a.replace("{data}", str(SHARED_DATA)) for a in args]
    # A model path that does not exist: reaching the model load would fail with a different message.
    result = _rlvr_eval("--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "out"), *args,
                        cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "cannot load model" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_training_evaluates_every_k_steps_and_logs_the_benchmarks(tiny_model_dir, ray_session, tmp_path):
    problems = tmp_path / "arith.jsonl"
    problems.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                                for p in arithmetic.problems("heldout", 8, seed=0)))
    run_dir = tmp_path / "run"
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, run_dir, **{
        "eval.benchmarks": f"[{problems}]", "eval.every": 1, "eval.at_start": True, "eval.n": 2,
        "eval.greedy": True, "eval.max_new_tokens": 8, "data.heldout": "null"}))
    train(recipe)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        for key in ("eval/arith/avg@2", "eval/arith/pass@2", "eval/arith/maj@2", "eval/arith/greedy"):
            assert 0.0 <= row[key] <= 1.0, (row["step"], key)
    for step in (0, 1, 2):
        results = json.loads((run_dir / "eval" / f"step_{step}" / "results.json").read_text())
        assert results["step"] == step and results["benchmarks"]["arith"]["num_problems"] == 8
        samples = [json.loads(line) for line in (run_dir / "eval" / f"step_{step}" / "samples.jsonl").open()]
        assert len(samples) == 8 * 3
        # Graded by the grader users call, in the reward processes.
        assert [s["correct"] for s in samples] == [grade(s["response"], s["gold"]) for s in samples]
        greedy = [s["correct"] for s in samples if s["sample"] == "greedy"]
        assert rows[step]["eval/arith/greedy"] == sum(greedy) / 8


def test_a_recipe_naming_an_unknown_benchmark_fails_at_once(tmp_path):
    from rlvr.config import RecipeError

    with pytest.raises(RecipeError, match=r"eval.benchmarks: .*benchmark 'math5000' is unknown"):
        build_recipe({}, tiny_overrides("tiny", tmp_path, **{"eval.benchmarks": "[math5000]"}))


@pytest.mark.parametrize("output", ["results.txt", "results.txt/eval"])
def test_an_output_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys, output):
    (tmp_path / "results.txt").write_text("a file, not a directory\n")
    code = main(["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", "gsm8k", "--limit", "1",
                 "--data-dir", str(SHARED_DATA), "--output", str(tmp_path / output)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--output {tmp_path / output}: {tmp_path / 'results.txt'} is a file, not a directory" in err
    assert "model path" not in err and "cannot load model" not in err  # checked first, long before the load
    assert (tmp_path / "results.txt").read_text() == "a file, not a directory\n"


def test_a_model_path_that_does_not_exist_is_named_as_a_path(tmp_path, capsys):
    code = main(["eval", "--model", "/nonexistent/model", "--benchmarks", "gsm8k", "--limit", "1", "--data-dir",
                 str(SHARED_DATA), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "rlvr eval: model path '/nonexistent/model' does not exist, and it is not a Hugging Face hub id" in err
    assert "Repo id" not in err and "cannot load model" not in err
    assert not (tmp_path / "out").exists()


def test_bad_benchmark_rows_stop_the_eval_with_their_line_or_are_skipped(tmp_path, capsys):
    rows = [{"id": "a", "problem": "1+1=", "answer": "2"}, {"id": "a", "problem": "2+2=", "answer": "4"}]
    bench = tmp_path / "dup.jsonl"
    bench.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", str(bench), "--output", str(tmp_path / "o")]
    assert main(args) == 2
    assert f"dataset '{bench}' line 2: id 'a' is the id of line 1 too" in capsys.readouterr().err
    assert main([*args, "--on-bad-rows", "skip"]) == 2  # past the data, stopped at the model path
    assert "model path" in capsys.readouterr().err


def test_an_eval_whose_grader_fails_says_so_and_counts_the_failures(tiny_model_dir, tmp_path, capsys, caplog,
                                                                    monkeypatch):
    """tests.rewards_for_tests:checks_answer raises on rows without an ``expected`` field: every call fails,
    which scores 0 like a wrong answer; the run must not pass that off as a model at 0%."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the test reward imports in the grading processes
    problems = tmp_path / "arith.jsonl"
    problems.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                                for p in arithmetic.problems("heldout", 2, seed=0)))
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="rlvr"):
        code = main(["eval", "--model", tiny_model_dir, "--benchmarks", str(problems), "--n", "2", "--engine", "hf",
                     "--max-new-tokens", "4", "--template", "plain", "--reward", "tests.rewards_for_tests:checks_answer",
                     "--grader-workers", "1", "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    [warning] = [r.getMessage() for r in caplog.records if "grader" in r.getMessage()]
    assert "the grader (tests.rewards_for_tests:checks_answer) failed on 4 of 4 responses" in warning
    assert "the first error: exception: KeyError: 'extra_info'" in warning
    results = json.loads((out / "results.json").read_text())
    assert results["grader_errors"] == 4 and results["benchmarks"]["arith"]["counts"]["grader_errors"] == 4
    assert results["first_grader_error"] == "exception: KeyError: 'extra_info'"
