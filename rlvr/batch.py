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
        return replace(self, **out)
