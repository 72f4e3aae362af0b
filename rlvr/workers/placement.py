"""Starting Ray and placing the actors: colocated (one actor samples and learns) or split; the learner
is one torch actor or a DeepSpeed group of ``learner.num_ranks`` rank actors.

Locally the driver starts a private Ray instance; on a cluster set ``placement.ray_address: auto`` (or
``RLVR_RAY_ADDRESS=auto``) after ``ray start`` on each node, and the same recipe runs there.

On GPUs (:mod:`rlvr.workers.plan`) the actors go into Ray placement groups: one for the learner ranks, one per
split vLLM engine, reserved before any actor starts (:func:`reserve`), and weights move GPU to GPU after each
update (:mod:`rlvr.workers.sync`: CUDA IPC when colocated, NCCL broadcast from learner rank 0 when split). On
CPUs the actors are placed as they always were, and weights go through the object store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import ray
import torch

from rlvr.batch import RolloutBatch
from rlvr.config import Recipe
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout import registry as engines
from rlvr.workers.actors import LearnerActor, RolloutActor
from rlvr.workers.local_ray import SYSTEM_CONFIG, LogTail, lean_head
from rlvr.workers.plan import GroupPlan, PlacementError, PlacementPlan, plan_placement
from rlvr.transfer.specs import BACKENDS

PLACEMENT_TIMEOUT_S = 300  # waiting for Ray to reserve a placement group's GPUs before saying why it cannot


def check_environment(recipe: Recipe) -> None:
    """What the recipe's engine needs on this machine, checked before any work starts (data, model, Ray): its
    package and, for a GPU build on a private Ray instance, this machine's CUDA GPUs
    (:meth:`rlvr.rollout.registry.EngineSpec.check_environment`). On a cluster (``placement.ray_address``) the
    cluster's GPUs are counted when the actors are placed (:func:`plan_placement`), since the driver's own node may
    have none."""
    cluster = bool(recipe.placement.ray_address or os.environ.get("RLVR_RAY_ADDRESS"))
    try:
        engines.get(recipe.rollout.engine).check_environment(cluster, torch.cuda.is_available())
    except ValueError as error:
        raise PlacementError(str(error)) from None


def node_gpus() -> list[float]:
    """The GPUs of each alive node of the Ray cluster."""
    return [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]]


def reserve(plan: PlacementPlan, timeout_s: float = PLACEMENT_TIMEOUT_S) -> list[Any]:
    """One Ray placement group per group of ``plan``, each ready (its GPUs held for this run) before it returns."""
    from ray.util.placement_group import placement_group

    groups = [placement_group([dict(b) for b in group.bundles], strategy=group.strategy) for group in plan.groups]
    for group, spec in zip(groups, plan.groups):
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            _remove(groups)
            raise PlacementError(_unplaced(spec, timeout_s))
    return groups


def _remove(groups: list[Any]) -> None:
    """Gives the placement groups' resources back; Ray ends the actors that still run in them."""
    from ray.util.placement_group import remove_placement_group

    for group in groups:
        remove_placement_group(group)


def _unplaced(group: GroupPlan, timeout_s: float) -> str:
    free = ray.available_resources().get("GPU", 0)
    where = "one node" if group.strategy == "STRICT_PACK" else "the cluster"
    return (f"Ray could not reserve the {group.name}'s {group.num_gpus} GPU(s) on {where} within {timeout_s:.0f} s "
            f"({free:g} GPUs free now); another job may hold them (`ray status`), or no node has enough free GPUs")


def _bundle(group: Any, index: int, capture: bool = False) -> dict[str, Any]:
    """Actor options that put it on ``group``'s bundle ``index`` (``capture``: its children go into the group)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=index, placement_group_capture_child_tasks=capture)}


def start_ray(recipe: Recipe) -> None:
    if ray.is_initialized():
        return
    cfg = recipe.placement
    address = cfg.ray_address or os.environ.get("RLVR_RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        return
    # Ray 2.5x turns token authentication on for every new local instance and logs a warning that it did, on every
    # run (unless RAY_AUTH_MODE is set, which Ray reads too early for this process to set it). The instance is
    # this run's own, so the notice asks nothing of the user: drop it. Authentication itself stays on.
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def not_the_notice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")

    notices.addFilter(not_the_notice)
    # Inherited by the actors (a runtime_env would start each through the runtime-env agent). Actors import rlvr from
    # the installed package; nothing of the working dir needs shipping.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with lean_head():  # no autoscaler monitor, dashboard or log monitor: LogTail brings the actors' output here
            ray.init(
                num_cpus=cfg.num_cpus or os.cpu_count(),
                object_store_memory=cfg.object_store_mb * 1024 * 1024,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
                _system_config=SYSTEM_CONFIG,
            )
    finally:
        notices.removeFilter(not_the_notice)
    node = ray._private.worker.global_worker.node
    LogTail(Path(node.get_logs_dir_path())).start()


class LogProbs(NamedTuple):
    """The learner's log-probs of a batch (``None`` where not asked for) and the seconds of each pass."""

    old: torch.Tensor | None  # [N,T]
    ref: torch.Tensor | None  # [N,T]
    seconds: dict[str, float]


class StagedBatch:
    """A step batch put into the object store once (:meth:`Workers.stage`). The driver goes on changing ``batch``
    (advantages, algorithm fields, log-probs it needed itself); :meth:`changes` is what changed since the put,
    what a learner call sends beside the reference."""

    def __init__(self, batch: RolloutBatch, ref: ray.ObjectRef):
        self.batch, self.ref = batch, ref
        self._put = {f.name: getattr(batch, f.name) for f in fields(batch)}
        self._put_algo = dict(batch.algo_fields)

    def changes(self) -> dict[str, Any]:
        """The fields whose value is not the one put (``algo_fields``: the keys added or replaced)."""
        out = {name: getattr(self.batch, name) for name, value in self._put.items()
               if name != "algo_fields" and getattr(self.batch, name) is not value}
        algo = {key: value for key, value in self.batch.algo_fields.items() if self._put_algo.get(key) is not value}
        if algo:
            out["algo_fields"] = algo
        return out


@dataclass
class Workers:
    """The actors of a run. ``learners`` are the learner group's ranks (one for the torch learner): every
    learner call goes to all of them, and rank 0's answer is the group's."""

    learners: list[ray.actor.ActorHandle]
    rollouts: list[ray.actor.ActorHandle]
    colocated: bool
    refresh_engine: bool = False  # colocated copies refreshed after updates: ZeRO-3's HF engine, vLLM on a CPU
    last_sync_bytes: int = field(default=0)
    road: str = "none"  # the weight sync's (rlvr.rollout.registry.EngineSpec.road); "ipc" and "nccl" run in the ranks
    placement_groups: list[Any] = field(default_factory=list)
    peaks: dict[int, int] = field(default_factory=dict)  # id(actor) -> its largest peak answered since peak_memory()

    @property
    def learner(self) -> ray.actor.ActorHandle:
        """Rank 0 of the learner group."""
        return self.learners[0]

    @classmethod
    def create(cls, recipe: Recipe, model_dir: str) -> Workers:
        """The run's actors, placed by :func:`rlvr.workers.plan.plan_placement` on the cluster's GPUs (raising
        :class:`PlacementError` before any actor starts when the run does not fit): the placement groups of the
        plan (on GPUs), then the actors in them (:meth:`_start`); if starting fails, the groups go again, and with
        them every actor in them and their GPUs."""
        build = engines.get(recipe.rollout.engine).installed_build()
        plan = plan_placement(recipe, node_gpus(), build)
        cpus = ray.available_resources().get("CPU", 1.0)  # counted before the groups reserve some
        groups = reserve(plan) if plan.gpu else []
        try:
            return cls._start(recipe, model_dir, plan, groups, cpus)
        except BaseException:
            _remove(groups)
            raise

    @classmethod
    def _start(cls, recipe: Recipe, model_dir: str, plan: PlacementPlan, groups: list[Any], cpus: float) -> Workers:
        """The learner's rank actors (one GPU each where the plan has GPUs, rank r on bundle r of the learner's
        group; one actor for a one-process learner), joined into one group at rank 0's address; in split placement
        also the rollout actors; then the GPU weight sync, when the road is one."""
        data, ranks, colocated = recipe.model_dump(mode="json"), plan.learner_ranks, plan.colocated
        threads = recipe.placement.num_threads or max(1, int(cpus) // (ranks + (0 if colocated else plan.num_engines)))
        if plan.gpu:
            options = [{"num_cpus": 1, "num_gpus": 1, **_bundle(groups[0], rank)} for rank in range(ranks)]
        else:  # fractional CPUs: M ranks fit a small machine (2 CPUs in CI) beside the rollout actor (0 CPUs)
            options = [{"num_cpus": min(1.0, cpus / ranks), "num_gpus": 0}] * ranks
        # Colocated engines on GPUs: one per rank, on its GPU; otherwise rank 0's only.
        learners = [
            LearnerActor.options(**options[rank]).remote(
                data, model_dir, threads, rank, ranks, colocated and (plan.engine_gpus or rank == 0), plan.road)
            for rank in range(ranks)
        ]
        if colocated:
            rollouts = learners if plan.engine_gpus else learners[:1]
        else:  # started before the learners load, so that both load their models at once
            rollouts = [RolloutActor.options(**_rollout_options(plan, groups, k)).remote(
                data, model_dir, threads, plan.road, k) for k in range(plan.num_engines)]
        master_addr, master_port = ray.get(learners[0].address.remote())
        copies = _get_all([learner.setup.remote(master_addr, master_port) for learner in learners])
        workers = cls(learners, rollouts, colocated=colocated, road=plan.road, placement_groups=groups,
                      refresh_engine=colocated and copies[0])
        if plan.road in BACKENDS:
            engine_actors = [] if colocated else rollouts
            _get_all([learner.setup_weight_sync.remote(engine_actors, recipe.placement.sync_bucket_mb)
                      for learner in learners])
        return workers

    # -- calls ---------------------------------------------------------------------------------------
    def _gather(self, calls: list[tuple[ray.actor.ActorHandle, ray.ObjectRef]]) -> list[Any]:
        """The answers of ``calls`` (:data:`rlvr.workers.actors.Reply`), each actor's peak memory kept for
        :meth:`peak_memory`."""
        replies = _get_all([ref for _, ref in calls])
        for (actor, _), (_, peak) in zip(calls, replies):
            self._keep_peak(actor, peak)
        return [value for value, _ in replies]

    def _keep_peak(self, actor: ray.actor.ActorHandle, peak: int) -> None:
        self.peaks[id(actor)] = max(self.peaks.get(id(actor), 0), peak)

    def _on_learners(self, method: str, *args: object) -> Any:
        """``method(*args)`` on every rank at once; rank 0's answer."""
        return self._gather([(learner, getattr(learner, method).remote(*args)) for learner in self.learners])[0]

    # -- the learner group -------------------------------------------------------------------------
    def stage(self, batch: RolloutBatch) -> StagedBatch:
        """``batch`` put into the object store, once per step: every learner call of the step passes it by
        reference, and what the driver changes afterwards travels as :meth:`StagedBatch.changes`."""
        return StagedBatch(batch, ray.put(batch))

    def logprobs(self, batch: RolloutBatch | StagedBatch, old: bool = True, reference: bool = False) -> LogProbs:
        """The learner's log-probs of ``batch``'s responses, behaviour (``old``) and reference ones in one call."""
        staged = batch if isinstance(batch, StagedBatch) else self.stage(batch)
        out = self._on_learners("logprobs", staged.ref, old, reference)
        return LogProbs(out["old"], out["ref"], out["seconds"])

    def update(self, staged: StagedBatch) -> tuple[dict[str, float], dict[str, float]]:
        """One step's optimizer updates on the staged batch with the driver's changes since; the learner's metrics
        and the seconds of the log-prob passes it ran first (``{"old_logprob": s, "ref": s}``, those it ran)."""
        out = self._on_learners("update", staged.ref, staged.changes())
        return out["metrics"], out["seconds"]

    def save(self, directory: str) -> dict[str, Any]:
        """The learners' checkpoint files in ``directory``; returns the algorithm's learner-side state."""
        return _get_all([learner.save.remote(directory) for learner in self.learners])[0]

    def load(self, directory: str, algorithm_state: dict[str, Any]) -> None:
        _get_all([learner.load.remote(directory, algorithm_state) for learner in self.learners])

    def learner_digest(self) -> str:
        """:func:`rlvr.transfer.arrays.digest` of the learner's full weights."""
        return _get_all([learner.learner_digest.remote() for learner in self.learners])[0]

    def peak_memory(self) -> int:
        """The largest peak memory of any actor since the previous call: from the answers of the calls since (each
        carries its actor's peak), asking only the actors that had none."""
        actors = list({id(a): a for a in [*self.learners, *self.rollouts]}.items())
        silent = [actor for key, actor in actors if key not in self.peaks]
        peaks = [*self.peaks.values(), *ray.get([actor.peak_memory.remote() for actor in silent])]
        self.peaks = {}
        return max(peaks)

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Requests split evenly over the rollout workers (each seeded apart), results in request order."""
        return self.submit(requests, sampling)()

    def submit(self, requests: list[list[int]], sampling: SamplingParams) -> Callable[[], list[Completion]]:
        """:meth:`generate` in two halves: the requests are in the workers' queues when this returns (ahead of any
        later call, a weight sync included), the returned function waits for the completions."""
        shards = len(self.rollouts)
        size = -(-len(requests) // shards)
        calls = [
            (worker, worker.generate.remote(requests[i * size : (i + 1) * size],
                                            SamplingParams(**{**sampling.__dict__, "seed": sampling.seed + i})))
            for i, worker in enumerate(self.rollouts)
        ]
        return lambda: [c for part in self._gather(calls) for c in part]

    def sync_weights(self) -> float:
        """Learner -> rollout workers; seconds taken. On GPUs with vLLM engines, GPU to GPU from the learner ranks
        (CUDA IPC colocated, NCCL broadcast split). Otherwise, split placement: rank 0's gathered weights through
        the object store (numpy, zero-copy), passed on by reference; colocated: nothing, except an engine copy
        refreshed in rank 0's actor (vLLM's CPU build; a ZeRO-3 group's Hugging Face engine)."""
        if self.colocated and not self.refresh_engine and self.road not in BACKENDS:
            return 0.0
        started = time.perf_counter()
        if self.road in BACKENDS:
            self.last_sync_bytes = self._on_learners("sync_weights")
        elif self.colocated:
            self.last_sync_bytes = self._on_learners("refresh_engine")
        else:
            # num_returns=2: the arrays stay in the object store for the rollout workers, the peak comes here.
            gathered = [learner.weights.options(num_returns=2).remote() for learner in self.learners]  # ZeRO-3: all
            loads = [(worker, worker.load_weights.remote(gathered[0][0])) for worker in self.rollouts]
            for learner, peak in zip(self.learners, ray.get([peak for _, peak in gathered])):
                self._keep_peak(learner, peak)
            self.last_sync_bytes = self._gather(loads)[0]
        return time.perf_counter() - started

    def shutdown(self) -> None:
        """Ends the actors (vLLM engines first stop their own processes, for a while at most) and frees the GPUs
        their placement groups held."""
        actors = list({id(a): a for a in [*self.learners, *self.rollouts]}.values())
        ray.wait([actor.close.remote() for actor in self.rollouts], num_returns=len(self.rollouts), timeout=60)
        for actor in actors:
            ray.kill(actor)
        _remove(self.placement_groups)


def _rollout_options(plan: PlacementPlan, groups: list[Any], index: int) -> dict[str, Any]:
    """Options of split rollout actor ``index``: the Hugging Face engine on CPUs (no resources, as always); a vLLM
    engine on bundle 0 of its own group, holding that GPU itself (tensor parallel size 1) or none, its tensor-parallel
    workers taking the group's GPUs (vLLM's Ray executor, started from inside the actor)."""
    if not plan.engine_gpus:  # the Hugging Face engine, or vLLM's CPU build
        return {"num_cpus": 0}
    group = groups[plan.engine_group(index)]
    if plan.tensor_parallel_size == 1:
        return {"num_cpus": 1, "num_gpus": 1, **_bundle(group, 0)}
    return {"num_cpus": 1, "num_gpus": 0, **_bundle(group, 0, capture=True)}


def _get_all(refs: list[ray.ObjectRef]) -> list:
    """``ray.get(refs)``, raising the first failure as soon as it happens: a learner rank that failed leaves
    its peers waiting in a collective until the process group's timeout (minutes), which ray.get would
    wait out."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)
