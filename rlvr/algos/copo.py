"""COPO, Consistency-Aware Policy Optimization (arXiv 2508.04138; ALGORITHMS.md section 5).

GRPO's advantage is zero for a prompt whose samples all agree, so such prompts teach nothing. COPO adds a
global advantage: each prompt's group accuracy standardised across the prompts of the step batch, and
blends the two clipped surrogates per row::

    l = (1 - w~) l_clip(A_glob) + w~ l_clip(A_loc),     w(q) = sigmoid(k (H(q) - b))

where ``H(q)`` is the entropy (bits) of the group's extracted final answers, so consistent groups lean on
the global term. ``mode`` picks ``w~`` (:func:`copo_advantages`); the default
``soft with zero`` (the released scripts) gives incorrect responses only the global term.

Defaults are the authors' ``verl/run_copo.sh``: k=5, b=1, clip 0.2/0.2, dual clip 3, seq-mean-token-mean,
no KL. The reward must return the extracted answer of each response (``math_answer`` returns it as
``extracted``).

Where rlvr departs from the paper and the authors' code:

* The defaults are ``verl/run_copo.sh``'s (k 5, b 1, ``soft with zero``); the code's function defaults are k 1,
  b 0.5.
* The hyphenated mode names the script passes (``soft-with-zero``, which the code itself rejects) are accepted as
  the spaced ones.
* The consistency coefficient ``R_glob *= 1 - lambda H(q)`` (``reward_coef_flg``) is off in every released
  script and not implemented.
* The answer entropy uses exact ``log2`` (the code: ``log2(p + 1e-8)``); a batch of one prompt, or equal
  accuracies everywhere, gives a global advantage of 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.functional import _safe_divide, clip_metrics, clipped_pg_terms, group_advantages, group_stats
from rlvr.algos.presets.copo import COPO_MODES, CopoMode
from rlvr.algos.registry import estimator, loss


def blend(weight: Tensor, glob: Tensor, local: Tensor) -> Tensor:
    """``(1 - w) glob + w local``: COPO's per-row mix of the global and the local term."""
    return (1.0 - weight) * glob + weight * local


def effective_advantages(batch) -> Tensor:  # [N]
    """The blend of the global and local advantages each row is trained with (for the adv/* metrics)."""
    return blend(batch.algo_fields["copo_weight"], batch.algo_fields["copo_global"], batch.advantages)


def signals(batch) -> list[Tensor]:
    """Each surrogate by itself: a blend whose effective advantage is 0 can still have a gradient once the ratio
    leaves 1 (later mini-batches, clipping), unless both its weighted terms are 0."""
    weight = batch.algo_fields["copo_weight"]
    return [weight * batch.advantages, (1.0 - weight) * batch.algo_fields["copo_global"]]


@estimator("copo", effective=effective_advantages, signals=signals)
def copo(batch, rewards: Tensor, ctx) -> tuple[Tensor, dict[str, float]]:  # [N] local; global and weight in algo_fields
    """GRPO's local advantage, with the global advantage and the blend weight of :func:`copo_advantages` stored in
    ``batch.algo_fields`` for the loss. Needs each response's extracted answer from the reward."""
    o = ctx.options
    field = o.answer_field
    missing = [i for i, extras in enumerate(batch.reward_extras) if field not in (extras or {})]
    if missing:
        raise ValueError(f"copo needs each response's extracted answer, but the reward returned no "
                         f"{field!r} for {len(missing)} of {len(batch)} rows; return a dict with "
                         f"'score' and {field!r} (as math_answer does) or set algorithm.answer_field")
    answers = [str(extras[field]) for extras in batch.reward_extras]
    local, glob, weight = copo_advantages(rewards, batch.group, answers, o.k, o.b, o.mode)
    batch.algo_fields["copo_global"] = glob
    batch.algo_fields["copo_weight"] = weight
    return local, {"copo/weight_mean": float(weight.mean()), "copo/global_abs_mean": float(glob.abs().mean()),
                   "copo/global_nonzero_frac": float((glob != 0).float().mean())}


@loss("copo", tis="COPO blends a global and a local advantage per row, so no one advantage scales it")
def copo_blend(inputs, ctx, agg) -> tuple[Tensor, dict[str, float]]:
    """``(1 - w) l_clip(A_global) + w l_clip(A_local)`` per token, aggregated by ``agg``; not the fused kernel's
    loss. Truncated importance sampling is not offered: the blend of two clipped terms is not homogeneous in one
    advantage."""
    o = ctx.options
    weight = inputs.extra["copo_weight"].to(inputs.logp.dtype)[:, None]
    local, _, ratio = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.advantages, o.clip_eps_low,
                                       o.clip_eps_high, o.dual_clip)
    glob, _, _ = clipped_pg_terms(inputs.logp, inputs.old_logp, inputs.extra["copo_global"], o.clip_eps_low,
                                  o.clip_eps_high, o.dual_clip)
    pg = agg(blend(weight, glob, local))
    effective = blend(weight[:, 0], inputs.extra["copo_global"], inputs.advantages)
    with torch.no_grad():
        parts = {"ratio": ratio, "low": torch.tensor(1.0 - o.clip_eps_low), "high": torch.tensor(1.0 + o.clip_eps_high),
                 "advantages": effective}
        return pg, clip_metrics(parts, inputs.mask, o.dual_clip)


def copo_advantages(
    rewards: Tensor,  # [N]
    group: Tensor,  # [N] int, rows of one prompt share a value
    answers: list[str],  # [N] extracted final answers
    k: float = 5.0,
    b: float = 1.0,
    mode: CopoMode = "soft with zero",
) -> tuple[Tensor, Tensor, Tensor]:  # local [N], global [N], weight [N]
    """COPO's local and global advantages and the per-row weight on the local term (ALGORITHMS.md 5.1).

    * ``local``: GRPO, ``(r_i - mean_g r) / (std_g r + 1e-6)`` (:func:`~rlvr.algos.functional.group_advantages`).
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
    index, _, accuracy = group_stats(rewards, group)
    num_groups = accuracy.numel()
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
