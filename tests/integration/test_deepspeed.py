"""The DeepSpeed learner group on CPU over gloo: 2 ranks, ZeRO-2 and ZeRO-3, against the torch learner.

One run per configuration, shared by the tests (each DeepSpeed start costs seconds). All runs use the tiny
recipe with a KL term (the reference policy: a frozen copy per rank under ZeRO-2, a ZeRO-3 inference engine
under ZeRO-3), a warm-up (the learning-rate schedule) and lr 1e-3 (step 2 samples from visibly updated
weights). ``micro_batch_size`` 16 cuts the 32-row step batch into the same two micro-batches in the torch
learner as into the two ranks' pieces, so that per-micro-batch means (entropy, clip fractions) are averaged
over the same pieces and float sums run in the same order.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlvr.config import build_recipe
from rlvr.rollout.engine import SamplingParams
from rlvr.trainer import Trainer, train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

SHARED = {"learner.lr": 1e-3, "learner.warmup_steps": 2, "learner.micro_batch_size": 16, "algorithm.kl_coef": 0.01}
DEEPSPEED = {"learner.backend": "deepspeed", "learner.num_ranks": 2}
# Colocated: rank 0 samples with a copy that each update refreshes (split ZeRO-3 is the weight-sync test's).
ZERO3 = {**DEEPSPEED, "learner.zero_stage": 3, "model.gradient_checkpointing": True, "trainer.save_every": 1}
# What the rollout side produced: equal to the bit while the weights are (step 1, held-out before training).
SAMPLED = ("reward/mean", "reward/accuracy", "response/length_mean")
# What the learner computed: equal up to the order of float sums across ranks (measured: <= 4.1e-7 relative).
LEARNED = ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/grad_norm", "actor/clip_frac", "actor/lr")
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}


def _run(model_dir, out, **extra) -> list[dict]:
    recipe = build_recipe({}, tiny_overrides(model_dir, out, **{**SHARED, **extra}))
    assert train(recipe)["steps"] == 2
    return _rows(out)


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def torch_run(tiny_model_dir, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch")
    return out, _run(tiny_model_dir, out)


@pytest.fixture(scope="module")
def zero3_run(tiny_model_dir, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3")
    return out, _run(tiny_model_dir, out, **ZERO3)


def _assert_same_run(rows, reference):
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [0, 1, 2]
    assert rows[0]["heldout/accuracy"] == reference[0]["heldout/accuracy"]
    for key in SAMPLED:  # step 1 samples with the initial weights: the same samples, the same rewards
        assert rows[1][key] == reference[1][key], key
    for got, want in zip(rows[1:], reference[1:]):
        for key in (*SAMPLED, *LEARNED):
            assert got[key] == pytest.approx(want[key], **TOLERANCE), (got["step"], key)
    assert rows[-1]["heldout/accuracy"] == pytest.approx(reference[-1]["heldout/accuracy"])
    assert rows[1]["actor/lr"] == pytest.approx(1e-3)  # warm-up: step 2's rate, set after step 1's update
    assert all(r["actor/grad_norm"] > 0 and r["actor/kl"] >= 0 for r in rows[1:])


def test_zero2_colocated_trains_like_the_torch_learner(tiny_model_dir, ray_session, torch_run, tmp_path):
    _, reference = torch_run
    _assert_same_run(_run(tiny_model_dir, tmp_path, **DEEPSPEED), reference)


def test_zero3_colocated_with_gradient_checkpointing_trains_like_the_torch_learner(torch_run, zero3_run):
    _, reference = torch_run
    _, rows = zero3_run
    _assert_same_run(rows, reference)
    assert all(r["sync/bytes"] > 0 for r in rows[1:])  # the gathered weights did reach rank 0's engine copy


def test_zero3_checkpoint_is_a_hugging_face_model_with_the_torch_learners_weights(torch_run, zero3_run):
    from transformers import AutoModelForCausalLM

    (torch_dir, _), (zero3_dir, _) = torch_run, zero3_run
    trained = AutoModelForCausalLM.from_pretrained(zero3_dir / "checkpoints" / "step_2").state_dict()
    expected = AutoModelForCausalLM.from_pretrained(torch_dir / "checkpoints" / "step_2").state_dict()
    assert trained.keys() == expected.keys()
    for name, tensor in expected.items():
        # Equal up to the order of float sums across ranks, which AdamW amplifies where a gradient is near zero
        # (its update m / sqrt(v) is then about +-lr whatever the gradient's size): measured, 1 element in 16384
        # off by 4.4e-5. A gathering fault (a missing or misplaced partition) moves whole rows by the weights' size.
        off = ~torch.isclose(trained[name], tensor, rtol=0, atol=1e-5)
        assert off.float().mean() <= 1e-3, (name, int(off.sum()))
        assert (trained[name] - tensor).abs().max() <= 2 * 2 * SHARED["learner.lr"], name  # 2 steps of at most ~lr
    assert (zero3_dir / "checkpoints" / "step_2" / "deepspeed" / "state").is_dir()  # the optimizer partitions


def test_zero3_resume_continues_as_the_uninterrupted_run(tiny_model_dir, zero3_run, tmp_path):
    source, uninterrupted = zero3_run
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "step_2")  # as if killed after step 1's checkpoint
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{**SHARED, **ZERO3}))
    assert train(recipe, resume=True)["steps"] == 2
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in (*SAMPLED, *LEARNED):  # restored weights, optimizer state and schedule: the same step 2
        assert rows[2][key] == uninterrupted[2][key], key


def test_gathered_zero3_weights_reach_the_rollout_worker_whole(tiny_model_dir, ray_session, tmp_path):
    """bf16 ZeRO-3 in split placement: after an update the rollout worker's weights are bit-identical to the
    learner's full weights, and sampling with them gives the learner's (partitioned) log-probs, to bf16 rounding."""
    overrides = {**SHARED, **DEEPSPEED, "learner.zero_stage": 3, "placement.mode": "split",
                 "model.dtype": "bfloat16"}
    with Trainer(build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **overrides))) as run:
        rollout = run.workers.rollouts[0]
        initial = rollout.weights_digest.remote()
        assert run.workers.learner_digest() == ray_session.get(initial)
        run.train_step(1)
        trained = run.workers.learner_digest()
        assert trained != ray_session.get(initial)  # the update changed the weights ...
        assert ray_session.get(rollout.weights_digest.remote()) == trained  # ... and the rollout worker has them
        sampling = SamplingParams(max_new_tokens=8, seed=7, logprobs=True)
        batch, _ = run.sampler.generate(run.prompts[:8], [2] * 8, sampling)
        learner = run.workers.logprobs(batch).old
        mask = batch.response_mask.bool()
        # The engine's log-probs are those of generate's own (KV-cached, bf16) logits, the learner's of one parallel
        # pass: equal weights agree to bf16 rounding.
        assert torch.allclose(learner[mask], batch.rollout_logprobs[mask], atol=0.05)
        assert (learner[mask] - batch.rollout_logprobs[mask]).abs().mean() < 0.01
