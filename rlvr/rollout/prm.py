"""Scorers of partial responses, for PRM early rejection (:mod:`rlvr.rollout.early_rejection`).

A scorer is any callable ``scorer(prompts: list[str], partials: list[str]) -> list[float]``: one score per
(prompt, partial response) pair, higher is better, called in batches. ``partials`` are decoded response
prefixes (special tokens removed), possibly cut mid-step, mid-word or mid-number. Four come with rlvr:

- :class:`FunctionScorer` wraps the user contract ``fn(prompt: str, partial_response: str) -> float``
  (``load_scorer("package.module:function")``);
- :class:`MathShepherdPRM`: a causal-LM PRM that predicts ``+``/``-`` after a step tag ("ки"), as
  peiyi9979/math-shepherd-mistral-7b-prm, the PRM of the early-rejection paper (arXiv 2508.01969);
- :class:`QwenPRM`: a 2-class per-token classifier read at ``<extra_0>`` step separators, as
  Qwen/Qwen2.5-Math-PRM-7B;
- :class:`ArithmeticProgressScorer`: an exact, microsecond scorer for the embedded tiny arithmetic task.

Both PRMs score a partial response by the score of its *last* step, as the paper's partial beam search does
(``algorithms/partial_beam_search.py`` keeps ``score[-1]``): the claim of the paper is that a PRM's
verdict on a partial step already ranks candidates well.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

Scorer = Callable[[list[str], list[str]], list[float]]

SPECS = ("arithmetic", "math-shepherd:PATH", "qwen-prm:PATH", "package.module:function")


class FunctionScorer:
    """A batched scorer from a user function ``fn(prompt: str, partial_response: str) -> float``.

    The contract: ``prompt`` is the prompt text (the problem), ``partial_response`` the response so far,
    decoded without special tokens and possibly cut anywhere (mid-word, mid-number); return a finite number,
    higher meaning more promising. Scores only rank candidates of the same prompt against each other, so
    their scale is free. A NaN ranks below every number. ``fn`` is called once per pair, in the caller's
    process: keep it fast (it runs on every candidate of every round).
    """

    def __init__(self, fn: Callable[[str, str], float], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def __call__(self, prompts: list[str], partials: list[str]) -> list[float]:
        scores = []
        for prompt, partial in zip(prompts, partials, strict=True):
            value = self.fn(prompt, partial)
            try:
                scores.append(float(value))
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"scorer {self.name} returned {value!r} ({type(value).__name__}) for partial {partial[:40]!r}; "
                    "it must return a number: fn(prompt, partial_response) -> float"
                ) from error
        return scores


class ArithmeticProgressScorer:
    """Exact partial-progress score for the tiny arithmetic task (:mod:`rlvr.data.tasks.arithmetic`).

    The prompt's last ``a<op>b=`` (``op`` one of ``+ - *``, integers) is evaluated to the answer string
    ``A`` (``str(value)``: ``"85"``, ``"-52"``). The partial response ``s`` (leading whitespace removed) is
    scored:

    - ``1.0`` when ``s`` is exactly ``A``: the answer, nothing after it;
    - ``0.75`` when ``s`` is a shorter prefix of ``A`` (``""``, ``"8"`` for ``85``): nothing contradicts
      the answer yet;
    - ``0.5`` when ``s`` is ``A`` followed by anything (``"85 3*1"``, ``"850"``): the right answer, then
      rambling, which :func:`rlvr.rewards.grading.grade` marks wrong (a lone trailing space scores 0.5
      too: the warm-started tiny model nearly always goes on rambling after it);
    - ``0.5 * k / len(A)`` otherwise, ``k`` the number of leading characters ``s`` shares with ``A``:
      a wrong number, below every partial that still holds the right one (``"84"`` for ``85``: 0.25).

    Text only, as a PRM sees it: a finished ``"85"`` and an unfinished ``"85"`` score the same (both
    1.0), so at ``tau`` tokens an answer of ``tau`` characters cannot be told from the same answer about to
    ramble; from ``tau`` = longest answer + 1 (4 on this task) the scorer sees whether the answer stopped.
    It knows the answer, so it is an oracle: on this task best-of-N with it is (nearly) pass@N. It is there
    to measure what early rejection saves and loses in a few CPU seconds (about 0.3 us a pair), not as a
    model of a learned PRM.
    """

    def __call__(self, prompts: list[str], partials: list[str]) -> list[float]:
        return [self.score(prompt, partial) for prompt, partial in zip(prompts, partials, strict=True)]

    @staticmethod
    def score(prompt: str, partial: str) -> float:
        answer = arithmetic_answer(prompt)
        s = partial.lstrip()
        if s == answer:
            return 1.0
        if answer.startswith(s):
            return 0.75
        if s.startswith(answer):
            return 0.5
        shared = 0
        while shared < min(len(s), len(answer)) and s[shared] == answer[shared]:
            shared += 1
        return 0.5 * shared / len(answer)


_EXPRESSION = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=")


@lru_cache(maxsize=65536)
def arithmetic_answer(prompt: str) -> str:
    """The answer string of a tiny arithmetic prompt (its last ``a<op>b=``): ``"47+38="`` -> ``"85"``."""
    matches = _EXPRESSION.findall(prompt)
    if not matches:
        raise ValueError(
            f"prompt {prompt[:60]!r} has no arithmetic expression 'a+b=', 'a-b=' or 'a*b='; the 'arithmetic' "
            "scorer only scores the tiny arithmetic task (rlvr.data.tasks.arithmetic)"
        )
    a, op, b = matches[-1]
    a, b = int(a), int(b)
    return str({"+": a + b, "-": a - b, "*": a * b}[op])


def split_steps(response: str, delimiter: str) -> list[str]:
    """The non-empty steps of ``response`` split at ``delimiter``, each stripped; ``[""]`` when none."""
    return [step.strip() for step in response.split(delimiter) if step.strip()] or [""]


class _TokenPRM:
    """What both Hugging Face PRMs share: build one input per pair, run the model in right-padded batches,
    read a 2-way softmax at the last marker token of each row."""

    marker: str  # shown in errors

    def __init__(self, model, tokenizer, batch_size: int = 8, device: str | torch.device | None = None):
        if batch_size < 1:
            raise ValueError(f"PRM batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    def encode(self, prompt: str, partial: str) -> list[int]:
        raise NotImplementedError

    def marker_id(self) -> int:
        raise NotImplementedError

    def probabilities(self, output: Any, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The score of each row at its position, from the model's output: ``[len(rows)]``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, prompts: list[str], partials: list[str]) -> list[float]:
        if len(prompts) != len(partials):
            raise ValueError(f"{len(prompts)} prompts but {len(partials)} partial responses; "
                             "give one prompt per partial")
        encoded = [self.encode(prompt, partial) for prompt, partial in zip(prompts, partials)]
        marker = self.marker_id()
        positions = []
        for ids, partial in zip(encoded, partials):
            at = [i for i, t in enumerate(ids) if t == marker]
            if not at:
                raise ValueError(f"the PRM input for partial {partial[:40]!r} holds no {self.marker!r} token "
                                 f"(id {marker}): the tokenizer merges it with its neighbours")
            positions.append(at[-1])
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, row in enumerate(batch):  # right padding: every real token keeps its unpadded position
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            output = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            rows = torch.arange(len(batch), device=self.device)
            where = torch.tensor(positions[start : start + self.batch_size], device=self.device)
            scores.extend(self.probabilities(output, rows, where).float().cpu().tolist())
        return scores


class MathShepherdPRM(_TokenPRM):
    """Math-Shepherd-style PRM: a causal LM that predicts ``+`` (step right) or ``-`` after each step tag.

    Input, as the Math-Shepherd model card and the paper's ``core/scoring.py`` build it:
    ``f"{prompt} {step_1} ки\\n{step_2} ки\\n...{step_k} ки"``, steps being the partial response split at
    ``step_delimiter`` (default ``"\\n\\n"``, stripped, empty ones dropped). The score of step ``j`` is
    ``softmax(logits[t_j, [id('+'), id('-')]])[0]`` = P('+' | '+' or '-') at the position ``t_j`` of its tag
    (the logits there predict the next token); the score of the partial response is that of its last step.
    Token ids: the tag is ``encode(step_tag)[-1]``; ``+``/``-`` are the two tokens of ``encode("+ -")``
    when it has two (the Mistral tokenizer: [648, 387]), else each one's last token.
    """

    marker = "step tag"

    def __init__(self, model, tokenizer, step_tag: str = "ки", good_token: str = "+", bad_token: str = "-",
                 step_delimiter: str = "\n\n", batch_size: int = 8, device: str | torch.device | None = None):
        super().__init__(model, tokenizer, batch_size, device)
        if not step_delimiter:
            raise ValueError("MathShepherdPRM step_delimiter must be a non-empty string, e.g. '\\n\\n'")
        self.step_tag, self.step_delimiter = step_tag, step_delimiter
        self.marker = f"step tag {step_tag!r}"
        self.tag_id = tokenizer.encode(step_tag, add_special_tokens=False)[-1]
        pair = tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
        if len(pair) != 2:
            pair = [tokenizer.encode(t, add_special_tokens=False)[-1] for t in (good_token, bad_token)]
        self.candidate_ids = pair

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                        **options: Any) -> MathShepherdPRM:
        """Load a local causal-LM PRM (``AutoModelForCausalLM``/``AutoTokenizer``); ``options`` go to
        ``__init__`` (``step_tag``, ``good_token``, ``bad_token``, ``step_delimiter``, ``batch_size``, ``device``)."""
        from rlvr.models.loading import load_model, load_tokenizer

        return cls(load_model(path, dtype, trust_remote_code=trust_remote_code), load_tokenizer(path), **options)

    def text(self, prompt: str, partial: str) -> str:
        steps = split_steps(partial, self.step_delimiter)
        return f"{prompt} " + "\n".join(f"{step} {self.step_tag}" for step in steps)

    def encode(self, prompt: str, partial: str) -> list[int]:
        return list(self.tokenizer(self.text(prompt, partial)).input_ids)

    def marker_id(self) -> int:
        return self.tag_id

    def probabilities(self, output: Any, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = output.logits[rows, positions][:, self.candidate_ids]  # [n, 2]: '+', '-'
        return logits.float().softmax(-1)[:, 0]


class QwenPRM(_TokenPRM):
    """Qwen2.5-Math-PRM-style PRM: per-token 2-class logits, read at the ``<extra_0>`` after each step.

    Input, as the Qwen/Qwen2.5-Math-PRM-7B model card builds it: the chat
    ``[system: QWEN_BOXED_SYSTEM, user: prompt, assistant: "<extra_0>".join(steps) + "<extra_0>"]`` rendered by
    the tokenizer's chat template (no generation prompt) and encoded; steps are the partial response split
    at ``step_delimiter`` (default ``"\\n\\n"``, the card's advice for Qwen2.5-Math-Instruct outputs). The
    score of step ``j`` is ``softmax(logits[t_j])[1]`` (class 1 = right) at its separator position ``t_j``;
    the partial response's score is its last step's. The model is anything whose ``output[0]`` is
    ``[B, T, 2]``: the real one's remote-code ``Qwen2ForProcessRewardModel``, or e.g. transformers'
    ``LlamaForTokenClassification(num_labels=2)``.
    """

    def __init__(self, model, tokenizer, step_delimiter: str = "\n\n", separator: str = "<extra_0>",
                 system: str | None = None, batch_size: int = 8, device: str | torch.device | None = None):
        super().__init__(model, tokenizer, batch_size, device)
        from rlvr.data.prompts import QWEN_BOXED_SYSTEM

        if not step_delimiter:
            raise ValueError("QwenPRM step_delimiter must be a non-empty string, e.g. '\\n\\n'")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("QwenPRM needs a tokenizer with a chat template (the PRM reads a system/user/"
                             "assistant chat); this tokenizer has none")
        self.step_delimiter, self.separator = step_delimiter, separator
        self.system = QWEN_BOXED_SYSTEM if system is None else system
        self.marker = f"separator {separator!r}"
        self.separator_id = tokenizer.encode(separator, add_special_tokens=False)[0]

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                        **options: Any) -> QwenPRM:
        """Load a local PRM. A checkpoint whose architecture is a transformers ``*ForTokenClassification``
        loads with ``AutoModelForTokenClassification``; any other (the real Qwen2.5-Math-PRM, whose class
        ships with the checkpoint) with ``AutoModel`` and needs ``trust_remote_code=True``."""
        from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

        from rlvr.models.loading import load_tokenizer, quiet_transformers

        quiet_transformers()
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        architectures = getattr(config, "architectures", None) or []
        if any(a.endswith("ForTokenClassification") for a in architectures):
            loader = AutoModelForTokenClassification
        elif not trust_remote_code:
            raise ValueError(
                f"the PRM at {path!r} has architecture {architectures or 'unknown'}, whose code ships with the "
                "checkpoint (Qwen2.5-Math-PRM: Qwen2ForProcessRewardModel); load it with trust_remote_code=True "
                "if you trust that code"
            )
        else:
            loader = AutoModel
        model = loader.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
        return cls(model, load_tokenizer(path), **options)

    def text(self, prompt: str, partial: str) -> str:
        steps = split_steps(partial, self.step_delimiter)
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": self.separator.join(steps) + self.separator},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, prompt: str, partial: str) -> list[int]:
        return list(self.tokenizer.encode(self.text(prompt, partial)))

    def marker_id(self) -> int:
        return self.separator_id

    def probabilities(self, output: Any, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = output[0][rows, positions]  # [n, 2]
        if logits.shape[-1] != 2:
            raise ValueError(f"QwenPRM expects 2-class logits [B, T, 2] from the model, got [..., {logits.shape[-1]}]")
        return logits.float().softmax(-1)[:, 1]


PRMS = {"math-shepherd": MathShepherdPRM, "qwen-prm": QwenPRM}


def check_spec(spec: str) -> None:
    """Check the form of a scorer spec without loading anything; ``ValueError`` naming what is wrong."""
    from rlvr.rewards.registry import SPEC_PATTERN

    kind, _, path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind in PRMS and not path:
        raise ValueError(f"scorer spec {spec!r} names no checkpoint; write '{kind}:PATH' with a local directory")
    if not (spec == "arithmetic" or kind in PRMS or SPEC_PATTERN.fullmatch(spec or "")):
        raise ValueError(f"scorer spec {spec!r} is unknown; use one of {', '.join(SPECS)}")


def load_scorer(spec: str, **options: Any) -> Scorer:
    """A scorer from a spec: ``"arithmetic"``, ``"math-shepherd:PATH"``, ``"qwen-prm:PATH"`` (a local
    checkpoint directory; ``options`` go to ``from_pretrained``: ``dtype``, ``trust_remote_code``,
    ``step_delimiter``, ``batch_size``, ``device``...) or ``"package.module:function"`` naming a user
    function ``fn(prompt, partial_response) -> float``. Raises ``ValueError`` naming what is wrong."""
    check_spec(spec)
    kind, _, path = spec.partition(":")
    if kind in PRMS:
        return PRMS[kind].from_pretrained(path, **options)
    if options:
        raise ValueError(f"scorer {spec!r} takes no options, got {sorted(options)}; only the PRM specs "
                         "(math-shepherd:PATH, qwen-prm:PATH) do")
    if spec == "arithmetic":
        return ArithmeticProgressScorer()
    from rlvr.rewards.registry import import_callable

    try:
        fn = import_callable(spec, "scorer function", "fn(prompt: str, partial_response: str) -> float")
    except ValueError as error:
        raise ValueError(f"{error} (scorer specs: {', '.join(SPECS)})") from error
    return FunctionScorer(fn, spec)

