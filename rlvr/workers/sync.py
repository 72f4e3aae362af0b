"""Weight sync from the learner to vLLM engines on GPUs: two roads, each ``setup()`` once, ``send(tensors, specs)``
after every update, ``close()`` at the end. (Host arrays through Ray's object store, the road of split engines on
CPUs and of Hugging Face engines, is :meth:`rlvr.workers.placement.Workers.sync_weights` itself.)

- :class:`NCCLBroadcastSync`: split placement with vLLM engines on GPUs of their own. Packed NCCL broadcast from the
  learner's GPU to every engine worker; vLLM's ``NCCLTrainerWeightTransferEngine``.
- :class:`CudaIpcSync`: colocated placement, the learner and a vLLM engine on one GPU. The engine maps the learner's
  staging buffer through CUDA IPC handles, bucket by bucket; vLLM's ``IPCTrainerWeightTransferEngine``.

:meth:`rlvr.rollout.registry.EngineSpec.road` says which road a placement takes; colocated Hugging Face engines
sample with the learner's own module and need none. A sync lives in the learner's rank-0 process (the sender) and
is built with the engines it feeds: :class:`rlvr.rollout.vllm.VLLMEngine` objects in the same process (colocated), or Ray actor handles whose
actor forwards the engine's weight-sync methods (:data:`ENGINE_METHODS`) to its engine (split). ``send`` returns
the bytes it moved; the trainer times it and logs both.

The two GPU roads are vLLM 0.32's own trainer side (paths inside the vLLM wheel):

- ``distributed/weight_transfer/factory.py: WeightTransferTrainerFactory.trainer_init(init_info, *, client,
  source)`` builds the sender from ``nccl_engine.py: NCCLTrainerInitInfo(master_address, master_port, world_size,
  *, rank, packed=True, packed_buffer_size_bytes, packed_num_buffers)`` or ``ipc_engine.py: IPCTrainerInitInfo(*,
  rank, packed, packed_buffer_size_bytes)``; NCCL's opens the group as rank 0 (a ``StatelessProcessGroup`` TCP
  rendezvous at master_address:master_port, then a ``PyNcclCommunicator``; nccl_common.py: trainer_init) while
  the engines join it.
- ``TrainerWeightTransferEngine.send_weights()`` drives one round through the client: ``start_weight_update``,
  ``update_weights`` with ``{names, dtype_names, shapes}`` (plus ``ipc_handles``/``tensor_sizes`` per IPC
  bucket), ``finish_weight_update``; NCCL runs the engines' ``update_weights`` on a side thread while it
  broadcasts. ``shutdown()`` destroys the communicator.
- The client is any object with the methods of ``base.py: VLLMWeightSyncClient`` (a structural protocol):
  :class:`EngineGroup`, which fans each call out to our engines. The source is a ``base.py: WeightSource``
  (``metadata()`` plus one iteration per round): :class:`RoundSource`, refilled by every ``send``.

Buckets are vLLM's packing (``packed_tensor.py``), at ``bucket_mb`` MiB: :func:`nccl_buckets` and
:func:`ipc_buckets` reproduce its two rules, so buckets and memory bounds can be computed without a GPU, and a
send checks its buckets (:func:`check_alignment`) before the round starts.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from rlvr.transfer.specs import (BACKENDS, DEFAULT_BUCKET_MB, NUM_BUFFERS, TensorSpec, bucket_bytes,
                                 check_alignment, ipc_buckets, ipc_capacity, nccl_buckets, tensor_spec)

# What a sync calls on an engine: VLLMEngine's methods, which a rollout actor forwards to its engine.
ENGINE_METHODS = ("weight_sync_info", "init_weight_transfer_engine", "start_weight_update", "update_weights",
                  "finish_weight_update", "shutdown_weight_transfer_engine", "load_weights")

NamedTensors = Iterable[tuple[str, torch.Tensor]]


# ---- NCCL group layout and rendezvous ----


def engine_rank_offsets(world_sizes: Sequence[int]) -> list[int]:
    """The NCCL rank of each engine's first worker: the sender is rank 0, then the engines in order, each taking as
    many ranks as it has workers (TP x PP x DP). vLLM adds a worker's rank within its engine to its
    ``rank_offset`` (nccl_common.py: worker_init_process_group); the group has ``1 + sum(world_sizes)`` ranks."""
    if any(size < 1 for size in world_sizes):
        raise ValueError(f"every engine has at least one worker, got world sizes {list(world_sizes)}")
    offsets, rank = [], 1
    for size in world_sizes:
        offsets.append(rank)
        rank += size
    return offsets


def default_master_address() -> str:
    """This node's address as Ray reports it (reachable from the other nodes of the cluster), else localhost."""
    try:
        import ray.util

        return ray.util.get_node_ip_address()
    except Exception:  # no Ray, or no network it can see: a single-machine run
        return "127.0.0.1"


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """The learner's rank 0 serves the NCCL rendezvous (a TCP store) at ``host:port``: refuse a port in use or an
    address that is not this machine's, with what to do, rather than hang the engines waiting for the group."""
    if not 0 < port < 65536:
        raise ValueError(f"master_port {port} is not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is in use; pass another master_port, or none to take a "
                                 "free one") from error
            raise ValueError(f"cannot serve the NCCL rendezvous at {host}:{port} ({error.strerror}); "
                             "master_address must be an address of the learner's machine") from error


# ---- checks before a GPU road starts ----


def require_cuda(road: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f"{road} moves CUDA tensors GPU to GPU and torch sees no CUDA device here; "
                           "a CPU learner's weights go through the Ray object store")


def current_gpu_uuid() -> str:
    """The UUID of this process's current GPU: what vLLM keys IPC handles by, and what tells two GPUs apart."""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def check_engines(backend: str, sender_gpu: str, infos: Sequence[dict[str, Any]], single_sender: bool = True
                  ) -> None:
    """Checks each engine's :meth:`~rlvr.rollout.vllm.VLLMEngine.weight_sync_info` against the road.

    Every engine must have been built with ``weight_transfer=backend``. NCCL needs every rank on its own GPU (it
    refuses a group with two ranks on one device: "Duplicate GPU detected"). CUDA IPC needs the engine's workers
    on the sender's GPU; with several learner ranks (``single_sender=False``) each rank adds its own GPU's handles
    (ipc_engine.py: _all_gather_and_merge_handles) and rank 0 cannot check the others' GPUs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown weight-transfer backend {backend!r}; known: {BACKENDS}")
    for index, info in enumerate(infos):
        if info["backend"] != backend:
            raise ValueError(f"engine {index} was built with weight_transfer={info['backend']!r}; this sync needs "
                             f"VLLMEngine(..., weight_transfer={backend!r})")
    if backend == "nccl":
        owners = {sender_gpu: "the learner"}
        for index, info in enumerate(infos):
            for worker, uuid in enumerate(info["device_uuids"]):
                if uuid in owners:
                    raise ValueError(f"engine {index} worker {worker} shares GPU {uuid} with {owners[uuid]}; NCCL "
                                     "needs one GPU per rank (colocated engines sync through CudaIpcSync)")
                owners[uuid] = f"engine {index} worker {worker}"
    elif backend == "ipc" and single_sender:
        for index, info in enumerate(infos):
            elsewhere = sorted(set(info["device_uuids"]) - {sender_gpu})
            if elsewhere:
                raise ValueError(f"engine {index} runs on GPU {elsewhere[0]}, the learner on {sender_gpu}; CUDA IPC "
                                 "shares memory on one GPU only (engines on other GPUs sync through NCCLBroadcastSync)")


# ---- the engines, as vLLM's client ----


def _is_actor_method(engine: Any, method: str) -> bool:
    return hasattr(getattr(engine, method), "remote")


class EngineGroup:
    """vLLM's trainer-side client (base.py: ``VLLMWeightSyncClient``, a structural protocol) over our engines.

    Each call goes to every engine at once (Ray actors: ``.remote`` on all, then one ``ray.get``; local engines: one
    thread each when there are several) and returns the results in engine order. At once matters: the NCCL
    rendezvous and broadcast hold every engine until all have joined. vLLM sends one worker init info with
    ``rank_offset=1`` (nccl_engine.py: NCCLTrainerWeightTransferEngine.trainer_init); engines that are separate
    ``vllm.LLM`` instances need their own offsets (:func:`engine_rank_offsets`), set in :attr:`rank_offsets`.
    """

    def __init__(self, engines: Sequence[Any]):
        self.engines = list(engines)
        self.rank_offsets: list[int] | None = None

    def call(self, method: str, *args: Any, per_engine: Sequence[tuple] | None = None) -> list[Any]:
        """``method(*args)`` on every engine (or ``method(*per_engine[i])`` on engine ``i``); results in order."""
        arguments = list(per_engine) if per_engine is not None else [args] * len(self.engines)
        if len(arguments) != len(self.engines):
            raise ValueError(f"{len(arguments)} argument tuples for {len(self.engines)} engines")
        remote = {i: getattr(engine, method).remote(*arguments[i])
                  for i, engine in enumerate(self.engines) if _is_actor_method(engine, method)}
        local = [i for i in range(len(self.engines)) if i not in remote]
        results: list[Any] = [None] * len(self.engines)
        if len(local) == 1:
            results[local[0]] = getattr(self.engines[local[0]], method)(*arguments[local[0]])
        elif local:
            with ThreadPoolExecutor(len(local)) as pool:
                futures = {i: pool.submit(getattr(self.engines[i], method), *arguments[i]) for i in local}
                for i, future in futures.items():
                    results[i] = future.result()
        if remote:
            import ray

            for i, value in zip(remote, ray.get(list(remote.values()))):
                results[i] = value
        return results

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if self.rank_offsets is None or "rank_offset" not in init_info:
            self.call("init_weight_transfer_engine", init_info)
            return
        shift = init_info["rank_offset"] - self.rank_offsets[0]
        self.call("init_weight_transfer_engine",
                  per_engine=[({**init_info, "rank_offset": offset + shift},) for offset in self.rank_offsets])

    def start_weight_update(self) -> None:
        self.call("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.call("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.call("finish_weight_update", weight_version)

    def shutdown_weight_transfer_engine(self) -> None:
        self.call("shutdown_weight_transfer_engine")


# ---- the learner's tensors, as vLLM's source ----


def _check_cuda(name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_cuda:
        raise ValueError(f"weight {name!r} is on {tensor.device}; GPU weight sync sends CUDA tensors (a CPU learner "
                         "sends host arrays through the Ray object store)")


class RoundSource:
    """The tensors of one ``send``, as vLLM's ``WeightSource`` (base.py): ``metadata()`` announces them, one
    iteration yields them. vLLM's NCCL and IPC trainer engines use nothing else of a source (nccl_engine.py:
    send_weights; ipc_engine.py: _send), so this class does not subclass vLLM's and this module imports without
    vLLM.

    :meth:`load` refills it for each round. Given a list of ``(name, tensor)`` it reads the specs off the tensors
    and checks them all up front: a bad tensor found mid-round would leave the engines blocked in the broadcast.
    Given ``specs`` as well, ``named_tensors`` may be a generator (a ZeRO-3 gather, one tensor at a time), and vLLM
    checks each yielded tensor against its spec (nccl_engine.py: _checked_iter).
    """

    def __init__(self) -> None:
        self._pairs: Iterable[tuple[str, torch.Tensor]] | None = None
        self._specs: list[TensorSpec] = []
        self.sent_bytes = 0

    def load(self, named_tensors: NamedTensors, specs: Sequence[TensorSpec] | None = None) -> list[TensorSpec]:
        if specs is None:
            pairs = list(named_tensors)  # references to the learner's tensors, no copies
            for name, tensor in pairs:
                _check_cuda(name, tensor)
            specs = [tensor_spec(name, tensor) for name, tensor in pairs]
            named_tensors = pairs
        self._pairs, self._specs, self.sent_bytes = named_tensors, list(specs), 0
        return self._specs

    def metadata(self) -> list[TensorSpec]:
        return self._specs

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self._pairs is None:
            raise RuntimeError("RoundSource holds no tensors: load() them before each round (one iteration each)")
        pairs, self._pairs = self._pairs, None
        for name, tensor in pairs:
            _check_cuda(name, tensor)
            self.sent_bytes += tensor.nbytes
            yield name, tensor.detach()


# ---- the two GPU roads ----


class _TrainerEngineSync:
    """What the NCCL and IPC roads share: vLLM's trainer engine, refilled :class:`RoundSource`, byte count."""

    backend = ""

    def __init__(self, engines: Sequence[Any], bucket_mb: float = DEFAULT_BUCKET_MB, rank: int = 0):
        self.engines = EngineGroup(engines)
        self.bucket_bytes = bucket_bytes(bucket_mb)
        self.rank = rank
        self.source = RoundSource()
        self.buckets = 0  # of the last send
        self._trainer: Any = None  # vLLM's TrainerWeightTransferEngine, once set up

    def _engine_infos(self) -> list[dict[str, Any]]:
        """The engines' :meth:`~rlvr.rollout.vllm.VLLMEngine.weight_sync_info`, checked against this road."""
        if not self.engines.engines:
            raise ValueError(f"{type(self).__name__} on rank 0 needs at least one engine")
        infos = self.engines.call("weight_sync_info")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        single = not distributed or torch.distributed.get_world_size() == 1
        check_engines(self.backend, current_gpu_uuid(), infos, single_sender=single)
        return infos

    def _start(self, init_info: Any) -> None:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        self._trainer = WeightTransferTrainerFactory.trainer_init(init_info, client=self.engines, source=self.source)

    def _plan(self, specs: list[TensorSpec]) -> list[list[TensorSpec]]:
        """The buckets vLLM will make of ``specs`` (and any per-round setting they need)."""
        raise NotImplementedError

    def send(self, named_tensors: NamedTensors, specs: Sequence[TensorSpec] | None = None) -> int:
        """One round: the engines get every tensor of ``named_tensors`` (CUDA, Hugging Face names, any dtype as is),
        bucket by bucket; returns the bytes sent (0 on ranks other than 0, which only join the iteration).

        After an error the engines may be left mid-round (an NCCL peer blocked in a broadcast): close() and set up
        again, or restart the engines.
        """
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}.send() before setup()")
        buckets = self._plan(self.source.load(named_tensors, specs))
        check_alignment(buckets)  # before the round starts: a failure inside it can hang the engines
        self.buckets = len(buckets)
        self._trainer.send_weights()
        return self.source.sent_bytes if self.rank == 0 else 0

    def close(self) -> None:
        """Releases the transfer on both sides; the engines keep serving."""
        trainer, self._trainer = self._trainer, None
        if trainer is None:
            return
        try:
            if self.rank == 0:
                self.engines.shutdown_weight_transfer_engine()
        finally:
            trainer.shutdown()


class NCCLBroadcastSync(_TrainerEngineSync):
    """Split placement on GPUs: learner rank 0 broadcasts over NCCL to every worker of every vLLM engine (vLLM's
    ``NCCLTrainerWeightTransferEngine``, packed). Engines: ``VLLMEngine(..., weight_transfer="nccl")`` or actors
    forwarding to one, each on GPUs of its own.

    ``bucket_mb`` is vLLM's ``packed_buffer_size_bytes`` (the buckets of :func:`nccl_buckets`); with
    :data:`NUM_BUFFERS` buckets in flight each side holds about twice that beyond the model. ``master_address``
    (default: this node's Ray address) and ``master_port`` (default: a free one) are where rank 0 serves the
    rendezvous. ``rank``: this learner rank; ranks other than 0 join only the iteration of each ``send`` (a
    ZeRO-3 gather), as in vLLM.
    """

    backend = "nccl"

    def __init__(self, engines: Sequence[Any], bucket_mb: float = DEFAULT_BUCKET_MB, rank: int = 0,
                 master_address: str | None = None, master_port: int | None = None):
        super().__init__(engines, bucket_mb, rank)
        self.master_address = master_address
        self.master_port = master_port
        self.world_size = 0

    def setup(self) -> None:
        """Opens the NCCL group: the engines join as ranks 1.. while rank 0 opens its end (blocks until all have)."""
        require_cuda("NCCL weight sync")
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        address, port = self.master_address or "", self.master_port or 0
        if self.rank == 0:
            sizes = [info["world_size"] for info in self._engine_infos()]
            self.engines.rank_offsets = engine_rank_offsets(sizes)
            self.world_size = 1 + sum(sizes)
            address = address or default_master_address()
            port = port or free_port(address)
            check_port_free(address, port)
            self.master_address, self.master_port = address, port
        self._start(NCCLTrainerInitInfo(
            master_address=address, master_port=port, world_size=self.world_size, rank=self.rank, packed=True,
            packed_buffer_size_bytes=self.bucket_bytes, packed_num_buffers=NUM_BUFFERS))

    def _plan(self, specs: list[TensorSpec]) -> list[list[TensorSpec]]:
        return nccl_buckets(specs, self.bucket_bytes)


class CudaIpcSync(_TrainerEngineSync):
    """Colocated placement: the learner and its vLLM engine on one GPU; the engine maps the learner's staging
    buffer through CUDA IPC handles, bucket by bucket (vLLM's ``IPCTrainerWeightTransferEngine``, packed).
    Engines: ``VLLMEngine(..., weight_transfer="ipc")``, usually in the learner's own process.

    ``bucket_mb`` is the staging buffer, one bucket (:func:`ipc_buckets`), allocated per send; it grows to the
    largest tensor where that is larger (:func:`ipc_capacity`; the buffer size is the sender's alone,
    ipc_engine.py: IPCWeightTransferInitInfo). ``rank``: this learner rank, as in :class:`NCCLBroadcastSync`.
    """

    backend = "ipc"

    def setup(self) -> None:
        require_cuda("CUDA IPC weight sync")
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        if self.rank == 0:
            self._engine_infos()
        self._start(IPCTrainerInitInfo(rank=self.rank, packed=True, packed_buffer_size_bytes=self.bucket_bytes))

    def _plan(self, specs: list[TensorSpec]) -> list[list[TensorSpec]]:
        capacity = ipc_capacity(specs, self.bucket_bytes)
        self._trainer.packed_buffer_size_bytes = capacity
        return ipc_buckets(specs, capacity)

