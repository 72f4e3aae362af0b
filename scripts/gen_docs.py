"""The docs' tables that the code defines, written from it: every recipe option (docs/configuration.md, from the
pydantic models of rlvr.config) and the algorithm tables of docs/algorithms.md (from the preset registry and the
options models). Each table sits between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``;
the text around it is written by hand.

    python scripts/gen_docs.py           # rewrite the tables
    python scripts/gen_docs.py --check   # exit 1 naming each table that is out of date (tests/unit/test_docs.py)
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _type(annotation: Any) -> str:
    """A field's type as a reader writes it: ``'hf' | 'vllm'``, ``int or null``, ``list[str]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is not None:
        inner = ", ".join(_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, (list, tuple, dict)) and not value:
        return "[]" if not isinstance(value, dict) else "{}"
    return str(value)


def _default(field) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())
    return "required" if field.default is PydanticUndefined else _value(field.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{prefix}{name}.")
            continue
        rows.append(f"| `{prefix}{name}` | {_cell(_type(annotation))} | `{_default(field)}` | "
                    f"{_cell(field.description or '')} |")
    return rows


def configuration() -> dict[str, str]:
    """One table per section of a recipe (the ``algorithm`` section: docs/algorithms.md)."""
    from rlvr.config import Recipe

    out = {}
    for section, field in Recipe.model_fields.items():
        if section == "algorithm":
            continue
        model = field.annotation
        doc = (model.__doc__ or "").strip()
        head = [doc, ""] if doc and not doc.startswith(model.__name__ + "(") else []
        out[f"config-{section}"] = "\n".join([*head, "| key | type | default | meaning |", "|---|---|---|---|",
                                              *_rows(model, f"{section}.")])
    return out


def algorithms() -> dict[str, str]:
    """The presets (name, summary, tiny recipe, what each changes from grpo), the options every one has, and per
    preset the options it adds or sets otherwise than grpo."""
    from rlvr.algos import registry
    from rlvr.algos.options import AlgorithmOptions, ClippedOptions

    base = registry.get("grpo").options
    shared = AlgorithmOptions.model_fields
    table = ["| name | what it is | options of its own | defaults it changes from `grpo` |", "|---|---|---|---|"]
    for name in registry.names():
        preset = registry.get(name)
        fields = preset.options.model_fields
        own = [f"`{key}`" for key in fields if key not in base.model_fields]
        changed = [f"`{key}: {_default(field)}`" for key, field in fields.items() if key != "name" and
                   key in base.model_fields and _default(field) != _default(base.model_fields[key])]
        summary = preset.summary.split(": ", 1)[-1]
        table.append(f"| [`{name}`](../recipes/tiny/{name}.yaml) | {_cell(summary)} | {', '.join(own) or '-'} | "
                     f"{', '.join(changed) or '-'} |")
    def options(keys) -> str:
        rows = ["| option | type | default (`grpo`) | meaning |", "|---|---|---|---|"]
        for key in keys:
            field = base.model_fields[key]
            rows.append(f"| `{key}` | {_cell(_type(field.annotation))} | `{_default(field)}` | "
                        f"{_cell(field.description or '')} |")
        return "\n".join(rows)

    own_tables = {}
    for name in registry.names():
        fields = registry.get(name).options.model_fields
        rows = [f"| `{key}` | `{_default(field)}` | {_cell(field.description or '')} |"
                for key, field in fields.items() if key != "name" and (
                    key not in base.model_fields or _default(field) != _default(base.model_fields[key])
                    or field.description != base.model_fields[key].description)]
        if rows:
            own_tables[f"options-{name}"] = "\n".join(["| option | default | meaning |", "|---|---|---|", *rows])
    return {**own_tables, "algorithms": "\n".join(table),
            "algorithm-options": options([key for key in shared if key != "name"]),
            "clipped-options": options([key for key in ClippedOptions.model_fields if key not in shared])}


FILES = {"docs/configuration.md": configuration, "docs/algorithms.md": algorithms}
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                   re.S)


def render(path: Path, tables: dict[str, str]) -> str:
    """``path``'s text with each generated block replaced; a table without its block is an error, except a
    preset's own options (``options-<name>``: a section of its own is written by hand, when there is one)."""
    text = path.read_text()
    found = {m.group("name") for m in BLOCK.finditer(text)}
    missing = sorted(name for name in set(tables) - found if not name.startswith("options-"))
    if missing:
        raise SystemExit(f"{path}: no BEGIN/END GENERATED block for {', '.join(missing)}")
    return BLOCK.sub(lambda m: m.group(1) + tables[m.group("name")] + "\n" + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is out of date")
    args = parser.parse_args()
    stale = []
    for relative, make in FILES.items():
        path = ROOT / relative
        text = render(path, make())
        if text != path.read_text():
            stale.append(relative)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    print("rewrote " + ", ".join(stale) if stale else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
