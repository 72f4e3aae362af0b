"""Weights as named numpy arrays: what crosses the Ray object store between learner and rollout actors.

numpy arrays are deserialised zero-copy from Ray's shared-memory object store; torch tensors are not.
bf16 has no numpy dtype, so it travels as int16 bits and is viewed back on arrival.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

BF16_SUFFIX = "::bf16"


def named_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer of ``module`` as a numpy array (bf16 as int16 bits, name-tagged)."""
    out = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            out[name + BF16_SUFFIX] = tensor.view(torch.int16).numpy()
        else:
            out[name] = tensor.numpy()
    return out


def load_named_arrays(module: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` (from :func:`named_arrays`) into ``module``'s parameters and buffers in place."""
    state = module.state_dict()
    seen = set()
    for key, array in arrays.items():
        name = key.removesuffix(BF16_SUFFIX)
        if name not in state:
            raise KeyError(f"weight {name!r} does not exist in the rollout model")
        with warnings.catch_warnings():  # object-store arrays are read-only; we only copy out of them
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.asarray(array))
        if key.endswith(BF16_SUFFIX):
            tensor = tensor.view(torch.bfloat16)
        with torch.no_grad():
            state[name].copy_(tensor)
        seen.add(name)
    missing = set(state) - seen
    if missing:
        raise KeyError(f"weight sync is missing {len(missing)} tensors, e.g. {sorted(missing)[:3]}")


def digest(module: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
