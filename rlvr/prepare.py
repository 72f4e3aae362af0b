"""Offline stages that run before training: ``rlvr prepare astar RECIPE`` (A*-PO stage 1).

A stage uses the recipe's model, prompts, sampling settings and reward exactly as training will, on the
same Ray workers, so the table it writes matches the run that reads it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rlvr.config import Recipe
from rlvr.rollout.engine import SamplingParams

log = logging.getLogger("rlvr")

STAGES = ("astar",)


def prepare(stage: str, recipe: Recipe) -> Path:
    if stage not in STAGES:
        raise ValueError(f"prepare stage {stage!r} is unknown; known stages: {', '.join(STAGES)}")
    return prepare_astar(recipe)


def prepare_astar(recipe: Recipe) -> Path:
    """Sample ``num_ref_samples`` responses per training prompt from the initial policy, score them, and
    write ``{"prompt_id", "rewards"}`` rows to the algorithm's ``values_path``."""
    from rlvr.algos.astar import table_path, write_table
    from rlvr.trainer import Trainer, step_seed

    if recipe.algorithm.name != "astar":
        raise ValueError(f"`rlvr prepare astar` needs a recipe with algorithm.name: astar, not {recipe.algorithm.name!r}")
    options = recipe.algorithm
    path = table_path(options, recipe.trainer.output_dir)
    r, n = recipe.rollout, options.num_ref_samples
    rows: list[tuple[str, list[float]]] = []
    started = time.perf_counter()
    with Trainer(recipe, training=False) as run:
        prompts = run.prompts
        chunk = max(1, r.batch_size // n)
        errors = 0
        for number, start in enumerate(range(0, len(prompts), chunk)):
            part = prompts[start : start + chunk]
            sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k,
                                      seed=step_seed(recipe.trainer.seed, -1000 - number), logprobs=False)
            batch, _ = run.sampler.generate(part, [n] * len(part), sampling)
            errors += run.sampler.score(batch)
            rewards = batch.rewards.view(len(part), n).tolist()
            rows.extend((p.id, rs) for p, rs in zip(part, rewards))
            if number % 20 == 0:
                log.info("astar stage 1: %d / %d prompts sampled", len(rows), len(prompts))
    write_table(path, rows)
    solved = sum(max(rs) > 0 for _, rs in rows) / max(len(rows), 1)
    log.info("astar stage 1: %d prompts x %d samples in %.0f s (%d reward errors); %.1f%% of prompts have a "
             "correct sample; wrote %s", len(rows), n, time.perf_counter() - started, errors, 100 * solved, path)
    return path
