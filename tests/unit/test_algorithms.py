"""The algorithm plug-ins against hand-computed values, and the reduction invariants of ALGORITHMS.md
section 12: each plug-in collapses to its baseline when its extra mechanism is off."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs, RolloutSource, RunInfo
from rlvr.algos.filters import informative_groups, overlong_penalty
from rlvr.algos.functional import dcpo_smooth_advantages, kl_penalty
from rlvr.algos.objective import aggregation
from rlvr.batch import RolloutBatch, concat_batches
from rlvr.config import RecipeError, build_recipe
from rlvr.data.prompts import Prompt

SHIPPED = ["astar", "capo", "copo", "dapo", "dcpo", "drgrpo", "forking-tokens", "grpo", "scaf_grpo"]


def _inputs(seed: int = 0, n: int = 4, t: int = 5, **extra) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    if n > 2:
        mask[2, 1:] = 0
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 2
    logp = (old + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)).requires_grad_()
    entropy = torch.rand(n, t, generator=g, dtype=torch.float64) * 2
    values = dict(logp=logp, old_logp=old, entropy=entropy, mask=mask.double(),
                  advantages=torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)[:n],
                  num_tokens=float(mask.sum()), num_seqs=float(n))
    values.update(extra)
    return LossInputs(**values)


def _batch(rewards, group, lengths=None, prompt_ids=None, answers=None, width=4) -> RolloutBatch:
    n = len(rewards)
    lengths = lengths or [width] * n
    mask = torch.zeros(n, width)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    return RolloutBatch(
        prompt_id=prompt_ids or [f"p{g}" for g in group], group=torch.tensor(group),
        prompt_tokens=torch.ones(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.long),
        response_tokens=torch.ones(n, width, dtype=torch.long), response_mask=mask,
        rollout_logprobs=torch.zeros(n, width), rewards=torch.tensor(rewards, dtype=torch.float32),
        correct=torch.tensor(rewards) >= 1.0,
        reward_extras=[{"extracted": a} for a in answers] if answers else [{} for _ in range(n)],
    )


# --- registry and options ------------------------------------------------------------------------------


def test_registry_lists_every_algorithm_and_rejects_unknown_names():
    assert set(SHIPPED) <= set(algos.names()) and algos.names() == sorted(algos.names())
    for name in algos.names():
        assert len(algos.get(name).summary) > 20, name  # `rlvr list algorithms` prints this line
    with pytest.raises(ValueError, match="'ppo' is unknown; known algorithms: astar, capo, copo"):
        algos.build("ppo")
    with pytest.raises(Exception, match="clip_eps_hihg"):
        algos.build("grpo", clip_eps_hihg=0.3)


def test_presets_carry_the_authors_defaults():
    grpo, dr, dapo = (algos.build(n).options for n in ("grpo", "drgrpo", "dapo"))
    assert (grpo.clip_eps_low, grpo.clip_eps_high, grpo.dual_clip, grpo.loss_agg, grpo.adv_norm) == \
        (0.2, 0.2, 3.0, "token-mean", "group")
    assert (dr.adv_norm, dr.loss_agg) == ("none", "seq-mean-token-sum-norm")
    assert (dapo.clip_eps_high, dapo.dual_clip, dapo.dynamic_sampling, dapo.overlong_shaping) == (0.28, 10.0, True, True)
    dcpo = algos.build("dcpo").options
    assert (dcpo.clip_eps_high, dcpo.dual_clip, dcpo.loss_agg, dcpo.smooth_advantages, dcpo.bound_cap) == \
        (0.28, 10.0, "seq-mean-token-sum", True, 10.0)
    copo = algos.build("copo").options
    assert (copo.k, copo.b, copo.mode, copo.loss_agg) == (5.0, 1.0, "soft with zero", "seq-mean-token-mean")
    astar = algos.build("astar").options
    assert (astar.beta1, astar.beta2, astar.num_ref_samples, astar.entropy_coef) == (0.5, 1e-3, 8, 0.001)
    assert algos.build("forking-tokens").options.entropy_top_ratio == 0.2


def test_recipes_with_inconsistent_algorithm_options_fail_before_any_work():
    with pytest.raises(RecipeError, match="overlong_buffer: 8 must be smaller than rollout.max_new_tokens"):
        build_recipe({}, ["algorithm.name=dapo", "algorithm.overlong_buffer=8", "rollout.max_new_tokens=8"])
    with pytest.raises(RecipeError, match="dcpo needs rollout.n >= 2"):
        build_recipe({}, ["algorithm.name=dcpo", "rollout.n=1"])
    with pytest.raises(RecipeError, match="algorithm.mode"):
        build_recipe({}, ["algorithm.name=copo", "algorithm.mode=sometimes"])
    with pytest.raises(RecipeError, match="unknown option of 'grpo'"):
        build_recipe({}, ["algorithm.beta2=0.1"])  # an A*-PO option on GRPO
    assert build_recipe({}, ["algorithm.name=copo", "algorithm.mode=soft-with-zero"]).algorithm.name == "copo"


# --- shared pieces -------------------------------------------------------------------------------------


def test_aggregation_scope_micro_batch_averages_local_means():
    grpo_mini = algos.build("grpo", loss_agg="token-mean")
    grpo_micro = algos.build("grpo", loss_agg="token-mean", loss_agg_scope="micro-batch")
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    inputs = LossInputs(logp=losses, old_logp=losses, entropy=None, mask=mask, advantages=torch.zeros(2),
                        num_tokens=10.0, num_seqs=5.0, num_micro=2)
    # Mini-batch scope: this micro-batch's token sum over the mini-batch's 10 tokens.
    def aggregate(algorithm):
        return aggregation(algorithm._context("loss"), inputs, mask)(losses).item()

    assert aggregate(grpo_mini) == pytest.approx(10 / 10)
    # Micro-batch scope: the local mean (10 / 4) divided by the 2 micro-batches.
    assert aggregate(grpo_micro) == pytest.approx(10 / 4 / 2)
    seq = algos.build("grpo", loss_agg="seq-mean-token-mean", loss_agg_scope="micro-batch")
    assert aggregate(seq) == pytest.approx((2 + 4) / 2 / 2)
    dr = algos.build("drgrpo", run=RunInfo(max_new_tokens=8))
    assert aggregate(dr) == pytest.approx(10 / (5 * 8))  # L_max = max_new_tokens


def test_straight_through_kl_has_k2_gradient_and_its_own_value():
    ref = torch.tensor([[-1.0, -2.0, -0.5]])
    for kind, value_kind in (("k1+", "k1"), ("k3+", "k3")):
        x = torch.tensor([[-0.5, -2.5, -0.5]], requires_grad=True)
        out = kl_penalty(x, ref, kind)
        assert out.detach()[0].tolist() == pytest.approx(kl_penalty(x.detach(), ref, value_kind)[0].tolist())
        out.sum().backward()
        assert x.grad[0].tolist() == pytest.approx((x.detach() - ref)[0].tolist())  # d/dx of (x - ref)^2 / 2


def test_kl_in_the_loss_and_in_the_reward():
    inputs = _inputs(ref_logp=torch.zeros(4, 5, dtype=torch.float64))
    plain = algos.build("grpo")
    with_kl = algos.build("grpo", kl_coef=0.1, kl_estimator="k1")
    base, _ = plain.loss(inputs)
    total, metrics = with_kl.loss(inputs)
    kl = (inputs.logp.detach() * inputs.mask).sum() / inputs.num_tokens  # k1 against ref 0, token-mean
    assert total.item() == pytest.approx(base.item() + 0.1 * kl.item(), rel=1e-9)
    assert metrics["actor/kl"] == pytest.approx(kl.item())
    # In the reward: R <- R - coef * sum_t k1 of the behaviour policy, before advantages; not in the loss.
    in_reward = algos.build("grpo", kl_coef=0.5, kl_estimator="k1", kl_in="reward")
    assert in_reward.options.kl_in_reward
    assert in_reward.loss(inputs)[0].item() == pytest.approx(base.item())
    batch = _batch([1.0, 0.0], [0, 0], lengths=[2, 1])
    batch.old_logprobs = torch.tensor([[-1.0, -2.0, 0, 0], [-1.0, 0, 0, 0]])
    batch.ref_logprobs = torch.tensor([[-1.5, -1.0, 0, 0], [-3.0, 0, 0, 0]])
    # row 0: k1 = 0.5 + (-1.0) = -0.5 -> 1 + 0.25; row 1: k1 = 2.0 -> 0 - 1.0
    rewards, metrics = in_reward.reward_for_advantage(batch)
    assert rewards.tolist() == pytest.approx([1.25, -1.0]) and metrics["actor/kl_in_reward"] == pytest.approx(0.75)


def test_entropy_bonus_and_an_entropy_only_loss():
    inputs = _inputs()
    entropy_mean = ((inputs.entropy * inputs.mask).sum() / inputs.num_tokens).item()
    base = algos.build("grpo").loss(inputs)[0].item()
    with_bonus = algos.build("grpo", entropy_coef=0.01).loss(inputs)[0].item()
    assert with_bonus == pytest.approx(base - 0.01 * entropy_mean, rel=1e-9)
    # 1-shot RLVR's finding: pg_coef 0 leaves only the entropy term.
    only = algos.build("grpo", pg_coef=0.0, entropy_coef=0.001).loss(inputs)[0].item()
    assert only == pytest.approx(-0.001 * entropy_mean, rel=1e-9)


def test_clip_fractions_low_and_high():
    old = torch.zeros(1, 4, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 5.0]], dtype=torch.float64))
    inputs = LossInputs(logp=logp, old_logp=old, entropy=None, mask=torch.ones(1, 4, dtype=torch.float64),
                        advantages=torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64), num_tokens=4.0,
                        num_seqs=1.0)
    _, m = algos.build("grpo").loss(inputs)
    # token 0: A>0 above 1.2 (high); token 1: A<0 below 0.8 (low); token 3: A<0 above c=3 (dual)
    assert (m["actor/clip_frac_high"], m["actor/clip_frac_low"], m["actor/clip_frac_dual"]) == (0.25, 0.25, 0.25)


def test_overlong_penalty_by_hand():
    # L_max 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 at 10.
    lengths = torch.tensor([3, 6, 7, 9, 10])
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == pytest.approx([0, 0, -0.25, -0.75, -1.0])
    dapo = algos.build("dapo", run=RunInfo(max_new_tokens=4), overlong_buffer=2, overlong_penalty=0.5)
    batch = _batch([1.0, 1.0, 0.0], [0, 0, 0], lengths=[2, 3, 4])
    assert dapo.shape_rewards(batch) == {"reward/overlong_penalty_mean": pytest.approx(-0.25)}
    assert batch.rewards.tolist() == pytest.approx([1.0, 0.75, -0.5])
    grpo_batch = _batch([1.0], [0], lengths=[4])
    algos.build("grpo").shape_rewards(grpo_batch)
    assert grpo_batch.rewards.tolist() == [1.0]  # off unless asked for


class _Prompts(RolloutSource):
    """Serves prepared batches in order, as the trainer's sampler would."""

    def __init__(self, batches):
        self.batches, self.asked = list(batches), 0

    def next_prompts(self):
        self.asked += 1
        return [Prompt(f"q{self.asked}", "", "")]

    def sample(self, prompts):
        return self.batches.pop(0)


def test_dynamic_sampling_keeps_informative_groups_samples_more_and_truncates():
    dapo = algos.build("dapo", run=RunInfo(batch_size=3))
    first = _batch([1, 1, 0, 1, 0, 0], [0, 0, 1, 1, 2, 2])  # group 0 all-correct, 2 all-wrong
    assert informative_groups(first) == {1}
    second = _batch([1, 0, 1, 1], [0, 0, 1, 1])  # group 0 informative
    third = _batch([0, 1, 1, 0], [0, 0, 1, 1])  # both informative: one too many
    source = _Prompts([second, third])
    out, metrics = dapo.post_rollout(first, source)
    assert len(torch.unique(out.group)) == 3 and len(out) == 6
    assert out.rewards.tolist() == [0, 1, 1, 0, 0, 1]  # group 1 of round 1, group 0 of rounds 2 and 3
    assert metrics["dynamic_sampling/gen_batches"] == 3 and metrics["dynamic_sampling/kept_groups"] == 3
    # Out of rounds: train on what survived.
    limited = algos.build("dapo", run=RunInfo(batch_size=3), max_gen_batches=2)
    out, metrics = limited.post_rollout(_batch([1, 1, 0, 1], [0, 0, 1, 1]), _Prompts([_batch([1, 1], [0, 0])]))
    assert len(out) == 2 and metrics["dynamic_sampling/kept_groups"] == 1


def test_concat_and_select_carry_algorithm_fields():
    a = _batch([1.0, 0.0], [0, 0], width=3)
    a.algo_fields["w"] = torch.tensor([0.1, 0.2])
    a.algo_fields["tok"] = torch.ones(2, 3)
    b = _batch([1.0], [5], width=5)
    b.algo_fields["w"] = torch.tensor([0.3])
    b.algo_fields["tok"] = torch.full((1, 5), 2.0)
    both = concat_batches([a, b])
    assert both.response_tokens.shape == (3, 5) and both.group.tolist() == [0, 0, 5]
    assert both.algo_fields["tok"][0].tolist() == [1, 1, 1, 0, 0]
    picked = both.select([2, 0])
    assert picked.algo_fields["w"].tolist() == pytest.approx([0.3, 0.1])
    assert picked.response_mask.sum(1).tolist() == [5, 3]


# --- DCPO ----------------------------------------------------------------------------------------------


def test_dcpo_smooth_advantages_by_hand():
    # A prompt seen once before (mean 0.5, std 0.5), now rewards [1, 0, 0, 0].
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    group = torch.zeros(4, dtype=torch.long)
    adv, mean, std = dcpo_smooth_advantages(rewards, group, torch.ones(4), torch.full((4,), 0.5), torch.full((4,), 0.5))
    mu_new, sd_new = 0.25, math.sqrt(0.75 / 3)
    mu_tot = (0.5 + 0.25) / 2
    sd_tot = math.sqrt((0.25 + sd_new**2 + 0.5 * (0.25 - 0.5) ** 2) / 2)
    a_new = [(r - mu_new) / sd_new for r in (1.0, 0.0)]
    a_tot = [(r - mu_tot) / sd_tot for r in (1.0, 0.0)]
    expected = []
    for n_, t_ in zip(a_new, a_tot):
        sa_new, sa_tot = 0.5 * n_ + 0.5 * t_, 0.5 * n_ + 0.5 * t_
        expected.append(sa_new if abs(sa_new) < abs(sa_tot) else sa_tot)
    assert adv.tolist() == pytest.approx([expected[0]] + [expected[1]] * 3, rel=1e-6)
    assert mean[0].item() == pytest.approx(mu_tot) and std[0].item() == pytest.approx(sd_tot)
    # Third appearance, all-equal group: A = (1/i) A_tot is still non-zero.
    adv3, _, _ = dcpo_smooth_advantages(torch.ones(4), group, torch.full((4,), 2.0), torch.full((4,), 0.4),
                                        torch.full((4,), 0.5))
    mu3 = (2 * 0.4 + 1) / 3
    sd3 = math.sqrt((2 * 0.25 + 0 + 2 / 3 * 0.6**2) / 3)
    assert adv3.tolist() == pytest.approx([(1 - mu3) / sd3 / 3] * 4, rel=1e-6)


def test_dcpo_keeps_per_prompt_statistics_and_restores_them():
    dcpo = algos.build("dcpo")
    batch = _batch([1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], prompt_ids=["a"] * 4 + ["b"] * 2)
    _, metrics = dcpo.advantages(batch)
    stats = dcpo.states["dcpo"].stats
    assert stats["a"] == (1, pytest.approx(0.25), pytest.approx(math.sqrt(0.25)))
    assert stats["b"][0] == 1 and metrics == {"dcpo/seen_before_frac": 0.0, "dcpo/prompts_tracked": 2.0}
    second = _batch([1, 1, 1, 1], [0, 0, 0, 0], prompt_ids=["a"] * 4)
    adv, metrics = dcpo.advantages(second)
    assert stats["a"][0] == 2 and (adv != 0).all()  # the all-correct group still learns (SAS)
    assert metrics["dcpo/seen_before_frac"] == 1.0
    restored = algos.build("dcpo")
    restored.load_state_dict(torch.load(_roundtrip(dcpo.state_dict()), weights_only=False))
    third = _batch([0, 1, 0, 1], [0, 0, 0, 0], prompt_ids=["a"] * 4)
    assert restored.advantages(third)[0].tolist() == dcpo.advantages(_batch([0, 1, 0, 1], [0] * 4, prompt_ids=["a"] * 4))[0].tolist()
    off = algos.build("dcpo", smooth_advantages=False)
    assert off.advantages(batch)[1] == {}
    assert off.state_dict() == {} and (off.advantages(second)[0] == 0).all()


def _roundtrip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_dcpo_first_appearance_with_fixed_bounds_is_grpo():
    batch = _batch([1, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1])
    dcpo = algos.build("dcpo", clip_type="fixed", clip_eps_high=0.2, loss_agg="token-mean", dual_clip=3.0)
    grpo = algos.build("grpo", adv_eps=0.0)
    assert dcpo.advantages(batch)[0].tolist() == pytest.approx(grpo.advantages(batch)[0].tolist())
    inputs = _inputs()
    assert dcpo.loss(inputs)[0].item() == pytest.approx(grpo.loss(inputs)[0].item(), rel=1e-12)


def test_dcpo_dynamic_loss_uses_token_bounds_and_otm():
    old = torch.log(torch.tensor([[0.01, 0.9]], dtype=torch.float64))
    logp = old + torch.log(torch.tensor([[3.0, 1.3]], dtype=torch.float64))  # ratios 3 and 1.3
    inputs = LossInputs(logp=logp, old_logp=old, entropy=None, mask=torch.ones(1, 2, dtype=torch.float64),
                        advantages=torch.tensor([1.0], dtype=torch.float64), num_tokens=2.0, num_seqs=1.0)
    dcpo = algos.build("dcpo", clip_eps_high=0.2)
    loss, metrics = dcpo.loss(inputs)
    high_09 = 0.5 + 0.5 * math.sqrt(1 + 0.8 / 0.9)  # 1.187: the likely token is clipped, the rare one is not
    assert loss.item() == pytest.approx(-(3.0 + high_09), rel=1e-9)  # OTM: token sum over 1 sequence
    assert metrics["actor/clip_frac_high"] == 0.5
    assert metrics["dcpo/bound_high_mean"] == pytest.approx((5.0 + high_09) / 2, rel=1e-9)


# --- COPO ----------------------------------------------------------------------------------------------


def test_copo_no_global_is_grpo_and_the_blend_by_hand():
    batch = _batch([1, 0, 1, 1], [0, 0, 1, 1], answers=["3", "4", "5", "5"])
    inputs = _inputs()
    grpo = algos.build("grpo", loss_agg="seq-mean-token-mean")
    no_global = algos.build("copo", mode="no global")
    assert no_global.advantages(batch)[0].tolist() == pytest.approx(grpo.advantages(batch)[0].tolist())
    inputs.extra = {k: v.double() for k, v in batch.algo_fields.items()}
    assert no_global.loss(inputs)[0].item() == pytest.approx(grpo.loss(inputs)[0].item(), rel=1e-12)

    copo = algos.build("copo")
    local, metrics = copo.advantages(batch)
    batch.advantages = local
    glob, weight = batch.algo_fields["copo_global"], batch.algo_fields["copo_weight"]
    # Group 0: answers differ, H = 1 bit, w = sigmoid(0) = 0.5 on the correct row, 0 on the wrong one;
    # group 1: one answer, H = 0; w = sigmoid(-5) on its correct rows. Global: accuracies 0.5 and 1.
    s = 1 / (1 + math.exp(5))
    assert weight.tolist() == pytest.approx([0.5, 0.0, s, s])
    g = (0.5 - 0.75) / (math.sqrt(0.125) + 1e-6)
    assert glob.tolist() == pytest.approx([g, g, -g, -g], rel=1e-5)
    assert copo.effective_advantages(batch).tolist() == pytest.approx(
        [0.5 * g + 0.5 * local[0].item(), g, -g * (1 - s), -g * (1 - s)], rel=1e-5, abs=1e-5)
    assert metrics["copo/weight_mean"] == pytest.approx((0.5 + 2 * s) / 4)


def test_copo_needs_the_extracted_answer():
    with pytest.raises(ValueError, match="returned no 'extracted' for 2 of 2 rows"):
        algos.build("copo").advantages(_batch([1, 0], [0, 0]))[0]


# --- forking tokens ------------------------------------------------------------------------------------


def test_forking_tokens_with_rho_one_is_dapo():
    inputs = _inputs()
    dapo = algos.build("dapo")
    full = algos.build("forking-tokens", entropy_top_ratio=1.0)
    assert full.loss(inputs)[0].item() == pytest.approx(dapo.loss(inputs)[0].item(), rel=1e-12)


def test_forking_tokens_keep_the_top_entropy_tokens_with_either_denominator():
    entropy = torch.tensor([[0.1, 2.0, 0.3, 0.0], [1.5, 0.2, 0.4, 0.9]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    logp = torch.full((2, 4), -1.0, dtype=torch.float64)
    inputs = LossInputs(logp=logp, old_logp=logp, entropy=entropy, mask=mask,
                        advantages=torch.tensor([1.0, -1.0], dtype=torch.float64), num_tokens=7.0, num_seqs=2.0)
    kept = algos.build("grpo", entropy_top_ratio=0.3)  # ceil(0.3 * 7) = 3 tokens: 2.0, 1.5, 0.9
    # ratio 1: per-token loss -A. Kept: row 0 token 1 (+1 -> -1), row 1 tokens 0, 3 (A=-1 -> +1 each).
    loss, metrics = kept.loss(inputs)
    assert metrics["actor/masked_token_frac"] == pytest.approx(4 / 7)
    assert loss.item() == pytest.approx((-1 + 1 + 1) / 7)  # without the learner's context: all tokens
    inputs.extra = {"kept_tokens": 3.0}
    assert kept.loss(inputs)[0].item() == pytest.approx((-1 + 1 + 1) / 3)  # authors: over kept tokens
    all_tokens = algos.build("grpo", entropy_top_ratio=0.3, entropy_mask_denominator="all")
    assert all_tokens.loss(inputs)[0].item() == pytest.approx((-1 + 1 + 1) / 7)  # TRL: over all tokens


def test_forking_minibatch_context_counts_kept_tokens_and_ranks_globally():
    batch = _batch([1, 0, 1, 0], [0, 0, 1, 1], lengths=[4, 2, 3, 1])
    entropies = torch.tensor([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 0, 0], [0.5, 0.6, 0.7, 0], [0.05, 0, 0, 0]])

    def entropy_of(micro):  # the rows are recognised by their masks' lengths
        lengths = micro.response_mask.sum(1).long().tolist()
        return torch.stack([entropies[[4, 2, 3, 1].index(n)][: micro.response_mask.shape[1]] for n in lengths])

    micro_rows = [[0, 1], [2, 3]]
    micro_scope = algos.build("grpo", entropy_top_ratio=0.25).minibatch_context(batch, micro_rows, entropy_of)
    assert [c["kept_tokens"] for c in micro_scope] == [2.0 + 1.0] * 2  # ceil(.25*6)=2 and ceil(.25*4)=1
    mini = algos.build("grpo", entropy_top_ratio=0.25, entropy_mask_scope="mini-batch")
    contexts = mini.minibatch_context(batch, micro_rows, entropy_of)
    assert contexts[0]["kept_tokens"] == 3.0  # ceil(0.25 * 10) over the mini-batch
    assert contexts[0]["forking_mask"].nonzero().tolist() == [[1, 0], [1, 1]]  # 5.0, 6.0
    assert contexts[1]["forking_mask"].nonzero().tolist() == [[0, 2]]  # 0.7


# --- A*-PO ---------------------------------------------------------------------------------------------


def test_astar_loss_matches_the_function_and_samples_once(tmp_path):
    from rlvr.algos.astar import write_table

    table = tmp_path / "values.jsonl"
    write_table(table, [("a", [1.0, 0.0]), ("b", [0.0, 0.0])])
    astar = algos.build("astar", values_path=str(table), beta1=0.5, beta2=0.1, entropy_coef=0.0)
    assert astar.rollout_plan(3, 8) == [1, 1, 1] and astar.needs_reference
    recipe = build_recipe({}, ["algorithm.name=astar"])
    prompts = astar.prepare_prompts([Prompt("a", "", ""), Prompt("b", "", "")], recipe)
    assert len(prompts) == 2
    v_a = 0.5 * math.log((math.exp(2) + 1) / 2)
    values = astar.states["astar"].values
    assert values["a"] == pytest.approx(v_a, rel=1e-6) and values["b"] == 0.0 and astar.state_dict() == {}
    batch = _batch([1.0, 0.0], [0, 1], prompt_ids=["a", "b"])
    adv = astar.advantages(batch)[0]
    assert adv.tolist() == pytest.approx([1 - v_a, 0.0], rel=1e-6)
    inputs = _inputs(n=2, advantages=adv.double(), ref_logp=torch.zeros(2, 5, dtype=torch.float64))
    # (1/N) sum_i (beta2 * sum_t (logp - ref_logp) - (r_i - V*))^2 with beta2 0.1 and ref_logp 0
    seq_log_ratio = (inputs.logp.detach() * inputs.mask).sum(1)
    residual = 0.1 * seq_log_ratio - (batch.rewards.double() - batch.algo_fields["astar_value"].double())
    loss, metrics = astar.loss(inputs)
    assert loss.item() == pytest.approx(residual.square().mean().item(), rel=1e-9)
    assert metrics["astar/residual_abs_mean"] == pytest.approx(residual.abs().mean().item(), rel=1e-9)
    filtered = algos.build("astar", values_path=str(table), filter_incorrect=True)
    assert [p.id for p in filtered.prepare_prompts([Prompt("a", "", ""), Prompt("b", "", "")], recipe)] == ["a"]


def test_astar_table_errors(tmp_path):
    recipe = build_recipe({}, ["algorithm.name=astar"])
    missing = algos.build("astar", values_path=str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="run `rlvr prepare astar RECIPE` first"):
        missing.prepare_prompts([Prompt("a", "", "")], recipe)
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"prompt_id": "a", "rewards": [1, 0]}) + "\n")
    with pytest.raises(ValueError, match="1 of 2 training prompts are not in the astar table"):
        algos.build("astar", values_path=str(table)).prepare_prompts([Prompt("a", "", ""), Prompt("b", "", "")], recipe)
    table.write_text("{not json\n")
    with pytest.raises(ValueError, match="t.jsonl:1: not a stage-1 row"):
        algos.build("astar", values_path=str(table)).prepare_prompts([Prompt("a", "", "")], recipe)


def test_the_kernels_aggregations_are_the_options():
    from rlvr.algos.options import AGG_MODES
    from rlvr.kernels.reference import AGG_MODES as KERNEL_AGG_MODES

    assert KERNEL_AGG_MODES == AGG_MODES
