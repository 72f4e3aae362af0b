"""Policy-optimisation algorithms, reachable by name: ``rlvr.algos.build("grpo", **options)``.

Importing this package registers every built-in algorithm (one module each).
"""

from rlvr.algos import astar, capo, copo, dcpo, forking, grpo, scaf  # noqa: F401  (registers)
from rlvr.algos.base import Algorithm, AlgorithmOptions, ClippedAlgorithm, ClippedOptions, LossInputs, RunInfo
from rlvr.algos.registry import build, from_recipe, get, names, register

__all__ = ["Algorithm", "AlgorithmOptions", "ClippedAlgorithm", "ClippedOptions", "LossInputs", "RunInfo", "build",
           "from_recipe", "get", "names", "register"]
