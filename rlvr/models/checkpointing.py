"""Gradient checkpointing that recomputes a layer a few rows at a time.

With checkpointing, a decoder layer keeps only its input after the forward; its backward first recomputes the
layer's forward, holding every activation of that layer at once (for SmolLM2, about 14 hidden-sized tensors: 33 KB
per token, 130 MiB for 16 rows of 256 tokens), and that recompute sits on top of all the gradients at the peak of
the update (docs/memory.md). The rows of a batch are independent inside a decoder layer (attention mixes positions
within a row, never rows), so :func:`chunk_checkpointed_layers` checkpoints each layer as several row blocks of at
most ``max_tokens`` tokens: the forward's output is the same, the backward recomputes and differentiates one block
at a time, and the transient shrinks with the block. The weight gradients of the blocks add up in ``.grad``, as
those of micro-batches do.

It wraps the checkpoint function that ``transformers`` gives each ``GradientCheckpointingLayer`` (so it applies
after ``gradient_checkpointing_enable``), slicing the layer's batch-shaped keyword tensors (attention mask, rotary
tables, position ids) with the hidden states. A layer with dropout keeps whole-batch checkpointing: a block's
recompute would draw other masks than the forward did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

MAX_TOKENS = 1024


def _rows(value: Any, n: int, rows: slice) -> Any:
    """``value`` cut to ``rows`` where it is batch-shaped (a tensor of two or more dimensions whose first is the
    batch's ``n``), in tuples and lists too; anything else as it is (shared by every block)."""
    if isinstance(value, Tensor):
        return value[rows] if value.dim() >= 2 and value.shape[0] == n else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, n, rows) for v in value)
    return value


def _cat(outputs: list[Any]) -> Any:
    """The blocks' outputs joined along the batch: tensors concatenated, tuples element by element."""
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.cat(outputs)
    if isinstance(first, tuple):
        return tuple(_cat([o[i] for o in outputs]) if first[i] is not None else None for i in range(len(first)))
    raise TypeError(f"a row-chunked checkpointed layer returned {type(first).__name__}; expected a tensor or tuple")


def _row_chunked(checkpoint: Callable, max_tokens: int, function: Callable, hidden: Tensor, *args: Any) -> Any:
    """``checkpoint(function, hidden, *args)`` over row blocks of at most ``max_tokens`` tokens (at least a row)."""
    if not torch.is_grad_enabled():
        return checkpoint(function, hidden, *args)
    n = hidden.shape[0] if hidden.dim() >= 2 else 1
    width = hidden.shape[1] if hidden.dim() >= 3 else 1
    block = max(1, max_tokens // max(width, 1))
    if n <= block or args or not isinstance(function, functools.partial):
        return checkpoint(_releasing_first(function), hidden, *args)
    outputs = []
    for start in range(0, n, block):
        rows = slice(start, start + block)
        keywords = {key: _rows(value, n, rows) for key, value in function.keywords.items()}
        part = functools.partial(function.func, *_rows(function.args, n, rows), **keywords)
        outputs.append(checkpoint(_releasing_first(part) if start == 0 else part, hidden[rows]))
    return _cat(outputs)


def _releasing_first(function: Callable) -> Callable:
    """``function`` that first hands the heap's free pages back to the kernel
    (:func:`rlvr.memory.release_free_memory`, ~10 ms): once per layer, at its forward and at its recompute
    in the backward (the first block's). What the head's and the previous layers' backward freed in the heap (small
    tensors, under the learner's mmap threshold) would otherwise stay resident under the next recompute: in
    SmolLM2's update, 35 .. 56 MiB at the peak (docs/memory.md)."""
    from rlvr.memory import release_free_memory

    def run(*args: Any) -> Any:
        release_free_memory()
        return function(*args)

    return run


def _has_dropout(module: nn.Module) -> bool:
    """Whether ``module`` drops anything in training: an ``nn.Dropout`` with ``p > 0`` or a positive
    ``attention_dropout`` / ``dropout`` attribute (the attention functions of ``transformers`` read those)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
            return True
        for name in ("attention_dropout", "dropout"):
            value = getattr(sub, name, 0.0)
            if isinstance(value, (int, float)) and value > 0:
                return True
    return False


def chunk_checkpointed_layers(model: nn.Module, max_tokens: int = MAX_TOKENS) -> int:
    """Make every checkpointed layer of ``model`` recompute in row blocks of at most ``max_tokens`` tokens; the
    number of layers changed. Call after ``gradient_checkpointing_enable()``; layers with dropout are left whole."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    changed = 0
    for module in model.modules():
        inner = getattr(module, "_gradient_checkpointing_func", None)
        if not isinstance(module, GradientCheckpointingLayer) or not module.gradient_checkpointing or inner is None \
                or _has_dropout(module):
            continue
        if isinstance(inner, functools.partial) and inner.func is _row_chunked:
            inner = inner.args[0]
        module._gradient_checkpointing_func = functools.partial(_row_chunked, inner, max_tokens)
        changed += 1
    return changed
