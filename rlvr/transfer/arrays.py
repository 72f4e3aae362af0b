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
    return tensor_arrays(module.state_dict())


def tensor_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Named tensors (a ``state_dict``) as numpy arrays: CPU, contiguous, bf16 as int16 bits under
    ``name + BF16_SUFFIX``. A tensor that shares its memory with an earlier one (a tied embedding: ``lm_head.weight``
    is ``embed_tokens.weight``) is sent once, under the first name; receivers tie it back (transformers and vLLM
    both skip a tied ``lm_head.weight``)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.device)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            out[name + BF16_SUFFIX] = tensor.view(torch.int16).numpy()
        else:
            out[name] = tensor.numpy()
    return out


def array_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`tensor_arrays`: names without the tag, bf16 viewed back (memory shared)."""
    out = {}
    for key, array in arrays.items():
        with warnings.catch_warnings():  # object-store arrays are read-only; callers only copy out of them
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.asarray(array))
        out[key.removesuffix(BF16_SUFFIX)] = tensor.view(torch.bfloat16) if key.endswith(BF16_SUFFIX) else tensor
    return out


def load_named_arrays(module: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` (from :func:`named_arrays`) into ``module``'s parameters and buffers in place."""
    state = module.state_dict()
    seen = set()
    for name, tensor in array_tensors(arrays).items():
        if name not in state:
            raise KeyError(f"weight {name!r} does not exist in the rollout model")
        with torch.no_grad():
            state[name].copy_(tensor)
        seen.add(name)
    loaded = {state[name].data_ptr() for name in seen}
    missing = {name for name in set(state) - seen if state[name].data_ptr() not in loaded}  # tied copies arrived
    if missing:
        raise KeyError(f"weight sync is missing {len(missing)} tensors, e.g. {sorted(missing)[:3]}")


def digest(module: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal digests mean bit-identical weights."""
    return digest_arrays(named_arrays(module))


def digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    """:func:`digest` of weights already in :func:`named_arrays` form (a learner's gathered weights)."""
    h = hashlib.sha256()
    for key in sorted(arrays, key=lambda k: k.removesuffix(BF16_SUFFIX)):
        h.update(key.removesuffix(BF16_SUFFIX).encode())
        h.update(np.ascontiguousarray(arrays[key]).view(np.uint8).tobytes())
    return h.hexdigest()
