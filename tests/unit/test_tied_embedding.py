"""A tied embedding's lookup gradient added in place after the backward (rlvr.models.tied_embedding): the same
gradient as autograd's, with the padding row left out and micro-batches summed, and without the second
``[vocab x hidden]`` tensor at the backward's peak."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlvr.memory import learner_phase, peak_resident_bytes, resident_bytes
from rlvr.models.tied_embedding import defer_tied_embedding_grad


def small_llama(vocab: int = 64, hidden: int = 32, tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        pad_token_id=3, tie_word_embeddings=tied)).train()


def backward(model, ids, deferred=None):
    logits = model(input_ids=ids).logits
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    if deferred is not None:
        deferred.apply()


def test_the_gradient_is_autograds_over_micro_batches_with_the_padding_row_left_out():
    stock, ours = small_llama(), small_llama()
    deferred = defer_tied_embedding_grad(ours)
    assert deferred is not None
    generator = torch.Generator().manual_seed(1)
    micro_batches = [torch.randint(0, 64, (4, 9), generator=generator) for _ in range(2)]
    micro_batches[0][:, :3] = 3  # the padding token, repeated
    for ids in micro_batches:  # gradient accumulation: the second backward adds to the first's .grad
        backward(stock, ids)
        backward(ours, ids, deferred)
    assert deferred.pending == []
    for (name, p), q in zip(stock.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert stock.model.embed_tokens.weight.grad[3].abs().sum() > 0  # the head's gradient reaches the padding row
    ours.zero_grad(set_to_none=True)
    backward(ours, micro_batches[0], deferred)
    alone = ours.model.embed_tokens.weight.grad.clone()
    stock.zero_grad(set_to_none=True)
    backward(stock, micro_batches[0])
    torch.testing.assert_close(alone, stock.model.embed_tokens.weight.grad, rtol=1e-5, atol=1e-6)


def test_passes_without_a_gradient_and_untied_models_are_left_alone():
    assert defer_tied_embedding_grad(small_llama(tied=False)) is None
    model = small_llama()
    deferred = defer_tied_embedding_grad(model)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 64, (2, 5)))
    model.requires_grad_(False)
    model(input_ids=torch.randint(0, 64, (2, 5)))  # a frozen reference model
    assert deferred.pending == []


def test_the_backward_peak_has_no_second_vocab_sized_gradient():
    vocab, hidden = 65536, 256  # a 64 MiB embedding: far above the rest of this model's backward
    size = vocab * hidden * 4
    ids = torch.randint(0, vocab, (2, 16))

    def peak_added(model, deferred=None):
        backward(model, ids, deferred)  # warm-up: the first backward allocates what every backward reuses
        model.zero_grad(set_to_none=True)
        with learner_phase():
            start = resident_bytes()
            peak_resident_bytes(reset=True)
            backward(model, ids, deferred)
            peak = peak_resident_bytes()
        model.zero_grad(set_to_none=True)
        return peak - start

    stock = peak_added(small_llama(vocab, hidden))
    model = small_llama(vocab, hidden)
    ours = peak_added(model, defer_tied_embedding_grad(model))
    assert stock > 1.8 * size  # the weight's gradient and the lookup's dense gradient at once
    assert ours < 1.4 * size and stock - ours > 0.6 * size
