"""Ray actors: the learner (which also samples in colocated placement) and the rollout worker.

Actors receive the recipe as a plain dict and rebuild it, so what runs remotely is exactly what the
driver validated. Each sets its torch thread count first: on a CPU, threads are the actor's share of
the machine, and equal thread counts keep colocated and split runs numerically identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from rlvr.batch import RolloutBatch
from rlvr.rollout.engine import Completion, SamplingParams


def _setup(recipe_data: dict[str, Any], num_threads: int):
    from rlvr.config import Recipe

    torch.set_num_threads(num_threads)
    return Recipe.model_validate(recipe_data)


class _Sampler:
    """What both actor kinds share: an engine to sample with."""

    engine: Any

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return self.engine.generate(requests, sampling)

    def weights_digest(self) -> str:
        from rlvr.workers.weights import digest

        return digest(self.engine.model)

    def peak_memory(self) -> int:
        from rlvr.learner.torch import peak_memory_bytes

        return peak_memory_bytes()


class _Learning(_Sampler):
    """What both learner actor kinds share: calls passed to their learner (``TorchLearner`` or one rank of
    ``DeepSpeedLearner``), which answers on rank 0."""

    learner: Any

    def logprobs(self, batch: RolloutBatch, reference: bool = False) -> torch.Tensor | None:
        return self.learner.logprobs(batch, reference)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        return self.learner.update(batch)

    def weights(self) -> dict[str, np.ndarray]:
        return self.learner.weights()

    def learner_digest(self) -> str:
        return self.learner.digest()

    def save(self, directory: str) -> None:
        self.learner.save(directory)

    def load(self, directory: str) -> None:
        self.learner.load(directory)


@ray.remote
class LearnerActor(_Learning):
    """The torch learner; in colocated placement its engine samples with the learner's own module."""

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, with_engine: bool):
        from rlvr import algos
        from rlvr.learner.torch import TorchLearner
        from rlvr.models.loading import load_tokenizer
        from rlvr.rollout.hf import HFEngine

        recipe = _setup(recipe_data, num_threads)
        algorithm = algos.from_recipe(recipe)
        self.learner = TorchLearner(recipe, model_dir, algorithm)
        self.engine = None
        if with_engine:
            self.engine = HFEngine(self.learner.model, load_tokenizer(model_dir), recipe.rollout.batch_size)


@ray.remote
class LearnerRankActor(_Learning):
    """One rank of a DeepSpeed learner group (:mod:`rlvr.learner.deepspeed`). Built in two calls: the
    constructor, then :meth:`setup` on every rank at once with rank 0's address (the process group's
    rendezvous waits for all of them).

    With ``with_engine`` (colocated placement, rank 0) it also samples: under ZeRO-2 with the learner's
    own module, whose parameters every rank holds whole; under ZeRO-3 with a copy, refreshed in process
    by :meth:`refresh_engine` after each update, since a partitioned module's forward is a collective
    that the other ranks would have to join for every generated token.
    """

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, rank: int, world_size: int,
                 with_engine: bool):
        self.recipe = _setup(recipe_data, num_threads)
        self.model_dir, self.rank, self.world_size, self.with_engine = model_dir, rank, world_size, with_engine
        self.engine = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it: the process group's rendezvous (rank 0)."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        from rlvr import algos
        from rlvr.learner.deepspeed import DeepSpeedLearner, init_process_group
        from rlvr.models.loading import load_model, load_tokenizer
        from rlvr.rollout.hf import HFEngine

        init_process_group(self.rank, self.world_size, master_addr, master_port)
        recipe = self.recipe
        self.learner = DeepSpeedLearner(recipe, self.model_dir, algos.from_recipe(recipe), self.rank, self.world_size)
        if self.with_engine:
            model = self.learner.model
            if self.learner.stage == 3:
                model = load_model(self.model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
                model.requires_grad_(False).eval().to(self.learner.device)
            self.engine = HFEngine(model, load_tokenizer(self.model_dir), recipe.rollout.batch_size)

    def refresh_engine(self) -> int:
        """Colocated ZeRO-3: gather the weights (every rank) into rank 0's engine copy; bytes copied."""
        arrays = self.learner.weights()
        if self.engine is None:
            return 0
        self.engine.load_weights(arrays)
        return sum(a.nbytes for a in arrays.values())


@ray.remote
class RolloutActor(_Sampler):
    """A rollout worker with its own copy of the policy (split placement)."""

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int):
        from rlvr.models.loading import load_model, load_tokenizer
        from rlvr.rollout.hf import HFEngine

        recipe = _setup(recipe_data, num_threads)
        model = load_model(model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
        model.requires_grad_(False).eval()
        self.engine = HFEngine(model, load_tokenizer(model_dir), recipe.rollout.batch_size)

    def load_weights(self, arrays: dict[str, np.ndarray]) -> int:
        self.engine.load_weights(arrays)
        return sum(a.nbytes for a in arrays.values())
