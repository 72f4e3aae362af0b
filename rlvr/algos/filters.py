"""DAPO's rollout-side parts, which any preset may switch on by option: dynamic sampling (a rollout filter,
``fn(batch, source, ctx) -> (batch, metrics)``) and overlong reward shaping (:func:`overlong_penalty`)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.registry import rollout_filter


@rollout_filter("dynamic_sampling")
def dynamic_sampling(batch, source, ctx) -> tuple[object, dict[str, float]]:
    """DAPO dynamic sampling (verl DAPO recipe ``dapo_ray_trainer.py``): keep the groups whose metric
    varies, sample further prompt batches until ``data.batch_size`` groups are kept or ``max_gen_batches``
    rounds are spent, then truncate to exactly that many groups.

    Departure from verl, which raises when the rounds run out: the step trains on the groups that
    survived (``dynamic_sampling/kept_groups`` says how many), so a hard stretch of data cannot kill a run.
    """
    from rlvr.batch import concat_batches

    options, target_groups = ctx.options, ctx.run.batch_size
    kept = []
    num_kept = rounds = generated = 0
    while True:
        rounds += 1
        generated += int(torch.unique(batch.group).numel())
        informative = informative_groups(batch, options.dynamic_sampling_metric)
        if informative:
            kept.append(batch.select([i for i, g in enumerate(batch.group.tolist()) if g in informative]))
            num_kept += len(informative)
        if num_kept >= target_groups or rounds >= options.max_gen_batches:
            break
        offset = int(batch.group.max()) + 1 if len(batch) else 0
        batch = source.sample(source.next_prompts())
        batch.group = batch.group + offset  # group ids stay unique across rounds
    out = concat_batches(kept) if kept else batch.select([])
    groups = set(list(dict.fromkeys(out.group.tolist()))[:target_groups])
    out = out.select([i for i, g in enumerate(out.group.tolist()) if g in groups])
    return out, {"dynamic_sampling/gen_batches": float(rounds), "dynamic_sampling/kept_groups": float(len(groups)),
                 "dynamic_sampling/kept_frac": num_kept / max(generated, 1)}


def informative_groups(batch, metric: str = "accuracy") -> set[int]:
    """Group ids whose rows do not all share the same ``metric`` value (correctness or reward)."""
    values = batch.correct.to(torch.float32) if metric == "accuracy" else batch.rewards.to(torch.float32)
    out = set()
    for g in torch.unique(batch.group).tolist():
        members = values[batch.group == g]
        if members.numel() > 1 and bool((members != members[0]).any()):
            out.add(int(g))
    return out


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float) -> Tensor:  # [N]
    """DAPO overlong reward shaping (verl ``reward_manager/dapo.py``): ``min(-(|y| - (L_max - L_buf)) /
    L_buf * f, 0)``, a penalty growing linearly from 0 to ``-f`` over the last ``L_buf`` tokens."""
    expected = max_len - buffer
    return torch.clamp(-(lengths.to(torch.float32) - expected) / buffer * factor, max=0.0)
