"""How often one training step talks to its actors: every actor call goes through a counting proxy, every
``ray.put`` is seen. A step makes at most four driver <-> actor round trips (generate; the log-probs the driver
needs first; the update; the weight sync), its step batch goes into the object store once and never travels by
value, and the step's peak memory arrives with the answers instead of a call of its own."""

from __future__ import annotations

import pytest
import ray

from rlvr.batch import RolloutBatch
from rlvr.config import build_recipe
from rlvr.trainer import Trainer
from rlvr.workers import placement
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out

WAVES = ("generate", "submit", "logprobs", "update", "sync_weights", "peak_memory")


class CountingActor:
    """An actor handle that logs each ``method.remote(*args)`` as ``(actor, method, args)``."""

    def __init__(self, handle, name: str, log: list):
        self._handle, self._name, self._log = handle, name, log

    def __getattr__(self, method: str):
        return CountingMethod(getattr(self._handle, method), self._name, method, self._log)


class CountingMethod:
    def __init__(self, target, actor: str, method: str, log: list):
        self._target, self._actor, self._method, self._log = target, actor, method, log

    def options(self, **options):
        return CountingMethod(self._target.options(**options), self._actor, self._method, self._log)

    def remote(self, *args, **kwargs):
        self._log.append((self._actor, self._method, args))
        return self._target.remote(*args, **kwargs)


def count(run: Trainer, monkeypatch) -> tuple[list, list, list]:
    """Wraps the run's actors and ``Workers``' step methods (until ``monkeypatch.undo()``); returns the logs of
    actor calls, of waves (a ``Workers`` method that called actors, with how many calls) and of the values put."""
    calls, waves, puts = [], [], []
    workers = run.workers
    proxies: dict[int, CountingActor] = {}
    for role, handles in (("learner", workers.learners), ("rollout", workers.rollouts)):
        for index, handle in enumerate(handles):
            proxies.setdefault(id(handle), CountingActor(handle, f"{role} {index}", calls))
    monkeypatch.setattr(workers, "learners", [proxies[id(h)] for h in workers.learners])
    monkeypatch.setattr(workers, "rollouts", [proxies[id(h)] for h in workers.rollouts])
    for name in WAVES:
        method = getattr(workers, name)
        label = "generate" if name == "submit" else name  # submit: generate's requests sent now, gathered later

        def wave(*args, _method=method, _name=label, **kwargs):
            before = len(calls)
            try:
                return _method(*args, **kwargs)
            finally:
                if len(calls) > before:
                    waves.append((_name, len(calls) - before))

        monkeypatch.setattr(workers, name, wave)
    monkeypatch.setattr(run.sampler, "generate_fn", workers.generate)  # the sampler holds the method it was given
    real_put = ray.put

    def put(value, **kwargs):
        puts.append(type(value).__name__)
        return real_put(value, **kwargs)

    monkeypatch.setattr(placement.ray, "put", put)
    return calls, waves, puts


@pytest.mark.parametrize("overrides, most_waves", [
    ({}, 2),  # colocated, the tiny default: generate, then one update call (the engine samples with the module)
    # split, the KL in the reward (the driver needs both log-probs first) and a weight sync to the rollout actor
    ({"placement.mode": "split", "algorithm.kl_coef": 0.01, "algorithm.kl_in": "reward",
      "learner.epochs": 2}, 4),
])
def test_a_step_makes_at_most_four_round_trips_and_puts_its_batch_once(tiny_model_dir, ray_session, tmp_path,
                                                                       monkeypatch, overrides, most_waves):
    recipe = build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **{"learner.lr": 1e-3, "data.heldout": "null",
                                                                         **overrides}))
    with Trainer(recipe) as run:
        try:
            check_steps(run, monkeypatch, overrides, most_waves)
        finally:
            monkeypatch.undo()  # the real handles back, for the shutdown


def check_steps(run: Trainer, monkeypatch, overrides: dict, most_waves: int) -> None:
    """Two steps of ``run``, each counted."""
    calls, waves, puts = count(run, monkeypatch)
    for step in (1, 2):
        calls.clear(), waves.clear(), puts.clear()
        row = run.train_step(step)
        assert not row["train/skipped_no_signal"] and row["memory/peak_bytes"] > 0
        assert len(waves) <= most_waves, waves
        assert sum(count for _, count in waves) == len(calls)  # every actor call inside a counted wave
        assert [name for name, _ in waves][0] == "generate" and "peak_memory" not in dict(waves)
        per_actor = {}
        for actor, method, args in calls:
            per_actor.setdefault(actor, []).append(method)
            assert not any(isinstance(arg, RolloutBatch) for arg in args), f"{method} got the batch by value"
        assert all(len(methods) <= 4 for methods in per_actor.values()), per_actor
        assert puts == ["RolloutBatch"]  # the step batch, once
        if "algorithm.kl_in" in overrides:  # old and reference log-probs in one call, before the update
            assert [name for name, _ in waves] == ["generate", "logprobs", "update", "sync_weights"]
            assert row["time/old_logprob"] > 0 and row["time/ref"] > 0
            assert per_actor["learner 0"] == ["logprobs", "update", "weights"]
        else:
            assert [name for name, _ in waves] == ["generate", "update"]
