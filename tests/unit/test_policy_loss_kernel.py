"""``rlvr.kernels.policy_loss``, torch path and Triton path (Triton's interpreter on CPU), against a float64
composition of the functional functions differentiated by autograd; and the registered clipped losses (GRPO,
DAPO, Dr.GRPO, DCPO, forking tokens), which run the kernel, against that composition under the shared objective."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os

import pytest
import torch

from rlvr import algos
from rlvr.algos.algorithm import LossInputs, RunInfo
from rlvr.algos.registry import Part
from rlvr.algos.functional import (AGG_MODES, aggregate, clip_metrics, clipped_pg_terms, dcpo_bound_metrics,
                                   dcpo_ratio_bounds)
from rlvr.kernels.policy_loss import policy_loss

# The module itself (the package's attribute of that name is the function it exports).
policy_loss_module = importlib.import_module("rlvr.kernels.policy_loss")

# The Triton path runs here only in the interpreter (tests/conftest.py sets it when CUDA is absent); on a
# CUDA machine tests/gpu/test_policy_loss_gpu.py covers it.
TRITON_HERE = importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1"
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not TRITON_HERE, reason="needs Triton's "
                                                                   "interpreter (TRITON_INTERPRET=1, no CUDA)"))]
CLIPS = {"fixed": dict(clip="fixed", eps_low=0.2, eps_high=0.28),
         "dcpo": dict(clip="dcpo", eps_low=0.2, eps_high=0.28, bound_cap=10.0)}
LOSS_SCALE = 50.0


def _bounds(old: torch.Tensor, clip: dict) -> list[torch.Tensor]:
    """The ratio values at which the loss has a kink (clip bounds), float64."""
    if clip["clip"] == "dcpo":
        return list(dcpo_ratio_bounds(old.double(), clip["eps_low"], clip["eps_high"], clip.get("bound_cap", 10.0)))
    return [torch.tensor(1.0 - clip["eps_low"]).double(), torch.tensor(1.0 + clip["eps_high"]).double()]


def _inputs(seed: int, clip: dict, n: int = 10, t: int = 37, adv: str = "row", zero_rows=(1,)):
    """Log-probs whose ratios straddle the bounds (logp - old_logp mostly N(0, 0.3)), kept 1e-4 away from every
    kink (clip bounds, dual clip 3) so that fp32 and fp64 take the same branch; a mask with zeros."""
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(n, t, generator=g) * 0.995 + 0.005)  # q from 0.005 (wide DCPO bounds) to 1
    wide = torch.rand(n, t, generator=g) < 0.15  # some far-off ratios, past the dual clip's 3
    logp = old + torch.where(wide, 2.0, 0.3) * torch.randn(n, t, generator=g)
    for _ in range(3):
        ratio = torch.exp(logp.double() - old.double())
        near = torch.zeros_like(ratio, dtype=torch.bool)
        for bound in _bounds(old, clip) + [torch.tensor(3.0).double()]:
            near |= (ratio / bound - 1).abs() < 1e-4
        logp = torch.where(near, logp + 1e-3, logp)
    mask = (torch.rand(n, t, generator=g) > 0.25).float()
    mask[list(zero_rows)] = 0.0
    shape = (n,) if adv == "row" else (n, t)
    advantages = torch.randn(shape, generator=g)
    return logp, old, mask, advantages


def _reference(logp, old, mask, advantages, clip: dict, dual_clip, agg, denominator_mask=None, **agg_kwargs):
    """(loss, dloss/dlogp, scale) in float64; scale is the aggregate of |loss|, for relative errors."""
    lp = logp.detach().double().requires_grad_()
    eps_low, eps_high = clip["eps_low"], clip["eps_high"]
    if clip["clip"] == "dcpo":
        low, high = dcpo_ratio_bounds(old.double(), eps_low, eps_high, clip.get("bound_cap", 10.0))
        eps_low, eps_high = 1.0 - low, high - 1.0
    per_token, _, _ = clipped_pg_terms(lp, old.double(), advantages.double(), eps_low, eps_high, dual_clip)
    den = None if denominator_mask is None else denominator_mask.double()
    kwargs = dict(loss_scale=LOSS_SCALE, denominator_mask=den, **agg_kwargs)
    loss = aggregate(per_token, mask.double(), agg, **kwargs)
    (grad,) = torch.autograd.grad(loss, lp)
    scale = aggregate(per_token.detach().abs(), mask.double(), agg, **kwargs)
    return loss.detach(), grad, float(scale)


def _run(logp, *args, **kwargs):
    """policy_loss and its gradient in logp."""
    lp = logp.detach().clone().requires_grad_()
    out = policy_loss(lp, *args, **kwargs)
    out.loss.backward()
    return out, lp.grad


def _assert_close(loss, grad, expected_loss, expected_grad, scale, rel=1e-5):
    loss = loss.detach()
    err = abs(float(loss) - float(expected_loss))
    assert err <= rel * max(abs(float(expected_loss)), scale, 1e-12), f"loss {float(loss)} != {float(expected_loss)}"
    assert grad.shape == expected_grad.shape
    diff = (grad.double() - expected_grad).norm() / expected_grad.norm().clamp(min=1e-30)
    assert diff < rel, f"gradient relative error {diff:.2e}"
    worst = (grad.double() - expected_grad).abs().max() / expected_grad.abs().max().clamp(min=1e-30)
    assert worst < rel, f"gradient max error {worst:.2e} of the largest entry"


def _expected_stats(logp, old, advantages, stats_mask, clip: dict, dual_clip) -> dict[str, float]:
    """clip_metrics (and DCPO's bound means) as the algorithms compute them, on the fp32 inputs."""
    ratio = torch.exp(logp - old)
    if clip["clip"] == "dcpo":
        low, high = dcpo_ratio_bounds(old, clip["eps_low"], clip["eps_high"], clip.get("bound_cap", 10.0))
    else:
        low, high = torch.tensor(1.0 - clip["eps_low"]), torch.tensor(1.0 + clip["eps_high"])
    out = clip_metrics({"ratio": ratio, "low": low, "high": high, "advantages": advantages}, stats_mask, dual_clip)
    if clip["clip"] == "dcpo":
        out.update(dcpo_bound_metrics(low, high, stats_mask))
    return out


def _assert_stats(stats, expected):
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


# --- the loss against float64 ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", ["fixed", "dcpo"])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dual_clip", [3.0, None])
def test_row_advantages_every_aggregation(impl, clip, agg, dual_clip):
    seed = 100 + AGG_MODES.index(agg) * 4 + (clip == "dcpo") * 2 + (dual_clip is None)
    logp, old, mask, adv = _inputs(seed, CLIPS[clip])
    out, grad = _run(logp, old, mask, adv, **CLIPS[clip], dual_clip=dual_clip, agg=agg, loss_scale=LOSS_SCALE,
                     impl=impl)
    _assert_close(out.loss, grad, *_reference(logp, old, mask, adv, CLIPS[clip], dual_clip, agg))
    _assert_stats(out.stats, _expected_stats(logp, old, adv, mask, CLIPS[clip], dual_clip))
    # Both directions of the clip (and the dual clip) happen, so the test covers every branch.
    assert out.stats["actor/clip_frac_high"] > 0 and out.stats["actor/clip_frac_low"] > 0
    assert dual_clip is None or out.stats["actor/clip_frac_dual"] > 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", ["fixed", "dcpo"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_token_advantages(impl, clip, agg):
    seed = 200 + (clip == "dcpo") * 2 + (agg == "token-mean")
    logp, old, mask, adv = _inputs(seed, CLIPS[clip], n=7, t=40, adv="token", zero_rows=())
    out, grad = _run(logp, old, mask, adv, **CLIPS[clip], agg=agg, impl=impl)
    _assert_close(out.loss, grad, *_reference(logp, old, mask, adv, CLIPS[clip], 3.0, agg))
    _assert_stats(out.stats, _expected_stats(logp, old, adv, mask, CLIPS[clip], 3.0))


# The interpreter evaluates both sides of tl.where, so numpy warns about the side not taken (exp overflow for
# q ~ 0).
IGNORE_UNTAKEN_BRANCH = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("overrides", [False, True])
def test_denominator_mask_overrides_and_stats_mask(impl, agg, overrides):
    clip = CLIPS["dcpo"]
    logp, old, valid, adv = _inputs(400 + AGG_MODES.index(agg) * 2 + overrides, clip, n=9, t=33, zero_rows=(0, 4))
    g = torch.Generator().manual_seed(401)
    kept = valid * (torch.rand(valid.shape, generator=g) > 0.5)  # a token mask (e.g. forking tokens)
    kept[5] = 0.0  # a row with valid tokens but none kept
    extra = dict(num_tokens=57.0, num_seqs=13.0) if overrides else {}
    out, grad = _run(logp, old, kept.bool(), adv, **clip, agg=agg, loss_scale=LOSS_SCALE, denominator_mask=valid,
                     stats_mask=valid, impl=impl, **extra)
    _assert_close(out.loss, grad, *_reference(logp, old, kept, adv, clip, 3.0, agg, denominator_mask=valid, **extra))
    _assert_stats(out.stats, _expected_stats(logp, old, adv, valid, clip, 3.0))
    assert (grad[5] == 0).all() and (grad[kept == 0] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("clip", ["fixed", "dcpo"])
def test_all_masked(impl, clip):
    logp, old, mask, adv = _inputs(500 + (clip == "dcpo"), CLIPS[clip], n=3, t=5)
    out, grad = _run(logp, old, torch.zeros_like(mask), adv, **CLIPS[clip], agg="seq-mean-token-mean", impl=impl)
    assert out.loss.item() == 0.0 and (grad == 0).all()
    assert all(value == 0.0 for value in out.stats.values())


# --- Triton specifics -----------------------------------------------------------------------------------


@pytest.mark.skipif(not TRITON_HERE, reason="needs Triton's interpreter")
def test_triton_rows_with_zero_upstream_gradient_get_zeros():
    from rlvr.kernels.policy_loss_triton import KernelScalars, row_losses

    logp, old, mask, adv = _inputs(600, CLIPS["fixed"], n=6, t=19, zero_rows=())
    lp = logp.clone().requires_grad_()
    scalars = KernelScalars.build("fixed", 0.2, 0.28, None, 3.0)
    rows, _ = row_losses(lp, old, mask, adv, None, None, scalars)
    weights = torch.tensor([0.0, 2.0, 0.0, -1.0, 0.5, 0.0])
    (rows * weights).sum().backward()
    expected = _reference(logp, old, mask, adv, CLIPS["fixed"], 3.0, "seq-mean-token-sum", num_seqs=1.0)[1]
    assert torch.allclose(lp.grad, expected.float() * weights[:, None], rtol=1e-5, atol=1e-7)
    assert (lp.grad[weights == 0] == 0).all()


@pytest.mark.skipif(not TRITON_HERE, reason="needs Triton's interpreter")
def test_triton_bf16_inputs_compute_in_fp32():
    logp, old, mask, adv = _inputs(700, CLIPS["dcpo"], n=8, t=30)
    logp, old = logp.bfloat16(), old.bfloat16()
    out, grad = _run(logp, old, mask, adv, **CLIPS["dcpo"], impl="triton")
    assert grad.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    loss, expected_grad, scale = _reference(logp.float(), old.float(), mask, adv, CLIPS["dcpo"], 3.0, "token-mean")
    # fp32 maths on the bf16 values; only the stored gradient is rounded to bf16 (unit roundoff 2^-8).
    _assert_close(out.loss, grad.float(), loss, expected_grad, scale, rel=2 ** -7)
    assert abs(out.loss.item() - loss.item()) <= 1e-5 * scale


@IGNORE_UNTAKEN_BRANCH
@pytest.mark.skipif(not TRITON_HERE, reason="needs Triton's interpreter")
@pytest.mark.parametrize("cap", [10.0, None])
def test_triton_dcpo_bounds_never_nan(cap):
    # q underflowing to 0 (old log-prob -inf, -200) and eps 0: torch's fp64 formula gives 0 * inf = NaN.
    old = torch.tensor([[float("-inf"), -200.0, -85.0, -1.0, 0.0]])
    logp = torch.tensor([[-3.0, -199.5, -84.0, -1.1, -0.05]])
    mask = torch.ones_like(old)
    for eps in (0.0, 0.2):
        out, grad = _run(logp, old, mask, torch.tensor([-1.0]), clip="dcpo", eps_low=eps, eps_high=eps,
                         bound_cap=cap, impl="triton")
        # The first ratio is inf: dual-clipped to a finite loss, its gradient 0 * inf is NaN as in torch.
        assert torch.isfinite(out.loss) and torch.isfinite(grad[:, 1:]).all()
        assert not any(math.isnan(value) for value in out.stats.values())
        if eps == 0.0:  # bounds [1, 1]
            assert out.stats["dcpo/bound_low_mean"] == 1.0 and out.stats["dcpo/bound_high_mean"] == 1.0
        else:  # where torch is finite, they agree
            expected, _ = _run(logp, old, mask, torch.tensor([-1.0]), clip="dcpo", eps_low=eps, eps_high=eps,
                               bound_cap=cap, impl="torch")
            assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
            assert out.stats["dcpo/bound_low_mean"] == pytest.approx(expected.stats["dcpo/bound_low_mean"])


def test_auto_is_torch_on_cpu():
    logp, old, mask, adv = _inputs(800, CLIPS["fixed"], n=4, t=6)
    auto, grad_auto = _run(logp, old, mask, adv, impl="auto")
    torch_path, grad_torch = _run(logp, old, mask, adv, impl="torch")
    assert torch.equal(auto.loss, torch_path.loss) and torch.equal(grad_auto, grad_torch)
    assert auto.stats == torch_path.stats


# --- bad input ------------------------------------------------------------------------------------------


def _bad(**change):
    logp, old, mask, adv = _inputs(900, CLIPS["fixed"], n=3, t=4)
    kwargs = dict(logp=logp, old_logp=old, mask=mask, advantages=adv)
    kwargs.update(change)
    return kwargs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change, message", [
    (dict(old_logp=torch.zeros(3, 5)), r"old_logp has shape \(3, 5\) but logp has \(3, 4\)"),
    (dict(mask=torch.ones(4, 4)), r"mask has shape \(4, 4\) but logp has \(3, 4\)"),
    (dict(denominator_mask=torch.ones(3)), r"denominator_mask has shape \(3,\) but logp has \(3, 4\)"),
    (dict(stats_mask=torch.ones(3, 3)), r"stats_mask has shape"),
    (dict(logp=torch.zeros(3, 4, 2)), r"logp must be \[N,T\]"),
    (dict(advantages=torch.zeros(4)), r"advantages has shape \(4,\); it must be \[N\] = \(3,\) or \[N,T\]"),
    (dict(agg="mean"), "loss aggregation 'mean' is unknown; use one of token-mean, seq-mean-token-mean"),
    (dict(agg="seq-mean-token-sum-norm"), "seq-mean-token-sum-norm needs loss_scale"),
    (dict(clip="dynamic"), "clip 'dynamic' is unknown; use one of 'fixed', 'dcpo'"),
    (dict(dual_clip=1.0), "dual_clip must be > 1"),
    (dict(clip="dcpo", eps_low=1.0), r"dcpo eps_low must be in \[0, 1\)"),
    (dict(clip="dcpo", bound_cap=0.5), "dcpo cap on the upper ratio bound must be > 1 or None"),
])
def test_bad_input_says_what_is_wrong(impl, change, message):
    with pytest.raises(ValueError, match=message):
        policy_loss(**_bad(**change), impl=impl)


def test_bad_impl_and_missing_triton(monkeypatch):
    with pytest.raises(ValueError, match="impl 'cuda' is unknown; use one of 'auto', 'torch', 'triton'"):
        policy_loss(**_bad(), impl="cuda")
    monkeypatch.setattr(policy_loss_module, "_triton_module", lambda: None)
    with pytest.raises(ImportError, match="impl='triton' needs the triton package"):
        policy_loss(**_bad(), impl="triton")
    assert policy_loss(**_bad(), impl="auto").loss.isfinite()  # auto falls back to torch
    monkeypatch.setattr(policy_loss_module, "_triton_module", lambda: object())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        policy_loss(**_bad(), impl="triton")


# --- the registered clipped losses: the fused kernel against the functional composition -------------------------

CONFIGS = [
    ("grpo", {}),
    ("grpo", {"loss_agg": "seq-mean-token-mean", "dual_clip": None, "loss_agg_scope": "micro-batch"}),
    ("dapo", {}),
    ("drgrpo", {}),
    ("dcpo", {}),
    ("dcpo", {"clip_type": "fixed", "loss_agg": "token-mean"}),
    ("dcpo", {"bound_cap": None, "loss_agg_scope": "micro-batch"}),
    ("forking-tokens", {}),
    ("forking-tokens", {"entropy_mask_denominator": "all"}),
    ("forking-tokens", {"entropy_mask_denominator": "all", "loss_agg_scope": "micro-batch"}),
    ("grpo", {"entropy_top_ratio": 0.5, "loss_agg": "seq-mean-token-mean"}),
]


def _loss_inputs(seed: int, dtype: torch.dtype, kept_tokens: bool) -> LossInputs:
    logp, old, mask, adv = _inputs(seed, CLIPS["dcpo"], n=6, t=11, zero_rows=(2,))
    g = torch.Generator().manual_seed(seed + 1)
    entropy = torch.rand(mask.shape, generator=g)
    extra = {"kept_tokens": 17.0} if kept_tokens else {}
    return LossInputs(logp=logp.to(dtype).requires_grad_(), old_logp=old.to(dtype), entropy=entropy.to(dtype),
                      mask=mask.to(dtype), advantages=adv.to(dtype), num_tokens=float(mask.sum()) + 5.0,
                      num_seqs=8.0, num_micro=2, extra=extra)


def _algorithm_loss(algorithm, inputs: LossInputs):
    inputs.logp.grad = None
    loss, metrics = algorithm.loss(inputs)
    loss.backward()
    return loss.detach(), inputs.logp.grad.clone(), metrics


def _composed_loss(inputs, ctx, agg):
    """The registered clipped losses written as the functional composition: per-token terms, then ``agg``."""
    o = ctx.options
    if o.name == "dcpo" and o.clip_type == "dynamic":
        low, high = dcpo_ratio_bounds(inputs.old_logp.detach(), o.clip_eps_low, o.clip_eps_high, o.bound_cap)
        eps_low, eps_high = 1.0 - low, high - 1.0
    else:
        low, high = torch.tensor(1.0 - o.clip_eps_low), torch.tensor(1.0 + o.clip_eps_high)
        eps_low, eps_high = o.clip_eps_low, o.clip_eps_high
    loss, _, ratio = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.advantages, eps_low, eps_high, o.dual_clip)
    pg = agg(loss)
    with torch.no_grad():
        metrics = clip_metrics({"ratio": ratio, "low": low, "high": high, "advantages": inputs.advantages},
                               inputs.mask, o.dual_clip)
        if o.name == "dcpo" and o.clip_type == "dynamic":
            metrics.update(dcpo_bound_metrics(low, high, inputs.mask))
    return pg, metrics


@pytest.mark.parametrize("name, options", CONFIGS)
def test_fused_algorithm_loss_equals_the_composition(name, options, monkeypatch):
    algorithm = algos.build(name, run=RunInfo(max_new_tokens=24), **options)
    fused_part = algorithm.loss_part
    inputs = _loss_inputs(1000 + CONFIGS.index((name, options)), torch.float64, "entropy_top_ratio" in options
                          or name == "forking-tokens")
    fused = _algorithm_loss(algorithm, inputs)
    algorithm.loss_part = Part("composed", _composed_loss, meta=fused_part.meta)
    unfused = _algorithm_loss(algorithm, inputs)
    assert fused[0].item() == pytest.approx(unfused[0].item(), rel=1e-12)
    assert torch.allclose(fused[1], unfused[1], rtol=1e-12, atol=0)
    assert fused[2] == pytest.approx(unfused[2], rel=1e-12)
    assert fused[2].keys() == unfused[2].keys()
    if TRITON_HERE:  # and the Triton kernel in the same place, fp32
        monkeypatch.setattr(policy_loss_module, "policy_loss", functools.partial(policy_loss, impl="triton"))
        algorithm.loss_part = fused_part
        inputs32 = _loss_inputs(1000 + CONFIGS.index((name, options)), torch.float32, inputs.extra != {})
        kernel = _algorithm_loss(algorithm, inputs32)
        assert kernel[0].item() == pytest.approx(unfused[0].item(), rel=1e-5)
        assert torch.allclose(kernel[1].double(), unfused[1], rtol=1e-5, atol=1e-5 * unfused[1].abs().max().item())
        for key, value in unfused[2].items():
            assert kernel[2][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
