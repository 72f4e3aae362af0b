"""A*-PO, policy optimisation via optimal advantage regression (Brantley et al. 2025, arXiv 2505.20686;
ALGORITHMS.md section 6).

Two stages:

1. ``rlvr prepare astar RECIPE`` samples ``num_ref_samples`` responses per training prompt from the
   reference (initial) policy, scores them and writes the rewards table (``values_path``, JSON Lines:
   ``{"prompt_id", "rewards"}``). ``V*(x) = beta1 log mean_j exp(r_j / beta1)`` is computed from it when
   training starts (:func:`~rlvr.algos.functional.astar_values`), so ``beta1`` can change without resampling.
2. Training samples one response per prompt and regresses the sequence log-ratio to the reference onto
   the optimal advantage: ``(beta2 log pi/pi_ref (y|x) - (r - V*(x)))^2``, averaged over sequences
   (:func:`~rlvr.algos.functional.astar_loss`). No old-policy ratio, no clipping, no critic.

Defaults are the authors' ``scripts/apo_math.sh`` / ``apo_trainer.yaml``: N=8, beta1=0.5, beta2=1e-3,
entropy bonus 0.001 (on in the code although not part of the loss as presented: ``entropy_coef: 0`` for
the paper's loss), ``filter_incorrect`` off (on: drop prompts whose N reference samples all failed).
Departure: a training prompt missing from the table is an error before any work starts (the code builds
V* from dataset columns, so it cannot be missing there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from rlvr.algos.base import Algorithm, AlgorithmOptions, LossInputs
from rlvr.algos.functional import astar_values
from rlvr.algos.registry import register


class AStarOptions(AlgorithmOptions):
    beta1: float = Field(0.5, description="Temperature of V* = beta1 log mean exp(r / beta1); 0: the plain mean, "
                         "< 0: V* = 0 (authors' code).")
    beta2: float = Field(1e-3, gt=0.0, description="KL-regularisation strength of the regression target.")
    num_ref_samples: int = Field(8, ge=1, description="Stage 1: reference samples per prompt (data.num_gen_to_use).")
    values_path: str | None = Field(None, description="Stage-1 rewards table (JSON Lines); default "
                                    "<trainer.output_dir>/astar_values.jsonl.")
    filter_incorrect: bool = Field(False, description="Drop prompts whose reference samples all scored 0.")
    entropy_coef: float = Field(0.001, description="Entropy bonus (authors' code 0.001).")

    def problems(self, recipe) -> list[str]:
        out = super().problems(recipe)
        if self.kl_coef > 0:
            out.append("algorithm.kl_coef: astar has no separate KL term (beta2 regularises towards the "
                       "reference); leave kl_coef at 0")
        if self.dynamic_sampling:
            out.append("algorithm.dynamic_sampling: astar samples one response per prompt, so groups never vary")
        return out


def table_path(options: AStarOptions, output_dir: str) -> Path:
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


@register
class AStarPO(Algorithm):
    """A*-PO: one sample per prompt, least-squares regression onto the optimal advantage r - V*(x)."""

    name = "astar"
    Options: ClassVar[type[AlgorithmOptions]] = AStarOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.values: dict[str, float] = {}

    @property
    def needs_reference(self) -> bool:
        return True

    def rollout_plan(self, num_prompts: int, n: int) -> list[int]:
        return [1] * num_prompts

    @property
    def loss_moves_without_advantage(self) -> bool:
        """Always: with ``r - V* = 0`` the regression still pulls ``beta2 log pi/pi_ref`` towards 0."""
        return True

    def prepare_prompts(self, prompts: list[Any], recipe) -> list[Any]:
        o = self.options
        path = table_path(o, recipe.trainer.output_dir)
        table = read_table(path)
        missing = [p.id for p in prompts if p.id not in table]
        if missing:
            raise ValueError(f"{len(missing)} of {len(prompts)} training prompts are not in the astar table {str(path)!r} "
                             f"(first: {missing[0]!r}); it was made for other data: run `rlvr prepare astar` again")
        ids = [p.id for p in prompts]
        lengths = {len(table[i]) for i in ids}
        if len(lengths) != 1:
            raise ValueError(f"the astar table {str(path)!r} has prompts with different sample counts {sorted(lengths)}")
        values = astar_values(torch.tensor([table[i] for i in ids]), o.beta1)
        self.values = dict(zip(ids, values.tolist()))
        if o.filter_incorrect:
            prompts = [p for p in prompts if max(table[p.id]) > 0]
            if not prompts:
                raise ValueError("filter_incorrect dropped every prompt: no reference sample scored above 0")
        return prompts

    def advantages(self, batch) -> Tensor:  # [N] r - V*(x), the regression target
        values = torch.tensor([self.values[pid] for pid in batch.prompt_id], dtype=torch.float32)
        batch.algo_fields["astar_value"] = values
        rewards = self.reward_for_advantage(batch)
        self.record({"astar/value_mean": float(values.mean())})
        return rewards - values

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        if inputs.ref_logp is None:
            raise RuntimeError("astar needs reference log-probs, but the learner passed none")
        mask = inputs.mask
        seq_log_ratio = ((inputs.logp - inputs.ref_logp) * mask).sum(-1)
        residual = o.beta2 * seq_log_ratio - inputs.advantages.to(inputs.logp.dtype)
        if o.loss_agg_scope == "micro-batch":
            rows = float(residual.shape[0] * inputs.num_micro)
        else:
            rows = inputs.num_seqs
        regression = residual.square().sum() / rows
        extra, metrics = self.regularizers(inputs)
        with torch.no_grad():
            metrics["actor/pg_loss"] = regression.item()
            metrics["astar/log_ratio_mean"] = float(seq_log_ratio.mean())
            metrics["astar/residual_abs_mean"] = float(residual.abs().mean())
            metrics["actor/masked_token_frac"] = 0.0
        return o.pg_coef * regression + extra, metrics
