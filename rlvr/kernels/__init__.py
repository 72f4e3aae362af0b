"""Hot-path kernels, each with one public entry that picks an implementation by device.

``token_logprobs``: per-token log-probs and entropies from the LM head, Triton on CUDA
(:mod:`rlvr.kernels.logprob_triton`), chunked torch elsewhere (:mod:`rlvr.kernels.logprob`).
``policy_loss``: advantages, PPO / DCPO clipped loss, aggregation and clip statistics in one pass, Triton
on CUDA (:mod:`rlvr.kernels.policy_loss_triton`), the functional composition elsewhere.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from rlvr.kernels import logprob
from rlvr.kernels.dispatch import IMPLS, check_triton_device, triton_available
from rlvr.kernels.policy_loss import policy_loss

__all__ = ["policy_loss", "token_logprobs", "triton_available"]

Impl = Literal["auto", "torch", "triton"]


def token_logprobs(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [N]
    temperature: float = 1.0,
    return_entropy: bool = True,
    chunk_size: int | None = None,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probabilities ``[N]`` (and entropies ``[N]``, else ``None``) of ``hidden @ weight.T / T``.

    Never materialises the full ``[N, V]`` fp32 logits; differentiable in ``hidden`` and ``weight``; rows
    whose upstream gradients are zero cost nothing in backward. Shapes, math and arguments: see
    ``rlvr.kernels.logprob.token_logprobs``. ``impl``: ``"auto"`` runs the Triton kernels on CUDA tensors
    of one dtype (fp32, fp16 or bf16) when Triton is installed, the chunked torch path otherwise;
    ``"torch"`` / ``"triton"`` force one (``chunk_size`` applies to the torch path only).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}.")
    if impl == "triton" or (impl == "auto" and _triton_suits(hidden, weight)):
        logprob.check_inputs(hidden, weight, targets, temperature, chunk_size)
        if not triton_available():
            raise ImportError("impl='triton' needs the triton package (pip install triton); or use impl='torch'.")
        check_triton_device("token_logprobs", "hidden", hidden)
        from rlvr.kernels.logprob_triton import token_logprobs_triton

        return token_logprobs_triton(hidden, weight, targets, temperature, return_entropy)
    return logprob.token_logprobs(hidden, weight, targets, temperature, return_entropy, chunk_size)


def _triton_suits(hidden: Tensor, weight: Tensor) -> bool:
    return (hidden.is_cuda and hidden.dtype == weight.dtype and hidden.dtype.is_floating_point
            and hidden.dtype.itemsize <= 4 and triton_available())
