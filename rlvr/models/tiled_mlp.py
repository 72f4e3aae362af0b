"""Gated MLPs that keep only their input for the backward and run it a block of tokens at a time.

A decoder layer's gated MLP (``down(silu(gate(x)) * up(x))``: Llama, Qwen2/3, Mistral, SmolLM2) is most of the
layer's activation memory. With gradient checkpointing each layer is recomputed in the backward, and its MLP then
holds four ``[tokens x intermediate]`` tensors and as many gradients at once: for SmolLM2-135M about 38 KB per
token, 145 MiB for 16 rows of 238 tokens, the largest transient of the update (docs/memory.md). Here the MLP keeps
only its input; the backward recomputes the gate and up projections ``block_tokens`` rows at a time and adds each
block's weight gradients up, so the transient is one block's. The idea is Arctic Long Sequence Training's
``TiledMLP`` (DeepSpeed); this is a closed-form backward of the gated MLP, with the weight gradients returned to
autograd like any other.

:func:`tile_gated_mlps` patches a model's MLP modules in place. The tiled path runs only where a gradient is
wanted (the update); generation and log-prob passes under ``no_grad`` take the module's own forward. A module
whose projections are not plain bias-free ``nn.Linear`` layers at call time (LoRA-wrapped, quantised) or whose
weights are partitioned by DeepSpeed ZeRO-3 (which gathers a weight only inside its own module's forward) takes
its own forward too.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

BLOCK_TOKENS = 512


def _plain_linear(module: object) -> bool:
    return type(module) is nn.Linear and module.bias is None and not hasattr(module.weight, "ds_id")


def is_gated_silu_mlp(module: nn.Module) -> bool:
    """Whether ``module`` computes ``down_proj(silu(gate_proj(x)) * up_proj(x))`` with bias-free linear layers."""
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return silu and all(_plain_linear(getattr(module, name, None)) for name in ("gate_proj", "up_proj", "down_proj"))


class GatedMLP(torch.autograd.Function):
    """``down(silu(gate(x)) * up(x))``, saving ``x`` and the weights only; forward and backward in row blocks."""

    @staticmethod
    def forward(ctx, x: Tensor, gate: Tensor, up: Tensor, down: Tensor, block_tokens: int) -> Tensor:
        ctx.save_for_backward(x, gate, up, down)
        ctx.block_tokens = block_tokens
        rows = x.reshape(-1, x.shape[-1])
        out = torch.empty(rows.shape[0], down.shape[0], dtype=x.dtype, device=x.device)
        for start in range(0, rows.shape[0], block_tokens):
            block = rows[start:start + block_tokens]
            hidden = F.silu(F.linear(block, gate)).mul_(F.linear(block, up))
            torch.matmul(hidden, down.t(), out=out[start:start + block_tokens])
        return out.view(*x.shape[:-1], down.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, gate, up, down = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        grads = grad_out.reshape(-1, grad_out.shape[-1])
        want_x, want_gate, want_up, want_down = ctx.needs_input_grad[:4]
        grad_x = torch.empty_like(rows) if want_x else None
        # Weight gradients summed over blocks in fp32 (one rounding at the end for bf16 weights).
        acc = torch.float32
        grad_gate = torch.zeros(gate.shape, dtype=acc, device=x.device) if want_gate else None
        grad_up = torch.zeros(up.shape, dtype=acc, device=x.device) if want_up else None
        grad_down = torch.zeros(down.shape, dtype=acc, device=x.device) if want_down else None
        for start in range(0, rows.shape[0], ctx.block_tokens):
            block, grad_block = rows[start:start + ctx.block_tokens], grads[start:start + ctx.block_tokens]
            g, u = F.linear(block, gate), F.linear(block, up)
            sig = torch.sigmoid(g)
            act = g * sig  # silu(g)
            if want_down:
                grad_down.addmm_(grad_block.t().to(acc), (act * u).to(acc))
            grad_hidden = grad_block @ down  # d(act * u)
            grad_u = grad_hidden * act
            # d silu(g) / dg = sig * (1 + g * (1 - sig)); reuse g's and act's storage
            grad_g = grad_hidden.mul_(u).mul_(sig.mul_(g.sub_(act).add_(1)))
            del act, u, g
            if want_gate:
                grad_gate.addmm_(grad_g.t().to(acc), block.to(acc))
            if want_up:
                grad_up.addmm_(grad_u.t().to(acc), block.to(acc))
            if want_x:
                torch.matmul(grad_g, gate, out=grad_x[start:start + ctx.block_tokens])
                grad_x[start:start + ctx.block_tokens].addmm_(grad_u, up)
        cast = lambda grad, weight: None if grad is None else grad.to(weight.dtype)  # noqa: E731
        return (None if grad_x is None else grad_x.view_as(x), cast(grad_gate, gate), cast(grad_up, up),
                cast(grad_down, down), None)


def _tiled_forward(self: nn.Module, x: Tensor) -> Tensor:
    gate, up, down = self.gate_proj, self.up_proj, self.down_proj
    wanted = torch.is_grad_enabled() and (x.requires_grad or gate.weight.requires_grad)
    if not wanted or not all(_plain_linear(m) for m in (gate, up, down)):
        return type(self).forward(self, x)
    return GatedMLP.apply(x, gate.weight, up.weight, down.weight, self.tiled_mlp_block_tokens)


def tile_gated_mlps(model: nn.Module, block_tokens: int = BLOCK_TOKENS) -> int:
    """Route the gradient-carrying forward of every gated SiLU MLP of ``model`` through :class:`GatedMLP`; the
    number of modules patched (0 when the model has none, which leaves it as it was)."""
    patched = 0
    for module in model.modules():
        if is_gated_silu_mlp(module):
            module.tiled_mlp_block_tokens = block_tokens
            module.forward = types.MethodType(_tiled_forward, module)
            patched += 1
    return patched
