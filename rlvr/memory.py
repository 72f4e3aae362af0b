"""What a process's memory holds: its resident set now and at its peak, the heap that glibc keeps after ``free``,
and the bytes of a learner's tensors (parameters, gradients, optimizer state, reference model).

On a CPU the peak resident set is the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``), which
:func:`peak_resident_bytes` can reset (``/proc/self/clear_refs``), so that each step reports its own peak rather
than the process's lifetime peak (``ru_maxrss``, which only ever rises). glibc's ``malloc`` keeps freed heap
memory for reuse instead of returning it to the kernel (only a free block at the top of a heap is trimmed);
:func:`release_free_memory` hands back every free page (``malloc_trim``) between the phases of a step, so that
what the resident set shows is what is in use. See docs/memory.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

_STATUS = Path("/proc/self/status")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or ``None`` elsewhere (macOS, musl): then nothing is trimmed and no heap statistics are read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _status(*keys: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` in bytes (they are given in kB); empty where there is no procfs."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0]) * 1024
    return out


def resident_bytes() -> int:
    """This process's resident set size now."""
    status = _status("VmRSS")
    if "VmRSS" in status:
        return status["VmRSS"]
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_resident_bytes(reset: bool = False) -> int:
    """This process's peak resident set since it started or since the last ``reset``; with ``reset`` the kernel's
    high-water mark restarts from the current resident set, so the next call sees the peak of what ran in between.
    Where there is no ``VmHWM`` to reset (not Linux), the lifetime peak (``ru_maxrss``)."""
    status = _status("VmHWM")
    if "VmHWM" not in status:
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set (proc(5))
        except OSError:
            pass  # not permitted here: the figure stays a lifetime peak
    return status["VmHWM"]


def release_free_memory() -> None:
    """Returns the free pages of every malloc heap to the kernel (glibc's ``malloc_trim(0)``); a no-op elsewhere.

    glibc serves allocations under its mmap threshold (at most 32 MiB, so most activation and gradient tensors
    of a small model) from heaps that it shrinks only from the top: after a forward and backward, hundreds of MB
    of freed tensors stay resident. They would be reused, but the next phase allocates differently (generation's
    KV cache, the optimizer's temporaries), so the resident set carries every phase's high-water mark at once.
    Trimming costs a few milliseconds per GB.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# mallopt(3) parameter numbers (malloc.h).
_M_MMAP_THRESHOLD = -3
# Learner phases: any allocation from 1 MiB up gets pages of its own, returned to the kernel on free. A learner whose
# checkpointed layers recompute in row blocks maps from 128 KiB (at 1 MiB their sub-MiB tensors fragmented the heap:
# SmolLM2's update ended with 68 MiB more resident, its peak 50 MiB higher); on a model without checkpointing that
# costs time for nothing (the tiny model's update: 0.69-0.74 s against 0.40-0.44 s at 1 MiB). Generation
# keeps glibc's own ceiling (32 MiB, where its sliding threshold ends): its KV cache grows by a copy every token,
# and a fresh mapping per copy, page faults included, costs about a fifth of the generation time on a CPU.
LEARNER_MMAP_THRESHOLD = 1 << 20
ROW_BLOCK_MMAP_THRESHOLD = 128 << 10
DEFAULT_MMAP_THRESHOLD = 32 << 20


def set_mmap_threshold(size: int) -> None:
    """Allocations of at least ``size`` bytes get pages of their own (``mmap``), which ``free`` returns at once;
    smaller ones come from the heap. A no-op where glibc is not the allocator."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, int(size))


@contextmanager
def learner_phase(mmap_threshold: int = LEARNER_MMAP_THRESHOLD) -> Iterator[None]:
    """A learner phase (log-probs, update) whose freed tensors go back to the kernel, not into a heap that keeps
    them: the activations and gradients of a small model (most tensors between 1 and 32 MiB) would otherwise stay
    resident after the phase, in holes that the next phase's differently sized allocations cannot all reuse, and
    the resident set would carry the high-water mark of every phase at once. ``mmap_threshold``: the learner's
    (``mmap_threshold`` of :class:`rlvr.learner.torch.TorchLearner`). On exit the threshold goes back to
    :data:`DEFAULT_MMAP_THRESHOLD` and the free heap is trimmed (:func:`release_free_memory`)."""
    set_mmap_threshold(mmap_threshold)
    try:
        yield
    finally:
        set_mmap_threshold(DEFAULT_MMAP_THRESHOLD)
        release_free_memory()


def heap_stats() -> dict[str, int]:
    """glibc's statistics of the main heap (``mallinfo2``): ``heap_in_use``, ``heap_free`` (freed, still resident
    until trimmed) and ``mmapped`` (allocations above the mmap threshold, returned on ``free``). Other threads'
    heaps (arenas) are not counted. Empty where glibc is not the allocator."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"heap_in_use": int(info.uordblks), "heap_free": int(info.fordblks), "mmapped": int(info.hblkhd)}


def tensor_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights and views count once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None or not isinstance(tensor, Tensor) or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def model_bytes(model: torch.nn.Module | None) -> int:
    """Parameters and buffers of ``model`` (0 for ``None``)."""
    if model is None:
        return 0
    return tensor_bytes([*model.parameters(), *model.buffers()])


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """The optimizer's state tensors (AdamW: two moments per parameter, allocated at its first step)."""
    if optimizer is None:
        return 0
    return tensor_bytes(value for state in optimizer.state.values() for value in state.values())


def learner_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   reference: torch.nn.Module | None = None) -> dict[str, int]:
    """The learner's share of its process, in bytes: ``parameters`` (and buffers), ``gradients`` (those that exist
    now), ``optimizer_state``, ``reference`` (the frozen KL model, 0 without one), the ``resident`` set and glibc's
    heap (:func:`heap_stats`)."""
    return {
        "parameters": model_bytes(model),
        "gradients": tensor_bytes(p.grad for p in model.parameters()),
        "optimizer_state": optimizer_state_bytes(optimizer),
        "reference": model_bytes(reference),
        "resident": resident_bytes(),
        **heap_stats(),
    }


@contextmanager
def transient_memory() -> Iterator[dict[str, int]]:
    """Measures the memory a block adds: on entry glibc's free heap goes back to the kernel and the peak resident
    set is reset, so ``out["peak"]`` (set on exit) is the block's peak above ``out["start"]``, the resident set it
    began with, rather than memory it reused from earlier phases. Resets the peak that
    :func:`peak_resident_bytes` reports next."""
    release_free_memory()
    out = {"start": resident_bytes()}
    peak_resident_bytes(reset=True)
    yield out
    out["peak"] = peak_resident_bytes(reset=True) - out["start"]


def peak_memory_bytes() -> int:
    """Peak memory of this process since the previous call (so each step reports its own): the CUDA allocator's
    peak on a GPU, the peak resident set on a CPU (:func:`peak_resident_bytes`; the lifetime
    peak where the kernel's high-water mark cannot be reset)."""
    if torch.cuda.is_available():
        peak = int(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return peak
    return peak_resident_bytes(reset=True)
