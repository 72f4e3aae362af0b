"""The benchmark runner behind ``rlvr eval`` and a recipe's ``eval:`` section.

:func:`evaluate` samples ``n`` responses per problem (and a greedy one when asked) through any
``generate(requests, sampling)`` (a rollout engine, or the trainer's rollout workers), grades each in the
sandboxed reward pool (the math reward by default: :func:`rlvr.rewards.grading.grade`, under a hard
timeout per call), and reports per benchmark, and per subject and level where problems carry them:

* ``avg@n``: mean accuracy over the ``n`` samples; ``pass@k`` (unbiased, for k = 1, 2, 4, ... and n);
  ``maj@k`` (majority vote over extracted answers); ``greedy`` when asked; counts of samples, correct
  ones, ones with no extractable answer, truncated ones and grader failures.

A response the grader fails on (an exception, a timeout) counts as wrong; the results count those failures
(``grader_errors`` in all, and per benchmark) and keep the first message, and :func:`evaluate` warns.

It writes ``samples.jsonl`` (one line per response: benchmark, problem id, prompt, response, extracted
answer, correct) as it grades, and ``results.json`` (settings and metrics) at the start and after each
benchmark, to the output directory; :func:`format_table` renders the terminal table.

Interruption: the work is cut into chunks (one ``generate`` call each) whose requests and seed are a pure
function of (benchmark, chunk index, settings). Each graded chunk is appended to ``samples.jsonl`` and
fsynced; ``evaluate(..., resume=True)`` keeps the chunks found whole on disk, generates only the others with
the same seeds, and so ends with the results an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlvr.data.prompts import Prompt, render
from rlvr.eval.metrics import maj_at_k, pass_at_k
from rlvr.eval.settings import EvalSettings
from rlvr.rewards.grading import extract_answer, normalize
from rlvr.rewards.grading.numbers import number_value
from rlvr.rewards.pool import RewardPool, RewardRequest
from rlvr.rollout.engine import Completion, SamplingParams

log = logging.getLogger("rlvr")

GenerateFn = Callable[[list[list[int]], SamplingParams], list[Completion]]

# Problem fields results are also broken down by, when every problem of a benchmark has them (MATH500).
GROUP_FIELDS = ("subject", "level")
RESULTS_FILE, SAMPLES_FILE = "results.json", "samples.jsonl"
# Settings a resume may change: they do not change what is generated or how it is graded.
RESUMABLE_CHANGES = ("grader_workers",)


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
             metadata: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Sample, grade and score every benchmark; write ``results.json`` and ``samples.jsonl`` to ``output_dir``.

    ``pool`` grades (a :class:`RewardPool` of ``settings.reward``); by default one is started and closed
    here. ``metadata`` (the model, the step...) goes into ``results.json`` as it is. ``resume``: keep the
    graded chunks already in ``output_dir`` (whose evaluation must have had the same settings, metadata and
    problems; :func:`check_resume`) and generate only the rest; otherwise start afresh. Returns the results.
    """
    started = time.perf_counter()
    chunks = {name: _chunks(name, prompts, [render(p, settings.template, tokenizer) for p in prompts], settings)
              for name, prompts in benchmarks.items()}
    header = _header(benchmarks, settings, metadata)
    out = Path(output_dir) if output_dir is not None else None
    kept = _start_output(out, header, chunks, resume) if out is not None else {}
    results = {**header, "benchmarks": {}, "complete": False,
               "resumed_samples": sum(len(samples) for samples in kept.values()),
               "grader_errors": 0, "first_grader_error": None}
    own_pool = pool is None
    pool = pool or RewardPool(settings.reward, settings.grader_workers, settings.grader_timeout_s, 0.0)
    failed: list[str] = []  # the grader's errors, every benchmark's
    graded = 0
    try:
        for name, samples in _run(generate, tokenizer, chunks, kept, settings, pool, progress, out):
            results["benchmarks"][name] = summarize(benchmarks[name], samples, settings)
            failed += [s.grader_error for s in samples if s.grader_error is not None]
            graded += len(samples)
            results.update(grader_errors=len(failed), first_grader_error=failed[0] if failed else None)
            if out is not None:
                _write_results(out, results)
    finally:
        if own_pool:
            pool.close()
    if failed:
        # A grader that fails scores 0, so a broken reward function reads as a model that is always wrong.
        log.warning("rlvr eval: the grader (%s) failed on %d of %d responses, which count as wrong; the first "
                    "error: %s", settings.reward, len(failed), graded, failed[0])
    results["complete"] = True
    results["time_s"] = round(time.perf_counter() - started, 3)
    if out is not None:
        _write_results(out, results)
    return results


@dataclass
class _Job:
    benchmark: str
    prompt: Prompt
    tokens: list[int]
    sample: int | str


@dataclass
class _Chunk:
    """One generate call, and the unit a resume keeps or generates again."""

    jobs: list[_Job]
    sampling: SamplingParams


def _chunks(name: str, prompts: list[Prompt], tokens: list[list[int]], settings: EvalSettings) -> list[_Chunk]:
    """A benchmark's requests, ``chunk_size`` per call: n samples per problem, then (when asked) one greedy
    response per problem. Each chunk's requests and seed depend only on (benchmark, its index, settings),
    so a resumed run samples the chunks it generates exactly as an uninterrupted run would."""
    sampled = [_Job(name, p, t, i) for p, t in zip(prompts, tokens) for i in range(settings.n)]
    greedy = [_Job(name, p, t, "greedy") for p, t in zip(prompts, tokens)] if settings.greedy else []
    chunks = []
    for group, temperature in ((sampled, settings.temperature), (greedy, 0.0)):
        for start in range(0, len(group), settings.chunk_size):
            digest = hashlib.blake2b(f"{settings.seed}:{name}:{len(chunks)}".encode(), digest_size=4).digest()
            sampling = SamplingParams(settings.max_new_tokens, temperature, settings.top_p, settings.top_k,
                                      seed=int.from_bytes(digest, "big") % 2**31, logprobs=False)
            chunks.append(_Chunk(group[start : start + settings.chunk_size], sampling))
    return chunks


def _run(generate: GenerateFn, tokenizer, chunks: dict[str, list[_Chunk]], kept: dict[tuple[str, int], list[Sample]],
         settings: EvalSettings, pool: RewardPool, progress: bool,
         out: Path | None) -> Iterator[tuple[str, list[Sample]]]:
    """Generate and grade every chunk not in ``kept``, appending each to ``out/samples.jsonl`` as it is
    graded; yield each benchmark's samples (kept and new) when it is done."""
    from tqdm import tqdm

    total = sum(len(c.jobs) for cs in chunks.values() for c in cs)
    resumed = sum(len(samples) for samples in kept.values())
    seen = correct = 0
    with (tqdm(total=total, initial=resumed, disable=not progress, unit="response", dynamic_ncols=True,
               file=sys.stderr, desc="rlvr eval") as bar,
          open(out / SAMPLES_FILE, "a") if out is not None else nullcontext() as samples_file):
        for name, bench_chunks in chunks.items():
            samples: list[Sample] = []
            for index, chunk in enumerate(bench_chunks):
                graded = kept.get((name, index))
                if graded is None:
                    completions = generate([j.tokens for j in chunk.jobs], chunk.sampling)
                    graded = _grade(tokenizer, chunk.jobs, completions, pool, settings.correct_threshold)
                    if samples_file is not None:
                        _append(samples_file, graded)
                    bar.update(len(graded))
                    seen, correct = seen + len(graded), correct + sum(s.correct for s in graded)
                    bar.set_postfix(acc=f"{correct / seen:.3f}", refresh=False)
                samples += graded
            yield name, samples


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


def check_resume(output_dir: str | os.PathLike, benchmarks: dict[str, list[Prompt]], settings: EvalSettings,
                 metadata: dict[str, Any] | None = None) -> None:
    """Raise ValueError naming every setting, metadata entry and benchmark that differs from the evaluation
    in ``output_dir`` (its ``results.json``), since resuming would mix two evaluations. Metadata entries
    not given here (the CLI checks before it knows the engine) are not compared."""
    _check_same(Path(output_dir), _header(benchmarks, settings, metadata))


def _check_same(out: Path, header: dict[str, Any]) -> None:
    # The header as JSON reads it back, so that a tuple and the list it was stored as compare equal.
    stored, current = _flat(json.loads((out / RESULTS_FILE).read_text())), _flat(json.loads(json.dumps(header)))
    keys = [*current, *(k for k in stored if k.startswith("benchmark ") and k not in current)]
    differ = [f"{key}: {stored.get(key, 'absent')!s} there, {current.get(key, 'absent')!s} now" for key in keys
              if key not in RESUMABLE_CHANGES and stored.get(key, "absent") != current.get(key, "absent")]
    if differ:
        raise ValueError(f"cannot resume the evaluation in {out}: it ran with other settings ("
                         + "; ".join(differ) + "). Rerun with its settings, or start again with --overwrite")


def _header(benchmarks: dict[str, list[Prompt]], settings: EvalSettings,
            metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What ``results.json`` holds from the start, and what a resume must match: the metadata, the
    settings, and a fingerprint of each benchmark's problems."""
    def fingerprint(prompts: list[Prompt]) -> str:
        text = json.dumps([asdict(p) for p in prompts], sort_keys=True, default=str)
        return f"{len(prompts)} problems, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"

    return {**(metadata or {}), "settings": settings.model_dump(),
            "problem_sets": {name: fingerprint(prompts) for name, prompts in benchmarks.items()}}


def _flat(header: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in header.items() if k not in ("settings", "problem_sets")}
    flat.update(header.get("settings", {}))
    flat.update({f"benchmark {name}": value for name, value in header.get("problem_sets", {}).items()})
    return flat


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``samples.jsonl``; a line that does not parse (the last one, torn by a kill) is left
    out, so its chunk counts as not done."""
    path, rows = Path(path), []
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _start_output(out: Path, header: dict[str, Any], chunks: dict[str, list[_Chunk]],
                  resume: bool) -> dict[tuple[str, int], list[Sample]]:
    """Prepare ``out`` and return the chunks already graded there, by (benchmark, chunk index): on a resume
    the chunks whose every row is on disk (a chunk with rows missing is dropped, to be generated whole);
    otherwise none. ``samples.jsonl`` is rewritten to hold just those, and ``results.json`` the header
    with no benchmark done yet."""
    kept: dict[tuple[str, int], list[Sample]] = {}
    if resume and (out / RESULTS_FILE).exists():
        _check_same(out, header)
        rows = {(r["benchmark"], r["problem_id"], r["sample"]): r for r in read_samples(out / SAMPLES_FILE)}
        for name, bench_chunks in chunks.items():
            for index, chunk in enumerate(bench_chunks):
                found = [rows.get((j.benchmark, j.prompt.id, j.sample)) for j in chunk.jobs]
                if all(found):
                    kept[name, index] = [Sample(**row) for row in found]
        total = sum(len(c.jobs) for cs in chunks.values() for c in cs)
        resumed = sum(len(samples) for samples in kept.values())
        log.info("rlvr eval: resuming %s: %d of %d responses graded there; generating %d", out, resumed, total,
                 total - resumed)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / SAMPLES_FILE, "".join(_line(s) for samples in kept.values() for s in samples))
    _write_results(out, {**header, "benchmarks": {}, "complete": False})
    return kept


def _line(sample: Sample) -> str:
    return json.dumps(asdict(sample)) + "\n"


def _append(file, samples: list[Sample]) -> None:
    """Append graded samples and force them to disk, so a kill loses at most the chunk being written."""
    file.write("".join(_line(s) for s in samples))
    file.flush()
    os.fsync(file.fileno())


def _write_results(out: Path, results: dict[str, Any]) -> None:
    _write_atomic(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


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
