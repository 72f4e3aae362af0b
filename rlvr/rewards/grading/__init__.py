"""Answer extraction and mathematical equivalence: the one grader behind the math reward and ``rlvr eval``.

``grade(response, gold)`` is :func:`extract_answer` (:mod:`.extract`) followed by :func:`is_equivalent`
(:mod:`.equivalence`). Both answers are first cleaned by the same rewrites (:mod:`.cleaning`:
:func:`normalize` without removing spaces: sizing commands, ``\\dfrac``, ``\\text{}``, units, currency,
degree marks, thousands separators..., and ``2 \\le x < 5`` becomes ``[2, 5)``), equations are aligned
(:mod:`.equations`: ``x = 3`` against ``3``), and then the first check that decides wins, cheapest first
(:mod:`.checks`):

1. the same string after :func:`normalize`;
2. a multiple-choice gold (``(C)``, ``\\text{(C)}``, ``C``, ``\\text{A, C}``): the same letters, or wrong;
3. a base-subscript number (``52_8``): the same digits (the answer may leave out the gold's base), or, for
   a base-subscript answer against a plain gold, the same value;
4. a text gold or answer (``\\text{Evelyn}``, ``east``): the same words, case ignored;
5. plain numbers, and tuples, intervals, sets or lists of them: compared exactly as fractions, in Python
   (:mod:`.numbers`). A gold and an answer that are both integers are always decided here, so integer
   grading never imports sympy;
6. otherwise math-verify (parse both to sympy and compare; :mod:`.bounded`): expressions, radicals,
   matrices, symbolic intervals, relations, complex numbers.

Policies (docs/grading.md lists them with the measured agreement on ``tests/data/equivalence_set.jsonl``):
units, currency signs and degree marks are dropped, never converted (``30^\\circ`` = ``30``, but not
``\\pi/6``); a percentage equals its number and its value (``50\\%`` = ``50`` = ``0.5``); a decimal equals a
fraction only exactly, except a fraction with no finite decimal (``1/3``), which a decimal matches when both
round to the same 6 places (math-verify's rule: ``0.333333`` = ``1/3``, ``0.33`` != ``1/3``); tuples and
intervals are ordered and their brackets matter, sets and bare lists (``1, 2``) are not ordered; a single
variable's equation (``x = 3``, ``y = 2x + 1``, ``x \\in [2, 5]``) equals its right side, and two such
equations must name the same variable; a base subscript may be left out (``52_8`` = ``52``).

Time: every call is bounded (:mod:`.limits`). The string and number checks are linear-time on inputs capped
at ``MAX_ANSWER_CHARS``. The math-verify check runs under ``timeout_s`` (default ``GRADE_TIMEOUT_S``): in a
process's main thread a ``SIGALRM`` interval timer interrupts it (any earlier handler and timer are put
back); in any other thread it goes to one helper process per parent process (spawned on first use, shared
under a lock), which is killed and replaced when it passes the bound or dies. A call past its bound
returns False.
"""

from __future__ import annotations

from rlvr.rewards.grading.cleaning import normalize
from rlvr.rewards.grading.equivalence import grade, is_equivalent
from rlvr.rewards.grading.extract import BARE_ANSWER_MAX_CHARS, extract_answer, last_boxed
from rlvr.rewards.grading.limits import GRADE_TIMEOUT_S, HELPER_START_TIMEOUT_S, HELPER_WAIT_S, MAX_ANSWER_CHARS

__all__ = [
    "BARE_ANSWER_MAX_CHARS",
    "GRADE_TIMEOUT_S",
    "HELPER_START_TIMEOUT_S",
    "HELPER_WAIT_S",
    "MAX_ANSWER_CHARS",
    "extract_answer",
    "grade",
    "is_equivalent",
    "last_boxed",
    "normalize",
]
