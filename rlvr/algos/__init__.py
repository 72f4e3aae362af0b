"""Policy-optimisation algorithms, reachable by name: ``rlvr.algos.build("grpo", **options)``."""

from rlvr.algos import grpo  # noqa: F401  (registers)
from rlvr.algos.base import Algorithm, AlgorithmOptions, LossInputs
from rlvr.algos.registry import build, get, names, register

__all__ = ["Algorithm", "AlgorithmOptions", "LossInputs", "build", "get", "names", "register"]
