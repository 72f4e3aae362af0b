"""The reward pool with real worker processes and reward functions that misbehave in every way we know."""

from __future__ import annotations

import multiprocessing
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rlvr.rewards import registry
from rlvr.rewards.pool import RewardPool, RewardRequest, RewardResult


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a reward module into tmp_path (on sys.path) and return its name; unique per call."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"rlvr_test_reward_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def _reward_processes() -> list[multiprocessing.Process]:
    return [child for child in multiprocessing.active_children() if child.name.startswith("rlvr-reward-")]


def _requests(*completions: str, answer: str = "1") -> list[RewardRequest]:
    return [RewardRequest(completion, answer) for completion in completions]


def test_exceptions_score_the_failure_score_and_are_counted(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        calls = 0  # per process

        def reward(completion, answer, **fields):
            global calls
            calls += 1
            if calls % 3 == 0:
                raise ValueError(f"call {calls} fails")
            return float(len(completion))
        """
    )
    # One worker, so the per-process counter sees every call in order.
    with RewardPool(f"{module}:reward", num_workers=1, timeout_s=5.0, failure_score=-1.0) as pool:
        first = pool.score(_requests("a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg"))
        assert [result.score for result in first] == [1.0, 2.0, -1.0, 4.0, 5.0, -1.0, 7.0]
        assert [result.error for result in first] == [
            None, None, "exception: ValueError: call 3 fails", None, None, "exception: ValueError: call 6 fails", None
        ]
        assert pool.num_errors == 2
        second = pool.score(_requests("a", "bb"))  # the same worker: calls 8 and 9
        assert [(result.score, result.error) for result in second] == [
            (1.0, None), (-1.0, "exception: ValueError: call 9 fails")
        ]
        assert pool.num_errors == 3


def test_results_keep_request_order_when_calls_finish_out_of_order(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        import time

        def reward(completion, answer, delay=0.0, **fields):
            time.sleep(delay)
            return float(answer)
        """
    )
    delays = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    requests = [RewardRequest("x", str(index), {"delay": delay}) for index, delay in enumerate(delays)]
    with RewardPool(f"{module}:reward", num_workers=3, timeout_s=5.0) as pool:
        results = pool.score(requests)
    assert [result.score for result in results] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(result.error is None for result in results)


def test_a_timed_out_call_is_killed_and_the_pool_keeps_serving(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        import time

        def reward(completion, answer, **fields):
            if completion == "hang":
                time.sleep(60)
            return 1.0
        """
    )
    start = time.monotonic()
    with RewardPool(f"{module}:reward", num_workers=2, timeout_s=0.5, failure_score=-1.0) as pool:
        results = pool.score(_requests("ok", "hang", "ok", "ok", "ok"))
        assert [result.score for result in results] == [1.0, -1.0, 1.0, 1.0, 1.0]
        assert results[1].error == "timeout after 0.5s"
        assert pool.num_errors == 1
        # The hung worker was killed and replaced: still exactly num_workers processes, and both serve.
        assert len(_reward_processes()) == 2
        again = pool.score(_requests("ok", "ok", "hang", "ok"))
        assert [result.score for result in again] == [1.0, 1.0, -1.0, 1.0]
        assert pool.num_errors == 2
    assert time.monotonic() - start < 10.0  # two 0.5 s timeouts and two respawns, not a 60 s sleep
    assert _reward_processes() == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("return float('nan')", "nan"),
        ("return float('inf')", "inf"),
        ("return {'score': float('nan'), 'extracted': '3'}", "nan"),
        ("return '1.0'", "wrong type: str"),
        ("return None", "wrong type: NoneType"),
        ("return {'score': '1.0'}", "wrong type: str"),
        ("return {'extracted': '3'}", "missing score"),
        ("import threading; return {'score': 1.0, 'lock': threading.Lock()}", "unpicklable extras"),
        ("import sys; sys.exit(3)", "exception: SystemExit: 3"),
    ],
)
def test_bad_return_values_are_failures(reward_module: Callable[[str], str], body: str, error: str) -> None:
    module = reward_module(
        f"""
        def reward(completion, answer, **fields):
            if completion == "bad":
                {body}
            return 0.5
        """
    )
    with RewardPool(f"{module}:reward", num_workers=1, timeout_s=5.0, failure_score=-1.0) as pool:
        results = pool.score(_requests("good", "bad", "good"))
        assert [result.score for result in results] == [0.5, -1.0, 0.5]
        assert results[1].error is not None and results[1].error.startswith(error), results[1].error
        assert results[1].extras == {}
        assert pool.num_errors == 1


def test_numbers_bools_and_dicts_with_extras(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        def reward(completion, answer, **fields):
            if completion == "int":
                return 1
            if completion == "bool":
                return True
            return {"score": 0.25, "extracted": answer, "fields": fields}
        """
    )
    requests = [RewardRequest("int", "1"), RewardRequest("bool", "1"), RewardRequest("dict", "42", {"level": 3})]
    with RewardPool(f"{module}:reward", num_workers=2, timeout_s=5.0) as pool:
        results = pool.score(requests)
        assert results == [
            RewardResult(score=1.0, extras={}, error=None),
            RewardResult(score=1.0, extras={}, error=None),
            RewardResult(score=0.25, extras={"extracted": "42", "fields": {"level": 3}}, error=None),
        ]
        assert isinstance(results[1].score, float)
        assert pool.num_errors == 0


def test_a_worker_that_exits_is_replaced(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        import os

        def reward(completion, answer, **fields):
            if completion == "exit":
                os._exit(1)
            return 1.0
        """
    )
    with RewardPool(f"{module}:reward", num_workers=2, timeout_s=5.0) as pool:
        results = pool.score(_requests("ok", "exit", "ok", "exit", "ok"))
        assert [result.score for result in results] == [1.0, 0.0, 1.0, 0.0, 1.0]
        assert results[1].error == results[3].error == "worker died: exit code 1"
        assert pool.num_errors == 2
        assert len(_reward_processes()) == 2
        assert [result.score for result in pool.score(_requests("ok", "ok", "ok"))] == [1.0, 1.0, 1.0]


def test_math_answer_through_the_pool() -> None:
    requests = [
        RewardRequest(r"... so the total is \boxed{\dfrac{1}{2}}.", r"\frac{1}{2}"),
        RewardRequest(r"Hence \boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),  # math-verify
        RewardRequest("The answer is 25.", "025"),
        RewardRequest(r"\boxed{2126}", "2,125"),
        RewardRequest("I give up, this problem is far too hard for me to solve today.", "7"),
    ]
    with RewardPool("math_answer", num_workers=2, timeout_s=20.0) as pool:
        results = pool.score(requests)
        assert pool.num_errors == 0
    assert [result.score for result in results] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [result.extras["extracted"] for result in results] == [r"\dfrac{1}{2}", r"(3, \pi/2)", "25", "2126", ""]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", r"'no_colon' is neither a registered name \(boxed_format, math_answer\) nor a "
                     r"'package.module:function' spec"),
        ("two:colons:here", "is neither a registered name"),
        ("rlvr_no_such_module:fn", r"cannot import module 'rlvr_no_such_module' \(ModuleNotFoundError"),
        ("reward_fns.math_answer:missing", r"module 'reward_fns.math_answer' has no attribute 'missing'; "
                                           r"its public callables are: .*reward"),
        ("reward_fns.math_answer:annotations", "is a _Feature, not a callable"),
    ],
)
def test_a_bad_spec_fails_before_any_worker_starts(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardPool(spec)
    assert _reward_processes() == []


def test_a_module_that_fails_to_import_names_the_error(reward_module: Callable[[str], str]) -> None:
    module = reward_module("import rlvr_no_such_dependency\n\ndef reward(completion, answer):\n    return 1.0\n")
    with pytest.raises(ValueError, match=rf"cannot import module '{module}' .*No module named 'rlvr_no_such_dep"):
        RewardPool(f"{module}:reward")


def test_a_module_that_imports_only_in_the_parent_stops_the_first_score(
    reward_module: Callable[[str], str],
) -> None:
    module = reward_module(
        """
        import multiprocessing

        if multiprocessing.current_process().name.startswith("rlvr-reward-"):
            raise ImportError("this module refuses to load in a worker")

        def reward(completion, answer, **fields):
            return 1.0
        """
    )
    pool = RewardPool(f"{module}:reward", num_workers=2)
    with pytest.raises(RuntimeError, match="could not load the function .*refuses to load in a worker"):
        pool.score(_requests("x"))
    assert _reward_processes() == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(_requests("x"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_workers": 0}, r"num_workers=0 is not allowed; use an integer >= 1"),
        ({"timeout_s": 0}, r"timeout_s=0 is not allowed"),
        ({"failure_score": float("nan")}, r"failure_score=nan is not allowed"),
    ],
)
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardPool("math_answer", **options)


def test_a_closed_pool_refuses_work() -> None:
    pool = RewardPool("boxed_format", num_workers=1)
    assert [result.score for result in pool.score(_requests(r"\boxed{1}", "none"))] == [1.0, 0.0]
    pool.close()
    assert _reward_processes() == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(_requests("x"))


def test_registry_resolves_names_and_describes_them() -> None:
    assert registry.resolve("math_answer") == "reward_fns.math_answer:reward"
    assert registry.resolve("my.module:score_fn") == "my.module:score_fn"
    descriptions = registry.available()
    assert set(descriptions) == set(registry.REWARDS)
    assert descriptions["math_answer"].startswith("1.0 if the response's final answer equals the gold answer")
