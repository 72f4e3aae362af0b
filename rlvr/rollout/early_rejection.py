"""PRM early rejection ("PRMs are also Partial Reward Models", arXiv 2508.01969; ALGORITHMS.md section 8).

Generate ``tau`` tokens of many candidates, score those partial responses with a (process) reward model,
drop the worst, and spend the rest of the token budget only on the kept ones. The paper's claim: a PRM's
score of a partial step already ranks candidates about as well as its score of the full step, so the
tokens of rejected candidates beyond ``tau`` can be saved (1.4x-9x fewer inference FLOPs at equal accuracy).

Two uses, one mechanism, nothing but the engine protocol (:mod:`rlvr.rollout.engine`):

- :func:`partial_beam_search` (evaluation / inference): the paper's step-level beam search with partial
  scoring (the authors' ``algorithms/partial_beam_search.py``), and :func:`beam_search`, the same search
  scoring only whole steps (their ``algorithms/beam_search.py``; with one step it is best-of-N), to
  compare against. Each returns, per problem, the chosen response and every token the engine generated.
- :func:`rollout_with_early_rejection` (training rollouts): oversample ``n * oversample`` candidates per
  prompt, keep the best ``n`` at ``tau`` tokens, finish those. **The kept rows are PRM-selected, not
  i.i.d. samples of the policy**: GRPO's group mean and standard deviation over them estimate the
  statistics of a filtered distribution, which is not what the paper studied (it is an inference-time
  method; ALGORITHMS.md 8.5). Use it knowing that, and watch its metrics (rejection rate, tokens saved).

How a response is continued with the protocol alone: a kept partial becomes a new request
``prompt_ids + partial_tokens`` with the remaining budget and its own seed. The merged completion
concatenates tokens and log-probs (the continuation's are conditioned on prompt + partial, so they are what
sampling the whole response at once would give), its text is decoded from all tokens, and its
``finish_reason`` is that of the last part. A partial that stopped (EOS) within ``tau`` tokens is done.

Steps. The protocol has no stop strings, so a step delimiter (``step_delimiter``, e.g. ``"\\n\\n"``) is
handled in text: generation runs in chunks of ``chunk_tokens``; after each chunk the step's text is decoded
and, at the first delimiter, the step is cut after the token that completes it. Tokens generated past the
cut are discarded but counted as generated (they were paid for). The cut is at token granularity, so a
step may end with a few characters after the delimiter when one token spans both. Without a delimiter
the whole response is one step (the tiny arithmetic task) and ``max_steps`` does not matter.

Seeds. Every engine call's seed is :func:`derive_seed` of the sampling seed and the call's place in the
search, so a run is reproducible. The first call of a round has the same seed in both searches, so when the
engine's draws do not depend on the token budget (Hugging Face ``generate`` with every request in one engine
batch: one draw per step for the whole batch) the partials of :func:`partial_beam_search` are exactly the
first ``tau`` tokens of the candidates :func:`beam_search` generates, and the comparison is paired. (Over
several engine batches the later batches' draws shift, since the first batch ran more steps.)

Departures from the authors' code, on purpose: (1) round 0 samples ``N`` candidates from the empty
response (theirs expands the single empty beam ``M`` times, so its first round has ``M``, not ``N``);
(2) finished beams keep their slot and are no longer expanded, so a problem always holds ``N/M`` beams;
(3) the final answer is the best finished beam by the score of its *whole* response (theirs ranks by the
last partial score); (4) steps end at a delimiter found in text, as above (theirs uses the HF pipeline's
``stop_sequence``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Any

from rlvr.rollout.controllers import Controlled, Generate
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout.prm import Scorer
Decode = Callable[[list[int]], str]

# The paper's defaults (ALGORITHMS.md 8.2, the authors' main_partial_beam_search.py): N=16 candidates,
# M=4 expansions per beam (keep N/M = 1/4), tau=64 tokens, up to 20 steps.
NUM_CANDIDATES, EXPANSIONS, TAU, MAX_STEPS = 16, 4, 64, 20


def derive_seed(seed: int, *tags: object) -> int:
    """A 31-bit seed that is a pure function of ``seed`` and ``tags`` (the same on every machine and run)."""
    digest = hashlib.sha256(repr((int(seed), *tags)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Candidate:
    """One partial expansion of a beam in one round of the search (for analyses and tests)."""

    round: int
    parent: int  # the beam slot it extends; -1: the empty response (round 0)
    partial_tokens: int  # new tokens of the partial as scored (after a cut at the step delimiter)
    generated_tokens: int  # tokens the engine produced for the partial (>= partial_tokens)
    text: str  # the whole response so far, as scored
    score: float
    kept: bool
    continued_tokens: int = 0  # tokens generated to finish its step after it was kept


@dataclass
class SearchResult:
    """One problem's outcome of :func:`partial_beam_search` or :func:`beam_search`."""

    response: str  # the chosen beam's text
    completion: Completion  # the chosen beam: tokens, log-probs, text, finish_reason
    score: float  # the scorer's score of the chosen beam's whole response
    tokens_generated: int  # every token the engine generated for this problem, rejected partials included
    beams: list[Completion]  # the final beams (N/M of them)
    beam_scores: list[float]  # their scores (whole responses)
    candidates: list[Candidate]  # every partial expansion, round by round
    rounds: int


@dataclass
class EarlyRejectionRollout:
    """What :func:`rollout_with_early_rejection` returns: ``n_i`` completions per prompt and the counts."""

    completions: list[Completion]  # prompt-major: prompt 0's n_0 rows, then prompt 1's, ...
    prompt_index: list[int]  # the prompt of each row
    candidate_index: list[int]  # which of its prompt's n_i * oversample candidates each row is
    partial_scores: list[float]  # each row's score at tau tokens (what selected it)
    candidate_scores: list[list[float]]  # per prompt, every candidate's score at tau tokens
    tokens_generated: int  # every token the engine generated: all partials plus the continuations
    tokens_rejected: int  # tokens of the partials that were rejected (the price of oversampling)
    candidates: int
    rejected: int

    @property
    def rejection_rate(self) -> float:
        return self.rejected / self.candidates if self.candidates else 0.0

    def metrics(self) -> dict[str, float]:
        """This call's metrics for the training log (:func:`step_metrics` of it alone)."""
        return step_metrics([self])


def step_metrics(results: Sequence[EarlyRejectionRollout]) -> dict[str, float]:
    """A training step's early-rejection metrics over its sampling calls: rejection rate, candidates,
    tokens generated and spent on rejected partials, mean partial score of the kept rows and of all."""
    candidates = sum(r.candidates for r in results)
    kept = [s for r in results for s in r.partial_scores]
    scores = [s for r in results for row in r.candidate_scores for s in row]
    return {
        "early_rejection/rejection_rate": sum(r.rejected for r in results) / candidates if candidates else 0.0,
        "early_rejection/candidates": float(candidates),
        "early_rejection/tokens_generated": float(sum(r.tokens_generated for r in results)),
        "early_rejection/tokens_rejected": float(sum(r.tokens_rejected for r in results)),
        "early_rejection/kept_score_mean": sum(kept) / len(kept) if kept else 0.0,
        "early_rejection/candidate_score_mean": sum(scores) / len(scores) if scores else 0.0,
    }


def partial_beam_search(
    generate: Generate | Any,
    prompt_tokens: Sequence[list[int]],
    prompt_texts: Sequence[str],
    scorer: Scorer,
    decode: Decode | Any,
    sampling: SamplingParams,
    num_candidates: int = NUM_CANDIDATES,
    expansions: int = EXPANSIONS,
    tau: int = TAU,
    max_steps: int = MAX_STEPS,
    step_delimiter: str | None = None,
    step_max_tokens: int | None = None,
    chunk_tokens: int | None = None,
) -> list[SearchResult]:
    """Step-level beam search with partial scoring (the paper's algorithm), one result per problem.

    Per problem, round 0 samples ``N = num_candidates`` candidates of at most ``tau`` new tokens (or to the
    step end), scores each partial response with ``scorer(prompt_texts, partial_texts)``, keeps the best
    ``N/M`` (``M = expansions``; ties to the lower candidate index; NaN ranks last) and finishes only their
    step (up to ``step_max_tokens`` tokens per step; default the rest of ``sampling.max_new_tokens``).
    Each later round expands every unfinished beam ``M`` times the same way; finished beams (EOS, or the
    response budget reached) keep their slot. At most ``max_steps`` rounds. The answer is the finished beam
    whose whole response scores highest. ``generate`` is ``engine.generate`` (or an engine, or a trainer's
    ``workers.generate``); ``decode`` maps token ids to text (or is a tokenizer; special tokens skipped).
    """
    _check_search(num_candidates, expansions, max_steps, sampling, tau)
    keep = [num_candidates // expansions] * len(prompt_tokens)
    return _search(generate, prompt_tokens, prompt_texts, scorer, decode, sampling, keep, expansions, tau,
                   max_steps, step_delimiter, step_max_tokens, chunk_tokens)


def beam_search(
    generate: Generate | Any,
    prompt_tokens: Sequence[list[int]],
    prompt_texts: Sequence[str],
    scorer: Scorer,
    decode: Decode | Any,
    sampling: SamplingParams,
    num_candidates: int = NUM_CANDIDATES,
    expansions: int = EXPANSIONS,
    max_steps: int = MAX_STEPS,
    step_delimiter: str | None = None,
    step_max_tokens: int | None = None,
    chunk_tokens: int | None = None,
) -> list[SearchResult]:
    """The vanilla baseline of :func:`partial_beam_search`: every candidate generates its whole step before
    it is scored. Same arguments and result; with one step (no ``step_delimiter``) it is best-of-N: all
    ``N`` responses generated in full, scored, the best returned."""
    _check_search(num_candidates, expansions, max_steps, sampling, None)
    keep = [num_candidates // expansions] * len(prompt_tokens)
    return _search(generate, prompt_tokens, prompt_texts, scorer, decode, sampling, keep, expansions, None,
                   max_steps, step_delimiter, step_max_tokens, chunk_tokens)


def rollout_with_early_rejection(
    generate: Generate | Any,
    prompt_tokens: Sequence[list[int]],
    prompt_texts: Sequence[str],
    n: int | Sequence[int],
    sampling: SamplingParams,
    scorer: Scorer,
    decode: Decode | Any,
    oversample: int = EXPANSIONS,
    tau: int = TAU,
) -> EarlyRejectionRollout:
    """Training rollouts with early rejection: exactly ``n`` (or ``n[i]``) finished completions per prompt.

    For prompt ``i``: ``n_i * oversample`` candidates generate ``tau`` tokens; the partial responses are
    scored (``scorer(prompt_texts, partial_texts)``); the best ``n_i`` are kept (ties to the lower
    candidate index, NaN last) and only they are continued to EOS or ``sampling.max_new_tokens``. Rows come
    back prompt-major, each prompt's in candidate order, with valid tokens and log-probs. A trainer calls it
    with ``workers.generate``, its rendered prompt ids, the texts the scorer should read as prompts (the
    problems, not the rendered chat: the PRMs build their own input) and its tokenizer as ``decode``;
    ``n`` may be a per-prompt plan (``algo.rollout_plan``), zeros allowed.

    The kept rows are selected by the scorer, not i.i.d. policy samples (see the module docstring).
    """
    counts = [n] * len(prompt_tokens) if isinstance(n, int) else list(n)
    if len(counts) != len(prompt_tokens):
        raise ValueError(f"n has {len(counts)} entries for {len(prompt_tokens)} prompts; give one count per prompt")
    if any(not isinstance(c, Integral) or c < 0 for c in counts) or not any(counts):
        raise ValueError(f"n must be positive integers (samples per prompt), got {n!r}")
    counts = [int(c) for c in counts]
    if not isinstance(oversample, Integral) or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1 (candidates per kept row), got {oversample!r}")
    _check_tau(tau, sampling)
    results = _search(generate, prompt_tokens, prompt_texts, scorer, decode, sampling, counts, oversample, tau,
                      1, None, None, None, final_scores=False)
    out = EarlyRejectionRollout([], [], [], [], [], 0, 0, 0, 0)
    for i, result in enumerate(results):
        kept = [j for j, c in enumerate(result.candidates) if c.kept]
        out.completions += result.beams
        out.prompt_index += [i] * len(kept)
        out.candidate_index += kept
        out.partial_scores += [result.candidates[j].score for j in kept]
        out.candidate_scores.append([c.score for c in result.candidates])
        out.tokens_generated += result.tokens_generated
        out.tokens_rejected += sum(c.generated_tokens for c in result.candidates if not c.kept)
        out.candidates += len(result.candidates)
        out.rejected += len(result.candidates) - len(kept)
    return out


@dataclass(frozen=True)
class EarlyRejection:
    """The training-rollout controller (:mod:`rlvr.rollout.controllers`) of PRM early rejection:
    :func:`rollout_with_early_rejection` with this scorer, decoder (a tokenizer), ``oversample`` and ``tau``; its
    :class:`EarlyRejectionRollout` is the answer's ``details``."""

    scorer: Scorer
    decode: Decode | Any
    oversample: int = EXPANSIONS
    tau: int = TAU

    def __call__(self, generate: Generate, requests: Sequence[list[int]], problems: Sequence[str],
                 plan: Sequence[int], sampling: SamplingParams) -> Controlled:
        result = rollout_with_early_rejection(generate, requests, problems, plan, sampling, self.scorer, self.decode,
                                              self.oversample, self.tau)
        return Controlled(result.completions, result.prompt_index, result.tokens_generated, result)


# --- the search ----------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """Tokens generated for one request in one phase (a partial, or the rest of a step)."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    end: str = "length"  # "stop": EOS; "step": the delimiter; "length": its token budget ran out
    generated: int = 0  # every token the engine produced for it, those cut after the delimiter included


@dataclass
class _Beam:
    tokens: list[int]
    logprobs: list[float]
    end: str  # "stop" / "length": finished; "step": a step ended, more to come
    score: float = math.nan
    scored_length: int = -1  # the token count the score is of

    @property
    def finished(self) -> bool:
        return self.end in ("stop", "length")


def _search(generate, prompt_tokens, prompt_texts, scorer, decode, sampling: SamplingParams, keep: list[int],
            expansions: int, tau: int | None, max_steps: int, step_delimiter: str | None,
            step_max_tokens: int | None, chunk_tokens: int | None, final_scores: bool = True) -> list[SearchResult]:
    generate, decode = _as_generate(generate), _as_decode(decode)
    if len(prompt_tokens) != len(prompt_texts):
        raise ValueError(f"{len(prompt_tokens)} prompt token lists but {len(prompt_texts)} prompt texts; "
                         "give the text of every prompt (the scorer reads it)")
    if step_delimiter is not None and not (isinstance(step_delimiter, str) and step_delimiter):
        raise ValueError(f"step_delimiter must be a non-empty string or None (one step), got {step_delimiter!r}")
    for name, value in (("step_max_tokens", step_max_tokens), ("chunk_tokens", chunk_tokens)):
        if value is not None and (not isinstance(value, Integral) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    chunk = (chunk_tokens or tau or TAU) if step_delimiter else None  # without steps: one call per phase
    max_new = sampling.max_new_tokens
    problems = range(len(prompt_tokens))
    beams: list[list[_Beam]] = [[] for _ in problems]
    candidates: list[list[Candidate]] = [[] for _ in problems]
    generated = [0 for _ in problems]
    rounds = 0
    for round_ in range(max_steps):
        slots = _expansions(round_, beams, keep, expansions)
        if not slots:
            break
        rounds += 1
        step_budget = [min(step_max_tokens or max_new, max_new - len(b.tokens)) for _, _, b in slots]
        first = [min(tau, budget) if tau else budget for budget in step_budget]
        requests = [list(prompt_tokens[p]) + b.tokens for p, _, b in slots]
        pieces = _generate_pieces(generate, decode, requests, first, sampling, (round_, 1), step_delimiter, chunk,
                                  [[] for _ in slots])
        texts = [decode(b.tokens + piece.tokens) for (_, _, b), piece in zip(slots, pieces)]
        scores = _scores(scorer, [prompt_texts[p] for p, _, _ in slots], texts)

        by_problem: dict[int, list[int]] = {}
        for j, (p, _, _) in enumerate(slots):
            by_problem.setdefault(p, []).append(j)
        kept: list[int] = []
        for p, mine in by_problem.items():
            live = keep[p] if round_ == 0 else sum(not b.finished for b in beams[p])
            kept += sorted(sorted(mine, key=lambda j: (-_rank(scores[j]), j))[:live])
        # Only the kept candidates whose step is not over go on, each within its step's budget.
        go_on = [j for j in kept if pieces[j].end == "length" and len(pieces[j].tokens) < step_budget[j]]
        rest = _generate_pieces(
            generate, decode, [requests[j] + pieces[j].tokens for j in go_on],
            [step_budget[j] - len(pieces[j].tokens) for j in go_on], sampling, (round_, 2), step_delimiter, chunk,
            [pieces[j].tokens for j in go_on])
        continued = dict(zip(go_on, rest))

        kept_set = set(kept)
        new_beams: list[list[_Beam]] = [[b for b in beams[p] if b.finished] for p in problems]
        for j, ((p, slot, parent), piece) in enumerate(zip(slots, pieces)):
            generated[p] += piece.generated
            more = continued.get(j, _Piece(end=piece.end))
            generated[p] += more.generated
            candidates[p].append(Candidate(round_, slot, len(piece.tokens), piece.generated, texts[j], scores[j],
                                           j in kept_set, more.generated))
            if j not in kept_set:
                continue
            tokens = parent.tokens + piece.tokens + more.tokens
            # Not stopped: finished when out of budget, else a step ended (delimiter, or step_max_tokens).
            end = "stop" if more.end == "stop" else ("length" if len(tokens) >= max_new else "step")
            new_beams[p].append(_Beam(tokens, parent.logprobs + piece.logprobs + more.logprobs, end, scores[j],
                                      len(parent.tokens) + len(piece.tokens)))
        beams = new_beams
        if all(b.finished for problem in beams for b in problem):
            break

    if final_scores:  # score whole responses whose score is of a shorter prefix
        stale = [(p, b) for p in problems for b in beams[p] if b.scored_length != len(b.tokens)]
        if stale:
            fresh = _scores(scorer, [prompt_texts[p] for p, _ in stale], [decode(b.tokens) for _, b in stale])
            for (_, b), score in zip(stale, fresh):
                b.score, b.scored_length = score, len(b.tokens)
    results = []
    for p in problems:
        if not beams[p]:  # a prompt with no samples asked for (n_i = 0)
            results.append(SearchResult("", Completion([], [], "", "length"), math.nan, 0, [], [], [], rounds))
            continue
        finals = [_completion(b, decode) for b in beams[p]]
        pool = [i for i, b in enumerate(beams[p]) if b.finished] or list(range(len(beams[p])))
        best = min(pool, key=lambda i: (-_rank(beams[p][i].score), i))
        results.append(SearchResult(finals[best].text, finals[best], beams[p][best].score, generated[p], finals,
                                    [b.score for b in beams[p]], candidates[p], rounds))
    return results


def _expansions(round_: int, beams: list[list[_Beam]], keep: list[int], expansions: int
                ) -> list[tuple[int, int, _Beam]]:
    """The beam each candidate of this round extends, as ``(problem, slot, beam)``: in round 0, ``keep[p] *
    expansions`` candidates of the empty response (slot -1); later, ``expansions`` per unfinished beam."""
    if round_ == 0:
        return [(p, -1, _Beam([], [], "step")) for p, k in enumerate(keep) for _ in range(k * expansions)]
    return [(p, slot, beam) for p, problem in enumerate(beams) for slot, beam in enumerate(problem)
            if not beam.finished for _ in range(expansions)]


def _generate_pieces(generate: Generate, decode: Decode, requests: list[list[int]], budgets: list[int],
                     sampling: SamplingParams, tags: tuple, delimiter: str | None, chunk: int | None,
                     step_prefixes: list[list[int]]) -> list[_Piece]:
    """Up to ``budgets[i]`` new tokens after ``requests[i]``, in chunks, ending at EOS or the delimiter.

    Requests are batched by chunk size (one engine call per distinct size per chunk round).
    ``step_prefixes[i]`` are the tokens of the current step already generated (the delimiter is searched in
    the text of the prefix plus the new tokens).
    """
    pieces = [_Piece() for _ in requests]
    active = [i for i, budget in enumerate(budgets) if budget > 0]
    call = 0
    while active:
        size = {i: min(budgets[i] - len(pieces[i].tokens), chunk or budgets[i]) for i in active}
        still = []
        for group, width in enumerate(sorted(set(size.values()))):
            rows = [i for i in active if size[i] == width]
            params = replace(sampling, max_new_tokens=width, seed=derive_seed(sampling.seed, *tags, call, group))
            outs = generate([requests[i] + pieces[i].tokens for i in rows], params)
            if len(outs) != len(rows):
                raise RuntimeError(f"the engine returned {len(outs)} completions for {len(rows)} requests; "
                                   "the protocol is one completion per request")
            for i, out in zip(rows, outs):
                piece = pieces[i]
                piece.generated += len(out.tokens)
                piece.tokens += out.tokens
                piece.logprobs += out.logprobs
                cut = _delimiter_end(decode, step_prefixes[i], piece.tokens, delimiter) if delimiter else None
                if cut is not None and not (out.finish_reason == "stop" and cut >= len(piece.tokens) - 1):
                    del piece.tokens[cut:], piece.logprobs[cut:]
                    piece.end = "step"
                elif out.finish_reason == "stop":
                    piece.end = "stop"
                elif len(piece.tokens) >= budgets[i] or not out.tokens:
                    piece.end = "length"
                else:
                    still.append(i)
        active = sorted(still)
        call += 1
    return pieces


def _delimiter_end(decode: Decode, prefix: list[int], tokens: list[int], delimiter: str) -> int | None:
    """The fewest leading ``tokens`` whose text (after ``prefix``) contains ``delimiter``, or None."""
    if delimiter not in decode(prefix + tokens):
        return None
    low, high = 1, len(tokens)
    while low < high:  # "contains the delimiter" only turns true as tokens are added
        mid = (low + high) // 2
        if delimiter in decode(prefix + tokens[:mid]):
            high = mid
        else:
            low = mid + 1
    return low


def _completion(beam: _Beam, decode: Decode) -> Completion:
    return Completion(list(beam.tokens), list(beam.logprobs), decode(beam.tokens),
                      "stop" if beam.end == "stop" else "length")


def _scores(scorer: Scorer, prompts: list[str], partials: list[str]) -> list[float]:
    scores = list(scorer(prompts, partials))
    if len(scores) != len(partials):
        raise ValueError(f"scorer {scorer!r} returned {len(scores)} scores for {len(partials)} partial responses; "
                         "it must return one score per (prompt, partial response) pair")
    return [float(s) for s in scores]


def _rank(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def _as_generate(generate) -> Generate:
    if hasattr(generate, "generate"):
        return generate.generate
    if callable(generate):
        return generate
    raise TypeError(f"generate must be engine.generate(requests, sampling) or an engine, got {type(generate).__name__}")


def _as_decode(decode) -> Decode:
    if hasattr(decode, "decode"):
        tokenizer = decode
        return lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)
    if callable(decode):
        return decode
    raise TypeError(f"decode must be a tokenizer or a function token ids -> text, got {type(decode).__name__}")


def _check_tau(tau: int, sampling: SamplingParams) -> None:
    if not isinstance(tau, Integral) or tau < 1:
        raise ValueError(f"tau (tokens before the partial score) must be an integer >= 1, got {tau!r}")
    if tau >= sampling.max_new_tokens:
        raise ValueError(f"tau={tau} must be below sampling.max_new_tokens={sampling.max_new_tokens}: at tau >= the "
                         "budget every candidate is finished before it is scored and nothing is saved")


def _check_search(num_candidates: int, expansions: int, max_steps: int, sampling: SamplingParams,
                  tau: int | None) -> None:
    if not isinstance(expansions, Integral) or expansions < 1:
        raise ValueError(f"expansions (M, candidates per kept beam) must be an integer >= 1, got {expansions!r}")
    if not isinstance(num_candidates, Integral) or num_candidates < expansions or num_candidates % expansions:
        raise ValueError(f"num_candidates (N={num_candidates!r}) must be a positive multiple of expansions "
                         f"(M={expansions}): the search keeps N/M beams per problem")
    if not isinstance(max_steps, Integral) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if tau is not None:
        _check_tau(tau, sampling)
