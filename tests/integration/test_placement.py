"""Placement on real Ray actors, on a CPU: placement groups reserved, used and refused (with CPU bundles standing in
for GPU ones), several rollout workers in split placement, and the learner's weights as a GPU sync reads them
(every tensor whole, in the order its specs announce), here from a ZeRO-3 group partitioned over two ranks."""

from __future__ import annotations

import pytest
import ray
import torch

from rlvr.config import build_recipe
from rlvr.models.loading import load_model
from rlvr.trainer import Trainer
from rlvr.workers.placement import Workers, _bundle, _remove, reserve
from rlvr.workers.plan import GroupPlan, PlacementError, PlacementPlan
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` leaves them out


def cpu_plan(*groups: GroupPlan) -> PlacementPlan:
    return PlacementPlan(gpu=True, colocated=False, engine="vllm", engine_gpus=True, learner_ranks=1, num_engines=1,
                         tensor_parallel_size=1, groups=groups)


class Probe:
    def group(self) -> str:
        return ray.util.get_current_placement_group().id.hex()


def test_reserved_groups_hold_their_actors_and_an_impossible_one_is_refused(ray_session):
    groups = reserve(cpu_plan(GroupPlan("learner", ({"CPU": 0.25}, {"CPU": 0.25}), "PACK")), timeout_s=60)
    try:
        probe = ray.remote(Probe).options(num_cpus=0.25, **_bundle(groups[0], 1)).remote()
        assert ray.get(probe.group.remote()) == groups[0].id.hex()
    finally:
        _remove(groups)
    with pytest.raises(PlacementError, match=r"could not reserve the rollout engine 0's .* on one node within 1 s"):
        reserve(cpu_plan(GroupPlan("rollout engine 0", ({"CPU": 1024},), "STRICT_PACK")), timeout_s=1)


def test_split_rollout_workers_share_the_requests_and_all_get_the_weights(tiny_model_dir, ray_session, tmp_path):
    overrides = {"placement.mode": "split", "rollout.num_workers": 2, "learner.lr": 1e-3, "data.heldout": "null"}
    with Trainer(build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **overrides))) as run:
        assert len(run.workers.rollouts) == 2 and run.workers.road == "object_store"
        row = run.train_step(1)
        assert row["rollout/num_rows"] == 32 and row["sync/bytes"] > 0
        trained = ray.get(run.workers.learner.learner_digest.remote())
        assert ray.get([worker.weights_digest.remote() for worker in run.workers.rollouts]) == [trained, trained]


def _device_weights(actor) -> tuple[list, list[tuple[str, torch.Tensor]]]:
    """What :meth:`LearnerRankActor.sync_weights` hands a GPU sync, materialised (run on every rank at once)."""
    specs, tensors = actor.learner.device_weights()
    return specs, [(name, tensor.clone()) for name, tensor in tensors]


def test_zero3_device_weights_are_whole_and_in_spec_order(tiny_model_dir, ray_session, tmp_path):
    overrides = {"learner.backend": "deepspeed", "learner.num_ranks": 2, "learner.zero_stage": 3,
                 "placement.mode": "split"}
    workers = Workers.create(build_recipe({}, tiny_overrides(tiny_model_dir, tmp_path, **overrides)), tiny_model_dir)
    try:
        results = ray.get([learner.__ray_call__.remote(_device_weights) for learner in workers.learners])
    finally:
        workers.shutdown()
    expected = load_model(tiny_model_dir).state_dict()
    for specs, tensors in results:  # every rank gathers the same whole tensors
        assert [spec.name for spec in specs] == [name for name, _ in tensors]
        assert sorted(name for name, _ in tensors) == sorted(expected)
        for spec, (name, tensor) in zip(specs, tensors):
            assert (spec.dtype, spec.shape) == (tensor.dtype, tuple(tensor.shape)), name
            assert torch.equal(tensor, expected[name]), name
