"""Pure tensor functions behind the algorithms, so the maths can be checked against other implementations.

Shapes: N rows (responses), T response tokens (right-padded), ``mask`` is 1.0 on valid response tokens.
Formulas and defaults follow ../shared/ALGORITHMS.md sections 0 and 1 (verl's ``core_algos.py`` where the
papers leave a choice open).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = AggMode.__args__  # type: ignore[attr-defined]
AdvNorm = Literal["group", "batch", "none"]
KLKind = Literal["k1", "k2", "k3", "k1+", "k3+"]


def group_advantages(
    rewards: Tensor,  # [N]
    group: Tensor,  # [N] int, rows of one prompt share a value; groups may differ in size
    norm: AdvNorm = "group",
    eps: float = 1e-6,
) -> Tensor:  # [N]
    """GRPO outcome advantages ``(R_i - mean_g R) / (std + eps)``.

    ``std`` is the unbiased (n-1) estimator as in verl and TRL: over the row's group for ``"group"``, over
    the whole batch for ``"batch"`` (TRL ``scale_rewards="batch"``), and no division for ``"none"``
    (Dr.GRPO). A group of one row gets mean 0 and std 1 (verl), so its advantage is its reward.
    """
    if norm not in ("group", "batch", "none"):
        raise ValueError(f"advantage norm {norm!r} is unknown; use 'group', 'batch' or 'none'")
    rewards = rewards.to(torch.float32)
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(num_groups).index_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros(num_groups).index_add_(0, index, rewards)
    mean = total / count
    centred = rewards - mean[index]
    singleton = count[index] < 2
    centred = torch.where(singleton, rewards, centred)
    if norm == "none":
        return centred
    if norm == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.tensor(1.0)
        return _safe_divide(centred, std + eps)
    squares = torch.zeros(num_groups).index_add_(0, index, (rewards - mean[index]) ** 2)
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    std = torch.where(count < 2, torch.ones_like(std), std)
    return _safe_divide(centred, std[index] + eps)


def _safe_divide(centred: Tensor, scale: Tensor) -> Tensor:
    """``centred / scale``, with 0 (not NaN) for a uniform group when eps is 0."""
    return torch.where(centred == 0, torch.zeros_like(centred), centred / scale)


def aggregate(
    losses: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    mode: AggMode = "token-mean",
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    loss_scale: float | None = None,
    denominator_mask: Tensor | None = None,  # [N,T], default ``mask``
) -> Tensor:  # scalar
    """Reduce a per-token loss matrix to a scalar (ALGORITHMS.md section 0).

    ``num_tokens`` / ``num_seqs`` are the denominators' scope: pass the counts of the whole mini-batch
    (across micro-batches and ranks) to get the global mean when micro-batch losses are summed by
    gradient accumulation; leave them None for the local (micro-batch) mean.
    ``loss_scale`` is the constant ``L_max`` of ``seq-mean-token-sum-norm`` (Dr.GRPO).
    ``mask`` selects the tokens summed; ``denominator_mask`` the tokens counted by the local ``token-mean``
    and by ``seq-mean-token-mean`` (token masks such as forking tokens may normalise by all valid tokens).
    """
    mask = mask.to(losses.dtype)
    counted = mask if denominator_mask is None else denominator_mask.to(losses.dtype)
    masked = losses * mask
    if mode == "token-mean":
        denominator = counted.sum() if num_tokens is None else num_tokens
        return masked.sum() / torch.clamp(torch.as_tensor(denominator, dtype=losses.dtype), min=1.0)
    rows = losses.shape[0] if num_seqs is None else num_seqs
    rows = torch.clamp(torch.as_tensor(rows, dtype=losses.dtype), min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / counted.sum(-1).clamp(min=1.0)).sum() / rows
    if mode == "seq-mean-token-sum":
        return masked.sum() / rows
    if mode == "seq-mean-token-sum-norm":
        if loss_scale is None:
            raise ValueError("seq-mean-token-sum-norm needs loss_scale (the constant L_max, e.g. max_new_tokens)")
        return masked.sum() / (rows * loss_scale)
    raise ValueError(f"loss aggregation {mode!r} is unknown; use one of {', '.join(AGG_MODES)}")


def clipped_pg_terms(
    logp: Tensor,  # [N,T]
    old_logp: Tensor,  # [N,T]
    advantages: Tensor,  # [N] or [N,T]
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # loss [N,T], clipped [N,T] bool, ratio [N,T]
    """Per-token PPO clipped loss ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``, with optional dual
    clip ``min(., -c A)`` for ``A < 0`` (Ye et al. 2019; verl ``clip_ratio_c``).

    ``eps_low``/``eps_high`` may be tensors of shape [N,T] (DCPO's per-token bounds).
    ``clipped`` marks tokens whose gradient the clip removed.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - torch.as_tensor(eps_low), 1.0 + torch.as_tensor(eps_high))
    clipped_loss = -advantages * clipped_ratio
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if dual_clip is not None:
        check_dual_clip(dual_clip)
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
        clipped = clipped | dual
    return loss, clipped, ratio


def check_dual_clip(dual_clip: float | None) -> None:
    """Raise unless ``dual_clip`` is None (off) or > 1."""
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (verl clip_ratio_c, default 3.0) or None, got {dual_clip}")


def clip_metrics(parts: dict[str, Tensor], mask: Tensor, dual_clip: float | None) -> dict[str, float]:
    """Fractions of valid tokens whose gradient a clip removed: ``high`` (A>0, ratio above its upper
    bound), ``low`` (A<0, below its lower bound), ``dual`` (A<0, above the dual clip c); and the ratio mean.

    ``parts``: ``ratio`` [N,T], ``low``/``high`` (the ratio bounds, scalars or [N,T]) and ``advantages``
    ([N] or [N,T]); ``mask`` [N,T] marks the valid tokens.
    """
    ratio, low, high = parts["ratio"], parts["low"], parts["high"]
    adv = parts["advantages"]
    adv = adv[:, None] if adv.dim() == 1 else adv
    valid = mask.bool()
    count = valid.sum().clamp(min=1).float()

    def frac(condition: Tensor) -> float:
        return float((condition & valid).sum() / count)

    out = {
        "actor/clip_frac_high": frac((adv > 0) & (ratio > high)),
        "actor/clip_frac_low": frac((adv < 0) & (ratio < low)),
        "actor/ratio_mean": float((ratio * mask).sum() / count),
    }
    out["actor/clip_frac"] = out["actor/clip_frac_high"] + out["actor/clip_frac_low"]
    if dual_clip is not None:
        out["actor/clip_frac_dual"] = frac((adv < 0) & (ratio > dual_clip))
    return out


def clipped_pg_loss(
    logp: Tensor,  # [N,T]
    old_logp: Tensor,  # [N,T]
    advantages: Tensor,  # [N] or [N,T]
    mask: Tensor,  # [N,T]
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    dual_clip: float | None = None,
    agg: AggMode = "token-mean",
    loss_scale: float | None = None,
) -> Tensor:  # scalar
    """:func:`clipped_pg_terms` aggregated with ``agg`` (local denominators)."""
    loss, _, _ = clipped_pg_terms(logp, old_logp, advantages, eps_low, eps_high, dual_clip)
    return aggregate(loss, mask, agg, loss_scale=loss_scale)


def truncated_is_weights(
    learner_logp: Tensor,  # [N,T] the learner's log-probs of the sampled tokens (old_logprobs)
    rollout_logp: Tensor,  # [N,T] the rollout engine's log-probs of the same tokens
    mask: Tensor,  # [N,T] valid response tokens
    cap: float,
) -> tuple[Tensor, dict[str, float]]:  # weights [N,T] (1 off the mask), metrics
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): ``w = min(exp(learner_logp - rollout_logp), cap)`` per token, detached.

    Also measures the mismatch itself: ``rollout/mismatch_k3`` (the k3 estimate of KL(rollout || learner)
    per token), ``rollout/logprob_abs_diff``, and ``tis/weight_mean`` / ``tis/clip_frac`` (tokens whose
    ratio exceeded the cap). Raises ValueError when the engine returned no log-probs (NaN).
    """
    valid = mask.bool()
    diff = (learner_logp - rollout_logp).float()
    if torch.isnan(diff[valid]).any():
        raise ValueError("truncated importance sampling (algorithm.tis_cap) needs the rollout engine's log-probs, "
                         "and some response tokens have none")
    ratio = torch.exp(diff.masked_fill(~valid, 0.0))
    weights = torch.clamp(ratio, max=cap).masked_fill(~valid, 1.0).detach()
    count = valid.sum().clamp(min=1)
    # k3 of KL(rollout || learner) with d = learner - rollout: exp(d) - 1 - d, as kl_penalty's k3.
    k3 = (torch.exp(diff) - 1.0 - diff).masked_fill(~valid, 0.0)
    metrics = {
        "rollout/mismatch_k3": float(k3.sum() / count),
        "rollout/logprob_abs_diff": float(diff.abs().masked_fill(~valid, 0.0).sum() / count),
        "tis/weight_mean": float(weights.masked_fill(~valid, 0.0).sum() / count),
        "tis/clip_frac": float(((ratio > cap) & valid).sum() / count),
    }
    return weights, metrics


def kl_penalty(
    logp: Tensor,  # [N,T]
    ref_logp: Tensor,  # [N,T]
    kind: KLKind = "k3",
) -> Tensor:  # [N,T]
    """Per-token KL(pi_theta || pi_ref) estimates with ``d = logp - ref_logp`` (verl ``kl_penalty``).

    k1 ``d``; k2 ``d^2 / 2``; k3 ``exp(-d) + d - 1`` with ``-d`` clamped to [-20, 20] and the result to
    [-10, 10] (verl ``low_var_kl``); ``k1+`` / ``k3+`` have k1's / k3's value and k2's gradient
    (straight-through, verl's ``+`` suffix), since k1 and k3 are unbiased for the KL's value but not for
    its gradient.
    """
    d = logp - ref_logp
    if kind not in ("k1", "k2", "k3", "k1+", "k3+"):
        raise ValueError(f"KL estimator {kind!r} is unknown; use 'k1', 'k2', 'k3', 'k1+' or 'k3+'")
    if kind.startswith("k1"):
        value = d
    elif kind == "k2":
        return 0.5 * d.square()
    else:
        value = torch.clamp(torch.exp(torch.clamp(-d, -20, 20)) + d - 1, -10, 10)
    if not kind.endswith("+"):
        return value
    k2 = 0.5 * d.square()
    return k2 + (value - k2).detach()


# ---------------------------------------------------------------------------------------------------------
# DCPO, forking tokens, A*-PO, COPO (ALGORITHMS.md sections 2, 7, 6, 5)

CopoMode = Literal[
    "soft with zero", "soft with forced", "only soft", "only zero", "only forced", "only global", "no global"
]
COPO_MODES: tuple[str, ...] = CopoMode.__args__  # type: ignore[attr-defined]


def dcpo_ratio_bounds(
    old_logp: Tensor,  # [N,T]
    eps_low: float,
    eps_high: float,
    cap: float | None = 10.0,
) -> tuple[Tensor, Tensor]:  # low [N,T], high [N,T]
    """DCPO dynamic-adaptive clipping (DAC) bounds on the ratio ``r`` (ALGORITHMS.md 2.1(a)).

    DCPO bounds ``|(r - 1) p| <= eps`` with ``p = r q`` the new probability and ``q = exp(old_logp)`` the
    old probability of the sampled token, instead of PPO's ``|r - 1| <= eps``. Solving the quadratics:

        r_low(q)  = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q, 0))
        r_high(q) = min(1/2 + 1/2 sqrt(1 + 4 eps_high / q), cap)

    so ``(r_high - 1) r_high q = eps_high`` exactly (before the cap), and ``(1 - r_low) r_low q = eps_low``
    while ``q > 4 eps_low`` (below that ``r_low = 0.5``). Compared with fixed bounds
    ``[1 - eps_low, 1 + eps_high]``: rare tokens get a much wider upper bound (q=0.01, eps_high=0.2 ->
    5.0), likely ones a slightly tighter one (q=1 -> 1.171); the lower bound is never tighter than
    ``(1 + sqrt(1 - 4 eps_low)) / 2`` (0.724 for eps_low=0.2, below 0.8) and is 0.5 once ``q <= 4 eps_low``.
    Output dtype follows ``old_logp`` (computed in float64).
    Feed the result to :func:`clipped_pg_terms` as ``1 - low`` and ``high - 1`` with ``dual_clip=10``.

    Authors' code (lime-RL/DCPO ``core_algos.get_clip_low_high``, which names its argument
    ``ref_logprob`` but receives the old log-prob) clamps ``r_high <= max(clip_ratio_c, 10)``; ``cap``
    is that value (10 with the recipe's ``clip_ratio_c=10``); the paper has no cap: pass ``cap=None``.
    Departure from the code: a token with ``q == 0`` (old log-prob -inf or underflowed) gets the limits
    ``r_low = 0.5`` and ``r_high = cap``; the code's ``where(q != 0, ...)`` gives it ``r_low = 1``.
    """
    check_dcpo_bounds(eps_low, eps_high, cap)
    inv_q = torch.exp(-old_logp.to(torch.float64))  # 1/q; inf when q underflows, which the formulas absorb
    low = 0.5 + 0.5 * torch.sqrt(torch.clamp(1.0 - 4.0 * eps_low * inv_q, min=0.0))
    high = 0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * eps_high * inv_q)
    if cap is not None:
        high = torch.clamp(high, max=cap)
    dtype = old_logp.dtype if old_logp.is_floating_point() else torch.float32
    return low.to(dtype), high.to(dtype)


def check_dcpo_bounds(eps_low: float, eps_high: float, cap: float | None) -> None:
    """Raise unless the arguments of :func:`dcpo_ratio_bounds` are in range."""
    if eps_low < 0 or eps_low >= 1:
        raise ValueError(f"dcpo eps_low must be in [0, 1), got {eps_low} (the recipe uses 0.2)")
    if eps_high < 0:
        raise ValueError(f"dcpo eps_high must be >= 0, got {eps_high} (the recipe uses 0.28)")
    if cap is not None and not cap > 1.0:
        raise ValueError(f"dcpo cap on the upper ratio bound must be > 1 or None, got {cap} (code: 10)")


def dcpo_bound_metrics(low: Tensor, high: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean DCPO ratio bounds ``low``/``high`` [N,T] over the valid tokens of ``mask`` [N,T] (0 when none)."""
    keep = mask.bool()
    if not keep.any():
        return {"dcpo/bound_low_mean": 0.0, "dcpo/bound_high_mean": 0.0}
    return {"dcpo/bound_low_mean": float(low[keep].mean()), "dcpo/bound_high_mean": float(high[keep].mean())}


def forking_token_mask(
    entropy: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    rho: float,
) -> Tensor:  # [N,T] bool
    """Keep the top-``rho`` fraction of valid tokens by entropy ("Beyond the 80/20 Rule", ALGORITHMS.md 7.1).

    Authors' code (Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR ``get_global_entropy_top_mask``): over all
    valid tokens of the tensor passed in (the code passes the per-GPU micro-batch; the paper says the
    batch, so the scope is the caller's choice of rows), keep exactly ``k = max(1, int(n rho + 0.9999))``
    (a ceil that forgives float noise) tokens, by top-k. Ties at the threshold are broken towards the
    earlier position in row-major order (``torch.topk`` leaves them unspecified); TRL instead keeps every
    token ``>= quantile(1 - rho)``, which can keep more than ``k``. Masked tokens are never selected;
    no valid tokens gives an all-False mask; ``rho = 1`` returns the valid mask. How the loss is then
    normalised (kept tokens in the code, all tokens in TRL) is :func:`aggregate`'s business.
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"forking-token rho must be in (0, 1], got {rho} (the paper's default is 0.2)")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy shape {tuple(entropy.shape)} differs from mask shape {tuple(mask.shape)}")
    valid = mask.bool()
    flat_valid = valid.flatten()
    n = int(flat_valid.sum())
    out = torch.zeros_like(flat_valid)
    if n == 0:
        return out.view_as(valid)
    k = max(1, int(n * rho + 0.9999))
    positions = flat_valid.nonzero(as_tuple=True)[0]
    order = torch.sort(entropy.flatten()[positions], descending=True, stable=True).indices
    out[positions[order[:k]]] = True
    return out.view_as(valid)


def astar_values(
    ref_rewards: Tensor,  # [P,n]
    beta1: float,
) -> Tensor:  # [P]
    """A*-PO stage-1 estimate ``V*(x) = beta1 log((1/n) sum_j exp(r_j / beta1))`` (ALGORITHMS.md 6.1).

    ``ref_rewards[p, j]`` is the reward of the j-th of n samples from ``pi_ref`` for prompt p (code:
    dataset columns ``eval_0..eval_{n-1}``, n=8, beta1=0.5). Computed as
    ``beta1 (logsumexp(r / beta1) - log n)`` in float64, so small beta1 does not overflow; as
    ``beta1 -> 0+`` the value tends to ``max_j r_j``. Authors' code (ZhaolinGao/A-PO
    ``RLHFDataset._process_values``) special-cases ``beta1 == 0`` to the plain mean (not the max limit)
    and ``beta1 < 0`` to ``V* = 0`` (no baseline); both are kept here.
    """
    if ref_rewards.dim() != 2 or ref_rewards.shape[1] == 0:
        raise ValueError(
            f"ref_rewards must be [prompts, samples] with at least one sample, got shape {tuple(ref_rewards.shape)}"
        )
    rewards = ref_rewards.to(torch.float64)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("ref_rewards holds NaN or inf; every offline sample needs a finite reward")
    if beta1 < 0:
        values = torch.zeros(rewards.shape[0], dtype=torch.float64)
    elif beta1 == 0:
        values = rewards.mean(dim=1)
    else:
        values = beta1 * (torch.logsumexp(rewards / beta1, dim=1) - math.log(rewards.shape[1]))
    return values.to(torch.float32)


def astar_loss(
    logp: Tensor,  # [N,T]
    ref_logp: Tensor,  # [N,T]
    mask: Tensor,  # [N,T]
    rewards: Tensor,  # [N]
    values: Tensor,  # [N], V*(x) of each row's prompt
    beta2: float,
) -> Tensor:  # scalar
    """A*-PO stage-2 least-squares loss (ALGORITHMS.md 6.1):

        (1/N) sum_i ( beta2 * sum_t M_{i,t} (logp - ref_logp)_{i,t} - (r_i - V*(x_i)) )^2

    i.e. regress the sequence log-ratio to ``pi_ref`` onto the optimal advantage; no ``pi_old`` ratio, no
    clip, no separate KL. Authors' code (ZhaolinGao/A-PO ``apo/core_algos.compute_policy_loss``, default
    beta2 = 1e-3) also subtracts ``0.001 * token-mean entropy``; that bonus is not part of the loss as
    presented and is left to the entropy regulariser.
    """
    if not beta2 > 0:
        raise ValueError(f"A*-PO beta2 must be > 0, got {beta2} (the authors use 1e-3)")
    if logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)} and mask {tuple(mask.shape)} must match"
        )
    rows = logp.shape[0]
    if rewards.shape != (rows,) or values.shape != (rows,):
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must both be [{rows}] (one per row)"
        )
    seq_log_ratio = ((logp - ref_logp) * mask.to(logp.dtype)).sum(-1)
    residual = beta2 * seq_log_ratio - (rewards.to(logp.dtype) - values.to(logp.dtype))
    return residual.square().mean()


def copo_advantages(
    rewards: Tensor,  # [N]
    group: Tensor,  # [N] int, rows of one prompt share a value
    answers: list[str],  # [N] extracted final answers
    k: float = 5.0,
    b: float = 1.0,
    mode: CopoMode = "soft with zero",
) -> tuple[Tensor, Tensor, Tensor]:  # local [N], global [N], weight [N]
    """COPO's local and global advantages and the per-row weight on the local term (ALGORITHMS.md 5.1).

    * ``local``: GRPO, ``(r_i - mean_g r) / (std_g r + 1e-6)`` (:func:`group_advantages`).
    * ``global``: ``R_glob(q) = mean_g r`` (group accuracy), standardised across the *prompts* of the batch
      (each prompt once, whatever its group size): ``(R_glob - mean_q R_glob) / (std_q R_glob + 1e-6)``,
      unbiased std, broadcast to the prompt's rows. One prompt, or equal ``R_glob`` everywhere, gives 0
      (the code's ``torch.std`` of one value is NaN).
    * ``weight`` ``w~``: with answer entropy ``H(q) = -sum_a p_a log2 p_a`` (exact string match) and
      ``w(q) = sigmoid(k (H(q) - b))``: ``'soft with zero'`` ``w * 1[r_i != 0]`` (the released scripts),
      ``'soft with forced'`` ``w * 1[A_loc,i != 0]``, ``'only soft'`` ``w``, ``'only zero'`` ``1[r_i != 0]``,
      ``'only forced'`` ``1[A_loc,i != 0]``, ``'only global'`` 0, ``'no global'`` 1 (plain GRPO).

    The per-token loss is then ``(1 - w~) l_clip(global) + w~ l_clip(local)`` with the dual clip c=3.
    Authors' code (hijih/copo-code ``compute_grpo_outcome_advantage_with_global``,
    ``compute_policy_loss_with_global``) takes only the spaced mode names and raises on ``run_copo.sh``'s
    ``soft-with-zero``; hyphenated names are accepted here as the same modes. The code's
    ``log2(p + 1e-8)`` is computed exactly here, and its consistency coefficient
    ``R_glob *= 1 - lambda H`` (``reward_coef_flg``) is not implemented: it is off in every released
    script. Defaults k=5, b=1 are ``run_copo.sh``'s (the code's function defaults are k=1, b=0.5).
    """
    mode = mode.replace("-", " ")  # type: ignore[assignment]
    if mode not in COPO_MODES:
        raise ValueError(f"COPO mode {mode!r} is unknown; use one of {', '.join(repr(m) for m in COPO_MODES)}")
    rows = rewards.shape[0]
    if rewards.dim() != 1 or group.shape != (rows,) or len(answers) != rows:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, group {tuple(group.shape)} and answers (length {len(answers)}) "
            "must all have one entry per row"
        )
    rewards = rewards.to(torch.float32)
    local = group_advantages(rewards, group, "group", eps=1e-6)
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if rows else 0
    count = torch.zeros(num_groups).index_add_(0, index, torch.ones_like(rewards))
    accuracy = torch.zeros(num_groups).index_add_(0, index, rewards) / count
    if num_groups > 1:
        centred = accuracy - accuracy.mean()
        glob = _safe_divide(centred, accuracy.std() + 1e-6)[index]
    else:
        glob = torch.zeros_like(rewards)
    entropy = torch.zeros(num_groups)
    for g in range(num_groups):
        members = [answers[i] for i in (index == g).nonzero(as_tuple=True)[0].tolist()]
        probs = torch.tensor([members.count(a) for a in dict.fromkeys(members)], dtype=torch.float64) / len(members)
        entropy[g] = float(-(probs * torch.log2(probs)).sum())
    soft = torch.sigmoid(k * (entropy[index] - b))
    nonzero_reward = (rewards != 0).to(torch.float32)
    nonzero_local = (local != 0).to(torch.float32)
    weight = {
        "soft with zero": lambda: soft * nonzero_reward,
        "soft with forced": lambda: soft * nonzero_local,
        "only soft": lambda: soft,
        "only zero": lambda: nonzero_reward,
        "only forced": lambda: nonzero_local,
        "only global": lambda: torch.zeros_like(rewards),
        "no global": lambda: torch.ones_like(rewards),
    }[mode]()
    return local, glob, weight


def dcpo_smooth_advantages(
    rewards: Tensor,  # [N]
    group: Tensor,  # [N] int, rows of one prompt share a value
    prev_times: Tensor,  # [N] appearances of the row's prompt before this step (0: never seen)
    prev_mean: Tensor,  # [N] the prompt's reward mean over those appearances
    prev_std: Tensor,  # [N] the prompt's pooled reward std over those appearances
    norm: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # advantages [N], total mean [N], total std [N]
    """DCPO smooth advantage standardisation (SAS, ALGORITHMS.md 2.1(b)).

    For a prompt seen for the ``i``-th time (``i = prev_times + 1``), with the current group's mean and
    unbiased std and the running statistics over all ``i`` appearances::

        mu_tot  = (t mu_old + mu_new) / (t + 1)                                  (t = prev_times)
        var_tot = [t sigma_old^2 + sigma_new^2 + t/(t+1) (mu_new - mu_old)^2] / (t + 1)
        A_new   = (R - mu_new) / sigma_new,    A_tot = (R - mu_tot) / sigma_tot  (0 where a std is 0)
        SA_new  = ((i-1)/i) A_new + (1/i) A_tot,    SA_tot = (1/i) A_new + ((i-1)/i) A_tot
        A       = SA_new if |SA_new| < |SA_tot| else SA_tot

    With ``norm=False`` the divisions are dropped. At ``t = 0`` the totals are the group's own statistics
    and ``A`` is the group-standardised reward without epsilon. Returns the totals per row, to be stored
    with ``times = prev_times + 1``. Authors' code: lime-RL/DCPO ``compute_dcpo_outcome_advantage``,
    ``get_mean_std`` (its ``user_old_mean_ratio`` is 1.0 and not exposed). Groups need two rows or more.
    """
    rewards = rewards.to(torch.float64)
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, index, torch.ones_like(rewards))
    if bool((count < 2).any()):
        raise ValueError("DCPO needs at least two samples per prompt (rollout.n >= 2) to standardise rewards")
    mean_g = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, index, rewards) / count
    var_g = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, index, (rewards - mean_g[index]) ** 2)
    mu_new, sigma_new = mean_g[index], torch.sqrt(var_g / (count - 1))[index]
    t = prev_times.to(torch.float64)
    mu_old, sigma_old = prev_mean.to(torch.float64), prev_std.to(torch.float64)
    mu_tot = torch.where(t > 0, (t * mu_old + mu_new) / (t + 1), mu_new)
    var_tot = (t * sigma_old**2 + sigma_new**2 + t / (t + 1) * (mu_new - mu_old) ** 2) / (t + 1)
    sigma_tot = torch.where(t > 0, torch.sqrt(var_tot), sigma_new)
    if norm:
        a_new = torch.where(sigma_new > 0, (rewards - mu_new) / sigma_new.clamp(min=1e-300), 0.0)
        a_tot = torch.where(sigma_tot > 0, (rewards - mu_tot) / sigma_tot.clamp(min=1e-300), 0.0)
    else:
        a_new, a_tot = rewards - mu_new, rewards - mu_tot
    i = t + 1
    sa_new = (i - 1) / i * a_new + a_tot / i
    sa_tot = a_new / i + (i - 1) / i * a_tot
    adv = torch.where(sa_new.abs() < sa_tot.abs(), sa_new, sa_tot)
    return adv.to(torch.float32), mu_tot, sigma_tot
