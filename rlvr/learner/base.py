"""The learner protocol: what the learner actor (:class:`rlvr.workers.actors.LearnerActor`) calls, for every learner
(:mod:`rlvr.learner.registry`). One rank of a group: a distributed learner's methods are collective (every rank
calls them, in the same order) and rank 0's answer is the group's; a one-process learner is rank 0 of 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from rlvr.batch import RolloutBatch

if TYPE_CHECKING:
    from rlvr.algos.algorithm import Algorithm
    from rlvr.config import LearnerConfig, Recipe
    from rlvr.transfer.specs import TensorSpec

OldLogprobs = Literal["given", "rollout", "pass", "forward"]


def needs_old_logprob_pass(cfg: LearnerConfig, algorithm: Algorithm, rows: int) -> bool:
    """Whether the behaviour log-probs need a learner pass of their own. With one optimizer step per rollout (one
    epoch, no smaller mini-batches) the update's forward runs on the very weights that the old log-probs would be
    recomputed with, so the learner takes them from that forward (detached: ratio 1, as TRL's GRPO does with one
    iteration) and the pass is skipped (``time/old_logprob`` ~0). The KL in the reward and truncated importance
    sampling read them before the update, so they keep the pass."""
    single_update = cfg.epochs == 1 and (cfg.mini_batch_size is None or cfg.mini_batch_size >= rows)
    return not single_update or algorithm.options.kl_in_reward or algorithm.needs_rollout_logprobs


def old_logprob_source(cfg: LearnerConfig, algorithm: Algorithm, batch: RolloutBatch) -> OldLogprobs:
    """Where the update's behaviour log-probs come from: ``"given"`` (the driver sent them), ``"rollout"`` (the
    engine's; ``learner.recompute_old_logprobs`` false), ``"pass"`` (a no-grad pass first) or ``"forward"`` (the
    update's own forward, :func:`needs_old_logprob_pass`)."""
    if batch.old_logprobs is not None:
        return "given"
    if not cfg.recompute_old_logprobs:
        return "rollout"
    return "pass" if needs_old_logprob_pass(cfg, algorithm, len(batch)) else "forward"


class Learner(Protocol):
    """Built as ``cls(recipe, model_dir, algorithm, rank, world_size)`` after ``cls.init_group(rank, world_size,
    master_addr, master_port)`` has joined this rank to its group (a no-op for one process)."""

    device: torch.device
    mmap_threshold: int  # glibc's mmap threshold while it works (rlvr.memory.learner_phase)

    def __init__(self, recipe: Recipe, model_dir: str, algorithm: Algorithm, rank: int = 0,
                 world_size: int = 1) -> None: ...

    @staticmethod
    def init_group(rank: int, world_size: int, master_addr: str, master_port: int) -> None: ...

    def sampling_module(self) -> torch.nn.Module | None:
        """The policy module whole in this process, for an engine that samples with it (the Hugging Face engine,
        colocated); None when the learner partitions it (ZeRO-3), so that such an engine keeps a copy."""

    algorithm: Algorithm

    def logprobs(self, batch: RolloutBatch, reference: bool = False, everywhere: bool = False) -> Tensor | None:
        """[N,T] log-probs of the responses under the policy (or the frozen reference) on rank 0 (``everywhere``:
        on every rank; the others get None otherwise)."""

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """A step's optimizer updates on ``batch`` (advantages and behaviour log-probs in it); the learner's metrics
        (rank 0's; the other ranks ``{}``)."""

    def weights(self) -> dict[str, np.ndarray]:
        """The full policy as host arrays (:mod:`rlvr.transfer.arrays`), for engines fed through host memory."""

    def device_weights(self) -> tuple[list[TensorSpec], Iterator[tuple[str, Tensor]]]:
        """The policy's tensors on its GPU, for the GPU weight syncs (learners that run on GPUs)."""

    def digest(self) -> str: ...

    def save(self, directory: str) -> dict[str, Any]:
        """The learner's checkpoint files in ``directory``; returns the algorithm's learner-side state."""

    def load(self, directory: str, algorithm_state: dict[str, Any]) -> None: ...
