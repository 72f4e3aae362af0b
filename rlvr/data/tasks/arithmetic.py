"""The tiny arithmetic task: short integer expressions with exact answers.

A problem is an expression such as ``47+385=`` or ``23*7=`` and its answer the integer value (``432``,
``161``). The model answers with the bare number; answers are graded by
:func:`rlvr.rewards.grading.grade`, the grader the math reward and ``rlvr eval`` use, so the tiny task
exercises the same path as MATH500.

Hints (for Scaf-GRPO, :mod:`rlvr.algos.scaf`): :func:`hint_ladder` gives three tiers of four levels, each
level the answer with some characters masked (``??`` says the length, ``8?`` the leading digit, ``?5``
the ones digit), shown before the problem as ``HINT_TEMPLATE`` does (``8?|47+38=``). The tiny model's warm
start includes such hinted problems, as a base LLM's pretraining includes worked hints, so it can use them.

Problems are a pure function of ``(split, index)``: the held-out split is fixed forever (the same 500+
problems on every machine), and a problem that appears in the held-out split never appears in ``train``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

HELDOUT_SIZE = 512
HINT_TEMPLATE = "{hint}|{problem}"  # hint before the problem: the problem still ends the prompt

# Operation -> (operand ranges). Sums of two 3-digit numbers and products of a 2-digit by a 1-digit
# number: hard enough that a briefly warm-started 1M-parameter model makes mistakes, easy enough that
# it solves a fair share, so sampled groups carry reward signal.
_OPERATIONS = (
    ("+", (10, 99), (10, 99)),
    ("-", (10, 99), (10, 99)),
    ("*", (2, 9), (10, 99)),
)


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


def _draw(rng: random.Random) -> tuple[str, str]:
    op, (lo_a, hi_a), (lo_b, hi_b) = rng.choice(_OPERATIONS)
    return _expression(op, rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b))


def _expression(op: str, a: int, b: int) -> tuple[str, str]:
    return f"{a}{op}{b}=", str({"+": a + b, "-": a - b, "*": a * b}[op])


def _is_heldout(expression: str) -> bool:
    """A stable 1-in-16 hash split, so train never contains a held-out expression."""
    return hashlib.sha256(expression.encode()).digest()[0] % 16 == 0


def _table() -> list[tuple[int, int, list[tuple[str, str, bool]]]]:
    """Per operation: the widths of its two operand ranges, and every ``(expression, answer, held out)`` it can
    draw, indexed ``(a - lo_a) * width_b + (b - lo_b)`` (16,920 in all)."""
    table = []
    for op, (lo_a, hi_a), (lo_b, hi_b) in _OPERATIONS:
        pairs = [_expression(op, a, b) for a in range(lo_a, hi_a + 1) for b in range(lo_b, hi_b + 1)]
        cells = [(expression, answer, _is_heldout(expression)) for expression, answer in pairs]
        table.append((hi_a - lo_a + 1, hi_b - lo_b + 1, cells))
    return table


def problems(split: str, count: int, seed: int = 0) -> list[Problem]:
    """The first ``count`` problems of ``split`` ("train" or "heldout") for ``seed``.

    The held-out split ignores ``seed``: it is one fixed set, so accuracies are comparable across runs.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"tiny arithmetic split {split!r} is unknown; use 'train' or 'heldout'")
    rng = random.Random(f"rlvr-arithmetic-{split}-{0 if split == 'heldout' else seed}")
    want_heldout = split == "heldout"
    out: list[Problem] = []
    seen: set[str] = set()
    # The same draws as ``_draw`` (``choice`` and ``randint`` are ``_randbelow`` of the length and the width:
    # tests/unit/test_data.py holds the two equal), from a table: the train split asks for 200,000 problems,
    # which took 1.6 s of every tiny run's start drawn one by one.
    below = rng._randbelow
    table, operations = _TABLE, len(_TABLE)
    while len(out) < count:
        width_a, width_b, cells = table[below(operations)]
        a = below(width_a)
        expression, answer, heldout = cells[a * width_b + below(width_b)]
        if heldout != want_heldout or (want_heldout and expression in seen):
            continue
        seen.add(expression)
        out.append(Problem(id=f"arith-{split}-{len(out)}", problem=expression, answer=answer))
    return out


_TABLE = _table()


def masked(answer: str, revealed: set[int]) -> str:
    """``answer`` with every character whose index is not in ``revealed`` replaced by ``?``."""
    return "".join(c if i in revealed else "?" for i, c in enumerate(answer))


def reveal_left(answer: str, count: int) -> str:
    """``answer`` with only its first ``count`` characters shown (``8?`` for 85 and 1)."""
    return masked(answer, set(range(count)))


def reveal_right(answer: str, count: int) -> str:
    """``answer`` with only its last ``count`` characters shown (``?5`` for 85 and 1)."""
    return masked(answer, set(range(len(answer) - count, len(answer))))


def hint_ladder(answer: str, levels: int = 4) -> dict[str, list[str]]:
    """Tiered hints for one problem, ``levels`` cumulative levels per tier (Scaf-GRPO's shape), from the
    least help to the most:

    - knowledge: level 1 gives only the answer's length, each further level one more leading character
      (the magnitude: an estimate, leaving the ones digit, the model's usual slip, to the model);
    - planning: level ``l`` gives the last ``l`` characters (the ones column first, as written sums go);
    - solution: the whole answer at every level (the worked solution).

    Levels past the answer's length repeat the full answer.
    """
    return {
        "knowledge": [reveal_left(answer, level - 1) for level in range(1, levels + 1)],
        "planning": [reveal_right(answer, level) for level in range(1, levels + 1)],
        "solution": [answer] * levels,
    }


def warmup_hint(answer: str, rng: random.Random) -> str:
    """A hint as the tiny model's warm start shows them: a random mask family, then a random one of four
    levels: the last 0-3 characters, the first 1-4, or the whole answer. Every pattern of
    :func:`hint_ladder` is among them. Fixed: a change here changes the warm-started model."""
    family = rng.choice(("right", "left", "full"))
    level = rng.randrange(4)
    return {"right": reveal_right(answer, level), "left": reveal_left(answer, level + 1), "full": answer}[family]
