"""Algorithm name -> class. ``build("grpo", clip_eps_high=0.28)`` makes one; unknown names list the known."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlvr.algos.base import Algorithm, RunInfo

if TYPE_CHECKING:
    from rlvr.config import Recipe

_ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` reachable by ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty `name` to be registered")
    if cls.name in _ALGORITHMS and _ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"algorithm name {cls.name!r} is already taken by {_ALGORITHMS[cls.name].__qualname__}")
    _ALGORITHMS[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_ALGORITHMS)


def get(name: str) -> type[Algorithm]:
    if name not in _ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is unknown; known algorithms: {', '.join(names())}")
    return _ALGORITHMS[name]


def build(name: str, run: RunInfo | None = None, **options: Any) -> Algorithm:
    """An algorithm instance by registered name, with its options validated."""
    cls = get(name)
    return cls(cls.Options(**options), run)


def from_recipe(recipe: Recipe) -> Algorithm:
    """The recipe's algorithm, told the run's response length, temperature, group size and batch size."""
    r = recipe.rollout
    run = RunInfo(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, n=r.n,
                  batch_size=recipe.data.batch_size, total_steps=recipe.trainer.total_steps)
    return build(recipe.algorithm.name, run, **recipe.algorithm.options())
