"""Ray actors: the learner (which also samples in colocated placement) and the rollout worker.

Actors receive the recipe as a plain dict and rebuild it, so what runs remotely is exactly what the
driver validated. Each sets its torch thread count first: on a CPU, threads are the actor's share of
the machine, and equal thread counts keep colocated and split runs numerically identical.

A vLLM engine (``rollout.engine: vllm``) is built inside the actor that holds it, importing vLLM there and
only there (:func:`build_vllm_engine`): in a rollout actor of its own (split placement), or in every DeepSpeed
learner rank's actor (colocated placement), where it sleeps while the learner works (:meth:`_Learning.logprobs`,
:meth:`_Learning.update`) and wakes to generate. The GPU weight syncs of :mod:`rlvr.workers.sync` live in the
learner ranks (:meth:`LearnerRankActor.setup_weight_sync`); a rollout actor forwards the engine methods they
call (:class:`EngineMethods`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch

from rlvr.batch import RolloutBatch
from rlvr.memory import LEARNER_MMAP_THRESHOLD, learner_phase, release_free_memory
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.transfer.specs import BACKENDS

if TYPE_CHECKING:
    from rlvr.config import Recipe


def _setup(recipe_data: dict[str, Any], num_threads: int):
    from rlvr.config import Recipe

    torch.set_num_threads(num_threads)
    return Recipe.model_validate(recipe_data)


def vllm_options(recipe: Recipe, weight_transfer: str | None, colocated: bool, index: int = 0) -> dict[str, Any]:
    """Keyword arguments of :class:`rlvr.rollout.vllm.VLLMEngine` for one engine of ``recipe``.

    Colocated engines get sleep mode (their memory goes back to the learner between generations). One GPU per
    engine runs vLLM's in-process ("uni") executor in the engine's own process; tensor parallelism runs vLLM's
    Ray executor, whose workers take the GPU bundles of the placement group the engine's actor was scheduled in
    (vLLM 0.32 captures it: ``engine/arg_utils.py`` ``get_current_placement_group``; ``ray_executor_v2.py``).
    """
    rollout, tp = recipe.rollout, recipe.rollout.tensor_parallel_size
    return {
        "dtype": recipe.model.dtype, "tensor_parallel_size": tp,
        "gpu_memory_utilization": rollout.gpu_memory_utilization, "max_model_len": rollout.max_model_len,
        "seed": recipe.trainer.seed + index, "enable_sleep_mode": colocated, "enforce_eager": rollout.enforce_eager,
        "enable_prefix_caching": rollout.enable_prefix_caching, "weight_transfer": weight_transfer,
        "kv_cache_gb": rollout.kv_cache_gb, "trust_remote_code": recipe.model.trust_remote_code,
        "distributed_executor_backend": "uni" if tp == 1 else "ray",
    }


def build_vllm_engine(recipe: Recipe, model_dir: str, weight_transfer: str | None, colocated: bool, index: int):
    """A :class:`rlvr.rollout.vllm.VLLMEngine` in this actor (vLLM imported here, never on CPU-only paths)."""
    import os

    from rlvr.rollout.vllm import VLLMEngine

    if recipe.rollout.tensor_parallel_size > 1 and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        # An actor without GPUs of its own whose Ray hid every device; the tensor-parallel workers choose theirs.
        del os.environ["CUDA_VISIBLE_DEVICES"]
    return VLLMEngine(model_dir, **vllm_options(recipe, weight_transfer, colocated, index))


class _Sampler:
    """What both actor kinds share: an engine to sample with."""

    engine: Any
    engine_memory = 0  # the most GPU memory in use seen right after a vLLM generation, in bytes

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        self.engine.wake()  # a colocated vLLM engine gets its KV cache back; a no-op otherwise
        completions = self.engine.generate(requests, sampling)
        memory_in_use = getattr(self.engine, "memory_in_use", None)
        if memory_in_use is not None:  # vLLM allocates in its own processes, outside this one's torch counters
            self.engine_memory = max(self.engine_memory, memory_in_use())
        release_free_memory()  # the Hugging Face engine's KV cache, freed into the heap
        return completions

    def weights_digest(self) -> str:
        from rlvr.transfer.arrays import digest

        return digest(self.engine.model)

    def peak_memory(self) -> int:
        """This process's peak since the previous call (CUDA allocator, or resident set on a CPU), or the engine
        GPUs' memory in use after a generation since then when that is more."""
        from rlvr.memory import peak_memory_bytes

        peak, self.engine_memory = max(peak_memory_bytes(), self.engine_memory), 0
        return peak

    def close(self) -> None:
        """Stops the engine's own processes (vLLM's engine core and its workers) before the actor goes."""
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


class EngineMethods:
    """The engine methods a weight sync calls through a Ray actor (:data:`rlvr.workers.sync.ENGINE_METHODS`,
    vLLM's trainer-side client protocol), forwarded to the actor's engine. ``load_weights`` is each actor's own."""

    engine: Any

    def weight_sync_info(self) -> dict[str, Any]:
        return self.engine.weight_sync_info()

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.engine.init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self.engine.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> int:
        return self.engine.update_weights(update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.engine.finish_weight_update(weight_version)

    def shutdown_weight_transfer_engine(self) -> None:
        self.engine.shutdown_weight_transfer_engine()


class _Learning(_Sampler):
    """What both learner actor kinds share: calls passed to their learner (``TorchLearner`` or one rank of
    ``DeepSpeedLearner``), which answers on rank 0."""

    learner: Any
    engine: Any = None

    def logprobs(self, batch: RolloutBatch, reference: bool = False) -> torch.Tensor | None:
        self._engine_to_sleep()
        with learner_phase(self._mmap_threshold()):
            return self.learner.logprobs(batch, reference)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        self._engine_to_sleep()
        with learner_phase(self._mmap_threshold()):
            return self.learner.update(batch)

    def _mmap_threshold(self) -> int:
        """The learner's (the torch learner's depends on its row-block recompute), else the learner phases' default."""
        return getattr(self.learner, "mmap_threshold", LEARNER_MMAP_THRESHOLD)

    def _engine_to_sleep(self) -> None:
        """A colocated vLLM engine gives its GPU memory back (weights to host memory, KV cache freed) before the
        learner's forward and backward passes; a no-op when it sleeps already, or for the Hugging Face engine."""
        if self.engine is not None:
            self.engine.sleep()

    def weights(self) -> dict[str, np.ndarray]:
        return self.learner.weights()

    def refresh_engine(self) -> int:
        """Loads the learner's weights into this actor's own engine copy; the bytes copied. Colocated engines that
        keep a copy: vLLM's CPU build (road "in_actor"), and the Hugging Face engine of a ZeRO-3 group, whose
        gather every rank joins (the others hold no engine and only take part)."""
        arrays = self.learner.weights()
        if self.engine is None:
            return 0
        self.engine.load_weights(arrays)
        return sum(a.nbytes for a in arrays.values())

    def learner_digest(self) -> str:
        return self.learner.digest()

    def memory_report(self, batch: RolloutBatch | None = None) -> dict[str, int]:
        """The torch learner's :meth:`~rlvr.learner.torch.TorchLearner.memory_report` (scripts/bench_memory.py)."""
        return self.learner.memory_report(batch)

    def save(self, directory: str) -> dict[str, Any]:
        return self.learner.save(directory)

    def load(self, directory: str, algorithm_state: dict[str, Any]) -> None:
        self.learner.load(directory, algorithm_state)


@ray.remote
class LearnerActor(_Learning):
    """The torch learner; in colocated placement its engine samples with the learner's own module (Hugging Face),
    or holds a copy in its own processes (vLLM's CPU build), loaded after each update (:meth:`refresh_engine`)."""

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, with_engine: bool):
        from rlvr import algos
        from rlvr.learner.torch import TorchLearner
        from rlvr.models.loading import load_tokenizer
        from rlvr.rollout.hf import HFEngine

        recipe = _setup(recipe_data, num_threads)
        algorithm = algos.from_recipe(recipe)
        self.learner = TorchLearner(recipe, model_dir, algorithm)
        self.engine = None
        if with_engine and recipe.rollout.engine == "vllm":  # vLLM's CPU build: its own copy, fed by refresh_engine
            self.engine = build_vllm_engine(recipe, model_dir, None, colocated=True, index=0)
        elif with_engine:
            self.engine = HFEngine(self.learner.model, load_tokenizer(model_dir), recipe.rollout.batch_size)


@ray.remote
class LearnerRankActor(_Learning):
    """One rank of a DeepSpeed learner group (:mod:`rlvr.learner.deepspeed`). Built in two calls: the
    constructor, then :meth:`setup` on every rank at once with rank 0's address (the process group's
    rendezvous waits for all of them).

    With ``with_engine`` (colocated placement) it also samples. The Hugging Face engine (rank 0 only): under
    ZeRO-2 with the learner's own module, whose parameters every rank holds whole; under ZeRO-3 with a copy,
    refreshed in process by :meth:`refresh_engine` after each update, since a partitioned module's forward is a
    collective that the other ranks would have to join for every generated token. A vLLM engine (every rank):
    its own copy in its own processes on this rank's GPU, fed by CUDA IPC (:meth:`setup_weight_sync`,
    ``road`` "ipc"). In split placement with vLLM engines ``road`` is "nccl": rank 0 broadcasts to them.
    """

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, rank: int, world_size: int,
                 with_engine: bool, road: str = "none"):
        self.recipe = _setup(recipe_data, num_threads)
        self.model_dir, self.rank, self.world_size, self.with_engine = model_dir, rank, world_size, with_engine
        self.road = road
        self.engine = None
        self.sync = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it: the process group's rendezvous (rank 0)."""
        from rlvr.workers.sync import free_port

        return ray.util.get_node_ip_address(), free_port("")

    def setup(self, master_addr: str, master_port: int) -> None:
        from rlvr import algos
        from rlvr.learner.deepspeed import DeepSpeedLearner, init_process_group
        from rlvr.models.loading import load_model, load_tokenizer
        from rlvr.rollout.hf import HFEngine

        init_process_group(self.rank, self.world_size, master_addr, master_port)
        recipe = self.recipe
        self.learner = DeepSpeedLearner(recipe, self.model_dir, algos.from_recipe(recipe), self.rank, self.world_size)
        if self.with_engine and recipe.rollout.engine == "vllm":
            weight_transfer = self.road if self.road in BACKENDS else None
            self.engine = build_vllm_engine(recipe, self.model_dir, weight_transfer, colocated=True, index=self.rank)
        elif self.with_engine:
            model = self.learner.model
            if self.learner.stage == 3:
                model = load_model(self.model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
                model.requires_grad_(False).eval().to(self.learner.device)
            self.engine = HFEngine(model, load_tokenizer(self.model_dir), recipe.rollout.batch_size)

    def setup_weight_sync(self, engines: list[Any], bucket_mb: float) -> None:
        """Opens this rank's end of a GPU weight sync (every rank at once).

        "ipc" (colocated vLLM): each rank feeds its own engine on its own GPU, as the sender of its own
        :class:`~rlvr.workers.sync.CudaIpcSync`; vLLM's IPC sender all-gathers the buckets' handles over the learner
        group, so every engine finds its GPU's. "nccl" (split vLLM): rank 0 broadcasts to ``engines`` (the rollout
        actors) over a group of its own with them; the other ranks only join each send's iteration (the ZeRO-3
        gather), as vLLM's trainer engine has them do.
        """
        from rlvr.workers.sync import CudaIpcSync, NCCLBroadcastSync

        if self.road == "ipc":
            self.sync = CudaIpcSync([self.engine], bucket_mb)
        elif self.road == "nccl":
            self.sync = NCCLBroadcastSync(engines if self.rank == 0 else [], bucket_mb, rank=self.rank)
        else:
            raise ValueError(f"no GPU weight sync for road {self.road!r}; the object store needs no setup")
        self.sync.setup()

    def sync_weights(self) -> int:
        """One GPU weight sync after an update (every rank at once); the bytes sent (rank 0's answer counts).

        The learner's cached GPU blocks go back to the driver first, so that a sleeping colocated engine finds the
        memory for its weights (which the round wakes, :meth:`rlvr.rollout.vllm.VLLMEngine.start_weight_update`),
        and again after it, for the KV cache that the next generation wakes.
        """
        specs, tensors = self.learner.device_weights()
        torch.cuda.empty_cache()
        try:
            return self.sync.send(tensors, specs)
        finally:
            torch.cuda.empty_cache()


@ray.remote
class RolloutActor(_Sampler, EngineMethods):
    """A rollout worker with its own copy of the policy (split placement): the Hugging Face engine on CPUs,
    weights through the object store (:meth:`load_weights`), or a vLLM engine on GPUs of its own, weights by NCCL
    broadcast from learner rank 0 (``road`` "nccl"; :class:`EngineMethods`). ``index`` tells engines apart."""

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, road: str = "object_store",
                 index: int = 0):
        recipe = _setup(recipe_data, num_threads)
        if recipe.rollout.engine == "vllm":
            weight_transfer = road if road in BACKENDS else None
            self.engine = build_vllm_engine(recipe, model_dir, weight_transfer, colocated=False, index=index)
            return
        from rlvr.models.loading import load_model, load_tokenizer
        from rlvr.rollout.hf import HFEngine

        model = load_model(model_dir, recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code)
        model.requires_grad_(False).eval()
        self.engine = HFEngine(model, load_tokenizer(model_dir), recipe.rollout.batch_size)

    def load_weights(self, arrays: dict[str, np.ndarray]) -> int:
        self.engine.load_weights(arrays)
        return sum(a.nbytes for a in arrays.values())
