"""Training with vLLM rollout engines on real GPUs, the tiny recipe for two steps (fp32, lr 1e-3 so that the
updates show in greedy outputs):

- colocated, one GPU: a DeepSpeed rank and, on its GPU, a vLLM engine that sleeps while the rank trains;
  weights by CUDA IPC;
- split, two GPUs: the rank on one, a vLLM engine on the other, in placement groups of their own; weights by
  NCCL broadcast from the rank.

Each checks that training proceeds (gradients flow, the steps' metrics are there), that the sync reports the
model's bytes, and that after the sync the engine's greedy outputs are those of the learner's new weights (a
Hugging Face engine holding them, in this process). Run on a GPU machine with the ``gpu`` extra:
``python -m pytest -q -s tests/gpu/test_vllm_training_gpu.py``.
"""

from __future__ import annotations

import pytest
import ray
import torch

from rlvr.config import build_recipe
from rlvr.data.prompts import render
from rlvr.models.loading import load_model
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.trainer import Trainer
from rlvr.transfer.arrays import load_named_arrays
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("vllm")
pytest.importorskip("deepspeed")

GREEDY = SamplingParams(16, temperature=0.0, seed=0, logprobs=False)
VLLM = {"rollout.engine": "vllm", "learner.backend": "deepspeed", "learner.num_ranks": 1, "learner.lr": 1e-3,
        "model.dtype": "float32", "rollout.gpu_memory_utilization": 0.3, "placement.sync_bucket_mb": 0.25,
        "data.heldout": "null"}


def tokens(completions) -> list[list[int]]:
    return [c.tokens for c in completions]


def learner_greedy(run: Trainer, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy outputs of the learner's current weights, from a Hugging Face engine in this process."""
    model = load_model(run.model_dir, "float32").cuda().eval()
    arrays, _peak = ray.get(run.workers.learner.weights.remote())  # every step call answers with its peak memory
    load_named_arrays(model, arrays)
    return tokens(HFEngine(model, run.tokenizer).generate(prompts, GREEDY))


def check_training_reaches_the_engines(run: Trainer, road: str) -> None:
    assert run.workers.road == road
    prompts = [render(p, "plain", run.tokenizer) for p in run.prompts[:16]]
    before = tokens(run.workers.generate(prompts, GREEDY))
    assert before == learner_greedy(run, prompts)  # the engine starts with the learner's weights
    model_bytes = sum(t.nbytes for t in load_model(run.model_dir, "float32").state_dict().values())
    for step in (1, 2):
        row = run.train_step(step)
        print(f"\n{road} step {step}: time/generate {row['time/generate']:.2f} s, time/sync "
              f"{row['time/sync'] * 1e3:.1f} ms, sync/bytes {row['sync/bytes']}, memory/peak_bytes "
              f"{row['memory/peak_bytes']}")
        assert row["actor/grad_norm"] > 0 and row["tokens/generated"] > 0
        assert row["sync/bytes"] == model_bytes and row["time/sync"] > 0
    after = tokens(run.workers.generate(prompts, GREEDY))
    assert after != before  # the updates reached the engine ...
    assert after == learner_greedy(run, prompts)  # ... as the learner's very weights


def test_colocated_vllm_trains_and_samples_the_new_weights(tiny_model_dir, ray_session, tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **VLLM))
    with Trainer(recipe) as run:
        check_training_reaches_the_engines(run, "ipc")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="split placement needs two GPUs (one each)")
def test_split_vllm_trains_and_samples_the_new_weights(tiny_model_dir, ray_session, tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{**VLLM, "placement.mode": "split"}))
    with Trainer(recipe) as run:
        check_training_reaches_the_engines(run, "nccl")
