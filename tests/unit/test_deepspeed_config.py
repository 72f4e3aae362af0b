"""The DeepSpeed learner's recipe fields, how it shares out a mini-batch, and that nothing else imports it."""

import subprocess
import sys

import pytest
import torch

from rlvr.config import RecipeError, build_recipe
from rlvr.learner.deepspeed import _buckets, engine_config, plan_pieces, rank_pieces

DEEPSPEED = ["learner.backend=deepspeed"]


def test_defaults_and_accepted_values():
    learner = build_recipe({}, []).learner
    assert (learner.backend, learner.zero_stage, learner.num_ranks, learner.offload_optimizer) == ("torch", 2, 1, False)
    learner = build_recipe({}, [*DEEPSPEED, "learner.zero_stage=3", "learner.num_ranks=4",
                                "learner.offload_optimizer=true"]).learner
    assert (learner.zero_stage, learner.num_ranks, learner.offload_optimizer) == (3, 4, True)


@pytest.mark.parametrize("overrides, expected", [
    ([*DEEPSPEED, "learner.zero_stage=1"], "learner.zero_stage: Input should be 2 or 3 (got 1)"),
    ([*DEEPSPEED, "learner.num_ranks=0"], "learner.num_ranks: Input should be greater than or equal to 1 (got 0)"),
    ([*DEEPSPEED, "learner.offload_optimizer=maybe"], "learner.offload_optimizer: Input should be a valid boolean"),
    (["learner.backend=fsdp"], "learner.backend: unknown learner 'fsdp'; known: torch, deepspeed (got 'fsdp')"),
    (["learner.num_ranks=2"], "learner.num_ranks: 2 applies to learner.backend 'deepspeed' only"),
    (["learner.zero_stage=3"], "learner.zero_stage: 3 applies to learner.backend 'deepspeed' only"),
    (["learner.offload_optimizer=true"], "learner.offload_optimizer: True applies to learner.backend 'deepspeed'"),
    ([*DEEPSPEED, "algorithm.name=capo"], "learner.backend 'deepspeed' cannot train algorithm 'capo'"),
])
def test_bad_values_name_the_field_and_what_is_allowed(overrides, expected):
    with pytest.raises(RecipeError) as error:
        build_recipe({}, overrides)
    assert expected in str(error.value)


def test_engine_config_follows_the_recipe():
    learner = build_recipe({}, [*DEEPSPEED, "learner.zero_stage=3", "learner.offload_optimizer=true",
                                "learner.max_grad_norm=0.5", "learner.micro_batch_size=4"]).learner
    config = engine_config(learner, "bfloat16", cuda=False)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["gradient_clipping"] == 0.5 and config["train_micro_batch_size_per_gpu"] == 4
    assert config["bf16"]["enabled"] and not engine_config(learner, "float32", cuda=False)["bf16"]["enabled"]
    assert config["managed_gradient_accumulation"] is False  # engine.step() ends each mini-batch


@pytest.mark.parametrize("rows, ranks, micro", [(32, 2, 16), (32, 2, 64), (33, 2, 16), (5, 2, 1), (1, 4, 8),
                                                (100, 3, 7), (7, 7, 1)])
def test_pieces_cover_every_row_once_and_give_every_rank_as_many_passes(rows, ranks, micro):
    pieces = plan_pieces(rows, ranks, micro)
    assert sorted(r for piece in pieces for r in piece) == list(range(rows))
    assert all(len(piece) <= micro for piece in pieces) and pieces[0]
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    passes = [rank_pieces(pieces, rank, ranks) for rank in range(ranks)]
    assert len({len(p) for p in passes}) == 1  # collectives: every rank runs as many forwards
    counted = sorted(i for p in passes for i, counts in p if counts)
    assert counted == [i for i, piece in enumerate(pieces) if piece]  # each real piece trains exactly once
    assert all(i == 0 for p in passes for i, counts in p if not counts)  # stand-ins repeat piece 0, weightless


def test_the_step_batch_splits_evenly_over_two_ranks():
    assert plan_pieces(32, 2, 16) == [list(range(16)), list(range(16, 32))]
    assert plan_pieces(32, 2, 8) == [list(range(i, i + 8)) for i in range(0, 32, 8)]


def test_buckets_hold_tied_tensors_once_and_stay_near_the_limit():
    shared = torch.zeros(256)  # 1 KiB
    state = {"embed.weight": shared, "a": torch.zeros(256), "lm_head.weight": shared, "b": torch.zeros(512)}
    buckets = _buckets(state, limit=1024)
    assert [[names for names, _ in bucket] for bucket in buckets] == [[["embed.weight", "lm_head.weight"]], [["a"]],
                                                                       [["b"]]]
    assert len(_buckets(state, limit=10**9)) == 1


def test_importing_rlvr_and_the_torch_learner_never_imports_deepspeed():
    code = ("import sys, rlvr, rlvr.trainer, rlvr.learner.torch, rlvr.learner.deepspeed, rlvr.workers.placement; "
            "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
