"""The vLLM engine on a real GPU against the Hugging Face engine, both fp32, on the warm-started tiny model (a
Hugging Face ``LlamaForCausalLM``): greedy tokens and texts, per-token log-probs at temperature 1 and 0.7
against the learner's recomputation, seeding, weight loading (perturbed, bf16-tagged, incomplete) and
sleep/wake. One engine serves the module (CUDA graphs on, sleep mode on); every test leaves the original
weights loaded.

Run on a GPU machine with the ``gpu`` extra (``pip install -e ".[gpu]"``):
``python -m pytest -q tests/gpu/test_vllm_engine_gpu.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlvr.data.tasks import arithmetic
from rlvr.models.forward import response_logprobs
from rlvr.models.loading import load_model, load_tokenizer
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.transfer.arrays import load_named_arrays, named_arrays

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("vllm")

GREEDY = SamplingParams(24, temperature=0.0, seed=0)
LOGPROB_ATOL = 2e-4  # fp32 on both sides; only kernels and reduction orders differ


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The Hugging Face engine on the same checkpoint (fp32, on the GPU), and its tokenizer."""
    model = load_model(tiny_model_dir, dtype="float32").cuda().eval()
    return HFEngine(model, load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from rlvr.rollout.vllm import VLLMEngine

    return VLLMEngine(tiny_model_dir, dtype="float32", gpu_memory_utilization=0.3, seed=0, enable_sleep_mode=True)


@pytest.fixture(scope="module")
def prompts(reference) -> list[list[int]]:
    """Held-out arithmetic problems of several lengths, as token ids."""
    problems = arithmetic.problems("heldout", 12)
    return [reference.tokenizer(p.problem, add_special_tokens=False).input_ids for p in problems]


@pytest.fixture(scope="module")
def original(reference) -> dict[str, np.ndarray]:
    return named_arrays(reference.model)


def tokens(completions: list[Completion]) -> list[list[int]]:
    return [c.tokens for c in completions]


def hf_engine_with(reference: HFEngine, arrays: dict[str, np.ndarray]) -> HFEngine:
    """A Hugging Face engine on a copy of the reference model holding ``arrays``."""
    model = copy.deepcopy(reference.model)
    load_named_arrays(model, arrays)
    return HFEngine(model, reference.tokenizer)


def perturbed(arrays: dict[str, np.ndarray], scale: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (a + scale * rng.standard_normal(a.shape)).astype(a.dtype) for name, a in arrays.items()}


@torch.no_grad()
def recomputed_logprobs(model, prompts: list[list[int]], completions: list[Completion], temperature: float):
    """The learner's log-probs of each completion (rlvr.models.forward.response_logprobs), as lists."""
    n, width, length = len(prompts), max(map(len, prompts)), max(len(c.tokens) for c in completions)
    prompt_ids, prompt_mask = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
    response, response_mask = torch.zeros(n, length, dtype=torch.long), torch.zeros(n, length, dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        prompt_ids[i, width - len(prompt):], prompt_mask[i, width - len(prompt):] = torch.tensor(prompt), 1
        response[i, : len(completion.tokens)], response_mask[i, : len(completion.tokens)] = (
            torch.tensor(completion.tokens), 1)
    logp, _ = response_logprobs(model, prompt_ids.cuda(), prompt_mask.cuda(), response.cuda(), response_mask.cuda(),
                                temperature)
    return [logp[i, : len(c.tokens)].float().cpu().tolist() for i, c in enumerate(completions)]


def assert_logprobs_close(completions: list[Completion], expected: list[list[float]]):
    for completion, row in zip(completions, expected):
        assert len(completion.logprobs) == len(completion.tokens)
        np.testing.assert_allclose(completion.logprobs, row, atol=LOGPROB_ATOL, rtol=0)


def test_greedy_matches_the_hf_engine(engine, reference, prompts):
    ours, theirs = engine.generate(prompts, GREEDY), reference.generate(prompts, GREEDY)
    assert tokens(ours) == tokens(theirs)
    assert [c.text for c in ours] == [c.text for c in theirs]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
    stopped = [c for c in ours if c.finish_reason == "stop"]
    assert stopped, "the warm-started tiny model answers and stops"
    assert all(c.tokens[-1] == reference.eos_id and reference.eos_id not in c.tokens[:-1] for c in stopped)
    # Greedy log-probs are the untempered distribution's, as the Hugging Face engine reports them.
    assert_logprobs_close(ours, [c.logprobs for c in theirs])
    short = engine.generate(prompts, SamplingParams(2, temperature=0.0))
    assert all(len(c.tokens) <= 2 for c in short) and "length" in {c.finish_reason for c in short}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_are_the_tempered_untruncated_ones(engine, reference, prompts, temperature):
    requests = [p for p in prompts for _ in range(4)]  # groups of 4 samples per prompt
    completions = engine.generate(requests, SamplingParams(24, temperature=temperature, seed=3))
    assert_logprobs_close(completions, recomputed_logprobs(reference.model, requests, completions, temperature))
    if temperature != 1.0:  # the temperature really enters: the untempered log-probs are another thing
        untempered = recomputed_logprobs(reference.model, requests, completions, 1.0)
        gaps = [abs(a - b) for c, row in zip(completions, untempered) for a, b in zip(c.logprobs, row)]
        assert max(gaps) > 1e-2


def test_seeds_make_samples_reproducible_and_independent_of_the_batch(engine, prompts):
    requests = [p for p in prompts for _ in range(4)]
    sampling = SamplingParams(24, temperature=1.0, seed=11, logprobs=False)
    first = tokens(engine.generate(requests, sampling))
    assert tokens(engine.generate(requests, sampling)) == first
    assert tokens(engine.generate(requests[:5], sampling)) == first[:5]
    groups = [first[i : i + 4] for i in range(0, len(first), 4)]
    assert any(len({tuple(t) for t in group}) > 1 for group in groups), "a group's samples differ"
    assert tokens(engine.generate(requests, SamplingParams(24, temperature=1.0, seed=12, logprobs=False))) != first


def test_load_weights_changes_outputs_and_restores_them(engine, reference, prompts, original):
    before = tokens(engine.generate(prompts, GREEDY))
    changed = perturbed(original)
    try:
        engine.load_weights(changed)
        after = engine.generate(prompts, GREEDY)
        assert tokens(after) != before
        expected = hf_engine_with(reference, changed).generate(prompts, GREEDY)
        assert tokens(after) == tokens(expected)  # the same weights as the learner's, not merely other ones
        assert_logprobs_close(after, [c.logprobs for c in expected])
    finally:
        engine.load_weights(original)
    assert tokens(engine.generate(prompts, GREEDY)) == before


def test_load_weights_takes_bf16_tagged_arrays(engine, reference, prompts, original):
    model16 = copy.deepcopy(reference.model).to(torch.bfloat16)
    arrays16 = named_arrays(model16)
    assert all(name.endswith("::bf16") for name in arrays16)
    try:
        engine.load_weights(arrays16)  # bf16 values are exact in the fp32 engine
        expected = HFEngine(model16.float(), reference.tokenizer).generate(prompts, GREEDY)
        assert tokens(engine.generate(prompts, GREEDY)) == tokens(expected)
    finally:
        engine.load_weights(original)


def test_load_weights_refuses_an_incomplete_set(engine, prompts, original):
    before = tokens(engine.generate(prompts, GREEDY))
    incomplete = {name: a for name, a in original.items() if name != "model.layers.0.mlp.down_proj.weight"}
    try:
        with pytest.raises(KeyError, match="down_proj"):
            engine.load_weights(perturbed(incomplete))
    finally:
        engine.load_weights(original)
    assert tokens(engine.generate(prompts, GREEDY)) == before


def test_sleep_frees_memory_and_wake_restores_the_engine(engine, prompts, original):
    before = tokens(engine.generate(prompts, GREEDY))
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    try:
        assert torch.cuda.mem_get_info()[0] > free_awake + (1 << 30)  # the KV cache at least
        with pytest.raises(RuntimeError, match="asleep"):
            engine.generate(prompts, GREEDY)
    finally:
        engine.wake()
    assert tokens(engine.generate(prompts, GREEDY)) == before
    # Weights loaded while asleep (the colocated order: train, sync, wake) are the ones generating after wake.
    changed = perturbed(original)
    engine.sleep()
    try:
        engine.load_weights(changed)
    finally:
        engine.wake()
    try:
        assert tokens(engine.generate(prompts, GREEDY)) != before
    finally:
        engine.load_weights(original)
    assert tokens(engine.generate(prompts, GREEDY)) == before
