"""Checkpointed layers recomputed in row blocks (rlvr.models.checkpointing): the same outputs and gradients as
whole-batch checkpointing, padding and all, and whole-batch recompute wherever blocks would change the result."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlvr.models.checkpointing import chunk_checkpointed_layers
from rlvr.models.loading import load_model


def small_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, **config))
    model.gradient_checkpointing_enable()
    return model.train()


def batch(rows: int = 7, width: int = 12):
    """Left-padded prompts of different lengths, as the learner's micro-batches are."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (rows, width), generator=generator)
    lengths = torch.randint(3, width + 1, (rows,), generator=generator)
    mask = (torch.arange(width)[None] >= (width - lengths)[:, None]).long()
    return ids, mask


def loss_and_gradients(model, ids, mask):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    weight = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    loss = (logits * weight * mask[..., None]).sum()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("max_tokens", [1, 12, 30, 1000])  # a row per block, 1 row, blocks not dividing 7 rows, one
def test_row_blocks_give_whole_batch_checkpointings_loss_and_gradients(max_tokens):
    whole, blocks = small_llama(), small_llama()
    assert chunk_checkpointed_layers(blocks, max_tokens) == 3
    ids, mask = batch()
    loss, grads = loss_and_gradients(whole, ids, mask)
    block_loss, block_grads = loss_and_gradients(blocks, ids, mask)
    torch.testing.assert_close(block_loss, loss, rtol=1e-5, atol=1e-5)
    assert block_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(block_grads[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_layer_runs_once_per_block_in_the_forward_and_again_in_the_backward(monkeypatch):
    model = small_llama()
    chunk_checkpointed_layers(model, max_tokens=3 * 12)  # 3 rows of 12 tokens per block: 7 rows -> 3 blocks
    calls, layer, forward = [], model.model.layers[1], type(model.model.layers[1]).forward

    def counted(self, hidden, *args, **kwargs):  # not a forward hook: the checkpoint's recompute runs none
        if self is layer:
            calls.append(hidden.shape[0])
        return forward(self, hidden, *args, **kwargs)

    monkeypatch.setattr(type(layer), "forward", counted)
    ids, mask = batch()
    loss_and_gradients(model, ids, mask)
    assert calls[:3] == [3, 3, 1] and sorted(calls[3:]) == [1, 3, 3]  # three blocks forward, the three recomputed
    calls.clear()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # no gradient wanted: no checkpoint, no blocks
    assert calls == [7]


@pytest.mark.parametrize("max_tokens", [3 * 12, 1000])  # three blocks; one
def test_each_layer_hands_the_free_heap_back_before_its_forward_and_its_recompute(monkeypatch, max_tokens):
    import rlvr.memory

    model = small_llama()
    chunk_checkpointed_layers(model, max_tokens)
    released = []
    monkeypatch.setattr(rlvr.memory, "release_free_memory", lambda: released.append(1))
    ids, mask = batch()
    loss_and_gradients(model, ids, mask)
    assert len(released) == 2 * 3  # 3 layers: at each one's forward and at its recompute, once however many blocks
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(released) == 6  # no gradient, no recompute to make room for


def test_layers_with_dropout_keep_whole_batch_recompute():
    assert chunk_checkpointed_layers(small_llama(attention_dropout=0.1), 8) == 0
    assert chunk_checkpointed_layers(small_llama(), 8) == 3
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_checkpointed_layers(small_llama(), 0)


def test_wrapping_twice_keeps_one_level_with_the_new_size():
    model = small_llama()
    chunk_checkpointed_layers(model, 8)
    chunk_checkpointed_layers(model, 16)
    wrapped = model.model.layers[0]._gradient_checkpointing_func
    assert wrapped.args[1] == 16 and wrapped.args[0].func is not wrapped.func


def test_load_model_blocks_the_recompute_only_with_checkpointing(tmp_path):
    small_llama().save_pretrained(tmp_path)
    blocked = lambda model: all(  # noqa: E731
        getattr(layer._gradient_checkpointing_func, "func", None) is not None
        and layer._gradient_checkpointing_func.func.__name__ == "_row_chunked" for layer in model.model.layers)
    assert blocked(load_model(str(tmp_path), gradient_checkpointing=True, checkpoint_tokens=64))
    assert not blocked(load_model(str(tmp_path), gradient_checkpointing=True, checkpoint_tokens=None))
    assert not any(layer.gradient_checkpointing for layer in
                   load_model(str(tmp_path), gradient_checkpointing=False, checkpoint_tokens=64).model.layers)
