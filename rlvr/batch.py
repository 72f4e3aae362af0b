"""RolloutBatch: the one structure that moves between the stages of a step (DESIGN.md section 4).

Token layout per row: the prompt left-padded to P, the response right-padded to T, so that
``[prompt_tokens | response_tokens]`` holds the real tokens contiguously and position ids are the
cumulative sum of the attention mask, exactly as Hugging Face ``generate`` lays out a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    prompt_id: list[str]  # [N] stable across epochs
    group: Tensor  # [N] long; rows sampled for one prompt share a group
    prompt_tokens: Tensor  # [N,P] long, left-padded
    prompt_mask: Tensor  # [N,P] long
    response_tokens: Tensor  # [N,T] long, right-padded; includes EOS when the response stopped
    response_mask: Tensor  # [N,T] float, 1 on response tokens (EOS included)
    rollout_logprobs: Tensor  # [N,T] float, the sampling policy's log-probs at temperature
    answer: list[str] = field(default_factory=list)  # [N] gold answers
    response_text: list[str] = field(default_factory=list)  # [N]
    finished: Tensor | None = None  # [N] bool: stopped on EOS (False: cut at max_new_tokens)
    fields: list[dict[str, Any]] = field(default_factory=list)  # [N] the prompt's other dataset fields
    rewards: Tensor | None = None  # [N]
    reward_extras: list[dict[str, Any]] = field(default_factory=list)  # [N]
    correct: Tensor | None = None  # [N] bool
    advantages: Tensor | None = None  # [N] or [N,T]
    old_logprobs: Tensor | None = None  # [N,T]
    ref_logprobs: Tensor | None = None  # [N,T]
    staleness: Tensor | None = None  # [N] long: updates between the sampling weights and those trained (0: on-policy)
    algo_fields: dict[str, Tensor] = field(default_factory=dict)  # per-row [N] or [N,T] tensors an
    # algorithm computes on the driver for its loss (COPO's global advantage, A*-PO's V*): LossInputs.extra

    def __len__(self) -> int:
        return len(self.prompt_id)

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum().item())

    def input_ids(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids [N,P+T], attention_mask [N,P+T], position_ids [N,P+T])`` for a forward pass."""
        ids = torch.cat([self.prompt_tokens, self.response_tokens], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return ids, mask, positions

    def select(self, index: list[int] | Tensor) -> RolloutBatch:
        """The rows ``index`` (in that order), every per-row field included."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = index.tolist()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                out[f.name] = value[index]
            elif isinstance(value, dict):
                out[f.name] = {k: v[index] for k, v in value.items()}
            elif isinstance(value, list) and value:
                out[f.name] = [value[i] for i in rows]
            else:
                out[f.name] = value
        return replace(self, **out)

    def trimmed(self) -> RolloutBatch:
        """The same rows with padding columns that no row uses removed (after selecting a sub-batch)."""
        used_p = int(self.prompt_mask.sum(1).max().item()) if len(self) else 0
        used_t = int(self.response_mask.sum(1).max().item()) if len(self) else 0
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and value.dim() == 2:
                width = self.prompt_tokens.shape[1] if f.name.startswith("prompt") else self.response_tokens.shape[1]
                if value.shape[1] == width:
                    out[f.name] = value[:, width - used_p :] if f.name.startswith("prompt") else value[:, :used_t]
        width = self.response_tokens.shape[1]
        out["algo_fields"] = {k: v[:, :used_t] if v.dim() == 2 and v.shape[1] == width else v
                              for k, v in self.algo_fields.items()}
        return replace(self, **out)


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Rows of ``batches`` in order, re-padded to common widths (prompts left, responses right).

    Group ids are kept as they are: callers make them unique across the parts. New padding holds 0 (masks
    say which positions are real).
    """
    if len(batches) == 1:
        return batches[0]
    p_width = max(b.prompt_tokens.shape[1] for b in batches)
    t_width = max(b.response_tokens.shape[1] for b in batches)

    def widen(b: RolloutBatch, name: str, value: Tensor) -> Tensor:
        if name.startswith("prompt"):
            return torch.nn.functional.pad(value, (p_width - value.shape[1], 0))
        if value.dim() == 2 and value.shape[1] == b.response_tokens.shape[1]:
            return torch.nn.functional.pad(value, (0, t_width - value.shape[1]))
        return value

    out: dict[str, Any] = {}
    for f in fields(RolloutBatch):
        values = [getattr(b, f.name) for b in batches]
        if all(v is None for v in values):
            out[f.name] = None
        elif isinstance(values[0], Tensor):
            out[f.name] = torch.cat([widen(b, f.name, v) for b, v in zip(batches, values)])
        elif isinstance(values[0], dict):
            out[f.name] = {k: torch.cat([widen(b, k, b.algo_fields[k]) for b in batches]) for k in values[0]}
        else:
            out[f.name] = [item for v in values for item in v]
    return RolloutBatch(**out)


def with_changes(batch: RolloutBatch, changes: dict[str, Any]) -> RolloutBatch:
    """``batch`` (in place) with the fields in ``changes`` set; ``changes["algo_fields"]`` adds to or replaces
    ``batch.algo_fields`` key by key. The learner's side of a batch put into the object store once per step, which
    the driver changed afterwards (:class:`rlvr.workers.placement.StagedBatch`)."""
    for name, value in changes.items():
        if name == "algo_fields":
            batch.algo_fields.update(value)
        else:
            setattr(batch, name, value)
    return batch
