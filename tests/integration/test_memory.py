"""The learner's memory over several steps of a randomly initialised Llama (17M parameters, big enough for its
gradients and activations to show in the resident set), through the actors' phase methods as a run calls them."""

from __future__ import annotations

import sys

import pytest
import torch

from rlvr import algos
from rlvr.batch import RolloutBatch
from rlvr.config import build_recipe
from rlvr.memory import (LEARNER_MMAP_THRESHOLD, ROW_BLOCK_MMAP_THRESHOLD, heap_stats, learner_memory,
                                 learner_phase, resident_bytes)
from rlvr.learner.torch import TorchLearner
from rlvr.workers.actors import LearnerActor

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

MiB = 2**20


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


class _Actor(LearnerActor.__ray_actor_class__):
    """The learner actor's methods without Ray."""

    def __init__(self, learner):
        self.learner, self.recipe, self.rank = learner, learner.recipe, 0


def _batch(rows: int, prompt: int, response: int, seed: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    prompt_mask[::2, : prompt // 3] = 0
    response_mask = torch.ones(rows, response)
    response_mask[1::2, response // 2 :] = 0
    return RolloutBatch(
        prompt_id=[str(i // 4) for i in range(rows)], group=torch.arange(rows) // 4,
        prompt_tokens=torch.randint(0, 16384, (rows, prompt), generator=g), prompt_mask=prompt_mask,
        response_tokens=torch.randint(0, 16384, (rows, response), generator=g), response_mask=response_mask,
        rollout_logprobs=torch.zeros(rows, response), rewards=torch.rand(rows, generator=g),
        correct=torch.zeros(rows, dtype=torch.bool))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident set from /proc")
def test_memory_is_flat_over_steps_and_no_gradients_outlive_an_update(llama_dir):
    torch.set_num_threads(1)
    recipe = build_recipe({}, [f"model.path={llama_dir}", "learner.micro_batch_size=8"])
    algorithm = algos.from_recipe(recipe)
    learner = TorchLearner(recipe, llama_dir, algorithm)
    assert learner.model.is_gradient_checkpointing  # the default for any model but the embedded tiny one
    assert learner.mmap_threshold == ROW_BLOCK_MMAP_THRESHOLD  # its row blocks' sub-MiB tensors get pages of their own
    actor = _Actor(learner)
    actor.logprobs(_batch(16, 32, 96, seed=0))  # the weights paged in from their file
    before = resident_bytes()
    peaks, between = [], []
    for step in range(6):
        # Two batch shapes in turn: a step is compared with the one two before it, which had the same shape.
        batch = _batch(16, 48 if step % 2 else 32, 64 if step % 2 else 96, seed=step)
        (logprobs, pass_peak) = actor.logprobs(batch)  # each answer carries the actor's peak since the last
        batch.old_logprobs = logprobs["old"]
        batch.advantages = algorithm.advantages(batch)[0]
        _, update_peak = actor.update(batch)
        assert all(p.grad is None for p in learner.model.parameters())  # not held through generation
        peaks.append(max(pass_peak, update_peak))
        between.append(resident_bytes())
    report = learner_memory(learner.model, learner.optimizer)
    assert report["gradients"] == 0
    assert report["optimizer_state"] == pytest.approx(2 * report["parameters"], rel=0.01)  # fp32 moments, 2 x 68 MB
    for step in range(4, 6):
        assert peaks[step] <= peaks[step - 2] + 24 * MiB, [p // MiB for p in peaks]
    assert max(between[2:]) <= between[1] + 16 * MiB, [b // MiB for b in between]
    # Between steps the process holds what it held before the first, and the AdamW moments: nothing of the
    # activations or gradients that the phases freed (glibc would keep ~150 MB of them here).
    assert between[-1] - before - report["optimizer_state"] < 48 * MiB, (before // MiB, between[-1] // MiB)


def test_gradient_checkpointing_is_on_by_default_except_for_the_tiny_model(llama_dir, tiny_model_dir):
    from rlvr.models.loading import load_model

    assert load_model(llama_dir, gradient_checkpointing=None).is_gradient_checkpointing
    assert not load_model(llama_dir, gradient_checkpointing=False).is_gradient_checkpointing
    assert not load_model(tiny_model_dir, gradient_checkpointing=None).is_gradient_checkpointing


def test_a_log_prob_pass_fills_no_kv_cache(llama_dir):
    from rlvr.models.forward import response_logprobs
    from rlvr.models.loading import load_model

    model = load_model(llama_dir)
    assert model.config.use_cache  # the saved config asks for one, as most hub models' do
    seen = []
    model.base_model.register_forward_hook(lambda module, args, kwargs, out: seen.append(
        (kwargs.get("use_cache"), out.past_key_values)), with_kwargs=True)
    batch = _batch(2, 8, 8, seed=0)
    with torch.no_grad():
        response_logprobs(model, batch.prompt_tokens, batch.prompt_mask, batch.response_tokens, batch.response_mask)
    assert seen == [(False, None)]


@pytest.mark.parametrize("overrides", [["model.gradient_checkpointing=false"], ["model.checkpoint_tokens=null"]])
def test_only_row_block_recomputes_map_from_128_kib(llama_dir, overrides):
    """Without row blocks the phases map from 1 MiB: at 128 KiB the tiny model's update took 1.7x as long."""
    recipe = build_recipe({}, [f"model.path={llama_dir}", *overrides])
    learner = TorchLearner(recipe, llama_dir, algos.from_recipe(recipe))
    assert learner.mmap_threshold == LEARNER_MMAP_THRESHOLD == 1 << 20
    if heap_stats():  # glibc: the phase really sets it, and a 512 KiB tensor comes from the heap
        actor = _Actor(learner)
        with learner_phase(actor._mmap_threshold()):
            mapped = heap_stats()["mmapped"]
            block = torch.ones(128 << 10)  # 512 KiB
            assert heap_stats()["mmapped"] == mapped
            del block
