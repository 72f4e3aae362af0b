"""Hot-path kernels. ``token_logprobs`` is the only public entry; it picks an implementation by device."""

from __future__ import annotations

from torch import Tensor

from rlvr.kernels import logprob

__all__ = ["token_logprobs"]


def token_logprobs(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [N]
    temperature: float = 1.0,
    return_entropy: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probabilities ``[N]`` (and entropies ``[N]``, else ``None``) of ``hidden @ weight.T / T``.

    Never materialises the full ``[N, V]`` fp32 logits; differentiable in ``hidden`` and ``weight``.
    Shapes, math and arguments: see ``rlvr.kernels.logprob.token_logprobs``.
    """
    # The one dispatch point. A Triton kernel for CUDA tensors will be chosen here by hidden.device;
    # until it exists every device takes the chunked torch path.
    return logprob.token_logprobs(hidden, weight, targets, temperature, return_entropy, chunk_size)
