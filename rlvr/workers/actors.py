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


@ray.remote
class LearnerActor(_Sampler):
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

    def logprobs(self, batch: RolloutBatch, reference: bool = False) -> torch.Tensor:
        return self.learner.logprobs(batch, reference)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        return self.learner.update(batch)

    def weights(self) -> dict[str, np.ndarray]:
        from rlvr.workers.weights import named_arrays

        return named_arrays(self.learner.model)

    def learner_digest(self) -> str:
        from rlvr.workers.weights import digest

        return digest(self.learner.model)

    def save(self, directory: str) -> None:
        self.learner.save(directory)

    def load(self, directory: str) -> None:
        self.learner.load(directory)


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
