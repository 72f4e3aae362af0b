"""Weight sync's pure pieces, on CPU without vLLM: specs and byte counts, vLLM's two bucket rules, the wire metadata,
the NCCL rank layout, the rendezvous port checks, the engine checks, the fan-out client (local and Ray actors), the
round source, the object-store road, and that rlvr.workers.sync imports without vLLM. The GPU roads run in
tests/gpu/test_weight_sync_gpu.py."""

from __future__ import annotations

import importlib
import socket
import sys
import threading

import numpy as np
import pytest
import torch

from rlvr.transfer.specs import (
    MIB,
    TensorSpec,
    bucket_bytes,
    check_alignment,
    ipc_buckets,
    ipc_capacity,
    nccl_buckets,
    specs_from_wire,
    tensor_spec,
    total_bytes,
    wire_metadata,
)
from rlvr.rollout import registry as engines
from rlvr.workers import sync
from rlvr.workers.sync import (
    CudaIpcSync,
    EngineGroup,
    NCCLBroadcastSync,
    RoundSource,
    check_engines,
    check_port_free,
    engine_rank_offsets,
    free_port,
)


def specs_of(*sizes: int) -> list[TensorSpec]:
    """fp32 vectors of the given byte sizes (multiples of 4), named w0, w1, ..."""
    return [TensorSpec(f"w{i}", torch.float32, (size // 4,)) for i, size in enumerate(sizes)]


def names(buckets: list[list[TensorSpec]]) -> list[list[str]]:
    return [[spec.name for spec in bucket] for bucket in buckets]


# ---- imports ----


def test_sync_imports_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails, installed or not
    monkeypatch.delitem(sys.modules, "rlvr.workers.sync", raising=False)
    module = importlib.import_module("rlvr.workers.sync")
    assert module.NCCLBroadcastSync and module.CudaIpcSync


def test_gpu_roads_refuse_to_start_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", None)  # the CUDA check comes before any vLLM import
    for road in (NCCLBroadcastSync([object()]), CudaIpcSync([object()])):
        with pytest.raises(RuntimeError, match="no CUDA device.*Ray object store"):
            road.setup()
        with pytest.raises(RuntimeError, match=r"send\(\) before setup\(\)"):
            road.send([])


# ---- which road ----


@pytest.mark.parametrize("engine, colocated, cuda, road", [
    ("hf", True, False, "none"), ("hf", False, False, "object_store"), ("hf", False, True, "object_store"),
    ("hf", True, True, "none"),  # a GPU learner's own module (ZeRO-2)
    ("vllm", True, True, "ipc"), ("vllm", False, True, "nccl"),
    ("vllm", True, False, "in_actor"), ("vllm", False, False, "object_store"),  # vLLM's CPU build
])
def test_each_engine_says_how_weights_reach_it(engine, colocated, cuda, road):
    assert engines.get(engine).road(colocated, on_gpus=cuda) == road


def test_unknown_engines_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'; known: hf, vllm"):
        engines.get("sglang")


# ---- specs and bytes ----


def test_specs_keep_dtype_and_count_bytes():
    tensors = {"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5), "c": torch.zeros(2, 0),
               "d": torch.tensor(1, dtype=torch.int64)}
    specs = [tensor_spec(name, tensor) for name, tensor in tensors.items()]
    assert specs[0] == TensorSpec("a", torch.bfloat16, (3, 4))  # bf16 stays bf16
    assert [spec.nbytes for spec in specs] == [24, 20, 0, 8] == [t.nbytes for t in tensors.values()]
    assert total_bytes(specs) == 52


def test_bucket_mb_in_bytes():
    assert bucket_bytes(512) == 512 << 20 and bucket_bytes(0.25) == 1 << 18
    with pytest.raises(ValueError, match="positive"):
        bucket_bytes(0)


# ---- buckets: vLLM's rules ----


def test_nccl_buckets_close_once_past_the_limit():
    # packed_tensor.py: pack_tensors takes tensors until the bucket holds more than the limit.
    assert names(nccl_buckets(specs_of(16, 16, 16, 16, 16), 32)) == [["w0", "w1", "w2"], ["w3", "w4"]]
    assert names(nccl_buckets(specs_of(16, 16), 32)) == [["w0", "w1"]]  # exactly at the limit: still open
    # A tensor larger than the limit closes the bucket it joins; the next starts afresh.
    assert names(nccl_buckets(specs_of(8, 100, 8, 8), 32)) == [["w0", "w1"], ["w2", "w3"]]
    assert names(nccl_buckets(specs_of(100, 8), 32)) == [["w0"], ["w1"]]
    assert nccl_buckets([], 32) == []


def test_ipc_buckets_stay_within_the_buffer():
    # packed_tensor.py: packed_ipc_producer closes a bucket before the tensor that would overflow it.
    assert names(ipc_buckets(specs_of(16, 16, 16, 16, 16), 32)) == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert names(ipc_buckets(specs_of(8, 32, 8), 32)) == [["w0"], ["w1"], ["w2"]]
    with pytest.raises(ValueError, match="w1.*raise bucket_mb"):
        ipc_buckets(specs_of(8, 100), 32)


@pytest.mark.parametrize("seed", range(5))
def test_bucket_rules_keep_order_and_bounds(seed):
    rng = np.random.default_rng(seed)
    specs = specs_of(*(4 * int(n) for n in rng.integers(0, 40, size=60)))
    limit = 64
    for rule in (nccl_buckets, ipc_buckets):
        capacity = ipc_capacity(specs, limit) if rule is ipc_buckets else limit
        buckets = rule(specs, capacity)
        assert [spec for bucket in buckets for spec in bucket] == specs  # every tensor once, in order
        assert all(bucket for bucket in buckets)
    for bucket in nccl_buckets(specs, limit):  # over the limit by less than the last tensor
        assert total_bytes(bucket[:-1]) <= limit
    for bucket in ipc_buckets(specs, ipc_capacity(specs, limit)):
        assert total_bytes(bucket) <= ipc_capacity(specs, limit)


def test_ipc_capacity_grows_to_the_largest_tensor():
    assert ipc_capacity(specs_of(8, 16), 32) == 32
    assert ipc_capacity(specs_of(8, 100, 16), 32) == 100
    assert names(ipc_buckets(specs_of(8, 100, 16), ipc_capacity(specs_of(8, 100, 16), 32))) == [["w0"], ["w1"],
                                                                                                  ["w2"]]


def test_check_alignment_refuses_what_vllm_cannot_unpack():
    odd16 = TensorSpec("odd", torch.bfloat16, (3,))  # 6 bytes
    fp32 = TensorSpec("wide", torch.float32, (2,))
    check_alignment([[fp32, odd16, odd16]])  # wider first: every offset fits
    check_alignment([[odd16], [fp32]])  # each bucket starts at byte 0
    with pytest.raises(ValueError, match=r"'wide' \(float32\) would start at byte 6 of its bucket, not a multiple"):
        check_alignment([[odd16, fp32]])


# ---- wire metadata ----


def test_wire_metadata_is_vllms_update_info_and_round_trips():
    specs = [TensorSpec("model.embed_tokens.weight", torch.bfloat16, (10, 4)),
             TensorSpec("model.norm.weight", torch.float32, (4,)), TensorSpec("step", torch.int64, ())]
    wire = wire_metadata(specs)
    assert wire == {"names": ["model.embed_tokens.weight", "model.norm.weight", "step"],
                    "dtype_names": ["bfloat16", "float32", "int64"], "shapes": [[10, 4], [4], []]}
    assert specs_from_wire(wire) == specs
    # IPC payloads carry more keys; msgpack may hand shapes back as lists of lists.
    assert specs_from_wire({**wire, "ipc_handles": {"uuid": ()}, "tensor_sizes": [80, 16, 8]}) == specs


@pytest.mark.parametrize("change, message", [
    ({"dtype_names": ["bfloat16"]}, "parallel lists"),
    ({"dtype_names": ["bfloat16", "Tensor"]}, "unknown dtype 'Tensor'"),
    ({"shapes": [[2], [-1]]}, "bad shape"),
])
def test_specs_from_wire_refuses_bad_metadata(change, message):
    wire = {**wire_metadata(specs_of(8, 8)), **change}
    with pytest.raises(ValueError, match=message):
        specs_from_wire(wire)
    with pytest.raises(ValueError, match="lacks 'shapes'"):
        specs_from_wire({"names": [], "dtype_names": []})


# ---- NCCL group layout and rendezvous ----


def test_engine_rank_offsets_follow_the_sender():
    # Two TP=1 engines and one TP=4 engine: ranks 0 (learner), 1, 2, 3..6 (world size 7).
    assert engine_rank_offsets([1, 1, 4]) == [1, 2, 3]
    assert engine_rank_offsets([2, 2]) == [1, 3]
    with pytest.raises(ValueError, match="at least one worker"):
        engine_rank_offsets([1, 0])


def test_free_port_is_free_and_a_busy_port_is_refused():
    port = free_port("127.0.0.1")
    check_port_free("127.0.0.1", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match=f"port {busy.getsockname()[1]} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", busy.getsockname()[1])


def foreign_address() -> str:
    """A documentation-range address (RFC 5737) that this machine cannot bind."""
    for address in ("203.0.113.77", "198.51.100.77", "192.0.2.77"):
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                return address
    pytest.skip("every documentation-range address is local here")


def test_rendezvous_needs_a_local_address_and_a_real_port():
    with pytest.raises(ValueError, match="not a TCP port"):
        check_port_free("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="address of the learner's machine"):
        check_port_free(foreign_address(), free_port("127.0.0.1"))


# ---- engine checks ----


def info(backend="nccl", *uuids, world_size=None):
    return {"backend": backend, "world_size": world_size or len(uuids), "device_uuids": list(uuids)}


def test_check_engines_nccl_needs_one_gpu_per_rank():
    check_engines("nccl", "GPU-0", [info("nccl", "GPU-1"), info("nccl", "GPU-2", "GPU-3")])
    with pytest.raises(ValueError, match="engine 0 worker 0 shares GPU GPU-0 with the learner.*CudaIpcSync"):
        check_engines("nccl", "GPU-0", [info("nccl", "GPU-0")])
    with pytest.raises(ValueError, match="engine 1 worker 1 shares GPU GPU-1 with engine 0 worker 0"):
        check_engines("nccl", "GPU-0", [info("nccl", "GPU-1"), info("nccl", "GPU-2", "GPU-1")])


def test_check_engines_ipc_needs_the_senders_gpu():
    check_engines("ipc", "GPU-0", [info("ipc", "GPU-0")])
    with pytest.raises(ValueError, match="engine 0 runs on GPU GPU-1.*NCCLBroadcastSync"):
        check_engines("ipc", "GPU-0", [info("ipc", "GPU-1")])
    check_engines("ipc", "GPU-0", [info("ipc", "GPU-0", "GPU-1")], single_sender=False)  # other ranks add theirs


def test_check_engines_refuses_another_backend():
    with pytest.raises(ValueError, match=r"engine 1 was built with weight_transfer=None.*weight_transfer='nccl'"):
        check_engines("nccl", "GPU-0", [info("nccl", "GPU-1"), info(None, "GPU-2")])
    with pytest.raises(ValueError, match="unknown weight-transfer backend"):
        check_engines("rdma", "GPU-0", [])


# ---- the fan-out client ----


class RecordingEngine:
    """An engine with VLLMEngine's weight-sync methods that records its calls; ``barrier``, when given, makes
    every NCCL-like call wait for all engines (a sequential fan-out would time out)."""

    def __init__(self, barrier: threading.Barrier | None = None):
        self.calls: list[tuple] = []
        self.barrier = barrier
        self.arrays = None

    def _wait(self):
        if self.barrier is not None:
            self.barrier.wait(timeout=10)

    def weight_sync_info(self):
        return info("nccl", "GPU-x")

    def init_weight_transfer_engine(self, init_info):
        self._wait()
        self.calls.append(("init", init_info))

    def start_weight_update(self):
        self.calls.append(("start",))

    def update_weights(self, update_info):
        self._wait()
        self.calls.append(("update", update_info))
        return total_bytes(specs_from_wire(update_info))

    def finish_weight_update(self, weight_version=None):
        self.calls.append(("finish", weight_version))

    def shutdown_weight_transfer_engine(self):
        self.calls.append(("shutdown",))

    def load_weights(self, arrays):
        self.arrays = arrays


def test_engines_have_every_method_a_sync_calls():
    from rlvr.rollout.vllm import VLLMEngine

    assert all(callable(getattr(VLLMEngine, method, None)) for method in sync.ENGINE_METHODS)
    # vLLM's client protocol (distributed/weight_transfer/base.py: VLLMWeightSyncClient), which EngineGroup is too.
    for method in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        assert callable(getattr(VLLMEngine, method)) and callable(getattr(EngineGroup, method))


def test_engine_group_gives_each_engine_its_nccl_ranks_at_once():
    barrier = threading.Barrier(3)
    engines = [RecordingEngine(barrier) for _ in range(3)]
    group = EngineGroup(engines)
    group.rank_offsets = engine_rank_offsets([1, 2, 1])
    # What vLLM's NCCLTrainerWeightTransferEngine.trainer_init sends: one worker init info, rank_offset 1.
    init_info = {"master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 1, "world_size": 5,
                 "packed": True, "packed_buffer_size_bytes": 1 << 20, "packed_num_buffers": 2}
    group.init_weight_transfer_engine(init_info)
    assert [engine.calls[0][1]["rank_offset"] for engine in engines] == [1, 2, 4]
    assert all({**engine.calls[0][1], "rank_offset": 1} == init_info for engine in engines)
    group.start_weight_update()
    update_info = wire_metadata(specs_of(8, 16))
    group.update_weights(update_info)
    assert group.call("update_weights", update_info) == [24, 24, 24]
    group.finish_weight_update()
    assert all([call[0] for call in engine.calls] == ["init", "start", "update", "update", "finish"]
               for engine in engines)


def test_engine_group_passes_ipc_init_info_unchanged():
    engine = RecordingEngine()
    group = EngineGroup([engine])
    group.rank_offsets = [1]
    group.init_weight_transfer_engine({"packed": True})
    assert engine.calls == [("init", {"packed": True})]


def test_engine_group_calls_ray_actors(ray_session):
    ray = ray_session
    actors = [ray.remote(RecordingEngine).remote() for _ in range(2)]
    group = EngineGroup([*actors, RecordingEngine()])  # actors and a local engine together
    group.rank_offsets = engine_rank_offsets([1, 1, 1])
    group.init_weight_transfer_engine({"rank_offset": 1, "world_size": 4})
    assert group.call("update_weights", wire_metadata(specs_of(4))) == [4, 4, 4]
    offsets = [ray.get(actor.__ray_call__.remote(lambda self: self.calls[0][1]["rank_offset"])) for actor in actors]
    assert offsets == [1, 2] and group.engines[2].calls[0][1]["rank_offset"] == 3


# ---- the round source ----


def test_round_source_refuses_cpu_tensors_before_the_round():
    source = RoundSource()
    with pytest.raises(ValueError, match="weight 'w' is on cpu.*Ray object store"):
        source.load([("w", torch.zeros(2))])


def test_round_source_yields_once_and_counts_bytes(monkeypatch):
    monkeypatch.setattr(sync, "_check_cuda", lambda name, tensor: None)  # CPU tensors stand in for CUDA ones
    weight = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.bfloat16))
    source = RoundSource()
    specs = source.load([("a", weight), ("b", torch.zeros(4))])
    assert source.metadata() == specs == [TensorSpec("a", torch.bfloat16, (3, 2)), TensorSpec("b", torch.float32, (4,))]
    pairs = list(source)
    assert [name for name, _ in pairs] == ["a", "b"] and not pairs[0][1].requires_grad
    assert pairs[0][1].dtype == torch.bfloat16 and source.sent_bytes == 12 + 16
    with pytest.raises(RuntimeError, match="load"):
        list(source)


def test_round_source_takes_a_generator_with_its_specs(monkeypatch):
    monkeypatch.setattr(sync, "_check_cuda", lambda name, tensor: None)
    gathered = []

    def gather():  # a ZeRO-3 style gather: one full tensor at a time
        for i in range(3):
            gathered.append(i)
            yield f"w{i}", torch.zeros(2)

    source = RoundSource()
    source.load(gather(), specs=[TensorSpec(f"w{i}", torch.float32, (2,)) for i in range(3)])
    assert gathered == [] and len(source.metadata()) == 3  # nothing gathered before the round
    assert [name for name, _ in source] == ["w0", "w1", "w2"] and source.sent_bytes == 24


# ---- a send, up to vLLM's trainer engine ----


class FakeTrainer:
    """What a send sees of vLLM's trainer engine: ``send_weights`` reads the source as NCCL's does (metadata, then
    one checked iteration; nccl_engine.py: send_weights, _checked_iter)."""

    def __init__(self, source):
        self.source, self.rounds, self.packed_buffer_size_bytes = source, [], 0

    def send_weights(self):
        meta = self.source.metadata()
        pairs = list(self.source)
        assert [(n, t.dtype, tuple(t.shape)) for n, t in pairs] == [(m.name, m.dtype, m.shape) for m in meta]
        self.rounds.append([name for name, _ in pairs])


@pytest.mark.parametrize("road_class", [NCCLBroadcastSync, CudaIpcSync])
def test_send_plans_checks_and_counts_before_vllm_sends(monkeypatch, road_class):
    monkeypatch.setattr(sync, "_check_cuda", lambda name, tensor: None)
    road = road_class([RecordingEngine()], bucket_mb=32 / MIB)
    road._trainer = trainer = FakeTrainer(road.source)
    state = {"a": torch.zeros(16), "b": torch.zeros(4, dtype=torch.bfloat16), "c": torch.zeros(3)}
    assert road.send(state.items()) == 64 + 8 + 12
    assert trainer.rounds == [["a", "b", "c"]]
    assert road.buckets == 2  # [a], [b, c] under both rules
    if road_class is CudaIpcSync:
        assert trainer.packed_buffer_size_bytes == 64  # grown to the largest tensor
    with pytest.raises(ValueError, match=r"'c' \(float32\) would start at byte 2"):
        road.send([("b", torch.zeros(1, dtype=torch.bfloat16)), ("c", torch.zeros(1))])
    assert len(trainer.rounds) == 1  # refused before the round began


# ---- the engine's side, without vLLM ----


def test_engine_refuses_unknown_weight_transfer_backends(monkeypatch):
    from rlvr.rollout.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match=r"weight_transfer='rdma'.*\('nccl', 'ipc'\)"):
        VLLMEngine("tiny", weight_transfer="rdma")
    with pytest.raises(ValueError, match="weight_transfer_config"):
        VLLMEngine("tiny", weight_transfer_config={"backend": "nccl"})
