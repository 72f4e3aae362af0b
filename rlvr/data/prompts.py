"""Prompt datasets: where they come from, how they become token ids, and the order a run reads them in.

A source is one of
- ``tiny:train`` / ``tiny:heldout``: the built-in arithmetic task (:mod:`rlvr.data.tasks.arithmetic`);
- a local ``.jsonl``, ``.json`` or ``.parquet`` file with a problem and an answer column (the format of
  ../shared/data: ``id``, ``problem``, ``answer``, other fields carried to the reward function);
- a Hugging Face dataset name, ``name[:split]`` (loaded with the ``datasets`` package, which is optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlvr.data.tasks import arithmetic

# The Qwen2.5-Math chain-of-thought instruction (QwenLM/Qwen2.5-Math evaluation, "qwen25-math-cot", where it
# is the system prompt); DeepSeek-R1's model card recommends the same sentence inside the user message.
QWEN_BOXED_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

# Template name -> what the model sees. Any other template is a format string with a {problem} field,
# rendered as plain text (for base models without a chat template).
TEMPLATES: dict[str, str] = {
    "plain": "the problem text as it is, no chat template",
    "chat": "the problem as the user message of the model's chat template",
    "qwen-boxed": "Qwen2.5-Math chain of thought: the system prompt 'Please reason step by step, and put your "
                  "final answer within \\boxed{}.' and the problem as the user message, in the chat template",
    "r1": "DeepSeek-R1's recommendation: the problem followed by that same instruction as the user message, "
          "no system prompt, in the chat template",
}


def check_template(template: str) -> str:
    """``template`` if it is a known name or a format string with a ``{problem}`` field; else ValueError."""
    if template in TEMPLATES:
        return template
    if "{problem}" in template:
        try:
            template.format(problem="")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"prompt template {template!r} is not a valid format string: only {{problem}} may be "
                             f"a field, and literal braces are written {{{{ }}}} ({type(error).__name__}: {error})"
                             ) from None
        return template
    raise ValueError(f"prompt template {template!r} is unknown; use one of {', '.join(TEMPLATES)}, or a format "
                     "string with a {problem} field such as 'Question: {problem}\\nAnswer:'")


@dataclass
class Prompt:
    id: str
    problem: str
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)


def load_prompts(source: str, problem_key: str = "problem", answer_key: str = "answer", limit: int | None = None,
                 seed: int = 0) -> list[Prompt]:
    """Every prompt of ``source`` (the first ``limit`` when given). Raises ValueError naming what is wrong."""
    if source.startswith("tiny:"):
        split = source.split(":", 1)[1]
        count = limit or (arithmetic.HELDOUT_SIZE if split == "heldout" else 200_000)
        return [Prompt(p.id, p.problem, p.answer) for p in arithmetic.problems(split, count, seed=seed)]
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        if not path.exists():
            raise ValueError(f"dataset file {source!r} does not exist")
        rows = _read_file(path)
    else:
        rows = _read_hub(source)
    prompts = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        missing = [k for k in (problem_key, answer_key) if _lookup(row, k) is None]
        if missing:
            raise ValueError(
                f"dataset {source!r} row {i} has no field {missing[0]!r}; its fields are {sorted(row)} "
                "(set data.problem_key / data.answer_key; a dotted key such as reward_model.ground_truth "
                "reads a nested field)"
            )
        rest = {k: v for k, v in row.items() if k not in (problem_key, answer_key, "id")}
        prompts.append(Prompt(str(row.get("id", f"{path.stem}-{i}")), str(_lookup(row, problem_key)),
                              str(_lookup(row, answer_key)), rest))
    if not prompts:
        raise ValueError(f"dataset {source!r} is empty")
    return prompts


def _lookup(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, following dots into nested records (verl parquet: ``reward_model.ground_truth``)."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data.get("data", [])
    import pyarrow.parquet as pq  # optional: parquet users have pyarrow

    return pq.read_table(path).to_pylist()


def _read_hub(name: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as error:
        raise ValueError(
            f"data source {name!r} is not a local .jsonl/.json/.parquet file or 'tiny:<split>', and the "
            "optional 'datasets' package needed for Hugging Face hub datasets is not installed "
            "(pip install 'rlvr[hub]')"
        ) from error
    repo, _, split = name.partition(":")
    return list(datasets.load_dataset(repo, split=split or "train"))


def render(prompt: Prompt, template: str, tokenizer) -> list[int]:
    """Token ids of ``prompt`` under ``template`` (a name in :data:`TEMPLATES` or a ``{problem}`` format string)."""
    check_template(template)
    if template == "plain":
        return tokenizer(prompt.problem, add_special_tokens=False).input_ids
    if template not in TEMPLATES:
        return tokenizer(template.format(problem=prompt.problem), add_special_tokens=False).input_ids
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"prompt template {template!r} needs the model's chat template, and this tokenizer has "
                         "none (a base model?); use 'plain' or a '{problem}' format string")
    messages = [{"role": "user", "content": prompt.problem}]
    if template == "qwen-boxed":
        messages.insert(0, {"role": "system", "content": QWEN_BOXED_SYSTEM})
    elif template == "r1":
        messages[0]["content"] = f"{prompt.problem}\n{QWEN_BOXED_SYSTEM}"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


class PromptStream:
    """An endless, seeded, epoch-wise shuffled stream of prompt batches whose position is checkpointable.

    The order is a pure function of ``(seed, epoch)``, so resuming at ``(epoch, offset)`` replays exactly
    the batches an uninterrupted run would have read.
    """

    def __init__(self, prompts: list[Prompt], batch_size: int, seed: int, shuffle: bool = True):
        if batch_size > len(prompts):
            raise ValueError(f"data.batch_size {batch_size} is larger than the dataset ({len(prompts)} prompts)")
        self.prompts, self.batch_size, self.seed, self.shuffle = prompts, batch_size, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

    def next_batch(self) -> list[Prompt]:
        if self.offset + self.batch_size > len(self.prompts):  # drop the ragged tail of an epoch
            self.epoch, self.offset = self.epoch + 1, 0
        order = self._order()[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return [self.prompts[i] for i in order]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
