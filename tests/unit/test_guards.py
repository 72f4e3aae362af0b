"""The guards' decisions on metrics rows, the signal handling, the recipe comparison of a resume, the recipes a run
keeps, and what a failed checkpoint write says."""

from __future__ import annotations

import errno
import logging
import os
import signal

import pytest

from rlvr import checkpoint
from rlvr.config import GuardsConfig, build_recipe, recipe_changes, resume_safe
from rlvr.guards import Guards, Signals, unsafe_weights


def _trained(step, **values):
    return {"step": step, "actor/skipped_steps": 0.0, "actor/weight_norm": 40.0, "actor/weight_growth": 1.0,
            "reward/mean": 0.5, "reward/errors": 0, "rollout/num_sampled": 32, **values}


def test_non_finite_updates_stop_the_run_after_k_in_a_row_and_no_signal_steps_do_not_break_the_streak():
    guards = Guards(GuardsConfig(nonfinite_steps=3), [{"step": 0}])
    skipped = dict(zip(["actor/skipped_steps", "actor/weight_norm"], [1.0, 40.0]))
    assert guards.check(_trained(1, **skipped)) is None
    assert guards.check({"step": 2, "reward/mean": 0.5}) is None  # no update ran: neither good nor bad
    assert guards.check(_trained(3, **skipped)) is None
    assert "non-finite in 3 steps in a row" in guards.check(_trained(4, **skipped))
    resumed = Guards(GuardsConfig(nonfinite_steps=3), guards.rows[:-1])  # a resume goes on with the streak
    assert "non-finite in 3 steps in a row" in resumed.check(_trained(4, **skipped))
    fresh = Guards(GuardsConfig(nonfinite_steps=3), [_trained(1, **skipped), _trained(2)])
    assert fresh.check(_trained(3, **skipped)) is None  # a good update in between ends the streak


def test_runaway_or_non_finite_weights_stop_at_once_and_are_never_saved():
    cfg = GuardsConfig()
    assert "multiplied the weights' norm by 2.5" in Guards(cfg).check(_trained(1, **{"actor/weight_growth": 2.5}))
    assert "not finite" in Guards(cfg).check(_trained(1, **{"actor/weight_norm": float("nan")}))
    assert unsafe_weights(_trained(1, **{"actor/weight_growth": 2.5}), cfg)
    assert unsafe_weights(_trained(1, **{"actor/skipped_steps": 1.0}), cfg) == \
        "its update was skipped (non-finite loss or gradient)"
    assert unsafe_weights(_trained(1), cfg) is None and unsafe_weights({"step": 1}, cfg) is None
    # off: the run goes on with a warning, but such weights are still not saved
    assert Guards(GuardsConfig(enabled=False)).check(_trained(1, **{"actor/weight_growth": 2.5})) is None
    assert unsafe_weights(_trained(1, **{"actor/weight_growth": 2.5}), GuardsConfig(enabled=False))


def test_reward_errors_stop_the_run_only_when_most_calls_fail_for_k_steps():
    guards = Guards(GuardsConfig(reward_error_frac=0.5, reward_error_steps=3))
    assert guards.check(_trained(1, **{"reward/errors": 32})) is None
    assert guards.check(_trained(2, **{"reward/errors": 16})) is None  # half: not more than half
    assert guards.check(_trained(3, **{"reward/errors": 32})) is None
    assert guards.check(_trained(4, **{"reward/errors": 30})) is None
    assert "failed in each of the last 3 steps (31 of 32" in guards.check(_trained(5, **{"reward/errors": 31}))


def test_reward_and_heldout_collapse_are_measured_against_the_runs_start():
    guards = Guards(GuardsConfig(collapse_frac=0.1, collapse_steps=2), [{"step": 0, "heldout/accuracy": 0.4}])
    for step, reward in enumerate([0.5, 0.7, 0.1], start=1):
        assert guards.check(_trained(step, **{"reward/mean": reward})) is None
    assert "mean reward of the last 2 steps (0.05) fell below 0.1 x its mean over the first 2 (0.6)" in \
        guards.check(_trained(4, **{"reward/mean": 0.0}))
    heldout = Guards(GuardsConfig(collapse_frac=0.1), [{"step": 0, "heldout/accuracy": 0.4}])
    assert heldout.check(_trained(1, **{"heldout/accuracy": 0.05})) is None
    assert "held-out accuracy fell to 3.0% from 40.0%" in heldout.check(_trained(2, **{"heldout/accuracy": 0.03}))
    never_solved = Guards(GuardsConfig(collapse_steps=1), [{"step": 0, "heldout/accuracy": 0.0}])
    assert never_solved.check(_trained(1, **{"reward/mean": 0.0, "heldout/accuracy": 0.0})) is None
    assert never_solved.check(_trained(2, **{"reward/mean": 0.0})) is None  # a start of 0 cannot collapse


def test_a_first_signal_is_remembered_and_a_second_stops_at_once(caplog):
    with caplog.at_level(logging.WARNING, logger="rlvr"), Signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        assert "SIGTERM: stopping after the current step" in caplog.text
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_resume_may_change_how_long_a_run_goes_but_not_what_it_trains():
    before = build_recipe({})
    after = build_recipe({}, ["rollout.n=2", "trainer.total_steps=500", "eval.limit=3", "learner.lr=1e-3",
                              "trainer.guards.collapse_frac=0.2", "data.heldout_size=10"])
    changes = recipe_changes(before, after)
    assert changes["rollout.n"] == (8, 2) and changes["learner.lr"] == (1e-6, 1e-3)
    assert sorted(key for key in changes if not resume_safe(key)) == ["learner.lr", "rollout.n"]
    assert recipe_changes(before, build_recipe({})) == {}


def test_a_run_keeps_every_recipe_it_used(tmp_path):
    checkpoint.record_recipe(tmp_path, "a", resumed_at=None, changed=False)
    checkpoint.record_recipe(tmp_path, "b", resumed_at=4, changed=True)
    checkpoint.record_recipe(tmp_path, "c", resumed_at=9, changed=True)
    assert {start: path.read_text() for start, path in checkpoint.recipe_files(tmp_path).items()} == \
        {0: "a", 4: "b", 9: "c"}
    assert [checkpoint.recipe_in_effect(tmp_path, step).read_text() for step in (1, 4, 5, 9, 10)] == \
        ["a", "a", "b", "b", "c"]
    # a resume from step 6 replays steps 7-: the recipe from step 9 on describes steps that are redone
    checkpoint.record_recipe(tmp_path, "b", resumed_at=6, changed=False)
    assert sorted(checkpoint.recipe_files(tmp_path)) == [0, 4]
    checkpoint.record_recipe(tmp_path, "fresh", resumed_at=None, changed=False)  # a new run
    assert {start: path.read_text() for start, path in checkpoint.recipe_files(tmp_path).items()} == {0: "fresh"}


def test_a_failed_checkpoint_write_names_the_cause_and_removes_the_partial_directory(tmp_path):
    staging = checkpoint.staging_dir(tmp_path, 3)
    (staging / "model.safetensors").write_text("half")
    wrapped = RuntimeError("ray task failed")
    wrapped.__cause__ = OSError(errno.EROFS, os.strerror(errno.EROFS))
    error = checkpoint.write_error(tmp_path, 3, staging, wrapped)
    assert f"could not write the checkpoint of step 3 to {tmp_path / 'checkpoints'}: the file system is read-only (" \
        in str(error)
    assert "no checkpoint was completed" in str(error)
    assert not staging.exists()
    text_only = checkpoint.write_error(tmp_path, 4, checkpoint.staging_dir(tmp_path, 4),
                                       RuntimeError("OSError: [Errno 28] No space left on device: 'x'"))
    assert ": no space left on the device (" in str(text_only)
