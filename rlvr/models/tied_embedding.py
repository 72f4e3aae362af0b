"""A tied input embedding whose gradient is added into ``.grad`` in place after the backward.

When the input embedding and the LM head share one weight (SmolLM2, Qwen2.5 0.5B-3B, Llama 3.2 1B/3B), autograd
gets two gradients for it: the head's, a dense ``[vocab x hidden]`` tensor, early in the backward, and the
embedding lookup's at its very end. It sums them in the weight's input buffer: the lookup's dense gradient, a
second ``[vocab x hidden]`` tensor (108 MiB for SmolLM2, 49k x 576 fp32), is allocated on top of every other
gradient, at the update's peak (docs/memory.md). Yet that gradient has only ``tokens x hidden`` non-zero values.

:func:`defer_tied_embedding_grad` makes the lookup read a detached weight and keep the gradient with respect to
its output (``tokens x hidden``, 9 MiB for 4096 tokens); :meth:`DeferredEmbeddingGrad.apply` then adds it, row by
row, into the weight's ``.grad`` that the backward has filled (``index_add_``). The learner calls ``apply`` after
each backward, before clipping and the optimizer step: the gradient is the same sum, in another order of
additions. Only where a gradient is wanted (the update); generation and log-prob passes take the module's own
forward.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DeferredEmbeddingGrad:
    """The patched embedding of a model and the output gradients its backward has left to add."""

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        self.pending: list[tuple[Tensor, Tensor]] = []
        embedding.forward = types.MethodType(functools.partial(_forward, deferred=self), embedding)

    def apply(self) -> None:
        """Adds every pending lookup gradient into the weight's ``.grad`` (created if the backward left none)."""
        weight = self.embedding.weight
        for ids, grad in self.pending:
            ids, grad = ids.reshape(-1), grad.reshape(-1, weight.shape[1])
            if self.embedding.padding_idx is not None:  # nn.Embedding gives the padding row no gradient
                keep = ids != self.embedding.padding_idx
                ids, grad = ids[keep], grad[keep]
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            weight.grad.index_add_(0, ids, grad.to(weight.grad.dtype))
        self.pending.clear()


def _forward(self: nn.Embedding, ids: Tensor, deferred: DeferredEmbeddingGrad) -> Tensor:
    if not (torch.is_grad_enabled() and self.weight.requires_grad) or self.max_norm is not None \
            or self.scale_grad_by_freq or self.sparse:
        return type(self).forward(self, ids)
    out = F.embedding(ids, self.weight.detach(), self.padding_idx).requires_grad_()
    out.register_hook(lambda grad: deferred.pending.append((ids, grad)))
    return out


def defer_tied_embedding_grad(model: nn.Module) -> DeferredEmbeddingGrad | None:
    """Patch ``model``'s input embedding if it is an ``nn.Embedding`` tied to the output head; None otherwise
    (an untied embedding's gradient is not added to another, so there is nothing to save)."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embedding, nn.Embedding) or head is None or head.weight is not embedding.weight:
        return None
    return DeferredEmbeddingGrad(embedding)
