"""rlvr: reinforcement-learning post-training of LLMs with verifiable rewards.

    import rlvr
    summary = rlvr.train("recipes/tiny/grpo.yaml", ["learner.lr=5e-5"])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlvr.config import Recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "RecipeError", "build_recipe", "load_recipe", "train"]

# Imported on first use: the recipe schema pulls in torch (through the algorithms), which processes that
# only grade answers (reward workers, the grader's helper process) never need.
_FROM_CONFIG = ("Recipe", "RecipeError", "build_recipe", "load_recipe")


def __getattr__(name: str) -> Any:
    if name in _FROM_CONFIG:
        from rlvr import config

        return getattr(config, name)
    raise AttributeError(f"module 'rlvr' has no attribute {name!r}")


def train(recipe: Recipe | str | os.PathLike, overrides: list[str] = (), resume: bool = False) -> dict[str, Any]:
    """Train a recipe (a :class:`Recipe`, or a YAML path plus ``key=value`` overrides); returns a summary
    with the run directory and the held-out accuracy before and after."""
    from rlvr.config import Recipe, build_recipe, load_recipe
    from rlvr.trainer import train as run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    elif overrides:
        recipe = build_recipe(recipe.model_dump(mode="json"), list(overrides))
    return run(recipe, resume=resume)
