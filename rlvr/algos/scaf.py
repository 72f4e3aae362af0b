"""Scaf-GRPO, scaffolded GRPO (Zhang et al., arXiv 2510.19807; ALGORITHMS.md section 4).

The loss is GRPO's; only the group changes ("on-policy batch augmentation"). After an exemption period,
for each group whose ``n`` rollouts all fail, a hierarchical hint search runs: tiers ``knowledge ->
planning -> solution``, each with cumulative levels ``C_c^l = {h_c^1 .. h_c^l}``; for each level the
prompt ``q (+) C_c^l`` gets one on-policy sample, and the first correct one (the lowest level in that
order) replaces one failed row of the group. Its ratio is computed on the hinted prompt (the row carries
the hinted prompt's tokens, so the learner's old and new log-probs are ``pi(o | q (+) h*)``: the paper's
on-policy variant; the off-policy ``pi(o|q) / pi_old(o|q (+) h*)`` destabilises training, App. F.5).
A rescued binary group of 8 is 1 correct / 7 wrong; a group with no successful hint stays all-fail
(zero advantage).

Defaults, and where rlvr departs from the paper and the authors' code:

* Exemption: the first ``exemption_frac`` = 15% of ``trainer.total_steps`` (paper; the released code uses a
  fixed ``warmup_steps=50``: set ``exemption_steps: 50``).
* Tiers: all three, as the paper describes. The released ``build_new_message`` has the planning tier
  commented out (8 levels: knowledge 1-4, solution 1-4): set ``hint_tiers: [knowledge, solution]``.
* Search: ``parallel`` (the code: one sample of every level of every all-fail prompt in one generation
  call, the lowest successful level wins) or ``sequential`` (the paper's Algorithm 1: level by level,
  stopping each prompt at its first success; levels are still batched across prompts). Both give the same
  outcome in distribution; sequential samples fewer hints, parallel needs one generation call.
* Replaced row: the first of the group (code; ``replace_row: random`` for the paper's random failed one).
* Hint prompt: ``Question: {problem}\\n{Tier} Hints: {levels joined by spaces}`` inside the recipe's
  template (the code's ``build_new_message``, whose system prompt is the ``qwen-boxed`` template's).
* Hinted samples count in ``tokens/generated`` and ``reward/errors`` but not in the step's ``reward/*`` accuracy,
  which describes the plain prompts. ``dynamic_sampling`` cannot be combined with Scaf-GRPO (it would drop the
  groups Scaf-GRPO rescues).

Hints come from the dataset (``hints: fields``: the columns of HF ``hkuzxc/scaf-grpo-dataset``, lists of
four items per tier), from the tiny arithmetic task (``hints: arithmetic``,
:func:`rlvr.data.tasks.arithmetic.hint_ladder`), or from a user function (``hints: module:function``,
``fn(problem, answer, **fields) -> {tier: [level-1 text, level-2 text, ...]}``).

Metrics: ``scaf/all_fail_groups``, ``scaf/rescued_frac`` (rescued / all-fail groups), ``scaf/hint_samples``,
``scaf/hint_accuracy`` and the level histogram ``scaf/level/<tier>-<level>`` (rescues per level).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from rlvr.algos.presets.scaf import PAPER_TEMPLATE, TIERS, HintLadder, ScafGRPOOptions
from rlvr.algos.registry import rollout_filter

__all__ = ["PAPER_TEMPLATE", "TIERS", "HintSearch", "field_hints", "hint_provider", "scaf_hints"]


class HintSearch:
    """The hint search of one run: the options' hint source, built on first use. Keeps no state across steps."""

    def __init__(self) -> None:
        self._provider: Callable[[Any], dict[str, list[str]]] | None = None

    def provider(self, options: ScafGRPOOptions) -> Callable[[Any], dict[str, list[str]]]:
        """The run's hint source (its options never change), built on first use."""
        if self._provider is None:
            self._provider = hint_provider(options)
        return self._provider

    def ladder(self, prompt, options: ScafGRPOOptions) -> HintLadder:
        """The hinted variants of ``prompt`` in search order: tiers in ``hint_tiers`` order, levels 1..L."""
        levels = self.provider(options)(prompt)
        return [(tier, level, text) for tier in options.hint_tiers
                for level, text in enumerate(levels.get(tier, [])[: options.hint_levels], 1)]

    def prepare(self, prompts: list[Any], recipe, options: ScafGRPOOptions) -> list[Any]:
        """Fail before any work when no training prompt has a hint (wrong ``hint_fields``, say)."""
        sample = prompts[: min(len(prompts), 256)]
        if not any(self.ladder(p, options) for p in sample):
            o = options
            where = (f"none of the hint fields {sorted(o.hint_fields[t] for t in o.hint_tiers)} is a non-empty list "
                     f"in the first {len(sample)} prompts of {recipe.data.train!r} (their fields: "
                     f"{sorted(prompts[0].fields)}); set algorithm.hint_fields, or algorithm.hints: arithmetic "
                     "for the tiny task" if o.hints == "fields" else f"{o.hints} returned no hints")
            raise ValueError(f"scaf_grpo: {where}")
        return prompts

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def exemption_end(options: ScafGRPOOptions, total_steps: int) -> int:
    """The last step without hints."""
    o = options
    return o.exemption_steps if o.exemption_steps is not None else round(o.exemption_frac * total_steps)


def hinted(prompt, tier: str, text: str, options: ScafGRPOOptions):
    """``prompt`` with its problem replaced by the hinted problem (same id, answer and fields)."""
    problem = options.template().format(problem=prompt.problem, hint=text, tier=tier.capitalize())
    return prompt.with_problem(problem)


@rollout_filter("scaf_hints", state=HintSearch)
def scaf_hints(batch, source, ctx) -> tuple[Any, dict[str, float]]:
    """After the exemption, every all-fail group's hint ladder is searched and its first successful hinted sample
    replaces one of the group's failed rows."""
    o, search_state = ctx.options, ctx.state
    if source.step <= exemption_end(o, ctx.run.total_steps):
        return batch, {"scaf/exempt": 1.0}
    groups = list(dict.fromkeys(batch.group.tolist()))
    fails = [g for g in groups if not bool(batch.correct[batch.group == g].any())]
    prompts = {g: source.prompt(batch.prompt_id[_first_row(batch, g)]) for g in fails}
    ladders = {g: [(tier, level, hinted(prompts[g], tier, text, o))
                   for tier, level, text in search_state.ladder(prompts[g], o)] for g in fails}
    search = _search_parallel if o.hint_search == "parallel" else _search_sequential
    found, sampled, correct = search(ladders, source)
    metrics = {"scaf/exempt": 0.0, "scaf/all_fail_groups": float(len(fails)),
               "scaf/all_fail_frac": len(fails) / max(len(groups), 1), "scaf/rescued_groups": float(len(found)),
               "scaf/rescued_frac": len(found) / len(fails) if fails else 0.0,
               "scaf/hint_samples": float(sampled), "scaf/hint_accuracy": correct / sampled if sampled else 0.0}
    for tier in o.hint_tiers:
        for level in range(1, o.hint_levels + 1):
            metrics[f"scaf/level/{tier}-{level}"] = float(sum(1 for _, _, t, lv in found.values()
                                                              if (t, lv) == (tier, level)))
    return (replace_rows(batch, found, source.step, o.replace_row) if found else batch), metrics


def _search_parallel(ladders: dict[int, list[tuple]], source):
    """One sample of every level of every all-fail prompt in one call; the first success in ladder order."""
    requests = [(g, k) for g, ladder in ladders.items() for k in range(len(ladder))]
    if not requests:
        return {}, 0, 0
    hinted_batch = source.sample([ladders[g][k][2] for g, k in requests], [1] * len(requests), record=False)
    found: dict[int, tuple] = {}
    for j, (g, k) in enumerate(requests):
        if g not in found and bool(hinted_batch.correct[j]):
            tier, level, _ = ladders[g][k]
            found[g] = (hinted_batch, j, tier, level)
    return found, len(requests), int(hinted_batch.correct.sum())


def _search_sequential(ladders: dict[int, list[tuple]], source):
    """Level k of every still-unrescued prompt per call, until each succeeds or runs out of levels."""
    found: dict[int, tuple] = {}
    sampled = correct = 0
    for k in range(max((len(ladder) for ladder in ladders.values()), default=0)):
        todo = [g for g, ladder in ladders.items() if g not in found and k < len(ladder)]
        if not todo:
            break
        hinted_batch = source.sample([ladders[g][k][2] for g in todo], [1] * len(todo), record=False)
        sampled, correct = sampled + len(todo), correct + int(hinted_batch.correct.sum())
        for j, g in enumerate(todo):
            if bool(hinted_batch.correct[j]):
                tier, level, _ = ladders[g][k]
                found[g] = (hinted_batch, j, tier, level)
    return found, sampled, correct


def replace_rows(batch, found: dict[int, tuple], step: int, replace_row: str = "first"):
    """``batch`` with one failed row of each rescued group replaced by its successful hinted sample."""
    from rlvr.batch import concat_batches

    rescues = []
    for g, (hinted_batch, j, _, _) in found.items():
        row = hinted_batch.select([j])
        row.group = torch.tensor([g], dtype=torch.long)
        rescues.append(row)
    combined = concat_batches([batch, *rescues])
    index = list(range(len(batch)))
    for m, g in enumerate(found):
        members = [i for i, x in enumerate(batch.group.tolist()) if x == g]
        victim = members[0] if replace_row == "first" else random.Random(step * 1_000_003 + g).choice(members)
        index[victim] = len(batch) + m
    return combined.select(index)


def _first_row(batch, group: int) -> int:
    return int((batch.group == group).nonzero()[0, 0])


def hint_provider(options: ScafGRPOOptions) -> Callable[[Any], dict[str, list[str]]]:
    """``prompt -> {tier: [level-1 text, ...]}`` for the options' ``hints`` source."""
    if options.hints == "arithmetic":
        from rlvr.data.tasks.arithmetic import hint_ladder

        return lambda prompt: hint_ladder(prompt.answer, options.hint_levels)
    if options.hints == "fields":
        return lambda prompt: field_hints(prompt.fields, options.hint_fields, options.hint_join)
    from rlvr.rewards.registry import import_callable

    fn = import_callable(options.hints, "hint function",
                       "fn(problem, answer, **fields) -> {tier: [level-1 text, level-2 text, ...]}")

    def user(prompt) -> dict[str, list[str]]:
        out = fn(prompt.problem, prompt.answer, **prompt.fields)
        if not isinstance(out, dict) or not all(isinstance(v, list) for v in out.values()):
            raise ValueError(f"hint function {options.hints!r} returned {type(out).__name__}; it must return "
                             f"{{tier: [level texts]}} with tiers among {', '.join(TIERS)}")
        return {tier: [str(text) for text in texts] for tier, texts in out.items()}

    return user


def field_hints(fields: dict[str, Any], columns: dict[str, str], join: str) -> dict[str, list[str]]:
    """Cumulative levels from per-tier item lists: level ``l`` is the first ``l`` items joined (paper C_c^l)."""
    out = {}
    for tier, column in columns.items():
        items = fields.get(column)
        if hasattr(items, "tolist"):  # numpy arrays from parquet readers
            items = items.tolist()
        if isinstance(items, str):
            items = [items]
        if items:
            items = [str(item) for item in items]
            out[tier] = [join.join(items[:level]) for level in range(1, len(items) + 1)]
    return out
