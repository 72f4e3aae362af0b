"""End to end on real Ray actors, the real tiny model and real reward processes."""

from __future__ import annotations

import json

import pytest
import ray

from rlvr.config import build_recipe
from rlvr.trainer import Trainer, train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

# Metrics that must agree between runs with the same seed (timings, memory and throughput may not).
COMPARED = ("reward/mean", "reward/accuracy", "response/length_mean", "actor/pg_loss", "actor/entropy",
            "actor/grad_norm", "actor/clip_frac", "heldout/accuracy")


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(rows):
    return [{k: row[k] for k in COMPARED if k in row} for row in rows]


def test_split_and_colocated_give_the_same_metrics(tiny_model_dir, ray_session, tmp_path):
    runs = {}
    for mode in ("colocated", "split"):
        recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path / mode, **{"placement.mode": mode}))
        summary = train(recipe)
        assert summary["steps"] == 2
        runs[mode] = _comparable(_rows(tmp_path / mode))
    assert [r.keys() for r in runs["split"]] == [r.keys() for r in runs["colocated"]]
    for a, b in zip(runs["colocated"], runs["split"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert all(row["actor/grad_norm"] > 0 for row in runs["split"][1:])  # real updates were compared


def test_rollout_weights_equal_the_learners_after_sync(tiny_model_dir, ray_session, tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"placement.mode": "split",
                                                                          "learner.lr": 1e-3}))
    with Trainer(recipe, resume=False) as run:
        learner, (rollout,) = run.workers.learner, run.workers.rollouts
        initial = ray.get(rollout.weights_digest.remote())
        assert initial == ray.get(learner.learner_digest.remote())
        row = run.train_step(1)
        assert row["sync/bytes"] > 0 and row["train/skipped_no_signal"] == 0
        trained = ray.get(learner.learner_digest.remote())
        assert trained != initial  # the update changed the weights ...
        assert ray.get(rollout.weights_digest.remote()) == trained  # ... and the rollout worker has them


def test_run_directory_holds_config_metrics_and_an_hf_checkpoint(tiny_model_dir, ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"trainer.save_every": 1}))
    train(recipe)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "heldout/accuracy" in rows[0] and "heldout/accuracy" in rows[-1] and "heldout/accuracy" not in rows[1]
    for key in ("reward/mean", "reward/accuracy", "reward/errors", "response/length_mean", "actor/entropy",
                "actor/clip_frac", "actor/grad_norm", "actor/lr", "time/generate", "time/reward",
                "time/old_logprob", "time/ref", "time/update", "time/sync", "throughput/tokens_per_s",
                "memory/peak_bytes", "train/skipped_no_signal"):
        assert key in rows[1], key
    assert (tmp_path / "config.yaml").read_text().startswith("model:")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1", "step_2"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "step_2")
    assert model.config.model_type == "llama"
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe)  # never silently overwrite a run


def test_heldout_every_gives_a_curve_and_one_update_skips_the_old_logprob_pass(tiny_model_dir, ray_session,
                                                                                tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"trainer.total_steps": 3,
                                                                          "trainer.heldout_every": 2,
                                                                          "data.heldout_size": 8}))
    summary = train(recipe)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if "heldout/accuracy" in r] == [0, 2, 3]
    assert summary["heldout_after"] == rows[-1]["heldout/accuracy"]
    trained = [r for r in rows[1:] if r["train/skipped_no_signal"] == 0]
    assert trained, "by_length gives every group varying rewards"
    for row in trained:  # one optimizer step per rollout: the update's forward gives the old log-probs
        assert row["time/old_logprob"] < 0.01 and row["time/update"] > 0


def test_rollout_logprobs_can_stand_in_for_the_recomputed_ones(tiny_model_dir, ray_session, tmp_path):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"learner.recompute_old_logprobs": False}))
    train(recipe)
    rows = _rows(tmp_path)[1:]
    for row in rows:
        assert row["time/old_logprob"] < 0.01  # nothing recomputed
        # Step 1 samples with the weights it trains, so the ratio to the sampler is 1 up to float noise.
        assert row["actor/pg_loss"] == row["actor/pg_loss"]  # not NaN
    assert rows[0]["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_truncated_importance_sampling_measures_the_engines_mismatch(tiny_model_dir, ray_session, tmp_path):
    """With ``algorithm.tis_cap`` the engine's log-probs are requested and compared with the learner's. The
    Hugging Face engine recomputes them with the same weights in fp32, so the mismatch is float noise and
    the weights are 1: the correction changes nothing where nothing differs."""
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"algorithm.tis_cap": 2.0,
                                                                          "data.heldout": "null"}))
    train(recipe)
    for row in _rows(tmp_path)[1:]:
        assert 0.0 <= row["rollout/mismatch_k3"] < 1e-6
        assert row["rollout/logprob_abs_diff"] < 1e-3
        assert row["tis/weight_mean"] == pytest.approx(1.0, abs=1e-3) and row["tis/clip_frac"] == 0.0
