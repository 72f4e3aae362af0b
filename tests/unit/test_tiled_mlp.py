"""Tiled gated MLPs (rlvr.models.tiled_mlp): the same outputs and gradients as the module's own forward, only the
input kept for the backward, and the module's own path wherever tiling cannot apply."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlvr.config import RecipeError, build_recipe
from rlvr.models.loading import load_model
from rlvr.models.tiled_mlp import GatedMLP, tile_gated_mlps


def small_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **config))


def gradients(mlp, x, weight):
    """Output, input gradient and weight gradients of ``(mlp(x) * weight).sum()``."""
    x = x.clone().requires_grad_(True)
    mlp.zero_grad(set_to_none=True)
    out = mlp(x)
    (out * weight).sum().backward()
    return out.detach(), x.grad, [p.grad for p in mlp.parameters()]


@pytest.mark.parametrize("block", [1, 16, 37, 1000])  # a block of one row, blocks that do not divide 37 rows, one block
def test_tiled_mlp_matches_the_modules_own_forward_and_backward(block):
    stock, tiled = small_llama(), small_llama()
    assert tile_gated_mlps(tiled, block) == 2
    generator = torch.Generator().manual_seed(1)
    x, weight = torch.randn(37, 32, generator=generator), torch.randn(37, 32, generator=generator)
    for layer in range(2):
        ours = gradients(tiled.model.layers[layer].mlp, x, weight)
        theirs = gradients(stock.model.layers[layer].mlp, x, weight)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)
        assert len(ours[2]) == 3
        for got, want in zip(ours[2], theirs[2]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_tiled_model_trains_like_the_stock_one_with_gradient_checkpointing():
    stock, tiled = small_llama(), small_llama()
    tile_gated_mlps(tiled, 8)
    tokens = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(2))
    for model in (stock, tiled):
        model.gradient_checkpointing_enable()
        model.train()
        model(tokens, labels=tokens).loss.backward()
    for (name, got), want in zip(tiled.named_parameters(), stock.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_weights_get_bf16_gradients_close_to_fp32s():
    reference, tiled = small_llama(), small_llama()
    tile_gated_mlps(tiled, 4)
    tiled.to(torch.bfloat16)
    x, weight = torch.randn(64, 32), torch.randn(64, 32)
    want = gradients(reference.model.layers[0].mlp, x, weight)[2]  # fp32
    got = gradients(tiled.model.layers[0].mlp, x.bfloat16(), weight.bfloat16())[2]
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert (g.float() - w).norm() / w.norm() < 2e-2  # within bf16 rounding of the fp32 gradients


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn`` runs, parameters excluded."""
    saved = []

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(saved)


def test_a_tiled_mlp_keeps_only_its_input_for_the_backward():
    stock, tiled = small_llama(), small_llama()
    tile_gated_mlps(tiled, 16)
    x = torch.randn(100, 32, requires_grad=True)
    assert saved_bytes(lambda: tiled.model.layers[0].mlp(x)) == x.numel() * 4
    assert saved_bytes(lambda: stock.model.layers[0].mlp(x)) > 4 * 100 * 88 * 4  # four [tokens x 88] activations


def test_without_a_gradient_or_with_partitioned_weights_the_module_runs_its_own_forward(monkeypatch):
    tiled = small_llama()
    tile_gated_mlps(tiled, 16)
    mlp = tiled.model.layers[0].mlp
    calls = []
    monkeypatch.setattr(GatedMLP, "apply", lambda *args: calls.append(args) or torch.zeros(()))
    x = torch.randn(10, 32, requires_grad=True)
    with torch.no_grad():
        mlp(x)  # generation, log-prob passes
    mlp.requires_grad_(False)
    mlp(x.detach())  # grad enabled, but nothing wants a gradient: a frozen reference model
    mlp.requires_grad_(True)
    mlp.gate_proj.weight.ds_id = 7  # ZeRO-3 partitions the weight; it is gathered inside gate_proj's own forward
    mlp(x)
    assert calls == []
    del mlp.gate_proj.weight.ds_id
    mlp(x)
    assert len(calls) == 1


def test_models_without_gated_silu_mlps_are_left_as_they_are():
    model = small_llama(hidden_act="gelu")
    assert tile_gated_mlps(model) == 0
    assert "forward" not in vars(model.model.layers[0].mlp)


def test_tiled_mlp_follows_gradient_checkpointing_by_default(tmp_path):
    small_llama().save_pretrained(tmp_path)
    patched = lambda model: all("forward" in vars(layer.mlp) for layer in model.model.layers)  # noqa: E731
    assert patched(load_model(str(tmp_path), gradient_checkpointing=True, tiled_mlp=None))
    assert not patched(load_model(str(tmp_path), gradient_checkpointing=False, tiled_mlp=None))
    assert patched(load_model(str(tmp_path), gradient_checkpointing=False, tiled_mlp=True))
    assert not patched(load_model(str(tmp_path), gradient_checkpointing=True, tiled_mlp=False))


def test_tiled_mlp_under_zero3_is_refused_naming_the_fields():
    pytest.importorskip("deepspeed")
    with pytest.raises(RecipeError, match=r"model\.tiled_mlp.*zero_stage"):
        build_recipe({}, ["learner.backend=deepspeed", "learner.zero_stage=3", "model.tiled_mlp=true"])
    build_recipe({}, ["learner.backend=deepspeed", "learner.zero_stage=3"])  # unset: off under ZeRO-3
