"""CAPO's curvature model (ALGORITHMS.md section 3) against hand-computed values, autograd, a Taylor expansion
and an independent dense float64 loop; its mask thresholds, loss normalisation, optimiser-model state and the
invariant that with the curvature mask off CAPO is GRPO (section 12)."""

import io
import math

import pytest
import torch
from pydantic import ValidationError

from rlvr.algos import LossInputs, RunInfo, build
from rlvr.algos.capo import (
    SparseAdamMoments,
    adam_direction,
    curvature_keep,
    curvature_shifts,
    row_gradient_sums,
    token_curvature,
    token_gradients,
    topk_policy,
)
from rlvr.config import Recipe

F64 = torch.float64


# --- the pure maths, by hand --------------------------------------------------------------------------------


def test_topk_policy_by_hand():
    # V=5, H=3; h picks out the first coordinate, so the logits are W[:, 0] / T = [2, -1, 0.5, 3, 1] / 2.
    weight = torch.tensor([[2.0, 1, 0], [-1, 0, 0], [0.5, 0, 0], [3, -1, 0], [1, 0, 5]], dtype=F64)
    hidden = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=F64)
    ids, pi, onehot = topk_policy(hidden, weight, torch.tensor([0, 1]), top_k=3, temperature=2.0)
    assert ids.tolist() == [[3, 0, 4], [3, 0, 4]]
    z = torch.tensor([1.5, 1.0, 0.5], dtype=F64)
    assert pi[0].tolist() == pytest.approx((z.exp() / z.exp().sum()).tolist(), rel=1e-12)
    assert onehot.tolist() == [[0, 1, 0], [0, 0, 0]]  # token 1 is outside the top 3: e_a is zero on K_t
    ids_all, pi_all, _ = topk_policy(hidden, weight, torch.tensor([0, 1]), top_k=None, temperature=2.0)
    assert ids_all.shape == (2, 5) and float(pi_all[0].sum()) == pytest.approx(1.0)
    assert topk_policy(hidden, weight, torch.tensor([0, 1]), top_k=50)[0].shape == (2, 5)  # k capped at V


def test_token_gradient_by_hand():
    hidden = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    score = torch.tensor([[-0.5, 0.7, -0.2]], dtype=F64)  # pi = [0.5, 0.3, 0.2], sampled the second row
    g = token_gradients(hidden, score, torch.tensor([2.0], dtype=F64), temperature=1.0)
    assert g[0].tolist() == [[-1.0, -2.0, 1.0], [1.4, 2.8, -1.4], [-0.4, -0.8, 0.4]]
    g_t = token_gradients(hidden, score, torch.tensor([2.0], dtype=F64), temperature=0.5)
    assert torch.allclose(g_t, 2 * g)


def test_adam_direction_by_hand():
    g, m, s = (torch.tensor([x], dtype=F64) for x in (0.5, 0.1, 0.04))
    # step 1 -> bias correction at step 2: m' = 0.09 + 0.05, s' = 0.03996 + 0.00025
    m_hat = 0.14 / (1 - 0.9**2)
    s_hat = 0.04021 / (1 - 0.999**2)
    expected = m_hat / (math.sqrt(s_hat) + 1e-8)
    assert float(adam_direction(g, m, s, step=1)) == pytest.approx(expected, rel=1e-12)
    # from zero moments at step 0 the bias-corrected step is g / (|g| + eps): the sign
    zero = torch.zeros(3, dtype=F64)
    out = adam_direction(torch.tensor([0.3, -2.0, 0.0], dtype=F64), zero, zero, step=0)
    assert out.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-7)


def test_curvature_shifts_by_hand():
    # pi = [0.6, 0.4], sampled the first row: v = [0.4, -0.4]; u = [1, -2]; <g, G> = 3; A = 1.5; lr = 0.1
    # v.u = 1.2; u^T F u = 0.6 + 1.6 - (0.6 - 0.8)^2 = 2.16; A [(v.u)^2 - uFu] = 1.5 (1.44 - 2.16) = -1.08
    pi = torch.tensor([[0.6, 0.4]], dtype=F64)
    dj, kl = curvature_shifts(torch.tensor([3.0], dtype=F64), torch.tensor([[1.0, -2.0]], dtype=F64),
                              torch.tensor([[0.4, -0.4]], dtype=F64), pi, torch.tensor([1.5], dtype=F64), lr=0.1)
    assert float(dj) == pytest.approx(0.3 - 0.5 * 0.01 * 1.08, rel=1e-12)
    assert float(kl) == pytest.approx(0.5 * 0.01 * 1.44, rel=1e-12)
    # u^T F u with the explicit matrix F = diag(pi) - pi pi^T
    u = torch.tensor([1.0, -2.0], dtype=F64)
    fisher = torch.diag(pi[0]) - torch.outer(pi[0], pi[0])
    assert float(u @ fisher @ u) == pytest.approx(2.16, rel=1e-12)


def test_mask_thresholds_symmetric_and_not():
    dj = torch.tensor([-0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02], dtype=F64)
    kl = torch.zeros_like(dj)
    keep, keep_h, keep_f = curvature_keep(dj, kl, hessian_tau=0.01, fisher_tau=1e-4, symmetric=True)
    assert keep.tolist() == [False, False, True, True, True, False, False]  # strict on both sides
    assert keep_f.all() and (keep == keep_h).all()
    keep, _, _ = curvature_keep(dj, kl, hessian_tau=0.01, fisher_tau=1e-4, symmetric=False)
    assert keep.tolist() == [False, False, False, True, True, False, False]  # 0 <= dJ < tau
    kl = torch.tensor([0.0, 5e-5, 1e-4, 2e-4], dtype=F64)
    keep, keep_h, keep_f = curvature_keep(torch.zeros(4, dtype=F64), kl, hessian_tau=0.01, fisher_tau=1e-4)
    assert keep.tolist() == [True, True, False, False] and keep_h.all()
    # a tau of 0 switches its test off
    assert curvature_keep(torch.tensor([5.0]), torch.tensor([5.0]), 0.0, 0.0)[0].tolist() == [True]
    assert curvature_keep(torch.tensor([5.0]), torch.tensor([5.0]), 0.0, 1e-4)[0].tolist() == [False]
    assert curvature_keep(torch.tensor([5.0]), torch.tensor([0.0]), 0.01, 0.0)[0].tolist() == [False]


# --- the per-token gradient is autograd's; the shifts are the Taylor expansion -----------------------------


@pytest.mark.parametrize("top_k", [None, 4])
def test_token_gradient_is_autograds(top_k):
    torch.manual_seed(1)
    V, H, T, A = 9, 4, 0.7, -1.3
    weight = torch.randn(V, H, dtype=F64)
    h = torch.randn(1, H, dtype=F64)
    ids, pi, _ = topk_policy(h, weight, torch.zeros(1, dtype=torch.long), top_k, T)
    token = ids[0, 1]  # a sampled token inside K_t
    _, pi, onehot = topk_policy(h, weight, token[None], top_k, T)
    g = token_gradients(h, onehot - pi, torch.tensor([A], dtype=F64), T)[0]  # [k,H] on rows ids[0]

    w = weight.clone().requires_grad_(True)
    rows = ids[0]
    # the token's objective under the truncated policy: A log softmax over K_t of (W h / T) at a_t
    logp = torch.log_softmax((w[rows] @ h[0]) / T, dim=0)[(rows == token).nonzero()[0, 0]]
    (A * logp).backward()
    expected = w.grad
    dense = torch.zeros(V, H, dtype=F64).index_add_(0, rows, g)
    assert torch.allclose(dense, expected, atol=1e-12, rtol=1e-10)
    if top_k is not None:
        outside = torch.ones(V, dtype=torch.bool)
        outside[rows] = False
        assert (expected[outside] == 0).all()


def test_objective_shift_is_the_second_order_expansion():
    """``dJ - lr^2/2 A (v.u)^2`` is the second-order Taylor expansion of ``A [log pi_a(W + lr G) - log pi_a(W)]``
    (the ``(v.u)^2`` part is the score-function term of the policy Hessian, not in log pi_a itself)."""
    torch.manual_seed(2)
    V, H, T, A = 6, 3, 0.8, 0.9
    weight = torch.randn(V, H, dtype=F64)
    h = torch.randn(1, H, dtype=F64)
    token = torch.tensor([2])
    moments = SparseAdamMoments()
    moments.update(torch.arange(V), 0.1 * torch.randn(V, H, dtype=F64))
    moments.update(torch.tensor([1, 4]), 0.1 * torch.randn(2, H, dtype=F64))

    def errors(lr):
        out = token_curvature(h, weight, token, torch.tensor([A], dtype=F64), lr, T, None, moments)
        ids, pi, onehot = topk_policy(h, weight, token, None, T)
        g = token_gradients(h, onehot - pi, torch.tensor([A], dtype=F64), T)
        direction = torch.zeros(V, H, dtype=F64).index_add_(0, ids[0], moments.direction(g, ids)[0])
        logp = lambda w: torch.log_softmax(w @ h[0] / T, dim=0)[token[0]]  # noqa: E731
        exact = A * (logp(weight + lr * direction) - logp(weight))
        u = (direction[ids[0]] @ h[0]) / T
        vu = ((onehot - pi)[0] * u).sum()
        return float(out.dj[0] - 0.5 * lr**2 * A * vu**2 - exact), float(exact)

    err, exact = errors(1e-2)
    err_half, _ = errors(5e-3)
    assert abs(err) < 1e-3 * abs(exact)
    assert 6.0 < err / err_half < 10.0  # the remainder is third order


# --- the sparse Adam model -----------------------------------------------------------------------------------


def test_sparse_adam_moments_update_by_hand():
    model = SparseAdamMoments(beta1=0.9, beta2=0.999, eps=1e-8)
    # no rows: zero moments, g / (|g| + eps) at step 1
    assert model.direction(torch.ones(2, 3), torch.tensor([0, 1])).flatten().tolist() == pytest.approx([1.0] * 6)
    model.update(torch.tensor([3, 1]), torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64))
    assert model.step == 1 and model.ids.tolist() == [1, 3]
    assert model.exp_avg.flatten().tolist() == pytest.approx([0.05, 0.0, 0.1, -0.2], rel=1e-12)
    assert model.exp_avg_sq.flatten().tolist() == pytest.approx([0.00025, 0.0, 0.001, 0.004], rel=1e-12)
    model.update(torch.tensor([4, 1]), torch.tensor([[2.0, 2.0], [1.0, 1.0]], dtype=F64))
    assert model.step == 2 and model.ids.tolist() == [1, 3, 4]
    # row 1 moves, row 3 is absent from the batch and keeps its moments (no decay), row 4 starts from zero
    assert model.exp_avg.flatten().tolist() == pytest.approx([0.145, 0.1, 0.1, -0.2, 0.2, 0.2], rel=1e-12)
    assert model.exp_avg_sq[0].tolist() == pytest.approx([0.999 * 0.00025 + 0.001, 0.001], rel=1e-12)
    m, s = model.moments(torch.tensor([[3, 7]]), 2, F64)
    assert m.flatten().tolist() == pytest.approx([0.1, -0.2, 0.0, 0.0], rel=1e-12)
    assert s[0, 1].tolist() == [0.0, 0.0]
    g = torch.tensor([[[0.3, -0.1]]], dtype=F64)
    expected = adam_direction(g[0, 0], model.exp_avg[1], model.exp_avg_sq[1], 2)
    assert model.direction(g, torch.tensor([[3]]))[0, 0].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    empty = model.state_dict()
    model.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, 0))
    assert model.step == 3 and len(model) == 3  # the step counter advances without rows
    model.load_state_dict(empty)
    assert model.step == 2
    model.load_state_dict({})
    assert model.step == 0 and len(model) == 0
    with pytest.raises(ValueError, match="lacks"):
        model.load_state_dict({"step": 1})


def test_row_gradient_sums_by_hand():
    ids = torch.tensor([[2, 0], [0, 5]])
    coef = torch.tensor([[1.0, 2.0], [-1.0, 3.0]], dtype=F64)
    hidden = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=F64)
    rows = row_gradient_sums(ids, coef, hidden, chunk_size=1)
    assert rows.ids.tolist() == [0, 2, 5] and rows.counts.tolist() == [2, 1, 1]
    # row 0: 2 * [1, 1] + (-1) * [2, 0] = [0, 2]; row 2: [1, 1]; row 5: 3 * [2, 0]
    assert rows.sums.tolist() == [[0.0, 2.0], [1.0, 1.0], [6.0, 0.0]]
    merged = rows.merge(row_gradient_sums(torch.tensor([[5, 1]]), coef[:1], hidden[:1]))
    assert merged.ids.tolist() == [0, 1, 2, 5] and merged.counts.tolist() == [2, 1, 1, 2]
    assert merged.means()[3].tolist() == [(6.0 + 1.0) / 2, 1.0 / 2]


# --- CAPO against an independent dense float64 loop ------------------------------------------------------------


def _reference_step(hidden, weight, tokens, adv, mask, lr, temperature, top_k, state, taus):
    """One micro-batch by a per-token loop with dense [V,H] matrices: returns keep [n,T], dJ, KL, and the
    per-row (sum, count) of the kept tokens' gradients. ``state``: dense moments, seen rows and step."""
    M, S, seen, step = state
    V, H = weight.shape
    keep = torch.zeros(mask.shape, dtype=torch.bool)
    dj_all, kl_all = [], []
    sums, counts = torch.zeros(V, H, dtype=F64), torch.zeros(V, dtype=F64)
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            h = hidden[i, t]
            logits = weight @ h / temperature
            ids = logits.topk(top_k).indices
            pi = torch.softmax(logits[ids], 0)
            v = (ids == tokens[i, t]).to(F64) - pi
            g = adv[i] * v[:, None] * h[None, :] / temperature  # [k,H]
            if not seen.any():
                G = g
            else:
                m = 0.9 * M[ids] + 0.1 * g
                s = 0.999 * S[ids] + 0.001 * g * g
                G = (m / (1 - 0.9 ** (step + 1))) / ((s / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
            u = G @ h / temperature
            fisher = torch.diag(pi) - torch.outer(pi, pi)
            dj = lr * (g * G).sum() + 0.5 * lr**2 * adv[i] * ((v @ u) ** 2 - u @ fisher @ u)
            kl = 0.5 * lr**2 * (v @ u) ** 2
            dj_all.append(float(dj))
            kl_all.append(float(kl))
            keep[i, t] = bool(-taus[0] < dj < taus[0]) and bool(kl < taus[1])
            if keep[i, t]:
                sums.index_add_(0, ids, g)
                counts.index_add_(0, ids, torch.ones(top_k, dtype=F64))
    return keep, dj_all, kl_all, sums, counts


def _reference_update(state, sums, counts):
    M, S, seen, step = state
    hit = counts > 0
    mean = sums[hit] / counts[hit, None]
    M, S = M.clone(), S.clone()
    M[hit] = 0.9 * M[hit] + 0.1 * mean
    S[hit] = 0.999 * S[hit] + 0.001 * mean * mean
    return M, S, seen | hit, step + 1


def _micro_batch(seed, n=3, T=5, V=8, H=3, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, T, dtype=F64)
    mask[0, 3:] = 0
    mask[2, 4:] = 0
    logp = -torch.rand(n, T, generator=g, dtype=F64)
    return LossInputs(
        logp=logp.clone().requires_grad_(True), old_logp=logp.clone(), entropy=None, mask=mask,
        advantages=torch.randn(n, generator=g, dtype=F64), num_tokens=float(mask.sum()), num_seqs=float(n),
        lr=0.3, hidden=scale * torch.randn(n, T, H, generator=g, dtype=F64),
        lm_head_weight=torch.randn(V, H, generator=g, dtype=F64),
        response_tokens=torch.randint(0, V, (n, T), generator=g))


def _with_lm_head(inputs, weight):
    inputs.lm_head_weight = weight
    return inputs


def test_capo_matches_the_dense_reference_over_two_steps_of_two_micro_batches():
    torch.manual_seed(0)
    V, H, top_k, temperature = 8, 3, 4, 0.9
    weight = torch.randn(V, H, dtype=F64)
    steps = [[_with_lm_head(_micro_batch(10 * s + j), weight) for j in range(2)] for s in range(3)]
    # taus at the quantiles of the first micro-batch's shifts, so that both tests reject some tokens
    state = (torch.zeros(V, H, dtype=F64), torch.zeros(V, H, dtype=F64), torch.zeros(V, dtype=torch.bool), 0)
    first = steps[0][0]
    _, dj, kl, _, _ = _reference_step(first.hidden, weight, first.response_tokens, first.advantages, first.mask,
                                      first.lr, temperature, top_k, state, (math.inf, math.inf))
    taus = (float(torch.tensor(dj).abs().quantile(0.7)), float(torch.tensor(kl).quantile(0.8)))
    algo = build("capo", RunInfo(temperature=temperature), top_k=top_k, hessian_tau=taus[0], fisher_tau=taus[1])
    algo.masks[0].chunk_size = 2  # several chunks per micro-batch
    rejected_by_step = []
    for micro_batches in steps:
        algo.minibatch_context(None, [[0], [1]], None)
        sums, counts = torch.zeros(V, H, dtype=F64), torch.zeros(V, dtype=F64)
        rejected = 0
        for inputs in micro_batches:
            keep, dj, kl, s, c = _reference_step(inputs.hidden, weight, inputs.response_tokens, inputs.advantages,
                                                 inputs.mask, inputs.lr, temperature, top_k, state, taus)
            sums, counts = sums + s, counts + c
            loss, metrics = algo.loss(inputs)
            mask, _ = algo.masks[0].mask(inputs)
            assert mask.tolist() == keep.tolist()
            valid = int(inputs.mask.sum())
            assert metrics["capo/rejection_rate"] == pytest.approx(1 - keep.sum().item() / valid)
            assert metrics["capo/kl_mean"] == pytest.approx(sum(kl) / valid, rel=1e-9)
            assert metrics["capo/dj_abs_mean"] == pytest.approx(sum(abs(x) for x in dj) / valid, rel=1e-9)
            rejected += valid - int(keep.sum())
        rejected_by_step.append(rejected)
        # token_mask ran twice per micro-batch above: reset and accumulate once per micro-batch, as the learner
        algo.minibatch_context(None, [[0], [1]], None)
        for inputs in micro_batches:
            algo.masks[0].mask(inputs)
        metrics = algo.on_optimizer_step()
        state = _reference_update(state, sums, counts)
        M, S, seen, step = state
        moments = algo.masks[0].moments
        assert moments.step == step and moments.ids.tolist() == seen.nonzero()[:, 0].tolist()
        assert torch.allclose(moments.exp_avg, M[seen], rtol=1e-10, atol=1e-14)
        assert torch.allclose(moments.exp_avg_sq, S[seen], rtol=1e-10, atol=1e-16)
        assert metrics["capo/adam_rows"] == float(seen.sum())
    assert all(0 < r < 20 for r in rejected_by_step)  # the thresholds bite, but not everywhere


def test_loss_is_the_mean_over_kept_tokens_per_sequence():
    algo = build("capo")
    inputs = _micro_batch(3)
    inputs.advantages = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    keep = torch.tensor([[1, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    algo.masks[0].mask = lambda _: (keep, {})
    loss, metrics = algo.loss(inputs)
    # ratio 1: l = -A; row 0 keeps 2 valid tokens, row 1 none (contributes 0), row 2 keeps 3 of 4
    expected = (-1.0 * 2 / 2 + 0.0 + -0.5 * 3 / 3) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["actor/masked_token_frac"] == pytest.approx(1 - 5 / 12)


def test_curvature_off_is_grpo():
    kwargs = dict(loss_agg="seq-mean-token-mean", adv_eps=1e-4, dual_clip=None)
    grpo = build("grpo", **kwargs)
    for capo in (build("capo", fisher_tau=0.0, hessian_tau=0.0), build("capo", fisher_tau=1e30, hessian_tau=1e30)):
        for seed in range(3):
            inputs = _micro_batch(seed)
            inputs.logp = (inputs.old_logp + 0.3 * torch.randn(inputs.old_logp.shape, dtype=F64)).requires_grad_(True)
            loss_capo, metrics = capo.loss(inputs)
            grad_capo, = torch.autograd.grad(loss_capo, inputs.logp)
            loss_grpo, _ = grpo.loss(inputs)
            grad_grpo, = torch.autograd.grad(loss_grpo, inputs.logp)
            assert loss_capo.item() == loss_grpo.item() and torch.equal(grad_capo, grad_grpo)
            assert metrics["capo/rejection_rate"] == 0.0
    off = build("capo", fisher_tau=0.0, hessian_tau=0.0).masks[0]
    assert off.mask(_micro_batch(0)) == (None, {"capo/rejection_rate": 0.0})


def test_grpo_advantages_with_the_authors_eps():
    class Batch:  # the advantages read only the rewards and the groups
        rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
        group = torch.tensor([0, 0, 0, 1, 1, 1])

    adv = build("capo").advantages(Batch())[0]
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0]
    assert adv.tolist() == pytest.approx([(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4),
                                          (-1 / 3) / (std + 1e-4), 0.0, 0.0, 0.0], rel=1e-6)


def test_sgd_model_and_adam_cold_start():
    inputs = _micro_batch(5)
    valid = inputs.mask.bool()
    args = (inputs.hidden[valid], inputs.lm_head_weight, inputs.response_tokens[valid],
            inputs.advantages[:, None].expand(valid.shape)[valid], 0.3, 1.0, 4)
    sgd = token_curvature(*args, moments=None)
    cold = token_curvature(*args, moments=SparseAdamMoments())  # no rows yet: the raw gradient, as the code
    assert torch.allclose(sgd.dj, cold.dj, rtol=1e-12) and torch.allclose(sgd.kl, cold.kl, rtol=1e-12)
    # the SGD shortcut equals the generic formula with G = g
    ids, pi, onehot = topk_policy(args[0], args[1], args[2], 4)
    g = token_gradients(args[0], onehot - pi, args[3])
    u = torch.einsum("nkh,nh->nk", g, args[0])
    dj, kl = curvature_shifts((g * g).sum((1, 2)), u, onehot - pi, pi, args[3], 0.3)
    assert torch.allclose(sgd.dj, dj, rtol=1e-12) and torch.allclose(sgd.kl, kl, rtol=1e-12)
    adam = token_curvature(*args, moments=SparseAdamMoments(), cold_start="adam")
    assert not torch.allclose(adam.dj, sgd.dj)
    sign = g / (g.abs() + 1e-8)  # from zero moments at step 0: m_hat = g, s_hat = g^2
    expected, _ = curvature_shifts((g * sign).sum((1, 2)), torch.einsum("nkh,nh->nk", sign, args[0]),
                                   onehot - pi, pi, args[3], 0.3)
    assert torch.allclose(adam.dj, expected, rtol=1e-10)
    # the sgd option never builds moments
    algo = build("capo", optimizer_model="sgd", top_k=4, hessian_tau=1e9, fisher_tau=1e9)
    algo.loss(inputs)
    assert algo.on_optimizer_step() == {} and algo.state_dict() == {}


# --- state ------------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_reproduces_the_next_mask():
    weight = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(7))
    options = dict(top_k=4, hessian_tau=0.05, fisher_tau=0.02)
    algo = build("capo", **options)
    assert algo.state_dict() == {}
    for seed in range(3):
        algo.minibatch_context(None, [[0]], None)
        algo.loss(_with_lm_head(_micro_batch(seed, scale=0.5), weight))
        algo.on_optimizer_step()
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    resumed = build("capo", **options)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.masks[0].moments.step == 3 and len(resumed.masks[0].moments) == len(algo.masks[0].moments) > 0

    nxt = _with_lm_head(_micro_batch(99, scale=0.5), weight)
    _, metrics = algo.loss(nxt)
    _, metrics_resumed = resumed.loss(nxt)
    assert torch.equal(algo.masks[0].mask(nxt)[0], resumed.masks[0].mask(nxt)[0])
    assert metrics_resumed == metrics
    _, metrics_fresh = build("capo", **options).loss(nxt)  # the state matters: a fresh model predicts otherwise
    assert metrics_fresh["capo/dj_abs_mean"] != pytest.approx(metrics["capo/dj_abs_mean"], rel=1e-6)

    with pytest.raises(ValueError, match="optimizer_model"):
        resumed.load_state_dict({"curvature": {"stats": {}}})
    with pytest.raises(ValueError, match=r"keeps state only for \['curvature'\]"):
        resumed.load_state_dict({"dcpo": {"stats": {}}})
    resumed.load_state_dict({})
    assert resumed.masks[0].moments.step == 0 and resumed.state_dict() == {}


# --- options, registration, errors -------------------------------------------------------------------------


def test_defaults_are_the_authors_recipe():
    algo = build("capo")
    o = algo.options
    assert algo.needs_hidden and algo.name == "capo" and [type(m).__name__ for m in algo.masks] == ["CurvatureMask"]
    assert (o.fisher_tau, o.hessian_tau, o.hessian_symmetric_clipping, o.optimizer_model) == (1e-4, 0.01, True, "adam")
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.top_k) == (0.9, 0.999, 1e-8, 50)
    assert (o.loss_agg, o.adv_eps, o.dual_clip, o.kl_coef) == ("seq-mean-token-mean", 1e-4, None, 0.0)


@pytest.mark.parametrize("bad", [dict(fisher_tau=-1e-4), dict(hessian_tau=-0.1), dict(top_k=0),
                                 dict(optimizer_model="adamw"), dict(adam_beta1=1.0), dict(adam_eps=0.0),
                                 dict(adam_cold_start="zero"), dict(hessian_mask=0.1)])
def test_options_validation(bad):
    with pytest.raises(ValidationError):
        build("capo", **bad)


def test_recipe_problems_name_the_beta_mismatch():
    with pytest.raises(ValueError, match="learner.betas"):
        Recipe(algorithm={"name": "capo", "adam_beta2": 0.99})
    Recipe(algorithm={"name": "capo", "adam_beta2": 0.99}, learner={"betas": (0.9, 0.99)})
    Recipe(algorithm={"name": "capo", "adam_beta2": 0.99, "optimizer_model": "sgd"})


def test_missing_hidden_states_is_an_error():
    inputs = _micro_batch(0)
    inputs.hidden = None
    with pytest.raises(RuntimeError, match="needs_hidden"):
        build("capo").loss(inputs)


def test_no_valid_tokens():
    inputs = _micro_batch(0)
    inputs.mask = torch.zeros_like(inputs.mask)
    algo = build("capo")
    loss, metrics = algo.loss(inputs)
    assert loss.item() == 0.0 and metrics["capo/rejection_rate"] == 0.0
    assert algo.on_optimizer_step()["capo/adam_rows_updated"] == 0.0 and algo.masks[0].moments.step == 1
