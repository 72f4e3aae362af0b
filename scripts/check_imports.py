"""Import circles among rlvr's packages: every ``import`` of another rlvr package (module-level or inside a function;
``if TYPE_CHECKING:`` blocks excepted, since they never run), as a graph of ``rlvr.<package>`` nodes, and its cycles.

    python scripts/check_imports.py          # prints each cycle with the imports that close it; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rlvr"


def unit(module: str) -> str:
    """The package (``rlvr.algos``) or top-level module (``rlvr.config``) a module belongs to."""
    return ".".join(module.split(".")[:2])


def exists(root: Path, package: str) -> bool:
    """Whether ``package`` (``rlvr.algos``, ``rlvr.config``) is a package or module under ``root``."""
    path = root.parent / Path(*package.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """``edges[a][b]``: the ``module:line`` places where package ``a`` imports package ``b``."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        skipped = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from rlvr import algos` imports rlvr.algos; `from rlvr.algos import x` imports rlvr.algos
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = unit(name)
                if name.startswith("rlvr.") and target != unit(module) and exists(root, target):
                    edges[unit(module)][target].append(f"{module}:{node.lineno}")
    return edges


def cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    edges = graph()
    found = cycles(edges)
    for component in found:
        print("cycle:", " ".join(component))
        for a in component:
            for b in component:
                if b in edges[a]:
                    print(f"  {a} -> {b}: {', '.join(edges[a][b][:3])}")
    if not found:
        print(f"no import circle among {len(edges)} rlvr packages")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
