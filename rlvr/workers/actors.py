"""Ray actors: the learner (one class for every learner; in colocated placement it also samples) and the rollout
worker.

Actors receive the recipe as a plain dict and rebuild it, so what runs remotely is exactly what the
driver validated. Each sets its torch thread count first: on a CPU, threads are the actor's share of
the machine, and equal thread counts keep colocated and split runs numerically identical.

Which learner and engine classes run is the recipe's (:mod:`rlvr.learner.registry`, :mod:`rlvr.rollout.registry`);
an engine is built inside the actor that holds it, importing its package there and only there: in a rollout actor
of its own (split placement), or in the learner ranks' actors (colocated placement), where a vLLM engine sleeps
while the learner works (:meth:`LearnerActor.logprobs`, :meth:`LearnerActor.update`) and wakes to generate. The GPU
weight syncs of :mod:`rlvr.workers.sync` live in the learner ranks (:meth:`LearnerActor.setup_weight_sync`); a
rollout actor forwards the engine methods they call (:class:`EngineMethods`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch

from rlvr.batch import RolloutBatch, with_changes
from rlvr.learner.base import old_logprob_source
from rlvr.memory import learner_phase, release_free_memory
from rlvr.rollout.engine import SamplingParams
from rlvr.transfer.specs import BACKENDS

if TYPE_CHECKING:
    from rlvr.config import Recipe

# What a step's actor calls answer: the value, and the actor's peak memory since its previous answer
# (:meth:`_Sampler.peak_memory`), so that a step's peak needs no call of its own.
Reply = tuple[Any, int]


def _setup(recipe_data: dict[str, Any], num_threads: int):
    from rlvr.config import Recipe

    torch.set_num_threads(num_threads)
    return Recipe.model_validate(recipe_data)


def build_engine(recipe: Recipe, model_dir: str, **kwargs: Any):
    """The recipe's rollout engine (:meth:`from_recipe` of its class), built in this actor."""
    from rlvr.rollout import registry

    return registry.get(recipe.rollout.engine).load().from_recipe(recipe, model_dir, **kwargs)


class _Sampler:
    """What both actor kinds share: an engine to sample with (a learner rank without one: None)."""

    engine: Any = None
    engine_memory = 0  # the most GPU memory in use seen right after a vLLM generation, in bytes

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> Reply:
        """The completions, with this actor's peak memory (:data:`Reply`)."""
        self.engine.wake()  # a colocated vLLM engine gets its KV cache back; a no-op otherwise
        completions = self.engine.generate(requests, sampling)
        memory_in_use = getattr(self.engine, "memory_in_use", None)
        if memory_in_use is not None:  # vLLM allocates in its own processes, outside this one's torch counters
            self.engine_memory = max(self.engine_memory, memory_in_use())
        release_free_memory()  # the Hugging Face engine's KV cache, freed into the heap
        return self._reply(completions)

    def _reply(self, value: Any) -> Reply:
        return value, self.peak_memory()

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


@ray.remote
class LearnerActor(_Sampler):
    """One rank of the recipe's learner (:class:`rlvr.learner.base.Learner`; the torch learner is rank 0 of 1).
    Built in two calls: the constructor, then :meth:`setup` on every rank at once with rank 0's address (a
    distributed learner's rendezvous waits for all of them).

    With ``with_engine`` (colocated placement) it also samples. An engine that can sample with the learner's own
    module (Hugging Face) does so while the learner holds it whole (torch, ZeRO-2); under ZeRO-3 it keeps a copy,
    refreshed in process by :meth:`refresh_engine` after each update, since a partitioned module's forward is a
    collective that the other ranks would have to join for every generated token. An engine with weights of its
    own (vLLM) keeps them in its own processes: vLLM's CPU build is refreshed the same way (``road``
    "in_actor"); its GPU build on this rank's GPU is fed by CUDA IPC (:meth:`setup_weight_sync`, ``road``
    "ipc"). In split placement with vLLM engines on GPUs ``road`` is "nccl": rank 0 broadcasts to them.
    """

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, rank: int = 0,
                 world_size: int = 1, with_engine: bool = False, road: str = "none"):
        self.recipe = _setup(recipe_data, num_threads)
        self.model_dir, self.rank, self.world_size, self.with_engine = model_dir, rank, world_size, with_engine
        self.road = road
        self.learner: Any = None  # built by setup
        self.engine = None
        self.sync = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it: the process group's rendezvous (rank 0)."""
        from rlvr.workers.sync import free_port

        return ray.util.get_node_ip_address(), free_port("")

    def setup(self, master_addr: str, master_port: int) -> bool:
        """Joins the group, builds the learner and, ``with_engine``, the engine. Returns whether the engine is a copy
        that :meth:`refresh_engine` loads after each update (neither the learner's own module nor fed GPU to GPU)."""
        from rlvr import algos
        from rlvr.learner import registry

        recipe = self.recipe
        cls = registry.get(recipe.learner.backend).load()
        cls.init_group(self.rank, self.world_size, master_addr, master_port)
        self.learner = cls(recipe, self.model_dir, algos.from_recipe(recipe), self.rank, self.world_size)
        if not self.with_engine:
            return False
        from rlvr.rollout import registry as engines

        shares = engines.get(recipe.rollout.engine).shares_learner_module
        module = self.learner.sampling_module() if shares else None
        weight_transfer = self.road if self.road in BACKENDS else None
        self.engine = build_engine(recipe, self.model_dir, module=module, device=self.learner.device, colocated=True,
                                   weight_transfer=weight_transfer, index=self.rank)
        return module is None and weight_transfer is None

    def logprobs(self, batch: RolloutBatch, old: bool = True, reference: bool = False) -> Reply:
        """The behaviour (``old``) and reference log-probs the driver needs before it computes advantages (the KL in
        the reward), in one call: ``{"old": [N,T] | None, "ref": [N,T] | None, "seconds": {phase: s}}`` on rank 0."""
        self._engine_to_sleep()
        with learner_phase(self._mmap_threshold()):
            return self._reply(self._passes(batch, old, reference, everywhere=False))

    def update(self, batch: RolloutBatch, changes: dict[str, Any] | None = None) -> Reply:
        """A step's optimizer updates on ``batch`` plus the driver's ``changes`` since it put the batch
        (:meth:`rlvr.workers.placement.StagedBatch.changes`: advantages, algorithm fields, log-probs it needed
        itself). The log-probs it did not send come from here first (:func:`rlvr.learner.base.old_logprob_source`),
        then the truncated importance weights. ``{"metrics": ..., "seconds": {phase: s}}`` (rank 0's)."""
        self._engine_to_sleep()
        batch = with_changes(batch, changes or {})
        algorithm = self.learner.algorithm
        with learner_phase(self._mmap_threshold()):
            source = old_logprob_source(self.recipe.learner, algorithm, batch)
            if source == "rollout":
                batch.old_logprobs = batch.rollout_logprobs
            need_ref = algorithm.needs_reference and batch.ref_logprobs is None
            passes = self._passes(batch, source == "pass", need_ref, everywhere=True)
            if source == "pass":
                batch.old_logprobs = passes["old"]
            if need_ref:
                batch.ref_logprobs = passes["ref"]
            metrics = algorithm.importance_weights(batch)
            metrics.update(self.learner.update(batch))
        return self._reply({"metrics": metrics if self.rank == 0 else {}, "seconds": passes["seconds"]})

    def _passes(self, batch: RolloutBatch, old: bool, reference: bool, everywhere: bool) -> dict[str, Any]:
        """The no-grad log-prob passes asked for, each timed (``time/old_logprob``, ``time/ref``); ``everywhere``:
        every rank gets the whole result (the update reads it on each), else rank 0 only."""
        out: dict[str, Any] = {"old": None, "ref": None, "seconds": {}}
        for key, phase, wanted in (("old", "old_logprob", old), ("ref", "ref", reference)):
            if wanted:
                started = time.perf_counter()
                out[key] = self.learner.logprobs(batch, reference=key == "ref", everywhere=everywhere)
                out["seconds"][phase] = time.perf_counter() - started
        return out

    def _mmap_threshold(self) -> int:
        """The learner's (the torch learner's depends on its row-block recompute)."""
        return self.learner.mmap_threshold

    def _engine_to_sleep(self) -> None:
        """A colocated vLLM engine gives its GPU memory back (weights to host memory, KV cache freed) before the
        learner's forward and backward passes; a no-op when it sleeps already, or for the Hugging Face engine."""
        if self.engine is not None:
            self.engine.sleep()

    def weights(self) -> Reply:
        """The learner's full weights as host arrays (a collective under ZeRO-3). Called with ``num_returns=2``, so
        that the arrays go on to the rollout actors by reference while the driver reads the peak."""
        return self._reply(self.learner.weights())

    def refresh_engine(self) -> Reply:
        """Loads the learner's weights into this actor's own engine copy; the bytes copied. Colocated engines that
        keep a copy: vLLM's CPU build (road "in_actor"), and the Hugging Face engine of a ZeRO-3 group, whose
        gather every rank joins (the others hold no engine and only take part)."""
        arrays = self.learner.weights()
        if self.engine is None:
            return self._reply(0)
        self.engine.load_weights(arrays)
        return self._reply(sum(a.nbytes for a in arrays.values()))

    def learner_digest(self) -> str:
        return self.learner.digest()

    def memory_report(self, batch: RolloutBatch | None = None) -> dict[str, int]:
        """The torch learner's :meth:`~rlvr.learner.torch.TorchLearner.memory_report` (scripts/bench_memory.py)."""
        return self.learner.memory_report(batch)

    def save(self, directory: str) -> dict[str, Any]:
        return self.learner.save(directory)

    def load(self, directory: str, algorithm_state: dict[str, Any]) -> None:
        self.learner.load(directory, algorithm_state)

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

    def sync_weights(self) -> Reply:
        """One GPU weight sync after an update (every rank at once); the bytes sent (rank 0's answer counts).

        The learner's cached GPU blocks go back to the driver first, so that a sleeping colocated engine finds the
        memory for its weights (which the round wakes, :meth:`rlvr.rollout.vllm.VLLMEngine.start_weight_update`),
        and again after it, for the KV cache that the next generation wakes.
        """
        specs, tensors = self.learner.device_weights()
        torch.cuda.empty_cache()
        try:
            sent = self.sync.send(tensors, specs)
        finally:
            torch.cuda.empty_cache()
        return self._reply(sent)


@ray.remote
class RolloutActor(_Sampler, EngineMethods):
    """A rollout worker with its own copy of the policy (split placement): the Hugging Face engine on CPUs,
    weights through the object store (:meth:`load_weights`), or a vLLM engine on GPUs of its own, weights by NCCL
    broadcast from learner rank 0 (``road`` "nccl"; :class:`EngineMethods`). ``index`` tells engines apart."""

    def __init__(self, recipe_data: dict[str, Any], model_dir: str, num_threads: int, road: str = "object_store",
                 index: int = 0):
        recipe = _setup(recipe_data, num_threads)
        weight_transfer = road if road in BACKENDS else None
        self.engine = build_engine(recipe, model_dir, colocated=False, weight_transfer=weight_transfer, index=index)

    def load_weights(self, arrays: dict[str, np.ndarray]) -> Reply:
        self.engine.load_weights(arrays)
        return self._reply(sum(a.nbytes for a in arrays.values()))
