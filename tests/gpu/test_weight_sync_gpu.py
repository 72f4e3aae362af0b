"""GPU weight sync into a real vLLM engine, through vLLM 0.32's own trainer engines (rlvr.workers.sync).

The learner is this test process: the warm-started tiny model (a Hugging Face ``LlamaForCausalLM``, fp32) on a GPU;
the engine's worker is vLLM's engine-core process. Each road must change the engine's greedy output to the
perturbed learner's (checked against the Hugging Face engine on the learner itself) and back, report the model's
bytes, and print its time (``-s`` shows it).

- CUDA IPC (colocated): learner and engine on GPU 0, several buckets; a bf16 learner into the fp32 engine; a sync
  while the engine sleeps (the colocated order: train, sync, wake).
- NCCL (split): the learner on GPU 1, the engine on GPU 0. NCCL refuses a group with two ranks on one GPU
  ("Duplicate GPU detected", NCCL >= 2.5), so the broadcast needs two GPUs; on one, the test that the sync refuses
  such a layout up front still runs.

The first tests use vLLM but no GPU (they run where tests/gpu runs): vLLM's own packing against
:func:`rlvr.transfer.specs.nccl_buckets` and :func:`~rlvr.transfer.specs.check_alignment`, its update-info classes
against our metadata.
Run on a GPU machine with the ``gpu`` extra: ``python -m pytest -q -s tests/gpu/test_weight_sync_gpu.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time

import pytest
import torch

from rlvr.data.tasks import arithmetic
from rlvr.models.loading import load_model, load_tokenizer
from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.hf import HFEngine
from rlvr.transfer.specs import TensorSpec, check_alignment, ipc_buckets, ipc_capacity, nccl_buckets, tensor_spec, wire_metadata
from rlvr.workers.sync import CudaIpcSync, NCCLBroadcastSync

pytest.importorskip("vllm")

GREEDY = SamplingParams(24, temperature=0.0, seed=0)
BUCKET_MB = 0.25  # the tiny model is 3.4 MB in fp32: about a dozen buckets
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: two GPUs")


def test_bucket_plan_is_vllms_packing():
    from vllm.distributed.weight_transfer.base import ParamMeta
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

    generator = torch.Generator().manual_seed(0)
    tensors = [(f"w{i}", torch.zeros(int(n), dtype=torch.bfloat16 if i % 3 else torch.float32))
               for i, n in enumerate(torch.randint(0, 200, (80,), generator=generator))]
    specs = [tensor_spec(name, tensor) for name, tensor in tensors]
    iterator = iter(tensors)
    packed = []
    while (chunk := pack_tensors(iterator, lambda item: item[1], 256)) is not None:
        packed.append(chunk.names)
    assert packed == [[spec.name for spec in bucket] for bucket in nccl_buckets(specs, 256)]
    # The metadata is vLLM's update info, and a spec is a ParamMeta.
    NCCLWeightTransferUpdateInfo(**wire_metadata(specs))
    IPCWeightTransferUpdateInfo(**wire_metadata(specs), ipc_handles={}, tensor_sizes=[s.nbytes for s in specs])
    assert [f.name for f in dataclasses.fields(ParamMeta)] == [f.name for f in dataclasses.fields(TensorSpec)]


@pytest.mark.parametrize("first, second", [((3,), (2,)), ((4,), (2,))], ids=["misaligned", "aligned"])
def test_alignment_check_is_what_vllm_can_unpack(first, second):
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

    tensors = [("a", torch.ones(first, dtype=torch.bfloat16)), ("b", torch.ones(second, dtype=torch.float32))]
    chunk = pack_tensors(iter(tensors), lambda item: item[1], 1 << 20)
    specs = [tensor_spec(name, tensor) for name, tensor in tensors]
    unpack = lambda: unpack_tensor(chunk.packed_tensor, chunk.names, chunk.shapes, chunk.dtypes,  # noqa: E731
                                   chunk.tensor_sizes)
    if first == (3,):  # 6 bytes of bf16, then fp32 at byte 6
        with pytest.raises(RuntimeError, match="divisible"):
            unpack()
        with pytest.raises(ValueError, match="byte 6"):
            check_alignment([specs])
    else:
        assert all(torch.equal(got, sent) for (_, got), (_, sent) in zip(unpack(), tensors))
        check_alignment([specs])


# ---- fixtures ----


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(p.problem, add_special_tokens=False).input_ids for p in arithmetic.problems("heldout", 12)]


def shut_down(engine) -> None:
    """Stops the engine's processes now, so the next module's engine finds its GPU memory."""
    engine.llm.llm_engine.engine_core.shutdown()
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def ipc_engine(tiny_model_dir):
    from rlvr.rollout.vllm import VLLMEngine

    engine = VLLMEngine(tiny_model_dir, dtype="float32", gpu_memory_utilization=0.25, seed=0, enable_sleep_mode=True,
                        weight_transfer="ipc")
    yield engine
    shut_down(engine)


@pytest.fixture(scope="module")
def ipc_sync(ipc_engine):
    road = CudaIpcSync([ipc_engine], bucket_mb=BUCKET_MB)
    with torch.cuda.device(0):
        road.setup()
    yield road
    road.close()


@pytest.fixture(scope="module")
def nccl_engine(tiny_model_dir):
    from rlvr.rollout.vllm import VLLMEngine

    engine = VLLMEngine(tiny_model_dir, dtype="float32", gpu_memory_utilization=0.25, seed=0,
                        weight_transfer="nccl")  # vLLM's worker takes GPU 0
    yield engine
    shut_down(engine)


def learner_on(model_dir: str, device: int) -> torch.nn.Module:
    return load_model(model_dir, dtype="float32").to(f"cuda:{device}").eval()


def tokens(completions) -> list[list[int]]:
    return [c.tokens for c in completions]


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    for parameter in model.parameters():
        noise = torch.randn(parameter.shape, generator=generator, device=parameter.device, dtype=torch.float32)
        parameter.add_(scale * noise.to(parameter.dtype))


def model_bytes(model: torch.nn.Module) -> int:
    return sum(tensor.nbytes for tensor in model.state_dict().values())


def timed_send(road, model: torch.nn.Module, label: str) -> int:
    torch.cuda.synchronize()
    started = time.perf_counter()
    nbytes = road.send(model.state_dict().items())
    seconds = time.perf_counter() - started
    print(f"\n{label}: {nbytes} bytes in {seconds * 1e3:.1f} ms ({nbytes / seconds / 1e9:.3f} GB/s)")
    return nbytes


def check_round_trip(road, engine, learner, tokenizer, prompts, label: str) -> None:
    """The engine generates as the learner before, as the perturbed learner after a send, and as before again."""
    original = copy.deepcopy(learner.state_dict())
    before = tokens(engine.generate(prompts, GREEDY))
    assert before == tokens(HFEngine(learner, tokenizer).generate(prompts, GREEDY))  # they start equal
    perturb(learner)
    try:
        assert timed_send(road, learner, f"{label}, perturbed") == model_bytes(learner)
        after = tokens(engine.generate(prompts, GREEDY))
        assert after != before
        assert after == tokens(HFEngine(learner, tokenizer).generate(prompts, GREEDY))
    finally:
        learner.load_state_dict(original)
        assert timed_send(road, learner, f"{label}, restored") == model_bytes(learner)
    assert tokens(engine.generate(prompts, GREEDY)) == before


# ---- CUDA IPC: learner and engine on one GPU ----


@pytest.mark.gpu
def test_ipc_sync_changes_the_engine_and_restores_it(ipc_sync, ipc_engine, tiny_model_dir, tokenizer, prompts):
    learner = learner_on(tiny_model_dir, 0)
    specs = [tensor_spec(name, tensor) for name, tensor in learner.state_dict().items()]
    assert len(ipc_buckets(specs, ipc_capacity(specs, ipc_sync.bucket_bytes))) > 1  # several buckets really go
    check_round_trip(ipc_sync, ipc_engine, learner, tokenizer, prompts, "CUDA IPC")


@pytest.mark.gpu
def test_ipc_sync_sends_bf16_as_bf16(ipc_sync, ipc_engine, tiny_model_dir, tokenizer, prompts):
    learner = learner_on(tiny_model_dir, 0)
    before = tokens(ipc_engine.generate(prompts, GREEDY))
    model16 = copy.deepcopy(learner).to(torch.bfloat16)
    perturb(model16)
    try:
        nbytes = timed_send(ipc_sync, model16, "CUDA IPC, bf16 learner")
        assert nbytes == model_bytes(model16) == model_bytes(learner) // 2  # two bytes a weight on the wire
        expected = HFEngine(copy.deepcopy(model16).float(), tokenizer).generate(prompts, GREEDY)  # bf16 exact in fp32
        assert tokens(ipc_engine.generate(prompts, GREEDY)) == tokens(expected)
    finally:
        ipc_sync.send(learner.state_dict().items())
    assert tokens(ipc_engine.generate(prompts, GREEDY)) == before


@pytest.mark.gpu
def test_ipc_sync_into_a_sleeping_engine(ipc_sync, ipc_engine, tiny_model_dir, tokenizer, prompts):
    learner = learner_on(tiny_model_dir, 0)
    before = tokens(ipc_engine.generate(prompts, GREEDY))
    perturb(learner)
    ipc_engine.sleep()  # the colocated order: the learner trains, the weights sync, the engine wakes
    try:
        ipc_sync.send(learner.state_dict().items())
    finally:
        ipc_engine.wake()
    assert tokens(ipc_engine.generate(prompts, GREEDY)) == tokens(HFEngine(learner, tokenizer).generate(prompts,
                                                                                                         GREEDY))
    ipc_sync.send(learner_on(tiny_model_dir, 0).state_dict().items())
    assert tokens(ipc_engine.generate(prompts, GREEDY)) == before


# ---- NCCL: learner and engine on GPUs of their own ----


@pytest.mark.gpu
def test_nccl_sync_refuses_a_learner_on_the_engines_gpu(nccl_engine):
    road = NCCLBroadcastSync([nccl_engine], master_address="127.0.0.1")
    with torch.cuda.device(0), pytest.raises(ValueError, match="shares GPU .* with the learner"):
        road.setup()


@pytest.mark.gpu
@two_gpus
def test_nccl_sync_changes_the_engine_and_restores_it(nccl_engine, tiny_model_dir, tokenizer, prompts):
    with torch.cuda.device(1):  # vLLM's trainer engine takes the current device for the sender
        learner = learner_on(tiny_model_dir, 1)
        road = NCCLBroadcastSync([nccl_engine], bucket_mb=BUCKET_MB, master_address="127.0.0.1")
        road.setup()
        try:
            assert road.world_size == 2 and road.engines.rank_offsets == [1]
            check_round_trip(road, nccl_engine, learner, tokenizer, prompts, "NCCL")
        finally:
            road.close()
