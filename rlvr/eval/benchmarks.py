"""The evaluation benchmarks by name, loaded from a data directory or from the Hugging Face hub.

``math500``, ``aime24``, ``aime25``, ``amc23`` and ``gsm8k`` are known by name. Each loads, in order:

1. from a data directory (``--data-dir``, else ``$RLVR_DATA_DIR``): the JSON Lines file named in
   :data:`BENCHMARKS` (``math500.jsonl``...), one problem per line with ``id``, ``problem``, ``answer`` and
   any other fields (``subject``, ``level``...): the format of the project's ``shared/data``;
2. else from the Hugging Face hub dataset users know (``HuggingFaceH4/MATH-500``...), read with
   ``datasets`` and mapped to the same fields.

Any other benchmark is a path to a ``.jsonl``/``.json``/``.parquet`` file of that format, named by its stem.
:func:`check_names` validates a list of names without reading anything, so a bad recipe or command line
fails before a model is loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.data.prompts import Prompt, gsm8k_answer, load_prompts
from rlvr.data.sources import FILE_SUFFIXES, DatasetSpec, read_rows

log = logging.getLogger("rlvr")

DATA_DIR_ENV = "RLVR_DATA_DIR"


def _integer_valued(value: Any) -> str:
    """``27.0`` (math-ai/amc23 stores floats) -> ``"27"``; anything else as its string."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Benchmark:
    """Where a named benchmark lives, and how a hub row maps to ``id`` / ``problem`` / ``answer``."""

    name: str
    file: str  # the file name in a data directory
    hub: str  # the Hugging Face dataset
    hub_split: str
    hub_config: str | None = None
    hub_problem: str = "problem"
    hub_answer: str = "answer"
    hub_id: str | None = None  # the id column; without one, "<id_prefix>-<row>"
    id_prefix: str = ""  # default: the benchmark's name
    hub_answer_map: Callable[[Any], str] = _integer_valued

    def from_hub_row(self, index: int, row: dict[str, Any]) -> Prompt:
        has_id = self.hub_id is not None and row.get(self.hub_id) is not None
        identifier = str(row[self.hub_id]) if has_id else f"{self.id_prefix or self.name}-{index}"
        rest = {k: v for k, v in row.items() if k not in (self.hub_problem, self.hub_answer, self.hub_id)}
        return Prompt(identifier, str(row[self.hub_problem]), self.hub_answer_map(row[self.hub_answer]), rest)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math500", "math500.jsonl", "HuggingFaceH4/MATH-500", "test", hub_id="unique_id"),
        Benchmark("aime24", "aime24.jsonl", "HuggingFaceH4/aime_2024", "train", hub_id="id"),
        Benchmark("aime25", "aime25.jsonl", "math-ai/aime25", "test", hub_id="id"),
        Benchmark("amc23", "amc23.jsonl", "math-ai/amc23", "test", hub_problem="question", hub_id="id"),
        Benchmark("gsm8k", "gsm8k_test.jsonl", "openai/gsm8k", "test", hub_config="main", hub_problem="question",
                  id_prefix="gsm8k-test", hub_answer_map=gsm8k_answer),  # the ids of the local copy
    )
}


def is_file_benchmark(name: str) -> bool:
    return Path(name).suffix in FILE_SUFFIXES


def display_name(name: str) -> str:
    """A benchmark's name in tables and results: the name itself, or a file benchmark's stem."""
    return Path(name).stem if is_file_benchmark(name) else name


def check_names(names: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError unless every entry is a known benchmark or an existing benchmark file."""
    if not names:
        raise ValueError(f"no benchmarks given; known: {', '.join(BENCHMARKS)} (or a .jsonl file of problems)")
    for name in names:
        if is_file_benchmark(name):
            if not Path(name).exists():
                raise ValueError(f"benchmark file {name!r} does not exist")
        elif name not in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is unknown; known: {', '.join(BENCHMARKS)}, or a path to a "
                             f"{'/'.join(FILE_SUFFIXES)} file with id, problem and answer fields")
    stems = [display_name(name) for name in names]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"benchmarks {', '.join(duplicates)} are listed more than once")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir``, else ``$RLVR_DATA_DIR``, else None; an explicit directory must exist."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir / eval.data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise ValueError(f"data directory {str(path)!r} ({source}) does not exist or is not a directory")
    return path


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                   on_bad_rows: str = "error") -> list[Prompt]:
    """The first ``limit`` (default all) problems of benchmark ``name``, from the data directory or the hub;
    ``on_bad_rows`` as :func:`~rlvr.data.prompts.load_prompts` takes it, for the files."""
    check_names([name])
    if is_file_benchmark(name):
        return load_prompts(name, limit=limit, on_bad_rows=on_bad_rows)
    benchmark, directory = BENCHMARKS[name], resolve_data_dir(data_dir)
    if directory is not None:
        path = directory / benchmark.file
        if path.exists():
            return load_prompts(str(path), limit=limit, on_bad_rows=on_bad_rows)
        log.info("%s: no %s in %s; loading %s from the Hugging Face hub", name, benchmark.file, directory,
                 benchmark.hub)
    rows = _hub_rows(benchmark, directory)
    prompts = [benchmark.from_hub_row(i, row) for i, row in enumerate(rows[:limit] if limit else rows)]
    if not prompts:
        raise ValueError(f"benchmark {name!r}: {benchmark.hub} split {benchmark.hub_split!r} is empty")
    return prompts


def _hub_rows(benchmark: Benchmark, directory: Path | None) -> list[dict[str, Any]]:
    where = (f"put {benchmark.file} in the data directory ({directory})" if directory is not None else
             f"pass --data-dir (or set ${DATA_DIR_ENV}) to a directory holding {benchmark.file}")
    try:
        return read_rows(DatasetSpec(path=benchmark.hub, name=benchmark.hub_config, split=benchmark.hub_split))
    except ValueError as error:
        raise ValueError(f"benchmark {benchmark.name!r}: {error} (from the Hugging Face hub); or {where}") from None


def load_benchmarks(names: list[str], data_dir: str | os.PathLike | None = None, limit: int | None = None,
                    on_bad_rows: str = "error") -> dict[str, list[Prompt]]:
    """Display name -> problems, for every benchmark in ``names`` (validated together first)."""
    check_names(names)
    resolve_data_dir(data_dir)
    return {display_name(name): load_benchmark(name, data_dir, limit, on_bad_rows) for name in names}

