"""Starting Ray and placing the actors: colocated (one actor samples and learns) or split.

Locally the driver starts a private Ray instance; on a cluster set ``placement.ray_address: auto`` (or
``RLVR_RAY_ADDRESS=auto``) after ``ray start`` on each node, and the same recipe runs there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray

from rlvr.config import Recipe
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.workers.actors import LearnerActor, RolloutActor


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
    learner: ray.actor.ActorHandle
    rollouts: list[ray.actor.ActorHandle]
    colocated: bool
    last_sync_bytes: int = field(default=0)

    @classmethod
    def create(cls, recipe: Recipe, model_dir: str) -> Workers:
        data = recipe.model_dump(mode="json")
        cpus = int(ray.available_resources().get("CPU", 1))
        threads = recipe.placement.num_threads
        if recipe.placement.mode == "colocated":
            learner = LearnerActor.options(num_cpus=min(cpus, 1)).remote(data, model_dir, threads or max(1, cpus), True)
            return cls(learner, [learner], colocated=True)
        share = max(1, cpus // 2)
        learner = LearnerActor.options(num_cpus=min(1, cpus)).remote(data, model_dir, threads or share, False)
        rollout = RolloutActor.options(num_cpus=0).remote(data, model_dir, threads or share)
        return cls(learner, [rollout], colocated=False)

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
        """Learner -> rollout workers through the object store (numpy, zero-copy); seconds taken."""
        if self.colocated:
            return 0.0
        started = time.perf_counter()
        arrays = self.learner.weights.remote()
        sizes = ray.get([worker.load_weights.remote(arrays) for worker in self.rollouts])
        self.last_sync_bytes = sizes[0]
        return time.perf_counter() - started

    def shutdown(self) -> None:
        for actor in {id(a): a for a in [self.learner, *self.rollouts]}.values():
            ray.kill(actor)
