"""Starting Ray and placing the actors: colocated (one actor samples and learns) or split; the learner
is one torch actor or a DeepSpeed group of ``learner.num_ranks`` rank actors.

Locally the driver starts a private Ray instance; on a cluster set ``placement.ray_address: auto`` (or
``RLVR_RAY_ADDRESS=auto``) after ``ray start`` on each node, and the same recipe runs there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray
import torch

from rlvr.batch import RolloutBatch
from rlvr.config import Recipe
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.workers.actors import LearnerActor, LearnerRankActor, RolloutActor


def start_ray(recipe: Recipe) -> None:
    if ray.is_initialized():
        return
    cfg = recipe.placement
    address = cfg.ray_address or os.environ.get("RLVR_RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        return
    ray.init(
        num_cpus=cfg.num_cpus or os.cpu_count(),
        object_store_memory=cfg.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=True,
        # Actors import rlvr from the installed package; nothing of the working dir needs shipping.
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )


@dataclass
class Workers:
    """The actors of a run. ``learners`` are the learner group's ranks (one for the torch learner): every
    learner call goes to all of them, and rank 0's answer is the group's."""

    learners: list[ray.actor.ActorHandle]
    rollouts: list[ray.actor.ActorHandle]
    colocated: bool
    refresh_engine: bool = False  # colocated ZeRO-3: rank 0 samples with a copy, refreshed after updates
    last_sync_bytes: int = field(default=0)

    @property
    def learner(self) -> ray.actor.ActorHandle:
        """Rank 0 of the learner group."""
        return self.learners[0]

    @classmethod
    def create(cls, recipe: Recipe, model_dir: str) -> Workers:
        if recipe.learner.backend == "deepspeed":
            return cls._create_group(recipe, model_dir)
        data = recipe.model_dump(mode="json")
        cpus = int(ray.available_resources().get("CPU", 1))
        threads = recipe.placement.num_threads
        if recipe.placement.mode == "colocated":
            learner = LearnerActor.options(num_cpus=min(cpus, 1)).remote(data, model_dir, threads or max(1, cpus), True)
            return cls([learner], [learner], colocated=True)
        share = max(1, cpus // 2)
        learner = LearnerActor.options(num_cpus=min(1, cpus)).remote(data, model_dir, threads or share, False)
        rollout = RolloutActor.options(num_cpus=0).remote(data, model_dir, threads or share)
        return cls([learner], [rollout], colocated=False)

    @classmethod
    def _create_group(cls, recipe: Recipe, model_dir: str) -> Workers:
        """M DeepSpeed rank actors (one device each where the cluster has GPUs), joined into one process
        group at rank 0's address; in split placement also a rollout actor."""
        data, ranks = recipe.model_dump(mode="json"), recipe.learner.num_ranks
        colocated = recipe.placement.mode == "colocated"
        cpus = ray.available_resources().get("CPU", 1.0)
        # Fractional CPUs: M ranks fit a small machine (2 CPUs in CI) beside the rollout actor (0 CPUs).
        num_cpus = min(1.0, cpus / ranks)
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= ranks else 0
        threads = recipe.placement.num_threads or max(1, int(cpus) // (ranks + (0 if colocated else 1)))
        learners = [
            LearnerRankActor.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(
                data, model_dir, threads, rank, ranks, colocated and rank == 0)
            for rank in range(ranks)
        ]
        master_addr, master_port = ray.get(learners[0].address.remote())
        _get_all([learner.setup.remote(master_addr, master_port) for learner in learners])
        if colocated:
            return cls(learners, learners[:1], colocated=True, refresh_engine=recipe.learner.zero_stage == 3)
        rollout = RolloutActor.options(num_cpus=0).remote(data, model_dir, threads)
        return cls(learners, [rollout], colocated=False)

    # -- the learner group -------------------------------------------------------------------------
    def _on_learners(self, method: str, *args: object) -> object:
        """``method(*args)`` on every rank (the step batch goes into the object store once); rank 0's answer."""
        args = tuple(ray.put(a) if isinstance(a, RolloutBatch) and len(self.learners) > 1 else a for a in args)
        return _get_all([getattr(learner, method).remote(*args) for learner in self.learners])[0]

    def logprobs(self, batch: RolloutBatch, reference: bool = False) -> torch.Tensor:  # [N,T]
        """The learner's log-probs of ``batch``'s responses (under the reference with ``reference``)."""
        return self._on_learners("logprobs", batch, reference)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One step's optimizer updates on ``batch``; the learner's metrics."""
        return self._on_learners("update", batch)

    def save(self, directory: str) -> None:
        self._on_learners("save", directory)

    def load(self, directory: str) -> None:
        self._on_learners("load", directory)

    def learner_digest(self) -> str:
        """:func:`rlvr.workers.weights.digest` of the learner's full weights."""
        return self._on_learners("learner_digest")

    def peak_memory(self) -> int:
        """The largest peak memory over every actor (learner ranks and rollout workers)."""
        actors = {id(a): a for a in [*self.learners, *self.rollouts]}.values()
        return max(ray.get([actor.peak_memory.remote() for actor in actors]))

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Requests split evenly over the rollout workers (each seeded apart), results in request order."""
        shards = len(self.rollouts)
        size = -(-len(requests) // shards)
        futures = [
            worker.generate.remote(requests[i * size : (i + 1) * size],
                                   SamplingParams(**{**sampling.__dict__, "seed": sampling.seed + i}))
            for i, worker in enumerate(self.rollouts)
        ]
        return [c for part in ray.get(futures) for c in part]

    def sync_weights(self) -> float:
        """Learner -> rollout workers; seconds taken. Split placement: rank 0's gathered weights through the
        object store (numpy, zero-copy). Colocated: nothing, except a ZeRO-3 group's engine copy, refreshed
        in rank 0's process."""
        if self.colocated and not self.refresh_engine:
            return 0.0
        started = time.perf_counter()
        if self.colocated:
            self.last_sync_bytes = self._on_learners("refresh_engine")
            return time.perf_counter() - started
        gathered = [learner.weights.remote() for learner in self.learners]  # a collective under ZeRO-3
        sizes = _get_all([worker.load_weights.remote(gathered[0]) for worker in self.rollouts] + gathered[1:])
        self.last_sync_bytes = sizes[0]
        return time.perf_counter() - started

    def shutdown(self) -> None:
        for actor in {id(a): a for a in [*self.learners, *self.rollouts]}.values():
            ray.kill(actor)


def _get_all(refs: list[ray.ObjectRef]) -> list:
    """``ray.get(refs)``, raising the first failure as soon as it happens: a learner rank that failed leaves
    its peers waiting in a collective until the process group's timeout (minutes), which ray.get would
    wait out."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)
