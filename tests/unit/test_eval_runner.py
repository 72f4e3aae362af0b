"""The benchmark runner's pieces: benchmark loading and naming, templates, metric aggregation, the table.

:func:`evaluate` is run end to end with a scripted ``generate`` (what the engine would answer, chosen per
problem) so that every figure has a hand-computed value; the grading is real (reward processes).
"""

from __future__ import annotations

import json

import pytest

from rlvr.data.prompts import Prompt, check_template, render
from rlvr.eval.benchmarks import BENCHMARKS, check_names, load_benchmark, load_benchmarks
from rlvr.eval.runner import EvalSettings, Sample, answer_key, evaluate, format_table, read_samples, summarize
from rlvr.rewards.pool import RewardPool
from rlvr.rollout.engine import Completion
from tests.conftest import SHARED_DATA

# --- benchmarks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "count", "first_id"), [
    ("math500", 500, "test/precalculus/807.json"),
    ("aime24", 30, "2024-I-1"),
    ("amc23", 40, "2023-12A-1"),
    ("gsm8k", 1319, "gsm8k-test-0"),
])
def test_benchmarks_load_from_the_data_directory(name, count, first_id):
    prompts = load_benchmark(name, SHARED_DATA)
    assert len(prompts) == count and prompts[0].id == first_id
    assert all(p.problem and p.answer for p in prompts)
    assert len(load_benchmark(name, SHARED_DATA, limit=3)) == 3


def test_the_data_directory_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLVR_DATA_DIR", str(SHARED_DATA))
    assert load_benchmark("aime24", limit=2)[1].id == "2024-I-2"
    monkeypatch.setenv("RLVR_DATA_DIR", "/no/such/dir")
    with pytest.raises(ValueError, match=r"data directory '/no/such/dir' \(\$RLVR_DATA_DIR\) does not exist"):
        load_benchmark("aime24")


def test_math500_keeps_subject_and_level_for_the_breakdowns():
    prompt = load_benchmark("math500", SHARED_DATA, limit=1)[0]
    assert prompt.fields["subject"] == "Precalculus" and prompt.fields["level"] == 2


def test_a_benchmark_file_is_named_by_its_stem(tmp_path):
    path = tmp_path / "my_set.jsonl"
    path.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n")
    loaded = load_benchmarks(["math500", str(path)], SHARED_DATA, limit=2)
    assert list(loaded) == ["math500", "my_set"] and loaded["my_set"][0].answer == "2"


@pytest.mark.parametrize(("names", "message"), [
    (["math5000"], "benchmark 'math5000' is unknown; known: math500, aime24, aime25, amc23, gsm8k"),
    (["nope.jsonl"], "benchmark file 'nope.jsonl' does not exist"),
    (["math500", "math500"], "benchmarks math500 are listed more than once"),
    ([], "no benchmarks given"),
])
def test_bad_benchmark_names_are_refused_naming_what_is_allowed(names, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_names(names)


def test_a_benchmark_missing_from_the_data_directory_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):  # as on a machine where the 'datasets' package is broken or missing
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError) as error:
        load_benchmark("aime25", tmp_path)
    assert "math-ai/aime25" in str(error.value) and "aime25.jsonl" in str(error.value)
    assert "pip install datasets" in str(error.value)


@pytest.mark.parametrize(("name", "row", "expected"), [
    ("math500", {"problem": "P", "solution": "S", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 3,
                 "unique_id": "test/algebra/1.json"}, ("test/algebra/1.json", "\\frac{1}{2}", "subject")),
    ("aime24", {"id": 60, "problem": "P", "solution": "S", "answer": "204", "url": "u", "year": "2024"},
     ("60", "204", "url")),
    ("aime25", {"problem": "P", "answer": "70", "id": "0"}, ("0", "70", None)),
    ("amc23", {"id": 0, "question": "P", "answer": 27.0, "url": "u"}, ("0", "27", "url")),
    ("gsm8k", {"question": "P", "answer": "She pays 3*2=<<3*2=6>>6.\n#### 1,080"}, ("gsm8k-test-4", "1,080", None)),
])
def test_hub_rows_map_to_problems(name, row, expected):
    prompt = BENCHMARKS[name].from_hub_row(4, row)
    identifier, answer, kept_field = expected
    assert (prompt.id, prompt.problem, prompt.answer) == (identifier, "P", answer)
    if kept_field:
        assert kept_field in prompt.fields


# --- templates ----------------------------------------------------------------------------------------


class _ChatTokenizer:
    """Renders messages as 'role: content' lines; encodes text as its characters' code points."""

    chat_template = "role: content"

    def __call__(self, text, add_special_tokens=False):
        return type("Encoded", (), {"input_ids": [ord(c) for c in text]})()

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _text(template, tokenizer=None):
    tokenizer = tokenizer or _ChatTokenizer()
    return tokenizer.decode(render(Prompt("x", "What is 2+2?", "4"), template, tokenizer))


def test_templates_render_what_their_names_say():
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert _text("plain") == "What is 2+2?"
    assert _text("chat") == "user: What is 2+2?\nassistant: "
    assert _text("qwen-boxed") == f"system: {instruction}\nuser: What is 2+2?\nassistant: "
    assert _text("r1") == f"user: What is 2+2?\n{instruction}\nassistant: "
    assert _text("Question: {problem}\nAnswer:") == "Question: What is 2+2?\nAnswer:"


def test_chat_templates_need_a_tokenizer_with_one():
    tokenizer = _ChatTokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="needs the model's chat template.*use 'plain'"):
        _text("qwen-boxed", tokenizer)
    assert _text("plain", tokenizer) == "What is 2+2?"


@pytest.mark.parametrize(("template", "message"), [
    ("qwen", "prompt template 'qwen' is unknown; use one of plain, chat, qwen-boxed, r1"),
    ("{problem} {answer}", "not a valid format string"),
])
def test_bad_templates_are_refused(template, message):
    with pytest.raises(ValueError, match=message):
        check_template(template)


# --- metrics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extracted", "key"), [
    (None, None), ("", None), ("0.5", "1/2"), ("1/2", "1/2"), ("\\frac{1}{2}", "1/2"), ("\\dfrac{1}{2}", "1/2"),
    ("025", "25"), ("2,125", "2125"), ("-\\frac{3}{4}", "-3/4"), ("x^2", "x^2"), ("1/0", "1/0"),
])
def test_answer_keys_let_equal_numbers_vote_together(extracted, key):
    assert answer_key(extracted) == key


def _sample(problem, index, extracted, correct, finish="stop"):
    return Sample("b", problem, index, "p", f"\\boxed{{{extracted}}}", extracted, correct, "g", finish, 5)


def test_summary_matches_hand_computed_metrics():
    prompts = [Prompt("p1", "", "3", {"level": 1}), Prompt("p2", "", "5", {"level": 2})]
    samples = [
        # p1: 1 of 4 correct; the majority answer (7, twice) is wrong.
        _sample("p1", 0, "7", False), _sample("p1", 1, "3", True), _sample("p1", 2, "7", False),
        _sample("p1", 3, None, False, "length"),
        # p2: 2 of 4 correct; 5 and 6 tie twice each and 5 came first, so the majority is right.
        _sample("p2", 0, "5", True), _sample("p2", 1, "6", False), _sample("p2", 2, "6", False),
        _sample("p2", 3, "5.0", True),
        _sample("p1", "greedy", "3", True), _sample("p2", "greedy", "6", False),
    ]
    out = summarize(prompts, samples, EvalSettings(n=4, greedy=True))
    assert out["avg@4"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert out["pass@k"]["1"] == pytest.approx(out["avg@4"])
    assert out["pass@k"]["2"] == pytest.approx(((1 - 3 / 6) + (1 - 1 / 6)) / 2)  # 1 - C(n-c,2)/C(4,2)
    assert out["pass@4"] == out["pass@k"]["4"] == 1.0
    assert out["maj@4"] == 0.5 and out["maj@k"]["1"] == 0.5  # maj@1 is the first sample: p1 wrong, p2 right
    assert out["greedy"] == 0.5
    assert out["counts"] == {"samples": 8, "correct": 3, "no_answer": 1, "truncated": 1, "grader_errors": 0,
                             "mean_tokens": 5.0}
    assert out["by_level"]["1"]["avg@4"] == 0.25 and out["by_level"]["2"]["maj@4"] == 1.0
    assert "by_subject" not in out  # only fields every problem carries


def test_settings_are_validated_with_what_is_allowed():
    with pytest.raises(ValueError, match=r"temperature: Input should be greater than 0 \(got 0\)"):
        EvalSettings(temperature=0)
    with pytest.raises(ValueError, match=r"top_p: Input should be less than or equal to 1 \(got 1.5\)"):
        EvalSettings(top_p=1.5)
    with pytest.raises(ValueError, match=r"n: Input should be greater than or equal to 1 \(got 0\); chunk_size: "):
        EvalSettings(n=0, chunk_size=0)  # every problem at once
    assert EvalSettings(n=16).ks() == [1, 2, 4, 8, 16] and EvalSettings(n=6).ks() == [1, 2, 4, 6]


def test_evaluate_end_to_end_with_scripted_responses(tmp_path):
    """Problem i answers correctly in its first i samples: avg, pass@k and maj@k follow by hand."""
    prompts = [Prompt(f"q{i}", f"problem {i}", str(10 + i)) for i in range(4)]
    by_text = {f"problem {i}": i for i in range(4)}
    calls = []

    def generate(requests, sampling):
        calls.append(sampling)
        seen: dict[int, int] = {}
        out = []
        for request in requests:
            i = by_text["".join(chr(t) for t in request)]
            index = seen[i] = seen.get(i, -1) + 1
            good = sampling.temperature == 0 or index < i
            text = f"so the answer is \\boxed{{{10 + i if good else 99}}}"
            out.append(Completion([1, 2, 3], [], text, "stop"))
        return out

    results = evaluate(generate, _ChatTokenizer(), {"toy": prompts}, EvalSettings(n=4, greedy=True, template="plain",
                       chunk_size=16, grader_workers=1), tmp_path, progress=False, metadata={"model": "scripted"})
    toy = results["benchmarks"]["toy"]
    assert toy["avg@4"] == pytest.approx((0 + 1 + 2 + 3) / 16)
    assert toy["pass@4"] == 0.75 and toy["greedy"] == 1.0
    assert toy["maj@4"] == 0.5  # q3 (3 of 4 right) and q2 (12 and 99 tie twice each; 12 came first)
    assert [c.temperature for c in calls] == [0.6, 0.0] and all(not c.logprobs for c in calls)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 4 + 4 and sum(s["correct"] for s in samples) == 6 + 4
    assert json.loads((tmp_path / "results.json").read_text())["model"] == "scripted"
    table = format_table(results)
    assert table.splitlines()[0].split()[:6] == ["benchmark", "problems", "avg@4", "pass@1", "pass@4", "maj@4"]
    assert table.splitlines()[2].split()[:6] == ["toy", "4", "37.5", "37.5", "75.0", "50.0"]


# --- interruption and resume --------------------------------------------------------------------------


class _Killed(Exception):
    pass


def _seeded_generate(calls, stop_after=None):
    """Responses that depend on the call's seed, temperature and each request's place in the call, as a real
    engine's do: a resume that cut or seeded the work differently would not reproduce them."""
    def generate(requests, sampling):
        if stop_after is not None and len(calls) == stop_after:
            raise _Killed
        calls.append(sampling)
        out = []
        for position, request in enumerate(requests):
            value = (sampling.seed + 7 * position + sum(request)) % 5 if sampling.temperature else 1
            out.append(Completion([1] * (value + 1), [], f"the answer is \\boxed{{{value}}}", "stop"))
        return out
    return generate


@pytest.fixture(scope="module")
def grading_pool():
    pool = RewardPool("math_answer", 1, 10.0, 0.0)
    yield pool
    pool.close()


# Two benchmarks of 5 problems, n=2 and greedy, 3 requests per call: 4 sampled and 2 greedy calls each.
RESUME_SETTINGS = EvalSettings(n=2, greedy=True, template="plain", chunk_size=3, grader_workers=1)
RESUME_BENCHMARKS = {name: [Prompt(f"{name}{i}", f"{name} problem {i}", str(i % 5)) for i in range(5)]
                     for name in ("a", "b")}


def _evaluate(generate, out, pool, resume=False, settings=RESUME_SETTINGS, benchmarks=RESUME_BENCHMARKS):
    return evaluate(generate, _ChatTokenizer(), benchmarks, settings, out, progress=False, pool=pool,
                    metadata={"model": "scripted"}, resume=resume)


def _without_timing(results):
    return {k: v for k, v in results.items() if k not in ("time_s", "resumed_samples")}


def test_a_killed_evaluation_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, grading_pool):
    whole = _evaluate(_seeded_generate([]), tmp_path / "whole", grading_pool)
    whole_lines = (tmp_path / "whole" / "samples.jsonl").read_text().splitlines(keepends=True)
    assert len(whole_lines) == 2 * (5 * 2 + 5) and whole["resumed_samples"] == 0

    out = tmp_path / "cut"
    with pytest.raises(_Killed):  # killed in the 8th call: benchmark a's 6 calls and b's first are on disk
        _evaluate(_seeded_generate([], stop_after=7), out, grading_pool)
    assert (out / "samples.jsonl").read_text().splitlines(keepends=True) == whole_lines[:18]
    partial = json.loads((out / "results.json").read_text())
    assert partial["complete"] is False and partial["benchmarks"] == {"a": whole["benchmarks"]["a"]}

    # As a kill in the middle of a write leaves it: two of the next call's three rows, then a torn line.
    with (out / "samples.jsonl").open("a") as file:
        file.write("".join(whole_lines[18:20]) + whole_lines[20][:25])
    assert len(read_samples(out / "samples.jsonl")) == 20  # the torn line is left out

    calls = []
    resumed = _evaluate(_seeded_generate(calls), out, grading_pool, resume=True)
    assert len(calls) == 12 - 7  # the half-written call is made again, whole, and nothing before it
    assert resumed["resumed_samples"] == 18 and resumed["complete"] is True
    assert _without_timing(resumed) == _without_timing(whole)
    assert _without_timing(json.loads((out / "results.json").read_text())) == _without_timing(whole)
    assert (out / "samples.jsonl").read_text().splitlines(keepends=True) == whole_lines


def test_a_resume_with_other_settings_is_refused_naming_what_differs(tmp_path, grading_pool):
    with pytest.raises(_Killed):
        _evaluate(_seeded_generate([], stop_after=2), tmp_path, grading_pool)
    before = (tmp_path / "samples.jsonl").read_text()
    other = {"a": RESUME_BENCHMARKS["a"][:4]}  # another --limit, and benchmark b left out
    with pytest.raises(ValueError) as error:
        _evaluate(_seeded_generate([]), tmp_path, grading_pool, resume=True, benchmarks=other,
                  settings=EvalSettings(n=3, greedy=True, template="plain", chunk_size=3, grader_workers=2))
    message = str(error.value)
    assert message.startswith(f"cannot resume the evaluation in {tmp_path}: it ran with other settings (")
    assert "n: 2 there, 3 now" in message and "benchmark a: 5 problems, sha256 " in message
    assert "benchmark b: 5 problems, sha256 " in message and "absent now" in message
    assert "grader_workers" not in message  # it changes nothing that is generated or graded
    assert message.endswith("Rerun with its settings, or start again with --overwrite")
    assert (tmp_path / "samples.jsonl").read_text() == before  # nothing was touched

    calls = []  # without resume, the directory starts afresh
    _evaluate(_seeded_generate(calls), tmp_path, grading_pool)
    assert len(calls) == 12 and len(read_samples(tmp_path / "samples.jsonl")) == 30
