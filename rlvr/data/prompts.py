"""Prompt datasets: where they come from, how they become token ids, and the order a run reads them in.

A source is ``tiny:train`` / ``tiny:heldout`` (the built-in arithmetic task, :mod:`rlvr.data.tasks.arithmetic`)
or anything :mod:`rlvr.data.sources` reads: a local ``.jsonl`` / ``.json`` / ``.parquet`` file (the format
of ../shared/data: ``id``, ``problem``, ``answer``, other fields carried to the reward function), a
``name[:split]`` that ``datasets`` loads, or a :class:`~rlvr.data.sources.DatasetSpec`.

The problem column holds text, or a list of ``{role, content}`` chat messages (TRL's and verl's
``prompt``), which become the prompt's :attr:`Prompt.messages`; see :func:`render` for how templates treat
them. The answer column may need extracting (:data:`ANSWER_FORMATS`: GSM8K's ``#### 42``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlvr.data.sources import DatasetSpec, describe, read_located_rows
from rlvr.data.tasks import arithmetic

log = logging.getLogger("rlvr")

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


def gsm8k_answer(text: str) -> str:
    """GSM8K's answer field is the worked solution ending in ``#### 72``; the gold is what follows ``####``,
    kept as written (``2,125``: the grader reads thousands separators)."""
    if "####" not in text:
        raise ValueError(f"no '#### answer' line in {text[-80:]!r}")
    return text.rsplit("####", 1)[-1].strip()


# data.answer_format -> how the answer column becomes the gold answer.
ANSWER_FORMATS: dict[str, Callable[[str], str]] = {"raw": lambda text: text, "gsm8k": gsm8k_answer}


@dataclass
class Prompt:
    """One training or evaluation problem.

    ``problem`` is the problem text; for a chat-format row it is the last user message's content, so that
    graders and PRM scorers that read text keep working. ``messages`` is the row's chat prompt as given
    (a list of ``{role, content}``), or None for a text problem. ``fields`` are the row's other columns,
    passed to the reward function.
    """

    id: str
    problem: str
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None

    def with_problem(self, problem: str) -> Prompt:
        """This prompt with its problem text replaced (in the last user message too, for a chat prompt)."""
        if self.messages is None:
            return dataclasses.replace(self, problem=problem)
        messages = [dict(m) for m in self.messages]
        _last_user(messages)["content"] = problem
        return dataclasses.replace(self, problem=problem, messages=messages)


# What load_prompts does with a row that cannot be a prompt (data.on_bad_rows).
ON_BAD_ROWS = ("error", "skip")
SKIP_HINT = "set data.on_bad_rows: skip (rlvr eval: --on-bad-rows skip) to leave such rows out"


def load_prompts(source: str | DatasetSpec | Mapping[str, Any], problem_key: str = "problem",
                 answer_key: str = "answer", limit: int | None = None, seed: int = 0,
                 answer_format: str = "raw", on_bad_rows: str = "error") -> list[Prompt]:
    """Every prompt of ``source`` (the first ``limit`` when given).

    A row that cannot be a prompt (a field missing or null, an empty problem, an answer not in
    ``answer_format``, an id an earlier row has) raises ValueError naming the source, the row (a file's line,
    a table's row index: :func:`~rlvr.data.sources.read_located_rows`) and what is wrong, so that bad data
    stops a run before any model loads. ``on_bad_rows="skip"`` leaves such rows out instead (of repeated ids,
    the first row stays), with one warning that counts them and shows the first few; ``limit`` then counts the
    prompts kept. A file that is not UTF-8 or not JSON always raises: it is broken, not a row.
    """
    if isinstance(source, str) and source.startswith("tiny:"):
        split = source.split(":", 1)[1]
        count = limit or (arithmetic.HELDOUT_SIZE if split == "heldout" else 200_000)
        return [Prompt(p.id, p.problem, p.answer) for p in arithmetic.problems(split, count, seed=seed)]
    if isinstance(source, Mapping):
        source = DatasetSpec.parse(dict(source))
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer format {answer_format!r} is unknown; use one of {', '.join(ANSWER_FORMATS)}")
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows {on_bad_rows!r} is unknown; use one of {', '.join(ON_BAD_ROWS)}")
    skip = on_bad_rows == "skip"
    rows = read_located_rows(source, None if skip else limit)
    if not rows:
        raise ValueError(f"{describe(source)} is empty")
    stem, name = _id_stem(source), describe(source)
    prompts: list[Prompt] = []
    first_seen: dict[str, str] = {}  # id -> where its first row is
    skipped: list[str] = []
    for index, (where, row) in enumerate(rows):
        try:
            prompt = _prompt(row, index, f"{name} {where}", stem, problem_key, answer_key, answer_format)
            if prompt.id in first_seen:
                raise ValueError(f"{name} {where}: id {prompt.id!r} is the id of {first_seen[prompt.id]} too; ids "
                                 "must be unique (per-prompt statistics and evaluation results are kept by id)")
        except ValueError as error:
            if not skip:
                raise ValueError(f"{error}; {SKIP_HINT}") from None
            skipped.append(str(error).removeprefix(f"{name} "))
            continue
        first_seen[prompt.id] = where
        prompts.append(prompt)
        if limit and len(prompts) == limit:
            break
    if skipped:
        if not prompts:
            raise ValueError(f"every row of {name} is bad ({len(skipped)} rows); the first: {skipped[0]}")
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        log.warning("%s: left out %d bad rows (on_bad_rows: skip), kept %d prompts: %s", name, len(skipped),
                    len(prompts), shown)
    return prompts


_MISSING = object()


def _lookup(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, following dots into nested records (verl parquet: ``reward_model.ground_truth``); None when
    a record on the way is null, ``_MISSING`` when a key is not there."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if value is None:
            return None
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _id_stem(source: str | DatasetSpec) -> str:
    """The prefix of generated ids (rows without an ``id`` column): the file's or dataset's name."""
    if isinstance(source, str):
        return source.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "row"
    files = source.data_files
    first = files if isinstance(files, str) else files[0] if isinstance(files, list) and files else None
    return _id_stem(first or source.path.rstrip("/"))


def _prompt(row: dict[str, Any], index: int, where: str, stem: str, problem_key: str, answer_key: str,
            answer_format: str) -> Prompt:
    for key, option in ((problem_key, "problem_key"), (answer_key, "answer_key")):
        value = _lookup(row, key)
        if value is _MISSING:
            parent_key = key.rsplit(".", 1)[0]
            parent = _lookup(row, parent_key) if "." in key else None
            inner = f"; {parent_key!r} has {sorted(parent)}" if isinstance(parent, dict) else ""
            raise ValueError(f"{where} has no field {key!r}; its fields are {sorted(row)}{inner} (set "
                             f"data.{option}; a dotted key such as reward_model.ground_truth reads a nested field)")
        if value is None:
            raise ValueError(f"{where}: {key!r} is null (data.{option})")
    problem, messages = _problem(_lookup(row, problem_key), f"{where}: {problem_key!r}")
    try:
        answer = ANSWER_FORMATS[answer_format](str(_lookup(row, answer_key)))
    except ValueError as error:
        raise ValueError(f"{where}: {answer_key!r} is not in the data.answer_format {answer_format!r}: {error}"
                         ) from None
    identifier = row.get("id")
    rest = {k: v for k, v in row.items() if k not in (problem_key, answer_key, "id")}
    return Prompt(str(identifier) if identifier is not None else f"{stem}-{index}", problem, answer, rest, messages)


def _problem(value: Any, where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(problem text, chat messages or None) of a problem cell: text, or a list of {role, content}."""
    if isinstance(value, list):
        if not value or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                and isinstance(m.get("content"), str) for m in value):
            raise ValueError(f"{where} is a list, so it must be chat messages: a non-empty list of "
                             f"{{role, content}} with string values (got {str(value)[:200]})")
        messages = [dict(m) for m in value]
        if not any(m["role"] == "user" for m in messages):
            raise ValueError(f"{where} has no user message (roles: {[m['role'] for m in messages]})")
        text = _last_user(messages)["content"]
    elif isinstance(value, dict):
        raise ValueError(f"{where} is a mapping, not text or a list of {{role, content}} messages; a dotted key "
                         f"reads a field inside it (its keys: {sorted(value)})")
    else:
        text, messages = str(value), None
    if not text.strip():
        raise ValueError(f"{where} is empty")
    return text, messages


def _last_user(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in reversed(messages) if m["role"] == "user")


def render(prompt: Prompt, template: str, tokenizer) -> list[int]:
    """Token ids of ``prompt`` under ``template`` (a name in :data:`TEMPLATES` or a ``{problem}`` format string).

    A text problem under 'plain' or a format string is tokenized as text. Everything else goes through the
    model's chat template: a chat prompt's messages as the dataset gives them, a text problem as one user
    message. The template then shapes the messages as it would a text problem, never twice: 'qwen-boxed'
    adds its system prompt unless a system message is there already, 'r1' appends its instruction to the
    last user message unless the message holds it already, a format string rewrites the last user message,
    and 'plain' and 'chat' leave them as they are.
    """
    check_template(template)
    if prompt.messages is None and template == "plain":
        return tokenizer(prompt.problem, add_special_tokens=False).input_ids
    if prompt.messages is None and template not in TEMPLATES:
        return tokenizer(template.format(problem=prompt.problem), add_special_tokens=False).input_ids
    if getattr(tokenizer, "chat_template", None) is None:
        if prompt.messages is not None:
            raise ValueError(f"prompt {prompt.id!r} is chat messages, which need the model's chat template, and "
                             "this tokenizer has none (a base model?); use a text problem column")
        raise ValueError(f"prompt template {template!r} needs the model's chat template, and this tokenizer has "
                         "none (a base model?); use 'plain' or a '{problem}' format string")
    messages = [dict(m) for m in prompt.messages or [{"role": "user", "content": prompt.problem}]]
    user = _last_user(messages)
    if template == "qwen-boxed" and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": QWEN_BOXED_SYSTEM})
    elif template == "r1" and QWEN_BOXED_SYSTEM not in user["content"]:
        user["content"] = f"{user['content']}\n{QWEN_BOXED_SYSTEM}"
    elif template not in TEMPLATES:
        user["content"] = template.format(problem=user["content"])
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
        self._ordered_epoch, self._epoch_order = -1, np.arange(0)

    def _order(self) -> np.ndarray:
        """This epoch's order (computed once per epoch: a permutation of 200k rows is milliseconds)."""
        if self._ordered_epoch != self.epoch:
            self._ordered_epoch = self.epoch
            self._epoch_order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))
                                 if self.shuffle else np.arange(len(self.prompts)))
        return self._epoch_order

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
