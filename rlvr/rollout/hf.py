"""The Hugging Face ``generate`` engine: batched sampling with per-token log-probs, for CPUs and small GPUs.

In colocated placement it samples with the learner's own module (no copy); in split placement it owns a
copy and receives weights as numpy arrays (:meth:`HFEngine.load_weights`).

Log-probs are those of the temperature-scaled distribution before top-p/top-k truncation, recomputed after
generation in one parallel forward pass (vLLM's ``processed_logprobs`` equal them only while top-p and top-k
are off; see docs/engines.md).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import torch

from rlvr.models.forward import response_logprobs
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.transfer.arrays import load_named_arrays

if TYPE_CHECKING:
    from rlvr.config import Recipe


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    @classmethod
    def from_recipe(cls, recipe: Recipe, model_dir: str, *, module: torch.nn.Module | None = None,
                    device: torch.device | str = "cpu", colocated: bool = False, weight_transfer: str | None = None,
                    index: int = 0) -> HFEngine:
        """A training run's engine: sampling with ``module`` (the learner's own, colocated), else with a copy of
        the model loaded from ``model_dir`` onto ``device``, fed by :meth:`load_weights`."""
        from rlvr.models.loading import load_model, load_tokenizer

        if weight_transfer is not None:
            raise ValueError(f"weight_transfer={weight_transfer!r}: the Hugging Face engine loads host arrays only")
        if module is None:
            module = load_model(model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
            module.requires_grad_(False).eval().to(device)
        return cls(module, load_tokenizer(model_dir), recipe.rollout.batch_size)

    @classmethod
    def for_eval(cls, path: str, tokenizer, dtype: str, device: str, args: argparse.Namespace) -> tuple[HFEngine, str]:
        """``rlvr eval``'s engine (its command-line ``args``) and how to describe it."""
        from rlvr.models.loading import load_model

        model = load_model(path, dtype, trust_remote_code=args.trust_remote_code)
        model.to(device).eval()
        return cls(model, tokenizer, args.batch_size), f"hf generate on {device}, {dtype}"

    @torch.no_grad()
    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        # Seeded per call so that a step's samples depend only on (weights, requests, seed): the same in
        # colocated and split placement, and after a resume.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.seed)
            for start in range(0, len(requests), self.batch_size):
                out.extend(self._generate_batch(requests[start : start + self.batch_size], sampling))
        return out

    def _generate_batch(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(r) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding, as generate expects for decoder-only models
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        greedy = sampling.temperature == 0
        was_training = self.model.training
        self.model.eval()
        ids, mask = ids.to(device), mask.to(device)
        sequences = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy or sampling.top_p >= 1.0 else sampling.top_p,
            top_k=None if greedy or sampling.top_k == 0 else sampling.top_k,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            use_cache=True,  # a model that checkpoints its activations sets config.use_cache False for training
        )
        tokens = sequences[:, width:]
        # Each response ends at its first EOS (kept: the policy learns to stop); after it, padding.
        is_eos = tokens == self.eos_id
        response_mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0
        # Log-probs in one parallel pass rather than from generate's per-step logits, which would hold
        # [batch x steps x vocab] floats (hundreds of GB for a 150k vocabulary at 4k tokens).
        rows_logprobs = [[] for _ in requests]
        if sampling.logprobs:
            logprobs, _ = response_logprobs(self.model, ids, mask, tokens, response_mask,
                                            1.0 if greedy else sampling.temperature)
            rows_logprobs = logprobs.float().cpu().tolist()
        self.model.train(was_training)
        completions = []
        for row, row_logprobs, finished in zip(tokens.tolist(), rows_logprobs, is_eos.any(1).tolist()):
            length = row.index(self.eos_id) + 1 if finished else len(row)
            response = row[:length]
            text = self.tokenizer.decode(response, skip_special_tokens=True)
            completions.append(Completion(response, row_logprobs[:length], text, "stop" if finished else "length"))
        return completions

    def load_weights(self, named_arrays: dict[str, np.ndarray]) -> None:
        load_named_arrays(self.model, named_arrays)

    def sleep(self) -> None:  # nothing to release on CPU; vLLM frees its KV cache here
        pass

    def wake(self) -> None:
        pass
