"""Where prompt rows come from: a short source string, or a ``datasets``-style spec.

A source is either

- a string: a local ``.jsonl`` / ``.json`` / ``.parquet`` file (read directly, no ``datasets`` cache), or
  ``name[:split]`` for anything ``datasets`` reads by path (a hub id, a local dataset directory); or
- a :class:`DatasetSpec` ``{path, name, split, data_files}``, with exactly ``datasets.load_dataset``'s
  meaning, except that a directory written by ``save_to_disk`` is read with ``datasets.load_from_disk``.

:func:`read_rows` returns the rows as plain dicts, :func:`read_located_rows` each with where it is (a file's
line, a table's row index); :mod:`rlvr.data.prompts` turns them into prompts. Every failure is a ValueError
that names the source, the line where there is one, and what to do.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DatasetSpec(BaseModel):
    """A dataset as ``datasets.load_dataset(path, name, split=split, data_files=data_files)`` reads it.

    ``{path: parquet, data_files: train.parquet}`` reads a local file (also ``csv``, ``json`` for .json and
    .jsonl); ``{path: openai/gsm8k, name: main, split: train}`` a hub dataset; ``{path: DIR}`` a directory
    written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with ``load_from_disk``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="load_dataset's path: a builder (parquet, csv, json), a hub id such as "
                      "openai/gsm8k, a local dataset directory, or a directory written by save_to_disk.")
    name: str | None = Field(None, description="The configuration (load_dataset's name), e.g. 'main' for "
                             "openai/gsm8k; null for datasets with one.")
    split: str | None = Field(None, description="The split, with load_dataset's slicing ('train', "
                              "'train[:1000]'); null: the only split, else 'train'.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="load_dataset's data_files: a file, a list or glob of files, or a mapping split -> "
        "files; relative paths are read from the working directory.")

    def __str__(self) -> str:
        shown = ", ".join(f"{k}: {v}" for k, v in self.model_dump(exclude_none=True).items())
        return f"{{{shown}}}"

    @classmethod
    def parse(cls, value: dict[str, Any]) -> DatasetSpec:
        """``value`` as a spec; a ValueError that names the wrong key or value otherwise."""
        try:
            return cls.model_validate(value)
        except ValidationError as error:
            problems = []
            for e in error.errors():
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    problems.append(f"unknown key {key!r}")
                elif e["type"] == "missing":
                    problems.append(f"{key!r} is missing")
                else:
                    problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
            raise ValueError(f"dataset spec {value!r}: {'; '.join(problems)}; a spec has the keys "
                             f"{', '.join(cls.model_fields)} (datasets.load_dataset's arguments) and needs a "
                             "path") from None


def describe(source: str | DatasetSpec) -> str:
    """How error messages name a source: ``dataset 'data/train.jsonl'``, ``dataset {path: parquet, ...}``."""
    return f"dataset {source!r}" if isinstance(source, str) else f"dataset {source}"


def read_rows(source: str | DatasetSpec, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` (default all) rows of ``source``, as dicts."""
    return [row for _, row in read_located_rows(source, limit)]


def read_located_rows(source: str | DatasetSpec, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The first ``limit`` (default all) rows of ``source``, each with where it is, for error messages: ``line N``
    (the 1-based physical line) in a JSON Lines file, ``record N`` (the index in the array) in a .json file,
    ``row N`` (the index, as ``table[N]`` reads it) in a parquet file or a ``datasets`` table.

    Files are read as UTF-8, with or without a byte order mark; a byte that is not UTF-8, a line that is not
    JSON, or a record that is not a JSON object is a ValueError naming the file and the line."""
    if isinstance(source, DatasetSpec):
        return _located("row", _read_dataset(source, limit))
    path = Path(source)
    if path.suffix in FILE_SUFFIXES:
        if not path.exists():
            raise ValueError(f"dataset file {source!r} does not exist")
        if path.is_dir():
            raise ValueError(f"dataset file {source!r} is a directory; name the file, or give the directory as a "
                             "dataset spec {path: DIR}")
        rows = _read_file(path)
        return rows[:limit] if limit else rows
    repo, _, split = source.partition(":")
    return _located("row", _read_dataset(DatasetSpec(path=repo, split=split or None), limit))


def _located(kind: str, rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{kind} {index}", row) for index, row in enumerate(rows)]


def _read_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        text = _utf8(path, path.read_bytes())
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"dataset file {str(path)!r} line {error.lineno} column {error.colno} is not JSON: "
                             f"{error.msg}") from None
        records = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
        rows = _located("record", records)
        for where, row in rows:
            _check_object(path, where, row)
        return rows
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading the parquet file {str(path)!r} needs pyarrow: pip install pyarrow") from None
    try:
        return _located("row", pq.read_table(path).to_pylist())
    except (OSError, pyarrow.ArrowException) as error:
        raise ValueError(f"could not read the parquet file {str(path)!r}: {error}") from None


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """One record per physical line (split at \\n only: a U+2028 inside a string is not a line break)."""
    rows, offset = [], 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = _utf8(path, raw, number, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"dataset file {str(path)!r} line {number} column {error.colno} is not JSON: "
                                 f"{error.msg}") from None
            _check_object(path, f"line {number}", row)
            rows.append((f"line {number}", row))
    return rows


def _utf8(path: Path, data: bytes, line: int = 1, offset: int = 0) -> str:
    """``data``, the bytes of ``path`` from byte ``offset`` (on ``line``), as text. A byte order mark at the start
    of the file is dropped: a file saved "UTF-8 with BOM" is still UTF-8."""
    start = len(codecs.BOM_UTF8) if offset == 0 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        at = start + error.start
        line += data.count(b"\n", 0, at)
        raise ValueError(f"dataset file {str(path)!r} line {line} (byte offset {offset + at}) is not UTF-8: byte "
                         f"{data[at]:#04x} ({error.reason}). The file must be UTF-8; if it is Latin-1 (Windows-1252, "
                         f"...), convert it: iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}") from None


def _check_object(path: Path, where: str, row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"dataset file {str(path)!r} {where} is not a JSON object: each record is one "
                         f"{{\"id\": ..., \"problem\": ..., \"answer\": ...}} (got {json.dumps(row)[:80]})")


def _is_saved(path: Path) -> bool:
    """A directory written by ``save_to_disk`` (a Dataset's state.json or a DatasetDict's dataset_dict.json)."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def _read_dataset(spec: DatasetSpec, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"reading {describe(spec)} needs the 'datasets' package: pip install datasets") from None
    saved = _is_saved(Path(spec.path))
    if saved and (spec.name or spec.data_files):
        raise ValueError(f"{describe(spec)}: {spec.path!r} was written by save_to_disk, so name and data_files do "
                         "not apply (load_from_disk reads it whole); keep path and, for a DatasetDict, split")
    try:
        if saved:
            loaded = datasets.load_from_disk(spec.path)
        else:
            loaded = datasets.load_dataset(spec.path, spec.name, split=spec.split, data_files=spec.data_files)
    except ImportError as error:
        raise ValueError(f"reading {describe(spec)} needs the package {error.name!r}, which is not installed: "
                         f"pip install {error.name}") from None
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise ValueError(f"could not read {describe(spec)}: {type(error).__name__}: {error}") from None
    table = _one_split(loaded, spec, saved)
    if limit:
        table = table.select(range(min(limit, len(table))))
    return table.to_list()


def _one_split(loaded, spec: DatasetSpec, saved: bool):
    """The split ``spec`` asks for: load_dataset(split=None) and a saved DatasetDict hold several."""
    if not hasattr(loaded, "keys"):  # one Dataset
        if saved and spec.split and spec.split != loaded.split:
            raise ValueError(f"{describe(spec)}: the saved dataset is one table (split {loaded.split}), not a "
                             f"DatasetDict with a {spec.split!r} split; leave split out")
        return loaded
    splits = list(loaded.keys())
    split = spec.split or (splits[0] if len(splits) == 1 else "train")
    if split not in loaded:
        raise ValueError(f"{describe(spec)} has no split {split!r}; its splits are {', '.join(splits)} (set split)")
    return loaded[split]
