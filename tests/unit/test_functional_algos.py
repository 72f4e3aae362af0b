"""DCPO bounds, forking-token mask, A*-PO and COPO maths against hand-computed values and independent
float64 loops (ALGORITHMS.md sections 2, 5, 6, 7 and the invariants of section 12)."""

import math
from collections import Counter

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs
from rlvr.algos.functional import (
    COPO_MODES,
    astar_values,
    clipped_pg_terms,
    copo_advantages,
    dcpo_ratio_bounds,
    forking_token_mask,
    group_advantages,
)

# --- DCPO (section 2.1(a)) -------------------------------------------------------------------------------


def test_dcpo_bounds_by_hand():
    q = torch.tensor([[0.01, 0.5, 1.0, 0.8]], dtype=torch.float64)  # float64: sqrt(0) at q=0.8 is sensitive
    low, high = dcpo_ratio_bounds(q.log(), eps_low=0.2, eps_high=0.2)
    # q=0.01: 1-4*0.2/0.01 < 0 -> r_low 0.5; r_high = (1 + sqrt(81)) / 2 = 5 (the document's example)
    # q=0.5: r_low = (1 + sqrt(1 - 1.6)^+) / 2 = 0.5; r_high = (1 + sqrt(2.6)) / 2
    # q=1: r_low = (1 + sqrt(0.2)) / 2, r_high = (1 + sqrt(1.8)) / 2
    # q=0.8: r_low = (1 + sqrt(0)) / 2 = 0.5 exactly at q = 4 eps_low; r_high = (1 + sqrt(2)) / 2
    expected_low = [0.5, 0.5, (1 + math.sqrt(0.2)) / 2, 0.5]
    expected_high = [5.0, (1 + math.sqrt(2.6)) / 2, (1 + math.sqrt(1.8)) / 2, (1 + math.sqrt(2.0)) / 2]
    assert low[0].tolist() == pytest.approx(expected_low, rel=1e-5)
    assert high[0].tolist() == pytest.approx(expected_high, rel=1e-5)
    assert low.shape == high.shape == q.shape and low.dtype == high.dtype == torch.float64
    low32, _ = dcpo_ratio_bounds(q.float().log(), eps_low=0.2, eps_high=0.2)
    assert low32.dtype == torch.float32


def test_dcpo_bounds_solve_the_probability_constraint():
    q = torch.tensor([0.9, 0.95, 0.999, 0.3, 0.05], dtype=torch.float64)
    eps_low, eps_high = 0.16, 0.2
    low, high = dcpo_ratio_bounds(q.log(), eps_low, eps_high, cap=None)
    # At the upper bound |(r - 1) r q| = eps_high for every q; at the lower bound = eps_low while q > 4 eps_low.
    assert ((high - 1) * high * q).tolist() == pytest.approx([eps_high] * 5, rel=1e-9)
    above = q > 4 * eps_low
    assert ((1 - low) * low * q)[above].tolist() == pytest.approx([eps_low] * int(above.sum()), rel=1e-9)
    assert (low[~above] == 0.5).all()


def test_dcpo_bounds_versus_fixed_bounds():
    q = torch.linspace(0.01, 1.0, 100)
    low, high = dcpo_ratio_bounds(q.log(), 0.2, 0.2, cap=None)
    # Upper bound shrinks and lower bound grows with q; never degenerate. Against PPO's fixed [0.8, 1.2]:
    # the upper bound is wider for rare tokens and tighter near q=1; the lower bound is always looser
    # (it never exceeds (1 + sqrt(1 - 4 eps_low)) / 2 = 0.724 < 0.8).
    assert (high[1:] <= high[:-1]).all() and (low[1:] >= low[:-1]).all()
    assert (low >= 0.5).all() and (high > 1).all() and (low < 1).all()
    assert high[0] > 1.2 and high[-1] < 1.2  # rare tokens: wider; likely tokens: tighter than 1 + eps
    assert (low < 0.8).all() and low[-1] == pytest.approx((1 + math.sqrt(0.2)) / 2, rel=1e-5)
    # Fed to the clipped loss: a rare token with ratio 3 and positive advantage is not clipped by DCPO but
    # is by fixed bounds.
    old = torch.tensor([[math.log(0.01)]])
    new = old + math.log(3.0)
    lo, hi = dcpo_ratio_bounds(old, 0.2, 0.2)
    _, clipped_dcpo, _ = clipped_pg_terms(new, old, torch.tensor([1.0]), 1 - lo, hi - 1)
    _, clipped_fixed, _ = clipped_pg_terms(new, old, torch.tensor([1.0]), 0.2, 0.2)
    assert not clipped_dcpo.item() and clipped_fixed.item()


def test_dcpo_cap_and_zero_probability():
    old_logp = torch.tensor([[math.log(1e-4), -float("inf"), -200.0]])
    low, high = dcpo_ratio_bounds(old_logp, 0.2, 0.28)
    # q=1e-4: uncapped r_high = (1 + sqrt(1 + 11200)) / 2 ~ 53.4 -> cap 10; q=0 and underflow: limits 0.5 / cap
    assert high.tolist() == [[10.0, 10.0, 10.0]]
    assert low.tolist() == [[0.5, 0.5, 0.5]]
    _, uncapped = dcpo_ratio_bounds(old_logp[:, :1], 0.2, 0.28, cap=None)
    assert uncapped.item() == pytest.approx((1 + math.sqrt(1 + 4 * 0.28 / 1e-4)) / 2, rel=1e-5)
    _, capped3 = dcpo_ratio_bounds(old_logp[:, :1], 0.2, 0.28, cap=3.0)
    assert capped3.item() == 3.0


def test_dcpo_bounds_errors():
    old = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="eps_low must be in"):
        dcpo_ratio_bounds(old, -0.1, 0.2)
    with pytest.raises(ValueError, match="eps_high must be >= 0"):
        dcpo_ratio_bounds(old, 0.2, -1.0)
    with pytest.raises(ValueError, match="cap"):
        dcpo_ratio_bounds(old, 0.2, 0.2, cap=1.0)


# --- Forking tokens (section 7) --------------------------------------------------------------------------


def test_forking_mask_by_hand():
    entropy = torch.tensor([[0.1, 2.0, 0.5, 9.0], [1.5, 0.2, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # 9.0 is padding and must lose
    # 7 valid tokens, rho 0.3 -> k = ceil(2.1) = 3: entropies 3.0, 2.0, 1.5
    out = forking_token_mask(entropy, mask, 0.3)
    assert out.dtype == torch.bool
    assert out.tolist() == [[False, True, False, False], [True, False, True, False]]
    # rho 0.2 of 10 valid tokens is exactly 2 (not 3): the 0.9999 offset forgives float noise
    ent10 = torch.arange(10.0).view(2, 5)
    assert int(forking_token_mask(ent10, torch.ones(2, 5), 0.2).sum()) == 2
    # ... and like the code, it is not an exact ceil: 10 * 0.200005 = 2.00005 keeps 2 tokens, not 3
    assert int(forking_token_mask(ent10, torch.ones(2, 5), 0.200005).sum()) == 2
    # at least one token even for a tiny rho
    assert forking_token_mask(ent10, torch.ones(2, 5), 1e-6).tolist() == [[False] * 5, [False] * 4 + [True]]


def test_forking_mask_rho_one_is_valid_mask_and_masked_never_selected():
    torch.manual_seed(0)
    entropy = torch.rand(4, 7) * 5
    mask = (torch.rand(4, 7) > 0.4).float()
    entropy[mask == 0] = 100.0  # padding with the largest entropy still never selected
    assert torch.equal(forking_token_mask(entropy, mask, 1.0), mask.bool())
    for rho in (0.1, 0.25, 0.5, 0.9):
        out = forking_token_mask(entropy, mask, rho)
        assert not (out & ~mask.bool()).any()
        n = int(mask.sum())
        assert int(out.sum()) == max(1, math.ceil(n * rho - 1e-9))
        # every kept token has entropy >= every dropped valid token
        kept, dropped = entropy[out], entropy[mask.bool() & ~out]
        assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_forking_mask_ties_and_empty():
    entropy = torch.ones(10, 10)
    out = forking_token_mask(entropy, torch.ones(10, 10), 0.3)  # k = 30 among 100 ties: the first 30
    assert torch.equal(out, torch.arange(100).view(10, 10) < 30)
    assert not forking_token_mask(entropy, torch.zeros(10, 10), 0.2).any()


def test_forking_mask_errors():
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        forking_token_mask(torch.ones(1, 2), torch.ones(1, 2), 0.0)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        forking_token_mask(torch.ones(1, 2), torch.ones(1, 2), 1.5)
    with pytest.raises(ValueError, match="differs from mask shape"):
        forking_token_mask(torch.ones(1, 2), torch.ones(1, 3), 0.2)


# --- A*-PO (section 6) -----------------------------------------------------------------------------------


def test_astar_values_by_hand():
    ref = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    values = astar_values(ref, 0.5)
    # beta1 log((e^2 + 3) / 4) for one success in four; a constant reward is its own V*
    assert values.tolist() == pytest.approx([0.5 * math.log((math.exp(2) + 3) / 4), 1.0, 0.0], rel=1e-6)
    loop = [0.5 * math.log(sum(math.exp(r / 0.5) for r in row) / len(row)) for row in ref.tolist()]
    assert values.tolist() == pytest.approx(loop, rel=1e-6)


def test_astar_values_small_and_large_beta_and_code_special_cases():
    ref = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.0, 0.0]])
    tiny = astar_values(ref, 1e-6)  # naive exp(1e6) overflows; the limit is the max reward
    assert torch.isfinite(tiny).all()
    assert tiny.tolist() == pytest.approx([1.0, 0.5], abs=1e-4)
    assert astar_values(ref, 1e4).tolist() == pytest.approx(ref.mean(1).tolist(), abs=1e-4)  # -> mean
    assert astar_values(ref, 0.0).tolist() == pytest.approx([0.25, 0.1875])  # code: beta1 == 0 -> mean
    assert astar_values(ref, -1.0).tolist() == [0.0, 0.0]  # code: beta1 < 0 -> no baseline


def test_astar_values_errors():
    with pytest.raises(ValueError, match=r"\[prompts, samples\]"):
        astar_values(torch.ones(4), 0.5)
    with pytest.raises(ValueError, match=r"\[prompts, samples\]"):
        astar_values(torch.ones(3, 0), 0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        astar_values(torch.tensor([[1.0, float("nan")]]), 0.5)


def _astar_loss(logp, ref, mask, rewards, values, beta2):
    """A*-PO's registered loss of one micro-batch (the whole mini-batch), the advantage being r - V*."""
    inputs = LossInputs(logp=logp, old_logp=logp.detach(), entropy=None, mask=mask, advantages=rewards - values,
                        num_tokens=float(mask.sum()), num_seqs=float(mask.shape[0]), ref_logp=ref)
    return algos.build("astar", beta2=beta2, entropy_coef=0.0).loss(inputs)[0]


def test_astar_loss_by_hand_and_masking():
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the -7 vs 0 token is padding
    rewards, values = torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.5])
    loss = _astar_loss(logp, ref, mask, rewards, values, beta2=0.1)
    # row 0: log-ratio 0.5 - 1.0 = -0.5 -> (-0.05 - 0.75)^2 = 0.64; row 1: 1.5 -> (0.15 + 0.5)^2 = 0.4225
    assert loss.item() == pytest.approx((0.64 + 0.4225) / 2, rel=1e-6)
    loss.backward()
    # d/dlogp = 2 beta2 residual / N on valid tokens, 0 on padding
    expected = torch.tensor([[-0.08, -0.08, 0.0], [0.065, 0.065, 0.065]])
    torch.testing.assert_close(logp.grad, expected, rtol=1e-5, atol=1e-7)


def test_astar_loss_zero_at_the_optimum():
    # pi* = pi_ref exp(A* / beta2): a log-ratio of (r - V*) / beta2 gives exactly zero loss
    ref = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rewards, values = torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.6])
    beta2 = 0.5
    logp = torch.tensor([[0.8, 0.8], [-1.2, 5.0]])  # sums over valid tokens: 1.6 = 0.8/0.5, -1.2 = -0.6/0.5
    assert _astar_loss(logp, ref, mask, rewards, values, beta2).item() == pytest.approx(0.0, abs=1e-10)


# --- COPO (section 5) ------------------------------------------------------------------------------------


def _copo_reference(rewards, group, answers, k, b, mode):
    """Straight float64 loop over the code's definitions (hijih/copo-code), one prompt at a time."""
    prompts = list(dict.fromkeys(group))
    rows = {p: [i for i, g in enumerate(group) if g == p] for p in prompts}
    local, entropy, acc = [0.0] * len(rewards), {}, {}
    for p, idx in rows.items():
        rs = [rewards[i] for i in idx]
        mean, std = (0.0, 1.0) if len(rs) == 1 else (sum(rs) / len(rs), 0.0)
        if len(rs) > 1:
            std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1))
        for i in idx:
            local[i] = (rewards[i] - mean) / (std + 1e-6)
        counts = Counter(answers[i] for i in idx)
        entropy[p] = -sum(c / len(idx) * math.log2(c / len(idx)) for c in counts.values())
        acc[p] = sum(rs) / len(rs)
    accs = list(acc.values())
    gmean = sum(accs) / len(accs)
    gstd = math.sqrt(sum((a - gmean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
    glob, weight = [], []
    for i, p in enumerate(group):
        glob.append((acc[p] - gmean) / (gstd + 1e-6) if len(accs) > 1 else 0.0)
        soft = 1 / (1 + math.exp(-k * (entropy[p] - b)))
        w = {
            "soft with zero": soft * (rewards[i] != 0),
            "soft with forced": soft * (abs(local[i]) > 0),
            "only soft": soft,
            "only zero": float(rewards[i] != 0),
            "only forced": float(abs(local[i]) > 0),
            "only global": 0.0,
            "no global": 1.0,
        }[mode]
        weight.append(w)
    return local, glob, weight


REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
GROUP = [3, 3, 3, 3, 8, 8, 8, 1, 1, 5]  # groups of 4, 3, 2 and 1 rows, ids not contiguous
ANSWERS = ["7", "5", "6", "7", "2", "2", "2", "x", "y", "9"]


@pytest.mark.parametrize("mode", COPO_MODES)
def test_copo_matches_reference_loop(mode):
    local, glob, weight = copo_advantages(torch.tensor(REWARDS), torch.tensor(GROUP), ANSWERS, 5.0, 1.0, mode)
    ref_local, ref_glob, ref_weight = _copo_reference(REWARDS, GROUP, ANSWERS, 5.0, 1.0, mode)
    assert local.tolist() == pytest.approx(ref_local, rel=1e-5, abs=1e-6)
    assert glob.tolist() == pytest.approx(ref_glob, rel=1e-5, abs=1e-6)
    assert weight.tolist() == pytest.approx(ref_weight, rel=1e-5, abs=1e-6)


def test_copo_by_hand():
    # prompt 0: rewards [1, 0], answers differ -> H = 1 bit, w = sigmoid(5 (1 - 1)) = 0.5
    # prompt 1: rewards [1, 1], same answer  -> H = 0,     w = sigmoid(-5)
    rewards, group = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    local, glob, weight = copo_advantages(rewards, group, ["a", "b", "c", "c"])  # defaults k=5, b=1
    std = math.sqrt(0.5)
    assert local.tolist() == pytest.approx([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.0, 0.0], rel=1e-6)
    # accuracies 0.5 and 1.0 across prompts: mean 0.75, unbiased std sqrt(0.125)
    g = 0.25 / (math.sqrt(0.125) + 1e-6)
    assert glob.tolist() == pytest.approx([-g, -g, g, g], rel=1e-6)
    sig = 1 / (1 + math.exp(5))
    assert weight.tolist() == pytest.approx([0.5, 0.0, sig, sig], rel=1e-6)  # 'soft with zero'
    _, _, forced = copo_advantages(rewards, group, ["a", "b", "c", "c"], mode="soft with forced")
    assert forced.tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0], rel=1e-6)  # all-same group: global only


def test_copo_no_global_reduces_to_grpo():
    rewards, group = torch.tensor(REWARDS), torch.tensor(GROUP)
    local, _, weight = copo_advantages(rewards, group, ANSWERS, mode="no global")
    assert torch.equal(weight, torch.ones(len(REWARDS)))  # loss = 1 * l_clip(local) + 0 * l_clip(global)
    assert torch.equal(local, group_advantages(rewards, group, "group", eps=1e-6))


def test_copo_edge_cases():
    # all-equal answers: H = 0 in every group; one prompt: global advantage 0 (not NaN); a singleton group
    rewards, group = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([4, 4, 4])
    local, glob, weight = copo_advantages(rewards, group, ["3", "3", "3"], k=2.0, b=0.5, mode="only soft")
    assert local.tolist() == [0.0, 0.0, 0.0]
    assert glob.tolist() == [0.0, 0.0, 0.0]
    assert weight.tolist() == pytest.approx([1 / (1 + math.exp(1.0))] * 3, rel=1e-6)
    local, glob, _ = copo_advantages(torch.tensor([1.0]), torch.tensor([0]), ["1"])
    assert local.tolist() == pytest.approx([1 / (1 + 1e-6)]) and glob.tolist() == [0.0]
    # equal accuracy everywhere: global 0; hyphenated mode name (run_copo.sh) is the same mode
    _, glob, w = copo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]), list("abab"),
                                 mode="soft-with-zero")
    assert glob.tolist() == [0.0] * 4
    assert w.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5], rel=1e-6)


def test_copo_errors():
    rewards, group = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="COPO mode 'soft' is unknown"):
        copo_advantages(rewards, group, ["a", "b"], mode="soft")
    with pytest.raises(ValueError, match="one entry per row"):
        copo_advantages(rewards, group, ["a"])
    with pytest.raises(ValueError, match="one entry per row"):
        copo_advantages(rewards, torch.tensor([0, 0, 1]), ["a", "b"])
