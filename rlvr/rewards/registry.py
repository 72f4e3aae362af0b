"""Ready-made reward functions by name, and the ``module:function`` specs recipes use to name any other.

A recipe's ``reward.function`` is either a name in :data:`REWARDS` (``math_answer``) or a spec
``package.module:function`` importable where the run starts. :func:`resolve` turns either into a spec;
:func:`load_function` imports it. Both fail with a ``ValueError`` that says what was wrong and what is
allowed, so a bad recipe stops before any work starts.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

# name -> "module:function". Each function follows the reward contract of rlvr.rewards.pool:
# fn(completion: str, answer: str, **fields) -> float | dict with a "score".
REWARDS: dict[str, str] = {
    "math_answer": "reward_fns.math_answer:reward",
    "boxed_format": "reward_fns.boxed_format:reward",
}

SPEC_PATTERN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def resolve(name_or_spec: str) -> str:
    """The ``module:function`` spec for a registered reward name, or ``name_or_spec`` if it is a spec.

    Only the form is checked here; :func:`load_function` checks that the spec imports.
    """
    if isinstance(name_or_spec, str) and name_or_spec in REWARDS:
        return REWARDS[name_or_spec]
    if isinstance(name_or_spec, str) and SPEC_PATTERN.fullmatch(name_or_spec):
        return name_or_spec
    known = ", ".join(sorted(REWARDS))
    raise ValueError(
        f"reward function {name_or_spec!r} is neither a registered name ({known}) nor a "
        "'package.module:function' spec such as 'reward_fns.math_answer:reward'"
    )


def load_function(spec: str) -> Callable[..., object]:
    """Import the reward function a ``module:function`` spec (or registered name) points to."""
    return import_callable(resolve(spec), "reward function", "fn(completion, answer, **fields) -> float | dict")


def import_callable(spec: str, what: str, contract: str) -> Callable[..., object]:
    """Import the callable a ``module:function`` spec points to; ``what`` and ``contract`` name it in errors.

    The attribute part may be dotted (``module:Class.method``). Raises ``ValueError`` when the module
    cannot be imported (with the import error), lacks the attribute, or the attribute is not callable.
    """
    if not SPEC_PATTERN.fullmatch(spec):
        raise ValueError(f"{what} {spec!r} is not a 'package.module:function' spec")
    module_name, attribute_path = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(
            f"{what} {spec!r}: cannot import module {module_name!r} "
            f"({type(error).__name__}: {error}); it must be importable from the current sys.path "
            "(install the package, or add its directory to PYTHONPATH)"
        ) from error
    target: object = module
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            defined = sorted(
                name for name, value in vars(module).items() if callable(value) and not name.startswith("_")
            )
            raise ValueError(
                f"{what} {spec!r}: module {module_name!r} has no attribute {attribute_path!r}; "
                f"its public callables are: {', '.join(defined) or '(none)'}"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise ValueError(
            f"{what} {spec!r} is a {type(target).__name__}, not a callable; it must be {contract}"
        )
    return target


def available() -> dict[str, str]:
    """Registered reward name -> the first line of its function's docstring (imports each one)."""
    descriptions = {}
    for name, spec in sorted(REWARDS.items()):
        doc = (load_function(spec).__doc__ or "").strip()
        descriptions[name] = doc.splitlines()[0] if doc else spec
    return descriptions
