"""The docs' generated tables (scripts/gen_docs.py) match the code: a new option, a changed default or a new
algorithm without regenerating them fails here, naming the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlvr.algos import registry

ROOT = Path(__file__).resolve().parents[2]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_are_up_to_date():
    gen = _gen_docs()
    stale = [relative for relative, make in gen.FILES.items()
             if gen.render(ROOT / relative, make()) != (ROOT / relative).read_text()]
    assert stale == [], f"run python scripts/gen_docs.py: {stale} out of date"


def test_every_algorithm_and_recipe_option_is_in_the_docs():
    algorithms = (ROOT / "docs" / "algorithms.md").read_text()
    assert all(f"| [`{name}`](../recipes/tiny/{name}.yaml) |" in algorithms for name in registry.names())
    assert all((ROOT / "recipes" / "tiny" / f"{name}.yaml").exists() for name in registry.names())
    from rlvr.config import LearnerConfig, RolloutConfig

    configuration = (ROOT / "docs" / "configuration.md").read_text()
    for prefix, model in (("rollout", RolloutConfig), ("learner", LearnerConfig)):
        for key, field in model.model_fields.items():
            if key != "early_rejection":
                assert f"| `{prefix}.{key}` |" in configuration and (field.description or "")[:40] in configuration
    assert "`clip_eps_low: 0.0003`" in algorithms  # GSPO's own clip, read from its options model


def test_each_departures_link_reaches_a_docstring_that_lists_them():
    """docs/algorithms.md links each algorithm's departures from its paper to the module that implements it; the
    list itself lives in that module's docstring, written once."""
    import ast
    import re

    algorithms = (ROOT / "docs" / "algorithms.md").read_text()
    links = re.findall(r"Where rlvr departs from the paper and the authors' code: listed in the module docstring of\n"
                       r"\[`([^`]+)`\]", algorithms)
    assert len(links) >= 9
    for path in set(links):
        docstring = ast.get_docstring(ast.parse((ROOT / path).read_text()))
        assert "where rlvr departs from the paper" in docstring.lower(), path
