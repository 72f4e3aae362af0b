"""The learners, by name: what each needs and how it is built, declared once so that config validation, placement
and the learner actor ask the learner instead of comparing names. Torch-free: validating a recipe reads it without
importing a learner.

A learner class implements :class:`rlvr.learner.base.Learner`. A new learner (FSDP2) is a class plus one
:func:`register` call here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlvr.config import Recipe


@dataclass(frozen=True)
class LearnerSpec:
    """One learner kind.

    ``distributed``: a group of ``learner.num_ranks`` processes (a torch process group, a GPU each when the cluster
    has one per rank, gloo on CPUs otherwise); else one CPU process. ``options``: the ``learner`` fields that only
    this kind reads (elsewhere they must keep their defaults). ``reads_lm_head``: its loss may read the LM-head weight
    and the hidden states (CAPO); a learner that partitions parameters cannot hand them over. ``package``: a module
    it needs, with ``install_hint``. ``problems``: further checks of a recipe, each problem a message.
    """

    name: str
    summary: str
    target: str  # "module:Class"
    distributed: bool = False
    options: tuple[str, ...] = ()
    reads_lm_head: bool = True
    package: str | None = None
    install_hint: str = ""
    problems: Callable[[Recipe], list[str]] = field(default=lambda recipe: [])

    def load(self) -> type:
        """The learner class (imports its module, and with it torch)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def ranks(self, num_ranks: int) -> int:
        return num_ranks if self.distributed else 1

    def runs_on_gpus(self, cluster_gpus: float, num_ranks: int) -> bool:
        """Whether its ranks take a GPU each: a distributed learner on a cluster with a GPU per rank."""
        return self.distributed and cluster_gpus >= num_ranks

    def check(self, recipe: Recipe) -> list[str]:
        """What is wrong with ``recipe`` for this learner (empty: nothing)."""
        problems = []
        if self.package is not None and importlib.util.find_spec(self.package) is None:
            problems.append(f"learner.backend {self.name!r} needs the {self.package} package: {self.install_hint} "
                            f"(or use learner.backend {DEFAULT})")
        from rlvr.algos import registry

        if not self.reads_lm_head and registry.get(recipe.algorithm.name).needs_hidden:
            problems.append(f"learner.backend {self.name!r} cannot train algorithm {recipe.algorithm.name!r}: its "
                            "loss reads the LM-head weight and hidden states, which this learner partitions across "
                            f"ranks; use learner.backend {DEFAULT}")
        return problems + self.problems(recipe)


LEARNERS: dict[str, LearnerSpec] = {}
DEFAULT = "torch"


def register(spec: LearnerSpec) -> LearnerSpec:
    if spec.name in LEARNERS:
        raise ValueError(f"learner {spec.name!r} is registered twice")
    LEARNERS[spec.name] = spec
    return spec


def names() -> list[str]:
    return list(LEARNERS)


def get(name: str) -> LearnerSpec:
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; known: {', '.join(LEARNERS)}") from None


def owned_options() -> dict[str, str]:
    """Each kind-specific ``learner`` field -> the learner that reads it."""
    return {key: spec.name for spec in LEARNERS.values() for key in spec.options}


def _zero_problems(recipe: Recipe) -> list[str]:
    if recipe.learner.zero_stage == 3 and recipe.model.tiled_mlp:
        return ["model.tiled_mlp: true cannot run under learner.zero_stage 3, which gathers a weight only inside its "
                "own module's forward; leave model.tiled_mlp unset (off under ZeRO-3) or use learner.zero_stage 2"]
    return []


register(LearnerSpec("torch", "plain torch: one process, AdamW", "rlvr.learner.torch:TorchLearner"))
register(LearnerSpec(
    "deepspeed", "DeepSpeed ZeRO-2/3 over learner.num_ranks processes (docs/deepspeed.md)",
    "rlvr.learner.deepspeed:DeepSpeedLearner", distributed=True,
    options=("num_ranks", "zero_stage", "offload_optimizer"), reads_lm_head=False, package="deepspeed",
    install_hint="pip install 'rlvr[deepspeed]'", problems=_zero_problems,
))
