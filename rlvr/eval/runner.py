"""The benchmark runner behind ``rlvr eval`` and a recipe's ``eval:`` section.

:func:`evaluate` samples ``n`` responses per problem (and a greedy one when asked) through any
``generate(requests, sampling)`` (a rollout engine, or the trainer's rollout workers), grades each in the
sandboxed reward pool (the math reward by default: :func:`rlvr.rewards.grading.grade`, under a hard
timeout per call), and reports per benchmark, and per subject and level where problems carry them:

* ``avg@n``: mean accuracy over the ``n`` samples; ``pass@k`` (unbiased, for k = 1, 2, 4, ... and n);
  ``maj@k`` (majority vote over extracted answers); ``greedy`` when asked; counts of samples, correct
  ones, ones with no extractable answer, truncated ones and grader failures.

It writes ``results.json`` (settings and metrics) and ``samples.jsonl`` (one line per response: benchmark,
problem id, prompt, response, extracted answer, correct) to the output directory, and
:func:`format_table` renders the terminal table.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlvr.data.prompts import Prompt, check_template, render
from rlvr.eval.metrics import maj_at_k, pass_at_k
from rlvr.rewards.grading import extract_answer, normalize
from rlvr.rewards.grading.numbers import number_value
from rlvr.rewards.pool import RewardPool, RewardRequest
from rlvr.rollout.engine import Completion, SamplingParams

GenerateFn = Callable[[list[list[int]], SamplingParams], list[Completion]]

# Problem fields results are also broken down by, when every problem of a benchmark has them (MATH500).
GROUP_FIELDS = ("subject", "level")
RESULTS_FILE, SAMPLES_FILE = "results.json", "samples.jsonl"


@dataclass(frozen=True)
class EvalSettings:
    """How to sample and grade. Defaults: n=1 at temperature 0.6, top-p 0.95 (DeepSeek-R1's evaluation
    setting), 4096 new tokens, the Qwen2.5-Math boxed chain-of-thought template, the math reward."""

    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 4096
    template: str = "qwen-boxed"
    greedy: bool = False  # also one greedy response per problem: the "greedy" metric
    seed: int = 0
    chunk_size: int = 256  # requests per generate call; the progress bar moves once per call
    reward: str = "math_answer"  # a reward name or 'module:function'; correct = score >= correct_threshold
    correct_threshold: float = 1.0
    grader_workers: int = 2
    grader_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"n (samples per problem) must be >= 1; got {self.n}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (use greedy for greedy decoding); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0: off); got {self.top_k}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.chunk_size < 1:
            problems.append(f"chunk_size must be >= 1; got {self.chunk_size}")
        if problems:
            raise ValueError("; ".join(problems))
        check_template(self.template)

    def ks(self) -> list[int]:
        """The k of pass@k and maj@k: 1, 2, 4, ... up to n, and n itself."""
        return sorted({2**i for i in range(int(math.log2(self.n)) + 1)} | {self.n})


@dataclass
class Sample:
    """One graded response; ``sample`` is its index among the problem's n, or ``"greedy"``."""

    benchmark: str
    problem_id: str
    sample: int | str
    prompt: str
    response: str
    extracted: str | None
    correct: bool
    gold: str
    finish_reason: str
    num_tokens: int
    grader_error: str | None = None


# --- sampling and grading ---------------------------------------------------------------------------


def evaluate(generate: GenerateFn, tokenizer, benchmarks: dict[str, list[Prompt]], settings: EvalSettings,
             output_dir: str | os.PathLike | None = None, progress: bool = True, pool: RewardPool | None = None,
             metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample, grade and score every benchmark; write ``results.json`` and ``samples.jsonl`` to ``output_dir``.

    ``pool`` grades (a :class:`RewardPool` of ``settings.reward``); by default one is started and closed
    here. ``metadata`` (the model, the step...) goes into ``results.json`` as it is. Returns the results.
    """
    started = time.perf_counter()
    rendered = {name: [render(p, settings.template, tokenizer) for p in prompts]
                for name, prompts in benchmarks.items()}
    jobs = _jobs(benchmarks, rendered, settings)
    own_pool = pool is None
    pool = pool or RewardPool(settings.reward, settings.grader_workers, settings.grader_timeout_s, 0.0)
    try:
        samples = _run(generate, tokenizer, jobs, settings, pool, progress)
    finally:
        if own_pool:
            pool.close()
    results = {
        **(metadata or {}),
        "settings": asdict(settings),
        "benchmarks": {name: summarize(benchmarks[name], [s for s in samples if s.benchmark == name], settings)
                       for name in benchmarks},
        "time_s": round(time.perf_counter() - started, 3),
    }
    if output_dir is not None:
        write_outputs(Path(output_dir), results, samples)
    return results


@dataclass
class _Job:
    benchmark: str
    prompt: Prompt
    tokens: list[int]
    sample: int | str


def _jobs(benchmarks: dict[str, list[Prompt]], rendered: dict[str, list[list[int]]],
          settings: EvalSettings) -> list[_Job]:
    """Every request to make: n samples per problem, then (when asked) one greedy response per problem."""
    jobs = [_Job(name, p, t, i) for name, prompts in benchmarks.items()
            for p, t in zip(prompts, rendered[name]) for i in range(settings.n)]
    if settings.greedy:
        jobs += [_Job(name, p, t, "greedy") for name, prompts in benchmarks.items()
                 for p, t in zip(prompts, rendered[name])]
    return jobs


def _run(generate: GenerateFn, tokenizer, jobs: list[_Job], settings: EvalSettings, pool: RewardPool,
         progress: bool) -> list[Sample]:
    from tqdm import tqdm

    samples: list[Sample] = []
    sampled = [j for j in jobs if j.sample != "greedy"]
    greedy = [j for j in jobs if j.sample == "greedy"]
    with tqdm(total=len(jobs), disable=not progress, unit="response", dynamic_ncols=True, file=sys.stderr,
              desc="rlvr eval") as bar:
        for group, temperature in ((sampled, settings.temperature), (greedy, 0.0)):
            for index, start in enumerate(range(0, len(group), settings.chunk_size)):
                chunk = group[start : start + settings.chunk_size]
                # Each call's seed is a pure function of (seed, call), so a rerun samples the same responses.
                sampling = SamplingParams(settings.max_new_tokens, temperature, settings.top_p, settings.top_k,
                                          seed=(settings.seed * 1_000_003 + index * 7919) % (2**31), logprobs=False)
                completions = generate([j.tokens for j in chunk], sampling)
                samples += _grade(tokenizer, chunk, completions, pool, settings.correct_threshold)
                bar.update(len(chunk))
                bar.set_postfix(acc=f"{sum(s.correct for s in samples) / len(samples):.3f}", refresh=False)
    return samples


def _grade(tokenizer, jobs: list[_Job], completions: list[Completion], pool: RewardPool,
           threshold: float) -> list[Sample]:
    results = pool.score([RewardRequest(c.text, j.prompt.answer, j.prompt.fields) for j, c in zip(jobs, completions)])
    samples = []
    for job, completion, result in zip(jobs, completions, results):
        # The math reward returns the answer it extracted; for any other reward, extract it here.
        extracted = result.extras.get("extracted") if "extracted" in result.extras else extract_answer(completion.text)
        samples.append(Sample(
            benchmark=job.benchmark, problem_id=job.prompt.id, sample=job.sample,
            prompt=tokenizer.decode(job.tokens), response=completion.text, extracted=extracted or None,
            correct=result.error is None and result.score >= threshold, gold=job.prompt.answer,
            finish_reason=completion.finish_reason, num_tokens=len(completion.tokens), grader_error=result.error,
        ))
    return samples


# --- metrics ----------------------------------------------------------------------------------------


def answer_key(extracted: str | None) -> str | None:
    """The key majority voting groups answers by: the normalised answer, with plain numbers as exact
    fractions (``0.5``, ``1/2`` and ``\\frac{1}{2}`` vote together); None when nothing was extracted."""
    if not extracted:
        return None
    key = normalize(extracted)
    value = number_value(key)
    return str(value) if value is not None else key or None


def _problem_metrics(samples: list[Sample], ks: list[int]) -> dict[str, Any]:
    drawn = sorted((s for s in samples if s.sample != "greedy"), key=lambda s: s.sample)
    correct = [s.correct for s in drawn]
    keys = [answer_key(s.extracted) for s in drawn]
    out = {f"pass@{k}": pass_at_k(len(drawn), sum(correct), k) for k in ks}
    out.update({f"maj@{k}": maj_at_k(keys, correct, k) for k in ks})
    out["avg"] = sum(correct) / len(correct)
    greedy = [s.correct for s in samples if s.sample == "greedy"]
    if greedy:
        out["greedy"] = float(greedy[0])
    return out


def _aggregate(per_problem: list[dict[str, Any]], samples: list[Sample], n: int, ks: list[int]) -> dict[str, Any]:
    def mean(key: str) -> float:
        return sum(p[key] for p in per_problem) / len(per_problem)

    drawn = [s for s in samples if s.sample != "greedy"]
    out: dict[str, Any] = {"num_problems": len(per_problem), "n": n, "k": n, f"avg@{n}": mean("avg"),
                           f"pass@{n}": mean(f"pass@{n}"), f"maj@{n}": mean(f"maj@{n}")}
    if per_problem and "greedy" in per_problem[0]:
        out["greedy"] = mean("greedy")
    out["pass@k"] = {str(k): mean(f"pass@{k}") for k in ks}
    out["maj@k"] = {str(k): mean(f"maj@{k}") for k in ks}
    out["counts"] = {
        "samples": len(drawn),
        "correct": sum(s.correct for s in drawn),
        "no_answer": sum(s.extracted is None for s in drawn),
        "truncated": sum(s.finish_reason == "length" for s in drawn),
        "grader_errors": sum(s.grader_error is not None for s in samples),
        "mean_tokens": sum(s.num_tokens for s in drawn) / max(1, len(drawn)),
    }
    return out


def summarize(prompts: list[Prompt], samples: list[Sample], settings: EvalSettings) -> dict[str, Any]:
    """One benchmark's metrics, and the same per subject and level when every problem carries them."""
    ks = settings.ks()
    by_problem: dict[str, list[Sample]] = {p.id: [] for p in prompts}
    for s in samples:
        by_problem[s.problem_id].append(s)
    metrics = {pid: _problem_metrics(found, ks) for pid, found in by_problem.items()}
    out = _aggregate(list(metrics.values()), samples, settings.n, ks)
    for field in GROUP_FIELDS:
        values = [p.fields.get(field) for p in prompts]
        if any(v is None for v in values):
            continue
        groups: dict[str, list[Prompt]] = {}
        for prompt, value in zip(prompts, values):
            groups.setdefault(str(value), []).append(prompt)
        out[f"by_{field}"] = {
            value: _aggregate([metrics[p.id] for p in members],
                              [s for p in members for s in by_problem[p.id]], settings.n, ks)
            for value, members in sorted(groups.items())
        }
    return out


# --- output -----------------------------------------------------------------------------------------


def write_outputs(output_dir: Path, results: dict[str, Any], samples: list[Sample]) -> None:
    """``results.json`` and ``samples.jsonl``, each written to a temporary name and renamed into place."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(output_dir / SAMPLES_FILE, "".join(json.dumps(asdict(s)) + "\n" for s in samples))
    _write_atomic(output_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def format_table(results: dict[str, Any]) -> str:
    """The terminal table: one row per benchmark, then MATH500-style breakdowns by subject and level."""
    benchmarks = results["benchmarks"]
    if not benchmarks:
        return ""
    n = next(iter(benchmarks.values()))["n"]
    has_greedy = any("greedy" in b for b in benchmarks.values())
    header = ["benchmark", "problems", f"avg@{n}", "pass@1", f"pass@{n}", f"maj@{n}"]
    header += ["greedy"] if has_greedy else []
    header += ["no answer", "truncated"]
    rows = [_table_row(name, b, n, has_greedy) for name, b in benchmarks.items()]
    blocks = [_render(header, rows)]
    for name, b in benchmarks.items():
        for field in GROUP_FIELDS:
            groups = b.get(f"by_{field}")
            if groups:
                sub_rows = [_table_row(value, g, n, has_greedy) for value, g in groups.items()]
                blocks.append(f"{name} by {field}\n" + _render([field, *header[1:]], sub_rows))
    return "\n\n".join(blocks)


def _table_row(name: str, b: dict[str, Any], n: int, has_greedy: bool) -> list[str]:
    samples = max(1, b["counts"]["samples"])
    row = [name, str(b["num_problems"]), _pct(b[f"avg@{n}"]), _pct(b["pass@k"]["1"]), _pct(b[f"pass@{n}"]),
           _pct(b[f"maj@{n}"])]
    row += [_pct(b["greedy"]) if "greedy" in b else "-"] if has_greedy else []
    row += [_pct(b["counts"]["no_answer"] / samples), _pct(b["counts"]["truncated"] / samples)]
    return row


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
