"""The reward pool with real worker processes and reward functions that misbehave in every way we know."""

from __future__ import annotations

import os
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rlvr.rewards import registry
from rlvr.rewards.pool import RewardPool, RewardRequest, RewardResult
from rlvr.rewards.sandbox import Limits


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a reward module into tmp_path (on sys.path) and return its name; unique per call."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"rlvr_test_reward_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def _settled_reward_processes(count: int, seconds: float = 10.0) -> list[int]:
    """:func:`_reward_processes` once there are ``count`` (or ``seconds`` later): a replacement spare starts in the
    background, and on a loaded machine it may show up a moment after ``score`` returned."""
    deadline = time.monotonic() + seconds
    while len(found := _reward_processes()) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _reward_processes() -> list[int]:
    """Live reward processes of this test process, workers and spares (named rlvr-reward-N on their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state, ppid = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[:2]
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if int(ppid) == os.getpid() and state != b"Z" and any(a.startswith(b"rlvr-reward-") for a in arguments):
            found.append(int(entry.name))
    return found


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
        # The hung worker was killed and replaced: still num_workers processes and a spare, and both serve.
        assert len(_settled_reward_processes(3)) == 3
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
        ("return 10**400", "overflow: the return value does not fit a float (int too large to convert to float)"),
        ("return {'score': -10**400}", "overflow: the score does not fit a float"),
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
        assert len(_settled_reward_processes(3)) == 3
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
        ({"spare_workers": -1}, r"spare_workers=-1 is not allowed; use an integer >= 0"),
        ({"env": "OPENAI_API_KEY"}, r"env='OPENAI_API_KEY' is not allowed; use a list of environment variable"),
        ({"env": ["A=1"]}, r"env=\['A=1'\] is not allowed"),
        ({"writes": "nowhere"}, r"writes='nowhere' is not allowed; use one of 'anywhere', 'temp_dir'"),
        ({"timeout_s": 0}, r"timeout_s=0 is not allowed"),
        ({"failure_score": float("nan")}, r"failure_score=nan is not allowed"),
    ],
)
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardPool("math_answer", **options)
    with pytest.raises(ValueError, match=r"limits.memory_mb=0 is not allowed; use an integer >= 1, or None"):
        Limits(memory_mb=0)


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


def test_a_hung_call_costs_its_timeout_not_a_worker_start(reward_module: Callable[[str], str]) -> None:
    """Issue 16: a reward hanging on 1 call in 32 (sleeps 120 s, timeout_s=2) over 2 workers: each step of 32
    calls costs at most the timeout plus 0.5 s. The reward's import takes 3 s, as the run's did (its workers
    imported torch): a replacement started when the hung worker is killed is not ready for the next step, so
    without a spare kept started that step waited for it (3.1 s)."""
    module = reward_module(
        """
        import multiprocessing
        import time

        if multiprocessing.current_process().name.startswith("rlvr-reward-"):
            time.sleep(3.0)  # a heavy import (in the workers only: the pool's own import check need not wait)

        def reward(completion, answer, **fields):
            if completion == "hang":
                time.sleep(120)
            return 1.0
        """
    )
    with RewardPool(f"{module}:reward", num_workers=2, timeout_s=2.0, failure_score=-1.0) as pool:
        pool.score(_requests("ok", "ok"))  # the two workers and the spare, started together, are ready
        for step in range(3):
            started = time.monotonic()
            results = pool.score(_requests("hang", *["ok"] * 31))
            elapsed = time.monotonic() - started
            assert [result.error for result in results] == ["timeout after 2.0s"] + [None] * 31
            assert elapsed <= 2.0 + 0.5, f"step {step} took {elapsed:.2f}s"
        assert pool.num_errors == 3


def test_a_reward_that_segfaults_on_every_call(reward_module: Callable[[str], str]) -> None:
    """Every call kills its worker: each is a counted failure, and the pool serves again afterwards. A call
    costs one worker start (an interpreter, ~0.1 s of CPU here), overlapped with the other worker's calls."""
    module = reward_module(
        """
        import os
        import signal

        def reward(completion, answer, **fields):
            if completion == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            return 1.0
        """
    )
    with RewardPool(f"{module}:reward", num_workers=2, timeout_s=5.0) as pool:
        pool.score(_requests("ok", "ok"))
        started = time.monotonic()
        results = pool.score(_requests(*["segv"] * 32))
        elapsed = time.monotonic() - started
        assert {result.error for result in results} == {"worker died: killed by signal 11 (SIGSEGV)"}
        assert pool.num_errors == 32
        assert len(_settled_reward_processes(3)) == 3
        assert [result.score for result in pool.score(_requests("ok", "ok", "ok"))] == [1.0, 1.0, 1.0]
    assert elapsed < 10.0, f"32 segfaulting calls took {elapsed:.2f}s"


def test_a_call_past_the_memory_limit_fails_and_its_worker_is_replaced(
    reward_module: Callable[[str], str],
) -> None:
    module = reward_module(
        """
        import os

        def reward(completion, answer, **fields):
            block = bytes(int(answer) << 20)  # calloc: pages nobody touches cost no memory without the limit
            return {"score": float(len(block) >> 20), "pid": os.getpid()}
        """
    )
    with RewardPool(f"{module}:reward", num_workers=1, timeout_s=5.0, limits=Limits(memory_mb=256)) as pool:
        small, large, again = pool.score([RewardRequest("", "64"), RewardRequest("", "512"), RewardRequest("", "64")])
    assert small.score == again.score == 64.0
    assert large.error == (
        "memory limit: a reward process may map 256 MiB (reward.limits.memory_mb); the call raised: MemoryError"
    )
    assert small.extras["pid"] != again.extras["pid"]  # replaced after the memory error
    # The default limit (4096 MiB) holds too: an 8 GiB allocation fails instead of reaching the run's memory.
    with RewardPool(f"{module}:reward", num_workers=1, timeout_s=5.0) as pool:
        (result,) = pool.score([RewardRequest("", str(8 << 10))])
    assert result.error is not None and result.error.startswith("memory limit: a reward process may map 4096 MiB")


def test_cpu_and_file_size_limits(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        import time
        from pathlib import Path

        def reward(completion, answer, **fields):
            if completion == "burn":  # 0.6 s of CPU, under the 1 s per call however many calls came before
                end = time.process_time() + 0.6
                while time.process_time() < end:
                    pass
            if completion == "spin":
                while True:
                    pass
            if completion == "write":
                Path("out.bin").write_bytes(bytes(int(answer) << 20))
            return 1.0
        """
    )
    limits = Limits(cpu_s=1, file_size_mb=1)
    with RewardPool(f"{module}:reward", num_workers=1, timeout_s=20.0, limits=limits) as pool:
        started = time.monotonic()
        results = pool.score(_requests("burn", "burn", "burn", "spin", "write", answer="2"))
        elapsed = time.monotonic() - started
        assert [result.error for result in results[:3]] == [None, None, None]
        assert results[3].error == "cpu limit: the call used more than 1 CPU seconds (reward.limits.cpu_s; SIGXCPU)"
        assert results[4].error == (
            "file size limit: a reward process may write files up to 1 MiB (reward.limits.file_size_mb); the call "
            "raised: OSError: [Errno 27] File too large"
        )
        assert pool.score(_requests("write", answer="1"))[0].error is None
    assert elapsed < 10.0  # the spin is stopped at 1-2 CPU seconds, not at the 20 s timeout


def test_the_limits_hold_soft_and_hard(reward_module: Callable[[str], str]) -> None:
    module = reward_module(
        """
        import resource

        def reward(completion, answer, **fields):
            names = ("RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE")
            return {"score": 1.0, **{name: resource.getrlimit(getattr(resource, name)) for name in names}}
        """
    )
    limits = Limits(memory_mb=300, file_size_mb=2, processes=5000)
    with RewardPool(f"{module}:reward", num_workers=1, limits=limits) as pool:
        (result,) = pool.score(_requests("x"))
    assert result.extras == {"RLIMIT_DATA": (300 << 20, 300 << 20), "RLIMIT_FSIZE": (2 << 20, 2 << 20),
                             "RLIMIT_NPROC": (5000, 5000), "RLIMIT_CORE": (0, 0)}
