"""How rlvr's packages depend on one another: no import circle (scripts/check_imports.py, which reads every import,
function-local ones included), and a recipe is validated without torch."""

import importlib.util
import subprocess
import sys

from tests.conftest import REPO


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", REPO / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_among_rlvr_packages():
    checker = _checker()
    edges = checker.graph()
    assert "rlvr.algos" in edges and "rlvr.kernels" in edges["rlvr.algos"]  # the graph sees real imports
    assert checker.cycles(edges) == []


def test_the_checker_finds_a_circle(tmp_path):
    package = tmp_path / "rlvr"
    for name, text in (("a/__init__.py", "from rlvr.b import x\n"),
                       ("b/__init__.py", "def f():\n    from rlvr.a import y\n"),
                       ("c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rlvr.a import z\n")):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    checker = _checker()
    assert checker.cycles(checker.graph(package)) == [["rlvr.a", "rlvr.b"]]  # TYPE_CHECKING imports never run


def test_loading_and_validating_a_recipe_imports_no_torch():
    code = ("import sys; from rlvr.config import load_recipe; "
            f"load_recipe({str(REPO / 'recipes/tiny/dcpo.yaml')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
