"""Recipes: YAML + overrides, and errors that name the field, the value and what is allowed."""

from pathlib import Path

import pytest

from rlvr.config import RecipeError, build_recipe, load_recipe, parse_override

REPO = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = [
    "model.path", "data.train", "reward.function", "reward.timeout_s", "reward.failure_score", "algorithm.name",
    "rollout.n", "rollout.max_new_tokens", "rollout.temperature", "learner.backend", "learner.lr",
    "placement.mode", "trainer.total_steps", "trainer.save_every", "trainer.output_dir", "trainer.seed",
]


def test_tiny_recipe_loads_and_has_every_documented_key():
    recipe = load_recipe(REPO / "recipes/tiny/grpo.yaml")
    dumped = recipe.model_dump()
    for key in REQUIRED_KEYS:
        section, name = key.split(".")
        assert name in dumped[section], key


def test_overrides_are_typed_yaml_scalars():
    recipe = build_recipe({}, ["learner.lr=2e-6", "rollout.n=4", "placement.mode=split",
                               "algorithm.clip_eps_high=0.28", "data.heldout=null"])
    assert recipe.learner.lr == 2e-6 and recipe.rollout.n == 4 and recipe.placement.mode == "split"
    assert recipe.algorithm.clip_eps_high == 0.28 and type(recipe.algorithm).__name__ == "GRPOOptions"
    assert recipe.data.heldout is None
    assert parse_override("trainer.output_dir=runs/a=b") == (["trainer", "output_dir"], "runs/a=b")


@pytest.mark.parametrize("override, expected", [
    ("algorithm.name=nope", "algorithm.name: 'nope' is unknown; known algorithms: astar, capo, copo, dapo"),
    ("trainer.totl_steps=3", "trainer.totl_steps: unknown key (value 3); allowed keys here: total_steps"),
    ("tranier.total_steps=3", "tranier: unknown key"),
    ("rollout.n=0", "rollout.n: Input should be greater than or equal to 1 (got 0)"),
    ("placement.mode=both", "placement.mode: Input should be 'colocated' or 'split' (got 'both')"),
    ("algorithm.clip_eps_hgh=0.3", "algorithm.clip_eps_hgh: unknown option of 'grpo' (value 0.3)"),
    ("learner.lr=fast", "learner.lr: Input should be a valid number"),
    ("reward.timeout_s=-1", "reward.timeout_s: Input should be greater than 0"),
])
def test_bad_values_name_the_field_and_what_is_allowed(override, expected):
    with pytest.raises(RecipeError) as error:
        build_recipe({}, [override])
    assert expected in str(error.value)


@pytest.mark.parametrize("overrides, expected", [
    (["rollout.max_staleness=1"], "rollout.max_staleness: 1 needs placement.mode split"),
    (["rollout.max_staleness=1", "placement.mode=split", "algorithm.name=dapo"],
     "rollout.max_staleness: 1 does not combine with algorithm.dynamic_sampling"),
    (["rollout.max_staleness=2", "placement.mode=split", "algorithm.name=scaf_grpo"],
     "does not combine with scaf_grpo's scaf_hints filter"),
    (["rollout.max_staleness=1", "placement.mode=split", "rollout.early_rejection.scorer=arithmetic"],
     "rollout.max_staleness: 1 does not combine with rollout.early_rejection"),
])
def test_sampling_ahead_is_refused_where_it_cannot_overlap_or_a_step_samples_more(overrides, expected):
    with pytest.raises(RecipeError) as error:
        build_recipe({}, overrides)
    assert expected in str(error.value)
    assert build_recipe({}, ["rollout.max_staleness=1", "placement.mode=split"]).rollout.max_staleness == 1


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(RecipeError, match="section.key=value"):
        build_recipe({}, ["learner.lr"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(bad)
