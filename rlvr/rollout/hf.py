"""The Hugging Face ``generate`` engine: batched sampling with per-token log-probs, for CPUs and small GPUs.

In colocated placement it samples with the learner's own module (no copy); in split placement it owns a
copy and receives weights as numpy arrays (:meth:`HFEngine.load_weights`).

Log-probs are those of the temperature-scaled distribution before top-p/top-k truncation (vLLM's
``processed_logprobs`` equal them only while top-p and top-k are off; see docs/engines.md), taken from the logits
``generate`` computes anyway (:class:`SampledLogprobs`), not from a second forward pass.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

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
        warp = SampledLogprobs(1.0 if greedy else sampling.temperature, 0 if greedy else sampling.top_k,
                               1.0 if greedy else sampling.top_p, record=sampling.logprobs)
        sequences = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            # The sampling transforms are the processor's (it records the log-probs between them): generate's own
            # are off, whatever the model's generation_config says.
            temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList([warp]),
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            use_cache=True,  # a model that checkpoints its activations sets config.use_cache False for training
        )
        self.model.train(was_training)
        tokens = sequences[:, width:]
        # Each response ends at its first EOS (kept: the policy learns to stop); after it, padding.
        is_eos = tokens == self.eos_id
        finished = is_eos.any(1)
        lengths = torch.where(finished, is_eos.long().argmax(1) + 1, tokens.shape[1]).tolist()
        responses = [row[:length] for row, length in zip(tokens.tolist(), lengths)]
        logprobs = warp.logprobs(tokens).tolist() if sampling.logprobs else [[]] * len(responses)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return [Completion(response, row_logprobs[:length], text, "stop" if stopped else "length")
                for response, row_logprobs, text, length, stopped
                in zip(responses, logprobs, texts, lengths, finished.tolist())]

    def load_weights(self, named_arrays: dict[str, np.ndarray]) -> None:
        load_named_arrays(self.model, named_arrays)

    def sleep(self) -> None:  # nothing to release on CPU; vLLM frees its KV cache here
        pass

    def wake(self) -> None:
        pass


class SampledLogprobs(LogitsProcessor):
    """The sampling transforms as one logits processor: temperature, then top-k, then top-p (generate's own order,
    with its own warpers, so the samples are the same as with generate's), recording between the temperature and
    the truncation the log-softmax that the next token is drawn from. Each call gathers the previous step's
    distribution at the token just sampled (the last column of ``input_ids``), so only one step's [batch x vocab]
    log-probs are held at a time; :meth:`logprobs` gathers the last step's."""

    def __init__(self, temperature: float, top_k: int, top_p: float, record: bool = True):
        self.temperature, self.record = temperature, record
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        self.steps: list[torch.Tensor] = []  # [batch] float per sampled step but the last
        self.pending: torch.Tensor | None = None  # the latest step's log-softmax [batch, vocab]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.record:
            if self.pending is not None:
                self.steps.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
            self.pending = torch.log_softmax(scores, dim=-1)
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        return scores

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, T]`` log-probs of the sampled ``tokens`` (generate's new columns), zero where none."""
        if self.pending is None:
            return torch.zeros(tokens.shape)
        last = self.pending.gather(1, tokens[:, len(self.steps) : len(self.steps) + 1]).squeeze(1)
        out = torch.stack([*self.steps, last], dim=1).float().cpu()
        return torch.nn.functional.pad(out, (0, tokens.shape[1] - out.shape[1]))
