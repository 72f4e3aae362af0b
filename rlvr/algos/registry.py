"""The algorithm registries: presets by name, and the parts they are made of.

A **preset** (:class:`Preset`, one module each under ``rlvr/algos/presets/``, torch-free) names its parts and
carries its options model. The **parts** are registered by name where they are implemented (torch modules):

* advantage estimators (driver): ``fn(batch, rewards, ctx) -> (advantages [N] or [N,T], metrics)``
  (:func:`estimator`);
* per-token losses (learner): ``fn(inputs, ctx, agg) -> (pg_loss, metrics)``, ``agg`` the aggregation the
  shared objective chose (:func:`loss`);
* rollout filters (driver, after scoring): ``fn(batch, source, ctx) -> (batch, metrics)`` (:func:`rollout_filter`);
* token masks (learner): classes with ``minibatch``/``mask``/``denominators``/``after_step`` (:func:`token_mask`).

``ctx`` is :class:`rlvr.algos.algorithm.Context`: the options, the run's facts and the part's own state, if it
keeps one (``state=`` at registration: a class with ``state_dict``/``load_state_dict``). What every loss shares
(token masks, truncated importance weights, aggregation and its scope, KL, entropy bonus, PG coefficient) is
applied once, in :mod:`rlvr.algos.objective`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from rlvr.algos.options import AlgorithmOptions


@dataclass(frozen=True)
class Preset:
    """An algorithm as users pick it: its parts by registered name, its options and what it logs."""

    name: str
    summary: str  # one line: what `rlvr list algorithms` prints
    options: type[AlgorithmOptions]
    estimator: str = "grpo"
    loss: str = "clipped"
    filters: tuple[str, ...] = ()  # rollout filters (dynamic sampling joins them when its option is on)
    masks: tuple[str, ...] = ()  # learner token masks (forking tokens join them when entropy_top_ratio is set)
    metrics: tuple[str, ...] = ()  # what it logs besides the common metrics (the end-to-end tests check them)
    samples_per_prompt: int | None = None  # None: rollout.n; A*-PO: 1
    needs_hidden: bool = False  # the loss reads hidden states and the LM-head weight (not under ZeRO)


@dataclass(frozen=True)
class Part:
    """A registered implementation and what the shared code needs to know about it."""

    name: str
    fn: Any  # the function (or, for token masks, the class)
    state: type | None = None  # per-run state: a class with state_dict / load_state_dict (and prepare)
    meta: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}
ESTIMATORS: dict[str, Part] = {}
LOSSES: dict[str, Part] = {}
FILTERS: dict[str, Part] = {}
MASKS: dict[str, Part] = {}
# The modules that implement the parts: imported on first use, so that presets and config stay torch-free.
# Every module of rlvr.algos outside these is imported for its registrations (a new algorithm module needs no entry).
NOT_PARTS = frozenset({"presets", "options", "registry", "functional", "objective", "algorithm"})


def register(preset: Preset) -> Preset:
    """Make ``preset`` reachable by its name."""
    if preset.name in PRESETS and PRESETS[preset.name] != preset:
        raise ValueError(f"algorithm name {preset.name!r} is already taken")
    if preset.options.model_fields["name"].default != preset.name:
        raise ValueError(f"preset {preset.name!r}: its options model must declare name: Literal[{preset.name!r}] "
                         f"= {preset.name!r}")
    PRESETS[preset.name] = preset
    return preset


def _registrar(table: dict[str, Part], kind: str) -> Callable[..., Callable[[Any], Any]]:
    def decorator_for(name: str, state: type | None = None, **meta: Any) -> Callable[[Any], Any]:
        def decorate(fn: Any) -> Any:
            if name in table and table[name].fn is not fn:
                raise ValueError(f"{kind} {name!r} is already registered")
            table[name] = Part(name, fn, state, meta)
            return fn

        return decorate

    decorator_for.__doc__ = f"Decorator: register a {kind} under ``name`` (``state``: its per-run state class)."
    return decorator_for


estimator = _registrar(ESTIMATORS, "advantage estimator")
loss = _registrar(LOSSES, "loss")
rollout_filter = _registrar(FILTERS, "rollout filter")
token_mask = _registrar(MASKS, "token mask")


@functools.cache
def _load_presets() -> None:
    from rlvr.algos import presets

    for module in pkgutil.iter_modules(presets.__path__):
        importlib.import_module(f"{presets.__name__}.{module.name}")


@functools.cache
def load_parts() -> None:
    """Import the modules that register the parts (they import torch)."""
    import rlvr.algos

    for module in pkgutil.iter_modules(rlvr.algos.__path__):
        if module.name not in NOT_PARTS:
            importlib.import_module(f"rlvr.algos.{module.name}")


def names() -> list[str]:
    _load_presets()
    return sorted(PRESETS)


def get(name: str) -> Preset:
    _load_presets()
    if name not in PRESETS:
        raise ValueError(f"algorithm {name!r} is unknown; known algorithms: {', '.join(names())}")
    return PRESETS[name]


def part(table: dict[str, Part], name: str, kind: str) -> Part:
    load_parts()
    if name not in table:
        raise ValueError(f"{kind} {name!r} is not registered; registered: {', '.join(sorted(table))}")
    return table[name]


def tis_refusal(name: str) -> str | None:
    """Why preset ``name`` cannot weight its loss by truncated importance sampling (``algorithm.tis_cap``), or None
    when it can. A part says so at registration: ``tis=True``, or the reason why not (a loss needs ``tis=True``; a
    token mask allows it unless it gives a reason). Imports the parts."""
    preset = get(name)
    load_parts()
    reasons = [LOSSES[preset.loss].meta.get("tis", f"its loss {preset.loss!r} is not a clipped surrogate"),
               *(MASKS[mask].meta.get("tis", True) for mask in preset.masks)]
    return next((reason for reason in reasons if reason is not True), None)


def tis_presets() -> list[str]:
    """The presets whose loss takes truncated importance-sampling weights."""
    return [name for name in names() if tis_refusal(name) is None]
