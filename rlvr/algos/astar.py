"""A*-PO, policy optimisation via optimal advantage regression (Brantley et al. 2025, arXiv 2505.20686;
ALGORITHMS.md section 6).

Two stages:

1. ``rlvr prepare astar RECIPE`` samples ``num_ref_samples`` responses per training prompt from the
   reference (initial) policy, scores them and writes the rewards table (``values_path``, JSON Lines:
   ``{"prompt_id", "rewards"}``). ``V*(x) = beta1 log mean_j exp(r_j / beta1)`` is computed from it when
   training starts (:func:`astar_values`), so ``beta1`` can change without resampling.
2. Training samples one response per prompt and regresses the sequence log-ratio to the reference onto
   the optimal advantage: ``(beta2 log pi/pi_ref (y|x) - (r - V*(x)))^2``, averaged over sequences
   (:func:`regression`). No old-policy ratio, no clipping, no critic.

Defaults are the authors' ``scripts/apo_math.sh`` / ``apo_trainer.yaml``: N=8, beta1=0.5, beta2=1e-3,
entropy bonus 0.001, ``filter_incorrect`` off (on: drop prompts whose N reference samples all failed).

Where rlvr departs from the paper and the authors' code:

* The entropy bonus 0.001 is on by default as in the code, though not part of the loss as presented
  (``entropy_coef: 0`` for the paper's loss).
* A training prompt missing from the stage-1 table is an error before any work starts (the code builds ``V*``
  from dataset columns, so it cannot be missing there).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlvr.algos.presets.astar import AStarOptions
from rlvr.algos.registry import estimator, loss


class OptimalValues:
    """``V*(x)`` of every training prompt, computed from the stage-1 table when the run loads its prompts. Not
    saved with checkpoints: a resumed run computes it again (so ``beta1`` may change without resampling)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def prepare(self, prompts: list[Any], recipe, options: AStarOptions) -> list[Any]:
        path = table_path(options, recipe.trainer.output_dir)
        table = read_table(path)
        missing = [p.id for p in prompts if p.id not in table]
        if missing:
            raise ValueError(f"{len(missing)} of {len(prompts)} training prompts are not in the astar table "
                             f"{str(path)!r} (first: {missing[0]!r}); it was made for other data: run `rlvr prepare "
                             "astar` again")
        ids = [p.id for p in prompts]
        lengths = {len(table[i]) for i in ids}
        if len(lengths) != 1:
            raise ValueError(f"the astar table {str(path)!r} has prompts with different sample counts "
                             f"{sorted(lengths)}")
        values = astar_values(torch.tensor([table[i] for i in ids]), options.beta1)
        self.values = dict(zip(ids, values.tolist()))
        if options.filter_incorrect:
            prompts = [p for p in prompts if max(table[p.id]) > 0]
            if not prompts:
                raise ValueError("filter_incorrect dropped every prompt: no reference sample scored above 0")
        return prompts

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@estimator("astar", state=OptimalValues)
def astar(batch, rewards: Tensor, ctx) -> tuple[Tensor, dict[str, float]]:  # [N] r - V*(x), the regression target
    """The optimal advantage ``r - V*(x)`` of each row; ``V*`` rides in ``batch.algo_fields["astar_value"]``."""
    values = torch.tensor([ctx.state.values[pid] for pid in batch.prompt_id], dtype=torch.float32)
    batch.algo_fields["astar_value"] = values
    return rewards - values, {"astar/value_mean": float(values.mean())}


@loss("astar", moves_without_advantage=True, needs_reference=True,
      tis="A*-PO regresses onto the reference policy and has no importance ratio to correct")
def regression(inputs, ctx, agg) -> tuple[Tensor, dict[str, float]]:
    """A*-PO stage-2 least-squares loss (ALGORITHMS.md 6.1), the advantage being ``r - V*(x)``::

        sum_i ( beta2 * sum_t M_{i,t} (logp - ref_logp)_{i,t} - (r_i - V*(x_i)) )^2 / num_seqs

    i.e. regress the sequence log-ratio to ``pi_ref`` onto the optimal advantage; no ``pi_old`` ratio, no clip, no
    separate KL. Averaged over the sequences of the aggregation's scope. Authors' code (ZhaolinGao/A-PO
    ``apo/core_algos.compute_policy_loss``, default beta2 = 1e-3) also subtracts ``0.001 * token-mean entropy``;
    that bonus is not part of the loss as presented and is left to the entropy regulariser. With ``r - V* = 0`` it
    still pulls ``beta2 log pi/pi_ref`` towards 0, so it moves the weights without any advantage."""
    if inputs.ref_logp is None:
        raise RuntimeError("astar needs reference log-probs, but the learner passed none")
    seq_log_ratio = ((inputs.logp - inputs.ref_logp) * inputs.mask).sum(-1)
    residual = ctx.options.beta2 * seq_log_ratio - inputs.advantages.to(inputs.logp.dtype)
    pg = residual.square().sum() / agg.num_seqs
    with torch.no_grad():
        return pg, {"astar/log_ratio_mean": float(seq_log_ratio.mean()),
                    "astar/residual_abs_mean": float(residual.abs().mean()), "actor/masked_token_frac": 0.0}


def table_path(options: AStarOptions, output_dir: str) -> Path:
    """Where the stage-1 table of ``options`` lives."""
    return Path(options.values_path) if options.values_path else Path(output_dir) / "astar_values.jsonl"


def read_table(path: Path) -> dict[str, list[float]]:
    """prompt id -> the stage-1 rewards of its reference samples."""
    if not path.exists():
        raise ValueError(f"astar needs its stage-1 table {str(path)!r}, which does not exist; run "
                         "`rlvr prepare astar RECIPE` first (or set algorithm.values_path)")
    table = {}
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[str(row["prompt_id"])] = [float(r) for r in row["rewards"]]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a stage-1 row {{'prompt_id', 'rewards'}} ({error})") from None
    return table


def write_table(path: Path, rows: list[tuple[str, list[float]]]) -> None:
    """Write the table atomically (a crash never leaves a half table under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    with staging.open("w") as f:
        for prompt_id, rewards in rows:
            f.write(json.dumps({"prompt_id": prompt_id, "rewards": rewards}) + "\n")
    staging.replace(path)


def astar_values(
    ref_rewards: Tensor,  # [P,n]
    beta1: float,
) -> Tensor:  # [P]
    """A*-PO stage-1 estimate ``V*(x) = beta1 log((1/n) sum_j exp(r_j / beta1))`` (ALGORITHMS.md 6.1).

    ``ref_rewards[p, j]`` is the reward of the j-th of n samples from ``pi_ref`` for prompt p (code:
    dataset columns ``eval_0..eval_{n-1}``, n=8, beta1=0.5). Computed as
    ``beta1 (logsumexp(r / beta1) - log n)`` in float64, so small beta1 does not overflow; as
    ``beta1 -> 0+`` the value tends to ``max_j r_j``. Authors' code (ZhaolinGao/A-PO
    ``RLHFDataset._process_values``) special-cases ``beta1 == 0`` to the plain mean (not the max limit)
    and ``beta1 < 0`` to ``V* = 0`` (no baseline); both are kept here.
    """
    if ref_rewards.dim() != 2 or ref_rewards.shape[1] == 0:
        raise ValueError(
            f"ref_rewards must be [prompts, samples] with at least one sample, got shape {tuple(ref_rewards.shape)}"
        )
    rewards = ref_rewards.to(torch.float64)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("ref_rewards holds NaN or inf; every offline sample needs a finite reward")
    if beta1 < 0:
        values = torch.zeros(rewards.shape[0], dtype=torch.float64)
    elif beta1 == 0:
        values = rewards.mean(dim=1)
    else:
        values = beta1 * (torch.logsumexp(rewards / beta1, dim=1) - math.log(rewards.shape[1]))
    return values.to(torch.float32)
