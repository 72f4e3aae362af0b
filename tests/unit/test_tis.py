"""Truncated importance sampling (``algorithm.tis_cap``): the weights by hand, the weighted loss against the
per-token definition for every clipped algorithm that offers it, and the recipes that refuse it."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs, RunInfo
from rlvr.algos.functional import aggregate, clipped_pg_terms, truncated_is_weights
from rlvr.config import RecipeError, build_recipe


def test_weights_are_the_capped_learner_over_rollout_ratio():
    learner = torch.tensor([[0.0, math.log(3.0), -math.log(2.0), 5.0]])
    rollout = torch.tensor([[0.0, 0.0, 0.0, float("nan")]])  # the last token is padding: no engine log-prob
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, metrics = truncated_is_weights(learner, rollout, mask, cap=2.0)
    assert weights[0].tolist() == pytest.approx([1.0, 2.0, 0.5, 1.0])
    assert metrics["tis/clip_frac"] == pytest.approx(1 / 3)
    assert metrics["tis/weight_mean"] == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    k3 = [math.exp(d) - 1 - d for d in (0.0, math.log(3.0), -math.log(2.0))]
    assert metrics["rollout/mismatch_k3"] == pytest.approx(sum(k3) / 3)
    assert metrics["rollout/logprob_abs_diff"] == pytest.approx((math.log(3.0) + math.log(2.0)) / 3)


def test_missing_engine_logprobs_on_a_response_token_is_an_error():
    with pytest.raises(ValueError, match="needs the rollout engine's log-probs"):
        truncated_is_weights(torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]), torch.ones(1, 2), 2.0)


@pytest.mark.parametrize("name", ["grpo", "dapo", "drgrpo", "forking-tokens"])
def test_weighted_loss_is_each_tokens_clipped_loss_times_its_weight(name):
    torch.manual_seed(0)
    n, t = 4, 6
    logp, old = torch.randn(n, t, dtype=torch.float64) * 0.3 - 1.0, torch.randn(n, t, dtype=torch.float64) * 0.3 - 1.0
    mask = torch.ones(n, t, dtype=torch.float64)
    mask[1, 4:] = 0
    advantages = torch.tensor([1.0, -0.7, 0.4, -2.0], dtype=torch.float64)
    weights = torch.rand(n, t, dtype=torch.float64) * 2.0
    options = {"tis_cap": 2.0, "loss_agg": "token-mean", "dual_clip": 3.0}
    if name == "forking-tokens":
        options["entropy_top_ratio"] = 1.0  # keep every token: only the weighting differs from GRPO
    algorithm = algos.build(name, run=RunInfo(max_new_tokens=t), **options)
    entropy = torch.rand(n, t, dtype=torch.float64)
    inputs = LossInputs(logp=logp.clone().requires_grad_(), old_logp=old, entropy=entropy,
                        mask=mask, advantages=advantages, num_tokens=float(mask.sum()), num_seqs=float(n),
                        extra={"tis_weight": weights})
    loss, _ = algorithm.loss(inputs)
    per_token, _, _ = clipped_pg_terms(logp, old, advantages, algorithm.options.clip_eps_low,
                                       algorithm.options.clip_eps_high, 3.0)
    expected = aggregate(per_token * weights, mask, "token-mean", num_tokens=float(mask.sum()), num_seqs=float(n))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    unweighted, _ = algorithm.loss(LossInputs(**{**inputs.__dict__, "extra": {}}))
    assert unweighted.item() != pytest.approx(loss.item())  # the weights changed something


def test_dcpo_weights_its_own_bounds_too():
    torch.manual_seed(1)
    logp, old = torch.randn(3, 5, dtype=torch.float64) * 0.2 - 1.0, torch.randn(3, 5, dtype=torch.float64) * 0.2 - 1.0
    mask = torch.ones(3, 5, dtype=torch.float64)
    advantages = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    dcpo = algos.build("dcpo", tis_cap=2.0)
    base = dict(logp=logp, old_logp=old, entropy=None, mask=mask, num_tokens=15.0, num_seqs=3.0)
    ones, _ = dcpo.loss(LossInputs(**base, advantages=advantages, extra={"tis_weight": torch.ones(3, 5)}))
    plain, _ = dcpo.loss(LossInputs(**base, advantages=advantages))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-12)  # weight 1 is no correction
    doubled, _ = dcpo.loss(LossInputs(**base, advantages=advantages, extra={"tis_weight": 2 * torch.ones(3, 5)}))
    assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-12)


@pytest.mark.parametrize(("name", "message"), [
    ("copo", "algorithm.tis_cap: copo cannot .*: COPO blends a global and a local advantage"),
    ("capo", "algorithm.tis_cap: capo cannot .*: CAPO's curvature model"),
    ("astar", r"algorithm.tis_cap: astar cannot .*: A\*-PO regresses onto the reference"),
])
def test_algorithms_without_it_refuse_tis_cap(name, message):
    with pytest.raises(RecipeError, match=message):
        build_recipe({"algorithm": {"name": name, "tis_cap": 2.0}})


@pytest.mark.parametrize("options", [{"algorithm": {"name": "grpo", "tis_cap": 2.0}},
                                     {"learner": {"backend": "deepspeed", "recompute_old_logprobs": False}}])
def test_vllm_log_probs_under_top_p_are_refused_where_the_loss_would_use_them(options):
    recipe = {"rollout": {"engine": "vllm", "top_p": 0.9}, "learner": {"backend": "deepspeed"}}
    with pytest.raises(RecipeError, match="vLLM.s log-probs, which are those of the top-p/top-k truncated distribution"):
        build_recipe({**recipe, **options})
    build_recipe(recipe)  # the learner recomputes them: top-p sampling is fine
