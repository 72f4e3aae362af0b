"""Every shipped recipe is valid, and every algorithm has a tiny recipe that runs on a CPU."""

from pathlib import Path

import pytest

from rlvr import algos
from rlvr.config import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_is_valid(path):
    recipe = load_recipe(path)
    assert recipe.algorithm.name in algos.names()
    # recipes/<model-or-task>/<algorithm>[-<variant>].yaml
    assert path.stem == recipe.algorithm.name or path.stem.startswith(recipe.algorithm.name + "-")


def test_every_algorithm_has_a_tiny_recipe_on_the_tiny_model():
    tiny = {p.stem: load_recipe(p) for p in (RECIPES / "tiny").glob("*.yaml") if p.stem in algos.names()}
    assert sorted(tiny) == algos.names()
    for name, recipe in tiny.items():
        assert recipe.model.path == "tiny" and recipe.data.train == "tiny:train", name
        assert recipe.trainer.output_dir == f"runs/tiny-{name}", name
