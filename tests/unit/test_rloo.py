"""RLOO: the leave-one-out advantages against a loop over the definition, and the checks on its options."""

import pytest
import torch

from rlvr import algos
from rlvr.config import RecipeError, build_recipe
from tests.unit.test_algorithms import _batch, _inputs


def test_advantage_is_the_reward_less_the_mean_of_the_others():
    rewards, group = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.25, 2.0, 0.0], [0, 0, 0, 7, 7, 3, 3, 3, 9]
    adv, metrics = algos.build("rloo").advantages(_batch(rewards, group))
    expected = []
    for i, (r, g) in enumerate(zip(rewards, group)):
        others = [x for j, (x, h) in enumerate(zip(rewards, group)) if h == g and j != i]
        expected.append(r - sum(others) / len(others) if others else r)  # a group of one keeps its reward (verl)
    assert adv.tolist() == pytest.approx(expected, rel=1e-6) and metrics == {}
    assert adv[:3].tolist() == pytest.approx([1.0, -0.5, -0.5])
    # G / (G - 1) times Dr.GRPO's mean-centred reward
    centred, _ = algos.build("drgrpo").advantages(_batch(rewards[:3], group[:3]))
    assert adv[:3].tolist() == pytest.approx((1.5 * centred).tolist())


def test_the_loss_is_the_clipped_surrogate():
    inputs = _inputs()
    assert algos.build("rloo").loss(inputs)[0].item() == algos.build("grpo").loss(inputs)[0].item()


def test_options_that_would_not_mean_rloo_fail_before_any_work():
    with pytest.raises(RecipeError, match="rloo's advantage is the reward less the mean of the group's other"):
        build_recipe({}, ["algorithm.name=rloo", "algorithm.adv_norm=group"])
    with pytest.raises(RecipeError, match="rloo needs rollout.n >= 2"):
        build_recipe({}, ["algorithm.name=rloo", "rollout.n=1"])
    assert build_recipe({}, ["algorithm.name=rloo"]).algorithm.adv_norm == "none"


def test_it_is_listed_with_its_parts():
    preset = algos.get("rloo")
    assert (preset.estimator, preset.loss) == ("rloo", "clipped") and "rloo" in algos.names()
    assert torch.is_tensor(algos.build("rloo").advantages(_batch([1.0, 0.0], [0, 0]))[0])
