"""What the kernels' public entries share to choose between their Triton and torch implementations."""

from __future__ import annotations

import functools
import os

from torch import Tensor

IMPLS: tuple[str, ...] = ("auto", "torch", "triton")


def interpreting() -> bool:
    """Whether Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``: CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports here (on a CPU it then runs only with ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_triton_device(entry: str, name: str, tensor: Tensor) -> None:
    """``impl='triton'`` was asked for: the tensors must be on CUDA, unless the interpreter runs the kernels."""
    if not tensor.is_cuda and not interpreting():
        raise ValueError(f"{entry} impl='triton' needs CUDA tensors ({name} is on {tensor.device}); set "
                         "TRITON_INTERPRET=1 before importing rlvr.kernels to run it on the CPU, or use impl='torch'")
