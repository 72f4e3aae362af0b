"""What the receiver of a weight transfer must know before the bytes arrive, and how the bytes are packed: tensor
specs (name, dtype, shape) and their wire form, and vLLM 0.32's two bucket rules (``packed_tensor.py``), reproduced so
that buckets and memory bounds can be computed without a GPU (:func:`nccl_buckets`, :func:`ipc_buckets`,
:func:`check_alignment`). Used by the learner (sender), the engine (receiver) and the roads of
:mod:`rlvr.workers.sync`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MIB = 1 << 20
DEFAULT_BUCKET_MB = 512
# vLLM's packed NCCL transfer keeps this many buckets in flight on each side (packed_tensor.py:
# DEFAULT_PACKED_NUM_BUFFERS): one is broadcast while the next is packed.
NUM_BUFFERS = 2
BACKENDS = ("nccl", "ipc")  # vLLM's weight-transfer backends: the two GPU roads


# ---- what the receiver must know before the bytes arrive ----


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's name (Hugging Face), dtype and shape. Its fields are those of vLLM's ``ParamMeta``
    (base.py), so vLLM's trainer engines read a list of them as a ``WeightSource.metadata()``."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def tensor_spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    """The spec of a tensor as it is sent: its own dtype (bf16 stays bf16) and shape."""
    return TensorSpec(name, tensor.dtype, tuple(tensor.shape))


def total_bytes(specs: Iterable[TensorSpec]) -> int:
    return sum(spec.nbytes for spec in specs)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, as vLLM names dtypes on the wire and reads them back with
    ``getattr(torch, name)`` (nccl_engine.py: send_weights, receive_weights)."""
    return str(dtype).removeprefix("torch.")


def wire_metadata(specs: Sequence[TensorSpec]) -> dict[str, list]:
    """The ``names``/``dtype_names``/``shapes`` fields of vLLM's ``NCCLWeightTransferUpdateInfo`` and
    ``IPCWeightTransferUpdateInfo``: three parallel lists, plain types (they cross Ray and msgpack)."""
    return {"names": [spec.name for spec in specs], "dtype_names": [dtype_name(spec.dtype) for spec in specs],
            "shapes": [list(spec.shape) for spec in specs]}


def specs_from_wire(update_info: dict[str, Any]) -> list[TensorSpec]:
    """The specs an ``update_weights`` payload announces (the inverse of :func:`wire_metadata`; other keys, such as
    IPC handles, are ignored). Raises ``ValueError`` on lists of different lengths, an unknown dtype or a bad
    shape, before the payload reaches vLLM's workers."""
    try:
        names, dtypes, shapes = update_info["names"], update_info["dtype_names"], update_info["shapes"]
    except KeyError as missing:
        raise ValueError(f"weight update metadata lacks {missing}; it needs names, dtype_names and shapes") from None
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError(f"weight update metadata has {len(names)} names, {len(dtypes)} dtype_names and "
                         f"{len(shapes)} shapes; they must be parallel lists")
    specs = []
    for name, dtype, shape in zip(names, dtypes, shapes):
        torch_dtype = getattr(torch, str(dtype), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"weight {name!r} has an unknown dtype {dtype!r}")
        if not all(isinstance(size, int) and size >= 0 for size in shape):
            raise ValueError(f"weight {name!r} has a bad shape {shape!r}")
        specs.append(TensorSpec(str(name), torch_dtype, tuple(shape)))
    return specs


# ---- buckets: vLLM's two packing rules ----


def bucket_bytes(bucket_mb: float) -> int:
    """The bucket size knob in bytes; refuses non-positive sizes."""
    size = int(bucket_mb * MIB)
    if size <= 0:
        raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
    return size


def nccl_buckets(specs: Sequence[TensorSpec], limit_bytes: int) -> list[list[TensorSpec]]:
    """The buckets vLLM's packed NCCL broadcast makes (packed_tensor.py: pack_tensors on the sender,
    packed_nccl_broadcast_consumer on the engines, the same rule from the same metadata on both ends).

    Tensors go in order into the open bucket, which closes once it holds *more* than ``limit_bytes``: a bucket
    passes the limit by less than its last tensor, and a tensor larger than the limit closes the bucket it joins.
    """
    if limit_bytes <= 0:
        raise ValueError(f"bucket limit must be positive, got {limit_bytes} bytes")
    buckets: list[list[TensorSpec]] = []
    bucket: list[TensorSpec] = []
    size = 0
    for spec in specs:
        bucket.append(spec)
        size += spec.nbytes
        if size > limit_bytes:
            buckets.append(bucket)
            bucket, size = [], 0
    if bucket:
        buckets.append(bucket)
    return buckets


def ipc_buckets(specs: Sequence[TensorSpec], capacity_bytes: int) -> list[list[TensorSpec]]:
    """The buckets vLLM's packed CUDA IPC transfer makes (packed_tensor.py: packed_ipc_producer): a bucket closes
    before the tensor that would overflow the fixed staging buffer, so none holds more than ``capacity_bytes``; a
    tensor larger than the buffer is a ``ValueError`` there and here (:func:`ipc_capacity` sizes the buffer)."""
    if capacity_bytes <= 0:
        raise ValueError(f"bucket capacity must be positive, got {capacity_bytes} bytes")
    buckets: list[list[TensorSpec]] = []
    bucket: list[TensorSpec] = []
    size = 0
    for spec in specs:
        if spec.nbytes > capacity_bytes:
            raise ValueError(f"weight {spec.name!r} ({spec.nbytes} bytes) does not fit a {capacity_bytes}-byte "
                             "IPC bucket; raise bucket_mb")
        if bucket and size + spec.nbytes > capacity_bytes:
            buckets.append(bucket)
            bucket, size = [], 0
        bucket.append(spec)
        size += spec.nbytes
    if bucket:
        buckets.append(bucket)
    return buckets


def check_alignment(buckets: Sequence[Sequence[TensorSpec]]) -> None:
    """Refuses buckets vLLM could not unpack. The receiver views each tensor's bytes in the packed bucket as its
    dtype (packed_tensor.py: unpack_tensor), which torch allows only at a byte offset divisible by the dtype's size:
    a bf16 tensor of odd length followed by an fp32 one fails there, mid-round, with the NCCL peers left waiting."""
    for bucket in buckets:
        offset = 0
        for spec in bucket:
            if offset % spec.dtype.itemsize:
                raise ValueError(
                    f"weight {spec.name!r} ({dtype_name(spec.dtype)}) would start at byte {offset} of its bucket, "
                    f"not a multiple of {spec.dtype.itemsize}, and vLLM's packed transfer could not unpack it; send "
                    "one dtype, or the wider dtypes first")
            offset += spec.nbytes


def ipc_capacity(specs: Sequence[TensorSpec], limit_bytes: int) -> int:
    """The IPC staging buffer: ``limit_bytes``, or the largest tensor where that is larger (Qwen2.5-7B's
    embedding is about 1 GiB in bf16), so no send fails half-way on a tensor vLLM's producer cannot pack."""
    return max([limit_bytes, *(spec.nbytes for spec in specs)])
