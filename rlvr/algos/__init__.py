"""Policy-optimisation algorithms, reachable by name: ``rlvr.algos.build("grpo", **options)``.

An algorithm is a preset (``rlvr/algos/presets/<name>.py``: its options and the names of its parts) of registered
parts: an advantage estimator, a per-token loss, rollout filters and token masks (:mod:`rlvr.algos.registry`).
This package imports no torch until an algorithm is built or one of the run-time names below is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlvr.algos.options import AlgorithmOptions, ClippedOptions
from rlvr.algos.registry import Preset, get, names, register

_LAZY = {"Algorithm": "rlvr.algos.algorithm", "Context": "rlvr.algos.algorithm", "LossInputs": "rlvr.algos.algorithm",
         "RolloutSource": "rlvr.algos.algorithm", "RunInfo": "rlvr.algos.algorithm", "build": "rlvr.algos.algorithm",
         "from_recipe": "rlvr.algos.algorithm"}

__all__ = ["AlgorithmOptions", "ClippedOptions", "Preset", "get", "names", "register", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
