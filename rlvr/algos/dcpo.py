"""DCPO, Dynamic Clipping Policy Optimization (Yang et al. 2025, arXiv 2509.02333; ALGORITHMS.md section 2).

Three changes to GRPO/DAPO:

* Dynamic-adaptive clipping: token-specific ratio bounds from the old probability ``q`` of the sampled
  token, ``r_low = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q, 0))``, ``r_high = 1/2 + 1/2 sqrt(1 + 4 eps_high / q)``
  (capped at 10 as the authors' code does; ``bound_cap: null`` for the paper), with the dual clip c=10
  (:func:`dcpo_ratio_bounds`).
* Smooth advantage standardisation: per-prompt reward statistics kept across steps (keyed by the stable
  prompt id) blend the current group's standardised reward with the all-appearances one
  (:func:`dcpo_smooth_advantages`).
* OTM aggregation: ``seq-mean-token-sum``.

Defaults are the authors' ``recipe/dcpo/run_dcpo.sh``: eps 0.2 / 0.28, c = 10, no KL, no entropy bonus.

Where rlvr departs from the paper and the authors' code:

* SAS is on by default, as the paper describes; the released scripts leave it off
  (``reward_model.use_old_mean.enable=False``), so for them set ``smooth_advantages: false``. This is the one
  default that follows the paper rather than the code.
* OTM is the paper's ``seq-mean-token-sum``, which produced the published results; the code switched to a token
  mean in Dec 2025 (``loss_agg: token-mean`` for it).
* ``bound_cap`` is an option of its own, default 10; the code caps at ``max(clip_ratio_c, 10)``, so with a
  ``dual_clip`` above 10 set ``bound_cap`` to the same value to match it.
* A token whose old probability underflowed to 0 gets bounds ``[0.5, bound_cap]`` (the code: ``r_low = 1``).
* A prompt that appears twice within one step updates its statistics once per group, in order. The statistics
  are saved in checkpoints and restored by ``--resume``; prompts are keyed by their dataset id.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.algos.functional import group_stats
from rlvr.algos.losses import fused_clipped_loss
from rlvr.algos.registry import estimator, loss
from rlvr.kernels.reference import check_dcpo_bounds, dcpo_bound_metrics, dcpo_ratio_bounds

# The ratio bounds are the fused kernel's reference maths (rlvr.kernels.reference), and DCPO's public names here.
__all__ = ["PromptStatistics", "check_dcpo_bounds", "dcpo", "dcpo_bound_metrics", "dcpo_clipped", "dcpo_ratio_bounds",
           "dcpo_smooth_advantages"]


class PromptStatistics:
    """SAS's per-prompt reward statistics across steps: prompt id -> (times seen, mean, std)."""

    def __init__(self) -> None:
        self.stats: dict[str, tuple[int, float, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats)} if self.stats else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = dict(state.get("stats", {}))


@estimator("dcpo", state=PromptStatistics)
def dcpo(batch, rewards: Tensor, ctx) -> tuple[Tensor, dict[str, float]]:  # [N]
    """Smooth advantage standardisation (:func:`dcpo_smooth_advantages`) with the statistics of every earlier
    appearance of each prompt, which it then updates; each group standardised alone with ``smooth_advantages``
    off."""
    o, stats = ctx.options, ctx.state.stats
    known = [stats.get(pid, (0, 0.0, 0.0)) if o.smooth_advantages else (0, 0.0, 0.0) for pid in batch.prompt_id]
    times = torch.tensor([k[0] for k in known], dtype=torch.float64)
    adv, mean, std = dcpo_smooth_advantages(rewards, batch.group, times,
                                            torch.tensor([k[1] for k in known], dtype=torch.float64),
                                            torch.tensor([k[2] for k in known], dtype=torch.float64),
                                            norm=o.adv_norm != "none")
    if not o.smooth_advantages:
        return adv, {}
    first_row: dict[int, int] = {}
    for i, g in enumerate(batch.group.tolist()):
        first_row.setdefault(g, i)
    for g, i in first_row.items():
        stats[batch.prompt_id[i]] = (int(times[i]) + 1, float(mean[i]), float(std[i]))
    return adv, {"dcpo/seen_before_frac": float((times > 0).float().mean()),
                 "dcpo/prompts_tracked": float(len(stats))}


@loss("dcpo", tis=True)
def dcpo_clipped(inputs, ctx, agg) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate with DCPO's per-token bounds (:func:`dcpo_ratio_bounds`), or PPO's fixed ones for
    ``clip_type: fixed``, by the fused kernel (``clip="dcpo"``)."""
    o = ctx.options
    if o.clip_type == "fixed":
        spec = {"clip": "fixed", "eps_low": o.clip_eps_low, "eps_high": o.clip_eps_high, "dual_clip": o.dual_clip}
    else:
        spec = {"clip": "dcpo", "eps_low": o.clip_eps_low, "eps_high": o.clip_eps_high, "bound_cap": o.bound_cap,
                "dual_clip": o.dual_clip}
    return fused_clipped_loss(inputs, agg, spec)


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
    index, count, mean_g = group_stats(rewards, group)
    num_groups = count.numel()
    if bool((count < 2).any()):
        raise ValueError("DCPO needs at least two samples per prompt (rollout.n >= 2) to standardise rewards")
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
