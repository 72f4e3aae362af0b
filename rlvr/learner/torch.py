"""The torch learner: one process, AdamW, gradient accumulation, grad clipping, fp32 or bf16 parameters.

Per step it computes the behaviour (and reference) log-probs, then runs ``learner.epochs`` passes of
mini-batch updates. Log-probs and entropies come from the last hidden states through
:func:`rlvr.kernels.token_logprobs`, only at response positions and never as a full [tokens x vocab]
fp32 logits tensor.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from rlvr.algos.algorithm import Algorithm, LossInputs
from rlvr.algos.objective import ADDITIVE_METRICS
from rlvr.batch import RolloutBatch
from rlvr.memory import (LEARNER_MMAP_THRESHOLD, ROW_BLOCK_MMAP_THRESHOLD, learner_memory, learner_phase,
                         resident_bytes, tensor_bytes, transient_memory)
from rlvr.models.forward import response_logprobs
from rlvr.models.loading import load_model, load_weights_from_dir
from rlvr.models.tied_embedding import defer_tied_embedding_grad
from rlvr.transfer.arrays import digest, named_arrays

if TYPE_CHECKING:
    from rlvr.config import Recipe


class TorchLearner:
    """The learner in one CPU process (:class:`rlvr.learner.base.Learner`, rank 0 of 1)."""

    device = torch.device("cpu")

    def __init__(self, recipe: Recipe, model_dir: str, algorithm: Algorithm, rank: int = 0, world_size: int = 1):
        if (rank, world_size) != (0, 1):
            raise ValueError(f"the torch learner is one process; got rank {rank} of {world_size} (learner.backend "
                             "deepspeed runs a group of ranks)")
        self.recipe, self.algorithm = recipe, algorithm
        cfg = recipe.learner
        torch.manual_seed(recipe.trainer.seed)
        self.model = load_model(model_dir, recipe.model.dtype, recipe.model.gradient_checkpointing,
                                recipe.model.trust_remote_code, recipe.model.tiled_mlp, recipe.model.tiled_mlp_tokens,
                                recipe.model.checkpoint_tokens)
        self.model.train()
        # A tied embedding's lookup gradient added in place after each backward, not as a second [vocab x hidden]
        # tensor at the update's peak (rlvr.models.tied_embedding); with checkpointing, rlvr's memory-saving mode.
        self.tied_embedding = (defer_tied_embedding_grad(self.model) if self.model.is_gradient_checkpointing
                               else None)
        # Row-block recomputes allocate sub-MiB tensors: their phases map from 128 KiB (rlvr.memory).
        row_blocks = self.model.is_gradient_checkpointing and recipe.model.checkpoint_tokens is not None
        self.mmap_threshold = ROW_BLOCK_MMAP_THRESHOLD if row_blocks else LEARNER_MMAP_THRESHOLD
        self.reference = None
        if algorithm.needs_reference:
            self.reference = load_model(model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
            self.reference.requires_grad_(False).eval()
        # fused: one kernel per parameter, without the unfused step's temporaries (two of the largest parameter's
        # size at once: 226 MB for SmolLM2's tied embedding, beside the gradients; docs/memory.md).
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
        )
        self.scheduler = linear_warmup(self.optimizer, cfg.warmup_steps)
        self.temperature = recipe.rollout.temperature

    @staticmethod
    def init_group(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        """One process: no group to join."""

    def sampling_module(self) -> torch.nn.Module:
        return self.model

    # -- forward -----------------------------------------------------------------------------------
    def _forward(self, model, batch: RolloutBatch, with_entropy: bool, with_hidden: bool = False):
        """Log-probs (and entropies, and hidden states) of the response tokens under ``model``; zero where
        masked. See :func:`rlvr.models.forward.response_logprobs`."""
        return response_logprobs(model, batch.prompt_tokens, batch.prompt_mask, batch.response_tokens,
                                 batch.response_mask, self.temperature, with_entropy, with_hidden)

    @torch.no_grad()
    def _entropy(self, micro: RolloutBatch) -> Tensor:  # [n,T]
        return self._forward(self.model, micro, with_entropy=True)[1]

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, reference: bool = False, everywhere: bool = False) -> Tensor:  # [N,T]
        """Log-probs of the batch's responses under the current policy (or the frozen reference); one process,
        so ``everywhere`` changes nothing."""
        model = self.reference if reference else self.model
        out = torch.zeros(batch.response_tokens.shape)
        for rows in chunks(len(batch), self.recipe.learner.micro_batch_size):
            micro = batch.select(rows).trimmed()
            logp, _ = self._forward(model, micro, with_entropy=False)
            out[rows, : logp.shape[1]] = logp.float()
        return out

    # -- update ------------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``epochs`` x mini-batches of optimizer steps on ``batch``; returns the step's learner metrics."""
        before = weight_norm(self.model.parameters())
        sums, grad_norms, skipped = optimizer_steps(batch, self.recipe.learner, self._optimizer_step)
        return {**step_metrics(sums, grad_norms, skipped, self.scheduler.get_last_lr()[0]),
                **weight_metrics(before, weight_norm(self.model.parameters()))}

    def _optimizer_step(self, minibatch: RolloutBatch, sums: dict[str, float]) -> tuple[float, bool]:
        """Gradient accumulation over ``minibatch``'s micro-batches, then one clipped optimizer step; adds the
        metrics, weighted by token share, to ``sums``. Returns the gradient norm and whether it was applied."""
        cfg = self.recipe.learner
        num_tokens = float(minibatch.response_mask.sum().item())
        micro_rows = chunks(len(minibatch), cfg.micro_batch_size)
        contexts = self.algorithm.minibatch_context(minibatch, micro_rows, self._entropy)
        self.optimizer.zero_grad(set_to_none=True)
        for rows, context in zip(micro_rows, contexts):
            micro = minibatch.select(rows).trimmed()
            metrics = self._backward(micro, num_tokens, float(len(minibatch)), len(micro_rows), context)
            share = float(micro.response_mask.sum().item()) / max(num_tokens, 1.0)
            for key, value in metrics.items():
                sums[key] += value if key in ADDITIVE_METRICS else value * share
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        applied = bool(torch.isfinite(norm))
        if applied:
            self.optimizer.step()
            for key, value in self.algorithm.on_optimizer_step().items():
                sums[key] += value
        # else: a non-finite gradient would poison the weights; the step is skipped and counted
        self.optimizer.zero_grad(set_to_none=True)  # no gradients held through generation (a model's size)
        self.scheduler.step()
        return float(norm), applied

    def _backward(self, micro: RolloutBatch, num_tokens: float, num_seqs: float, num_micro: int,
                  context: dict) -> dict[str, float]:
        lm_head = self.model.get_output_embeddings().weight if self.algorithm.needs_hidden else None
        loss, metrics = micro_loss(self.algorithm, self._forward_for_loss, micro, num_tokens, num_seqs, num_micro,
                                   self.scheduler.get_last_lr()[0], context, lm_head)
        self._run_backward(loss)
        return metrics

    def _run_backward(self, loss: Tensor) -> None:
        """``loss.backward()``, then the tied embedding's deferred gradient added into ``.grad``."""
        loss.backward()
        if self.tied_embedding is not None:
            self.tied_embedding.apply()

    def _forward_for_loss(self, micro: RolloutBatch, with_entropy: bool, with_hidden: bool):
        return self._forward(self.model, micro, with_entropy, with_hidden)

    # -- state -------------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters and buffers for the rollout workers (:mod:`rlvr.transfer.arrays`)."""
        return named_arrays(self.model)

    def digest(self) -> str:
        return digest(self.model)

    def memory_report(self, batch: RolloutBatch | None = None) -> dict[str, int]:
        """Where this process's memory goes (docs/memory.md), in bytes: the learner's tensors and the resident
        set (:func:`rlvr.memory.learner_memory`); with ``batch``, also the peak that a log-prob pass over it
        adds, and for one forward and backward of its largest micro-batch the activations kept after the forward,
        the gradients and the peak added. Changes no weight and leaves no gradient behind (the next optimizer step
        starts from none either way)."""
        report = learner_memory(self.model, self.optimizer, self.reference)
        if batch is None:
            return report
        self.optimizer.zero_grad(set_to_none=True)
        micros = [batch.select(rows).trimmed() for rows in chunks(len(batch), self.recipe.learner.micro_batch_size)]
        largest = max(micros, key=lambda m: m.prompt_tokens.numel() + m.response_tokens.numel())
        report["micro_batch_rows"] = len(largest)
        report["micro_batch_tokens"] = largest.prompt_tokens.numel() + largest.response_tokens.numel()
        with learner_phase(self.mmap_threshold):  # allocated as the learner's phases allocate (measured outside, the heap would differ)
            with transient_memory() as logprob_pass:
                self.logprobs(batch)
            with transient_memory() as step:
                logp, _ = self._forward(self.model, largest, with_entropy=self.algorithm.needs_entropy)
                report["activations"] = resident_bytes() - step["start"]
                self._run_backward((logp * largest.response_mask).sum())  # a stand-in loss: the real one's graph
                del logp
            gradients = tensor_bytes(p.grad for p in self.model.parameters())
            self.optimizer.zero_grad(set_to_none=True)
        report["logprob_pass"] = logprob_pass["peak"]
        report["update_gradients"] = gradients
        report["update_peak"] = step["peak"]  # gradients, activations and the backward's transients at the worst moment
        return report

    def save(self, directory: str) -> dict:
        """Model in Hugging Face format, optimizer and scheduler; returns the algorithm's learner-side state, which
        the driver saves with its own (one file, ``algorithm_state.pt``)."""
        self.model.save_pretrained(directory, safe_serialization=True)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   Path(directory) / "learner_state.pt")
        return self.algorithm.state_dict()

    def load(self, directory: str, algorithm_state: dict) -> None:
        load_weights_from_dir(self.model, directory)
        state = torch.load(Path(directory) / "learner_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        recipe_hyperparameters(self.scheduler, self.recipe.learner)
        self.algorithm.load_state_dict(algorithm_state)


def micro_loss(algorithm: Algorithm, forward, micro: RolloutBatch, num_tokens: float, num_seqs: float,
               num_micro: int, lr: float, context: dict, lm_head_weight: Tensor | None = None
               ) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch's loss (to backpropagate) and metrics: the forward, then :meth:`Algorithm.loss`.

    ``forward(micro, with_entropy, with_hidden)`` returns ``(logp, entropy[, hidden])`` at response positions.
    ``num_tokens`` / ``num_seqs`` / ``num_micro`` count the whole mini-batch (over every data-parallel rank),
    so that the micro-batch losses sum to the mini-batch's loss. ``lm_head_weight`` is needed only when the
    algorithm asks for hidden states (CAPO).
    """
    with_entropy = algorithm.needs_entropy or algorithm.options.entropy_coef != 0
    hidden = weight = None
    if algorithm.needs_hidden:
        logp, entropy, hidden = forward(micro, with_entropy, True)
        hidden, weight = hidden.detach(), lm_head_weight.detach()
    else:
        logp, entropy = forward(micro, with_entropy, False)
    mask = micro.response_mask.to(logp.dtype)
    width = logp.shape[1]
    inputs = LossInputs(
        logp=logp,
        old_logp=micro.old_logprobs[:, :width] if micro.old_logprobs is not None else logp.detach(),
        entropy=entropy,
        mask=mask,
        advantages=micro.advantages if micro.advantages.dim() == 1 else micro.advantages[:, :width],
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        num_micro=num_micro,
        ref_logp=micro.ref_logprobs[:, :width] if micro.ref_logprobs is not None else None,
        lr=lr,
        hidden=hidden,
        lm_head_weight=weight,
        response_tokens=micro.response_tokens[:, :width],
        extra={**micro.algo_fields, **context},
    )
    loss, metrics = algorithm.loss(inputs)
    if entropy is not None:
        metrics["actor/entropy"] = float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1))
    return loss, metrics


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over the first ``warmup_steps`` optimizer steps, then stays."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0
    )


def recipe_hyperparameters(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg) -> None:
    """The recipe's learning rate, betas and weight decay over those a checkpoint's optimizer state brought back
    (a resume with ``--allow-recipe-change`` may change them; else they are equal), the warm-up's position kept."""
    optimizer = scheduler.optimizer
    for group in optimizer.param_groups:
        group.update(initial_lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = cfg.lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def optimizer_steps(batch: RolloutBatch, cfg, optimizer_step) -> tuple[dict[str, float], list[float], int]:
    """``cfg.epochs`` passes over ``batch`` in mini-batches of ``cfg.mini_batch_size`` rows (default: all), one
    ``optimizer_step(minibatch, sums) -> (grad_norm, applied)`` each, shared by the torch and DeepSpeed learners.
    Returns the metric sums, every step's gradient norm, and the number of skipped (non-finite) steps."""
    mini = cfg.mini_batch_size or len(batch)
    sums: dict[str, float] = defaultdict(float)
    grad_norms, skipped = [], 0
    for _ in range(cfg.epochs):
        for rows in chunks(len(batch), mini):
            norm, applied = optimizer_step(batch.select(rows), sums)
            grad_norms.append(norm)
            skipped += not applied
    return sums, grad_norms, skipped


def step_metrics(sums: dict[str, float], grad_norms: list[float], skipped: int, lr: float) -> dict[str, float]:
    """The learner metrics of one RL step: per-optimizer-step means of ``sums``, the mean gradient norm, the
    learning rate after the step and the count of skipped steps."""
    steps = max(1, len(grad_norms))
    out = {key: value / steps for key, value in sums.items()}
    out["actor/grad_norm"] = sum(grad_norms) / steps
    out["actor/lr"] = lr
    out["actor/skipped_steps"] = float(skipped)
    return out


def weight_norm(parameters, squared: bool = False) -> float:
    """The L2 norm of all ``parameters`` together (its square with ``squared``), computed in float32."""
    total = sum(float(torch.linalg.vector_norm(p.detach(), dtype=torch.float32)) ** 2 for p in parameters)
    return total if squared else total**0.5


def weight_metrics(before: float, after: float) -> dict[str, float]:
    """``actor/weight_norm`` after an RL step's update and ``actor/weight_growth``, its ratio to the norm before:
    what the runaway-weights guard (``trainer.guards.max_weight_growth``) reads."""
    return {"actor/weight_norm": after, "actor/weight_growth": after / before if before > 0 else float("nan")}


def chunks(n: int, size: int) -> list[list[int]]:
    """``range(n)`` in consecutive pieces of ``size`` (the last may be shorter)."""
    return [list(range(start, min(n, start + size))) for start in range(0, n, size)]
