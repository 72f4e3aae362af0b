"""Steps without signal: :meth:`Algorithm.update_would_move` is False exactly when the loss has no gradient."""

from __future__ import annotations

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs, has_signal
from tests.unit.test_algorithms import _batch

F64 = torch.float64
WITHOUT_TABLE = [name for name in algos.names() if name != "astar"]


def _inputs(batch, seed: int = 0, T: int = 4, V: int = 8, H: int = 3) -> LossInputs:
    """Loss inputs of ``batch``'s rows (advantages and algorithm fields set), with everything CAPO reads."""
    g = torch.Generator().manual_seed(seed)
    n, mask = len(batch), batch.response_mask.to(F64)
    old = -torch.rand(n, T, generator=g, dtype=F64) * 2
    return LossInputs(
        logp=(old + 0.3 * torch.randn(n, T, generator=g, dtype=F64)).requires_grad_(), old_logp=old,
        entropy=(torch.rand(n, T, generator=g, dtype=F64) * 2).requires_grad_(), mask=mask,
        advantages=batch.advantages.to(F64), num_tokens=float(mask.sum()), num_seqs=float(n),
        ref_logp=old - 0.1, lr=1e-3, hidden=torch.randn(n, T, H, generator=g, dtype=F64),
        lm_head_weight=torch.randn(V, H, generator=g, dtype=F64),
        response_tokens=torch.randint(0, V, (n, T), generator=g),
        extra={k: v.to(F64) for k, v in batch.algo_fields.items()})


def _gradient(algorithm, batch) -> float:
    """The largest |d loss / d (log-probs, entropies)| of one micro-batch holding the whole ``batch``."""
    inputs = _inputs(batch)
    loss, _ = algorithm.loss(inputs)
    loss.backward()
    grads = [t.grad for t in (inputs.logp, inputs.entropy) if t.grad is not None]
    return max((float(grad.abs().max()) for grad in grads), default=0.0)


def _equal_rewards():
    return _batch([0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1], answers=["1", "2", "1", "1"])


@pytest.mark.parametrize("name", WITHOUT_TABLE)
def test_zero_advantages_have_no_gradient_and_skip(name):
    algorithm = algos.build(name)
    batch = _equal_rewards()
    batch.advantages = algorithm.advantages(batch)[0]
    assert not algorithm.update_would_move(batch)
    assert _gradient(algorithm, batch) == 0.0  # the claim the skip rests on: the update would do nothing


@pytest.mark.parametrize("name", WITHOUT_TABLE)
@pytest.mark.parametrize("option", [{"kl_coef": 0.1}, {"entropy_coef": 0.01}])
def test_a_term_without_the_advantage_keeps_the_update(name, option):
    algorithm = algos.build(name, **option)
    batch = _equal_rewards()
    batch.advantages = algorithm.advantages(batch)[0]
    assert algorithm.update_would_move(batch)
    assert _gradient(algorithm, batch) > 0.0


def test_kl_in_the_reward_gives_advantages_and_pg_coef_zero_gives_nothing():
    in_reward = algos.build("grpo", kl_coef=0.1, kl_in="reward")
    batch = _equal_rewards()
    batch.old_logprobs = -torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    batch.ref_logprobs = batch.old_logprobs - torch.rand(4, 4, generator=torch.Generator().manual_seed(2))
    batch.advantages = in_reward.advantages(batch)[0]
    assert in_reward.update_would_move(batch)

    no_terms = algos.build("grpo", pg_coef=0.0)
    signal = _batch([1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    signal.advantages = no_terms.advantages(signal)[0]
    assert has_signal(signal.advantages, signal.response_mask)
    assert not no_terms.update_would_move(signal)  # 0 x PG and no other term: nothing moves


def test_astar_always_trains(tmp_path):
    """A*-PO regresses beta2 log pi/pi_ref onto r - V*: a zero target still has a gradient off the reference."""
    from rlvr.algos.astar import write_table
    from rlvr.config import build_recipe
    from rlvr.data.prompts import Prompt

    table = tmp_path / "values.jsonl"
    write_table(table, [("p0", [0.0]), ("p1", [0.0])])
    astar = algos.build("astar", values_path=str(table), entropy_coef=0.0)
    astar.prepare_prompts([Prompt("p0", "", ""), Prompt("p1", "", "")], build_recipe({}, ["algorithm.name=astar"]))
    batch = _batch([0.0, 0.0], [0, 1])
    batch.advantages = astar.advantages(batch)[0]
    assert not has_signal(batch.advantages, batch.response_mask)
    assert astar.update_would_move(batch)
    assert _gradient(astar, batch) > 0.0


def test_copo_trains_on_the_global_advantage_alone():
    """Every group consistent (local advantages 0) but the groups differ: COPO's global term has signal."""
    copo = algos.build("copo")
    batch = _batch([1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1], answers=["1", "1", "2", "2"])
    batch.advantages = copo.advantages(batch)[0]
    assert not has_signal(batch.advantages, batch.response_mask)
    assert copo.update_would_move(batch) and _gradient(copo, batch) > 0.0


def test_has_signal_ignores_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert not has_signal(torch.tensor([0.0, 2.0]), mask)  # the non-zero row has no token
    assert has_signal(torch.tensor([0.5, 0.0]), mask)
    assert not has_signal(torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]), mask)  # on padding only
    assert has_signal(torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]), mask)
    assert has_signal(torch.tensor([float("nan"), 0.0]), mask)


@pytest.mark.parametrize("overrides, separate_pass", [
    ([], False),  # one optimizer step per rollout: the update's forward gives the old log-probs
    (["learner.mini_batch_size=64"], False),  # not smaller than the batch: still one step
    (["learner.epochs=2"], True),
    (["learner.mini_batch_size=4"], True),
    (["algorithm.kl_coef=0.01", "algorithm.kl_in=reward"], True),  # the KL in the reward reads them first
    (["algorithm.tis_cap=2.0"], True),  # importance weights compare them with the engine's
])
def test_the_old_logprob_pass_runs_only_when_a_later_step_or_the_driver_needs_it(overrides, separate_pass):
    from rlvr.config import build_recipe
    from rlvr.learner.base import old_logprob_source

    recipe = build_recipe({}, ["model.path=tiny", *overrides])
    batch = _batch([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0, 1, 1, 1, 1])
    algorithm = algos.from_recipe(recipe)
    assert old_logprob_source(recipe.learner, algorithm, batch) == ("pass" if separate_pass else "forward")
    engine = build_recipe({}, ["model.path=tiny", "learner.recompute_old_logprobs=false", *overrides])
    assert old_logprob_source(engine.learner, algorithm, batch) == "rollout"
    batch.old_logprobs = batch.rollout_logprobs
    assert old_logprob_source(recipe.learner, algorithm, batch) == "given"
