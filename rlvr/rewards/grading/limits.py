"""How long an answer and how long a comparison may be: the bounds that make every grading call cheap.

The regexes and the exact number checks are linear in an answer capped at ``MAX_ANSWER_CHARS``; only the
math-verify check can be slow, and it runs under ``GRADE_TIMEOUT_S`` (see :mod:`.bounded`).
"""

from __future__ import annotations

# Seconds the math-verify part of one comparison may take before it counts as "not equal".
GRADE_TIMEOUT_S = 5.0
# Seconds a spawned helper may take to start (interpreter, sympy and math-verify imports, one warm-up call).
HELPER_START_TIMEOUT_S = 60.0
# Seconds a thread waits for the shared helper while other threads use it, before its call counts as a timeout.
HELPER_WAIT_S = 30.0
# Longer answers or golds are compared as strings only: no MATH/AIME gold is longer than 160 characters, and
# the regexes and sympy never see pathological sizes.
MAX_ANSWER_CHARS = 500
