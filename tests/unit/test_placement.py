"""GPU placement without GPUs: the rollout fields and their cross-checks, the placement plan (bundles, which actor
sits where, the weight-sync road, not enough GPUs), the vLLM engine options, the engine methods a rollout actor
forwards, and the checks that stop a vLLM run on a machine without vLLM or CUDA before any work. The GPU paths
themselves run in tests/gpu/test_vllm_training_gpu.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rlvr.config import RecipeError, build_recipe
from rlvr.workers import placement
from rlvr.rollout.vllm import recipe_options
from rlvr.workers.actors import EngineMethods, LearnerActor, RolloutActor
from rlvr.workers.plan import GPU_BUNDLE, PlacementError, plan_placement
from rlvr.workers.sync import ENGINE_METHODS

VLLM = ["rollout.engine=vllm", "learner.backend=deepspeed"]
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def vllm_recipe(*overrides: str):
    return build_recipe({}, [*VLLM, *overrides])


# ---- the recipe fields ----


def test_rollout_and_placement_defaults():
    recipe = build_recipe({}, [])
    rollout = recipe.rollout
    assert (rollout.num_workers, rollout.tensor_parallel_size, rollout.gpu_memory_utilization, rollout.enforce_eager,
            rollout.max_model_len, rollout.enable_prefix_caching) == (1, 1, 0.5, False, None, True)
    assert recipe.placement.sync_bucket_mb == 512
    recipe = vllm_recipe("learner.num_ranks=4", "placement.mode=split", "rollout.num_workers=2",
                         "rollout.tensor_parallel_size=2", "rollout.gpu_memory_utilization=0.9",
                         "rollout.max_model_len=4096", "placement.sync_bucket_mb=128")
    assert recipe.rollout.engine == "vllm" and recipe.rollout.tensor_parallel_size == 2
    assert recipe.placement.sync_bucket_mb == 128


@pytest.mark.parametrize("overrides, expected", [
    ([*VLLM, "rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size: 2 needs placement.mode split"),
    (["rollout.num_workers=2"], "rollout.num_workers: 2 applies to placement.mode split"),
    (["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size: 2 applies to rollout.engine 'vllm' only"),
    (["rollout.engine=sglang"], "rollout.engine: unknown rollout engine 'sglang'; known: hf, vllm (got 'sglang')"),
    ([*VLLM, "rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization: Input should be less than or"),
    ([*VLLM, "rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size: Input should be greater than or"),
    (["placement.sync_bucket_mb=0"], "placement.sync_bucket_mb: Input should be greater than 0"),
])
def test_rollout_cross_checks_name_the_field_and_the_fix(overrides, expected):
    with pytest.raises(RecipeError) as error:
        build_recipe({}, overrides)
    assert expected in str(error.value)


def test_vllm_recipes_validate_without_vllm_or_gpus(monkeypatch):
    """A recipe for a GPU cluster loads anywhere; what the run needs is checked when it starts."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_recipe("learner.num_ranks=8").rollout.engine == "vllm"


# ---- the plan ----


def test_colocated_vllm_on_one_node_is_one_bundle_per_rank():
    plan = plan_placement(vllm_recipe("learner.num_ranks=8"), [8])
    assert plan.gpu and plan.road == "ipc" and plan.num_engines == 8
    assert [(g.name, g.strategy) for g in plan.groups] == [("learner", "PACK")]
    assert plan.num_bundles == plan.num_gpus == 8 and plan.groups[0].bundles[0] == GPU_BUNDLE
    where = plan.assignment()
    assert [where[f"learner rank {r}"] for r in range(8)] == [("learner", r) for r in range(8)]
    assert [where[f"rollout engine {k}"] for k in range(8)] == [("learner", k) for k in range(8)]  # in the ranks


def test_split_vllm_gives_each_engine_a_group_on_one_node():
    plan = plan_placement(vllm_recipe("learner.num_ranks=4", "placement.mode=split", "rollout.num_workers=2",
                                      "rollout.tensor_parallel_size=2"), [8])
    assert plan.road == "nccl" and plan.num_bundles == plan.num_gpus == 8
    assert [(g.name, len(g.bundles), g.strategy) for g in plan.groups] == [
        ("learner", 4, "PACK"), ("rollout engine 0", 2, "STRICT_PACK"), ("rollout engine 1", 2, "STRICT_PACK")]
    where = plan.assignment()
    assert where["learner rank 3"] == ("learner", 3)
    assert where["rollout engine 0"] == ("rollout engine 0", 0) and where["rollout engine 1"] == ("rollout engine 1", 0)
    assert plan.engine_group(1) == 2


def test_two_nodes_hold_a_sixteen_rank_group():
    recipe = vllm_recipe("learner.num_ranks=16", "learner.zero_stage=3")
    plan = plan_placement(recipe, [8, 8])
    assert plan.num_gpus == 16 and len(plan.groups) == 1 and plan.groups[0].strategy == "PACK"


def test_gpu_vllm_needs_the_deepspeed_learner():
    with pytest.raises(PlacementError, match="'vllm' on GPUs trains with a learner on GPUs: the torch learner is one CPU process.*set learner.backend=deepspeed"):
        plan_placement(build_recipe({}, ["rollout.engine=vllm"]), [8])


@pytest.mark.parametrize("overrides, road, engines", [
    ([], "in_actor", 1),  # the torch learner's actor holds the engine and feeds it after each update
    (["placement.mode=split", "rollout.num_workers=2"], "object_store", 2),
    (["learner.backend=deepspeed", "learner.num_ranks=2"], "in_actor", 1),  # rank 0's engine only
])
def test_vllm_cpu_build_is_placed_like_the_hf_engine_on_cpus(overrides, road, engines):
    plan = plan_placement(build_recipe({}, ["rollout.engine=vllm", *overrides]), [0], engine_build="cpu")
    assert (plan.gpu, plan.road, plan.num_engines, plan.groups) == (False, road, engines, ())
    with pytest.raises(PlacementError, match="CPU build runs one engine per actor"):
        plan_placement(build_recipe({}, ["rollout.engine=vllm", "placement.mode=split",
                                         "rollout.tensor_parallel_size=2"]), [0], engine_build="cpu")


@pytest.mark.parametrize("overrides, nodes, expected", [
    (["learner.num_ranks=4", "placement.mode=split", "rollout.num_workers=2", "rollout.tensor_parallel_size=2"],
     [4], "placement needs 8 GPUs (learner: 4 rank(s) x 1 GPU; rollout: 2 engine(s) x tensor_parallel_size 2) but "
          "the Ray cluster has 4 (GPUs per node: 4)"),
    (["learner.num_ranks=16"], [8], "placement needs 16 GPUs (learner: 16 rank(s) x 1 GPU) but the Ray cluster has 8"),
    (["placement.mode=split", "rollout.tensor_parallel_size=8"], [4, 4, 4],
     "rollout.tensor_parallel_size 8 is more than the 4 GPUs of the largest node (GPUs per node: 4, 4, 4)"),
    ([], [0], "rollout.engine 'vllm' runs on CUDA GPUs and the Ray cluster has none (nodes: 1)"),
])
def test_a_run_that_does_not_fit_names_the_numbers(overrides, nodes, expected):
    with pytest.raises(PlacementError) as error:
        plan_placement(vllm_recipe(*overrides), nodes)
    assert expected in str(error.value)


@pytest.mark.parametrize("overrides, nodes, gpu, road", [
    ([], [0], False, "none"),  # the tiny default: torch learner, HF engine, one actor
    (["placement.mode=split"], [0], False, "object_store"),
    (["placement.mode=split", "rollout.num_workers=3"], [8], False, "object_store"),  # the torch learner is a CPU's
    (["learner.backend=deepspeed", "learner.num_ranks=2"], [1], False, "none"),  # fewer GPUs than ranks: gloo
    (["learner.backend=deepspeed", "learner.num_ranks=2"], [2], True, "none"),  # ranks on GPUs, HF in rank 0
    (["learner.backend=deepspeed", "learner.num_ranks=2", "placement.mode=split"], [2], True, "object_store"),
    ([*VLLM], [1], True, "ipc"),
    ([*VLLM, "placement.mode=split"], [2], True, "nccl"),
])
def test_where_actors_go_and_how_weights_travel(overrides, nodes, gpu, road):
    plan = plan_placement(build_recipe({}, overrides), nodes)
    assert (plan.gpu, plan.road) == (gpu, road)
    if not gpu:
        assert plan.groups == () and plan.assignment() == {}
    else:  # the HF engine's own copy stays on a CPU: only vLLM engines get GPU bundles
        assert plan.num_gpus == plan.learner_ranks + (plan.num_engines if road == "nccl" else 0)


# ---- the actors ----


def test_vllm_options_follow_the_recipe_and_placement():
    recipe = vllm_recipe("learner.num_ranks=2", "rollout.gpu_memory_utilization=0.4", "rollout.max_model_len=2048",
                         "model.dtype=bfloat16", "trainer.seed=3")
    options = recipe_options(recipe, "ipc", colocated=True, index=1)
    assert options == {
        "dtype": "bfloat16", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.4, "max_model_len": 2048,
        "seed": 4, "enable_sleep_mode": True, "enforce_eager": False, "enable_prefix_caching": True,
        "weight_transfer": "ipc", "kv_cache_gb": None, "trust_remote_code": False,
        "distributed_executor_backend": "uni"}
    split = recipe_options(vllm_recipe("placement.mode=split", "rollout.tensor_parallel_size=4"), "nccl", colocated=False)
    assert split["distributed_executor_backend"] == "ray" and split["tensor_parallel_size"] == 4
    assert not split["enable_sleep_mode"] and split["weight_transfer"] == "nccl"


class RecordingEngine:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args)) or name


def test_rollout_actor_forwards_what_a_weight_sync_calls():
    cls = RolloutActor.__ray_actor_class__
    assert all(callable(getattr(cls, method, None)) for method in ENGINE_METHODS)
    holder = EngineMethods()
    holder.engine = RecordingEngine()
    assert holder.weight_sync_info() == "weight_sync_info"
    holder.init_weight_transfer_engine({"packed": True})
    holder.start_weight_update()
    assert holder.update_weights({"names": []}) == "update_weights"
    holder.finish_weight_update("v1")
    holder.shutdown_weight_transfer_engine()
    assert holder.engine.calls == [("weight_sync_info",), ("init_weight_transfer_engine", {"packed": True}),
                                   ("start_weight_update",), ("update_weights", {"names": []}),
                                   ("finish_weight_update", "v1"), ("shutdown_weight_transfer_engine",)]
    ranks = LearnerActor.__ray_actor_class__
    assert callable(ranks.setup_weight_sync) and callable(ranks.sync_weights)


# ---- before any work ----


def with_vllm_build(monkeypatch, build):
    import rlvr.rollout.vllm

    monkeypatch.setattr(rlvr.rollout.vllm, "installed_build", lambda: build)


def without_vllm(monkeypatch):
    with_vllm_build(monkeypatch, None)


def test_a_vllm_run_needs_the_package(monkeypatch):
    without_vllm(monkeypatch)
    placement.check_environment(build_recipe({}, []))  # nothing needed for the HF engine
    with pytest.raises(PlacementError, match=r"needs the vLLM package.*pip install -e '\.\[gpu\]'"):
        placement.check_environment(vllm_recipe())


def test_a_vllm_run_needs_cuda_here_unless_the_cluster_is_elsewhere(monkeypatch):
    with_vllm_build(monkeypatch, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RLVR_RAY_ADDRESS", raising=False)
    with pytest.raises(PlacementError, match="runs on CUDA GPUs with this vLLM build and torch sees none"):
        placement.check_environment(vllm_recipe())
    placement.check_environment(vllm_recipe("placement.ray_address=auto"))  # counted on the cluster instead
    monkeypatch.setenv("RLVR_RAY_ADDRESS", "auto")
    placement.check_environment(vllm_recipe())
    monkeypatch.delenv("RLVR_RAY_ADDRESS")
    with_vllm_build(monkeypatch, "cpu")  # vLLM's CPU build needs no GPU
    placement.check_environment(vllm_recipe())


def test_training_a_vllm_recipe_on_a_cpu_stops_before_any_work(monkeypatch, tmp_path, capsys):
    from rlvr.cli import main

    without_vllm(monkeypatch)
    out = tmp_path / "run"
    code = main(["train", str(RECIPES / "qwen2.5-0.5b-instruct/grpo-gsm8k.yaml"), f"trainer.output_dir={out}"])
    assert code == 2 and "rlvr: rollout.engine 'vllm' needs the vLLM package" in capsys.readouterr().err
    assert not out.exists()  # no run directory: nothing was read, loaded or started
