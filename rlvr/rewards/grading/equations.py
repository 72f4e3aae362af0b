"""Pairing equations: a one-variable equation (``x = 3``, ``y = 2x + 1``, ``x \\in [2, 5]``) is compared by its
right side, and two such equations must name the same variable.

Applied to the cleaned answer and gold before the checks, so that ``x = 3`` against ``3`` is decided as
``3`` against ``3`` by whichever check fits.
"""

from __future__ import annotations

import re

_GREEK = "alpha|beta|gamma|delta|theta|lambda|mu|phi|psi|omega|rho|sigma|tau"
_ASSIGNMENT = re.compile(
    rf"\s*([A-Za-z](?:_\{{?[A-Za-z0-9]+\}}?)?|\\(?:{_GREEK}))\s*(=|\\in(?![a-zA-Z]))\s*([^=]+?)\s*"
)


def _top_level_split(text: str) -> list[str]:
    """``text`` split at commas outside brackets: ``(1, 2), 3`` -> ``["(1, 2)", " 3"]``."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _assignment(cleaned: str) -> tuple[str, str] | None:
    """``(variable, right side)`` for ``x = 3``, ``x \\in [2, 5]`` or ``x = 1, x = 2`` (one variable), else None."""
    matches = [_ASSIGNMENT.fullmatch(part) for part in _top_level_split(cleaned)]
    if not all(matches):
        return None
    variables = {(match.group(1), match.group(2)) for match in matches}
    if len(variables) != 1:
        return None
    return matches[0].group(1), ", ".join(match.group(3) for match in matches)


def align_equations(answer: str, gold: str) -> tuple[str, str, bool | None]:
    """Cleaned answer and gold with a one-variable left side dropped, and a verdict when that decides.

    ``x = 3`` against ``3`` compares ``3``; ``y = 2x + 1`` against ``y = 1 + 2x`` compares the right sides;
    ``x = 3`` against ``y = 3`` is wrong. A side is only stripped when the other has no ``=`` at all, so
    ``y = 2x + 3`` against ``y - 2x = 3`` stays a comparison of two equations.
    """
    answer_side, gold_side = _assignment(answer), _assignment(gold)
    if answer_side is not None and gold_side is not None:
        if answer_side[0] != gold_side[0]:
            return answer, gold, False
        return answer_side[1], gold_side[1], None
    if answer_side is not None and "=" not in gold:
        return answer_side[1], gold, None
    if gold_side is not None and "=" not in answer:
        return answer, gold_side[1], None
    return answer, gold, None
