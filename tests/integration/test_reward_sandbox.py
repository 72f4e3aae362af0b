"""What a reward process can reach, with real worker processes: the processes it starts, its environment and
directory, files outside that directory, the network (rlvr.rewards.sandbox)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from rlvr.config import RewardConfig
from rlvr.rewards import sandbox
from rlvr.rewards.pool import RewardPool, RewardRequest
from rlvr.rewards.sandbox import Limits, SandboxError

REPO = Path(__file__).resolve().parents[2]

REWARDS = textwrap.dedent(
    '''
    import os
    import socket
    import subprocess
    import time
    from pathlib import Path


    def spawn(completion, answer, tag="", hang=False, **fields):
        """Start three `sleep`s that would outlive the worker: a child (holding the run's stdout), one in a
        process group of its own, and a double-forked daemon that left the session."""
        subprocess.Popen(["sleep", f"100000.{tag}1"])
        subprocess.Popen(["sleep", f"100000.{tag}2"], process_group=0)
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", f"100000.{tag}3"])
            os._exit(0)
        os.waitpid(child, 0)
        if hang:
            time.sleep(60)
        return 1.0


    def report(completion, answer, **fields):
        """What a worker starts with: environment, directory, stdin, session."""
        return {"score": 1.0, "environ": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(),
                "sid": os.getsid(0), "stdin": os.readlink("/proc/self/fd/0"),
                "initial environ": Path("/proc/self/environ").read_bytes()}


    def escape(completion, answer, outside="", port=0, **fields):
        """Write outside the temp dir, read RLVR_TEST_SECRET from the run's environment, open a socket."""
        outcome = {"score": 1.0}
        try:
            Path(outside, "written-by-a-reward").write_text("x")
            outcome["write"] = "allowed"
        except OSError as error:
            outcome["write"] = f"blocked: {error.strerror}"
        outcome["secret in os.environ"] = "RLVR_TEST_SECRET" in os.environ
        outcome["secret in /proc/self/environ"] = b"hunter2" in Path("/proc/self/environ").read_bytes()
        try:
            run = Path(f"/proc/{os.getppid()}/environ").read_bytes()
            outcome["secret in the run's /proc/<pid>/environ"] = b"RLVR_TEST_SECRET=hunter2" in run
        except OSError as error:
            outcome["secret in the run's /proc/<pid>/environ"] = f"blocked: {error.strerror}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            outcome["socket"] = "connected"
        except OSError as error:
            outcome["socket"] = f"blocked: {error.strerror}"
        return outcome
    '''
)


@pytest.fixture
def rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a module holding :data:`REWARDS`, importable here and in workers."""
    name = f"rlvr_test_sandbox_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _sleepers(tag: str) -> list[int]:
    """Live `sleep 100000.<tag>N` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state != b"Z" and arguments[0] == b"sleep" and arguments[1].startswith(f"100000.{tag}".encode()):
            found.append(int(entry.name))
    return found


@pytest.fixture
def tag() -> str:
    """Digits that name the sleeps of one test; any left over are killed afterwards."""
    digits = str(uuid.uuid4().int)[:12]
    yield digits
    for pid in _sleepers(digits):
        os.kill(pid, signal.SIGKILL)


def test_close_kills_every_process_a_reward_started(rewards: str, tag: str) -> None:
    with RewardPool(f"{rewards}:spawn", num_workers=1, timeout_s=10.0) as pool:
        assert pool.score([RewardRequest("", "", {"tag": tag})])[0].error is None
        deadline = time.monotonic() + 10  # the double-forked one may exec a moment after the call returned
        while len(_sleepers(tag)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_sleepers(tag)) == 3
    assert _sleepers(tag) == []


def test_a_timed_out_call_takes_the_processes_it_started_with_it(rewards: str, tag: str) -> None:
    with RewardPool(f"{rewards}:spawn", num_workers=1, timeout_s=1.0) as pool:
        assert pool.score([RewardRequest("", "", {"tag": tag, "hang": True})])[0].error == "timeout after 1.0s"
        assert _sleepers(tag) == []  # while the pool itself lives on
        assert pool.score([RewardRequest("", "", {"tag": tag + "9"})])[0].error is None


def test_a_run_piped_into_another_program_ends_when_the_run_does(rewards: str, tag: str, tmp_path: Path) -> None:
    """`rlvr train ... | tee log`: the reward's children hold the run's stdout, and the pipe ends only when
    the last holder exits. The pool is not closed: interpreter exit must stop everything."""
    script = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(tmp_path)!r}]\n"
        "from rlvr.rewards.pool import RewardPool, RewardRequest\n"
        f"pool = RewardPool({rewards + ':spawn'!r}, num_workers=1)\n"
        f"print(pool.score([RewardRequest('', '', {{'tag': {tag!r}}})])[0].error, flush=True)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        output, _ = run.communicate(timeout=30)  # reads stdout to its end
    finally:
        run.kill()
    assert run.returncode == 0
    assert output == b"None\n"
    assert _sleepers(tag) == []


def test_a_worker_gets_a_short_environment_a_private_directory_and_its_own_session(
    rewards: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    monkeypatch.setenv("RLVR_TEST_PASSED", "yes")
    with RewardPool(f"{rewards}:report", num_workers=1, env=["RLVR_TEST_PASSED", "RLVR_TEST_UNSET"]) as pool:
        (result,) = pool.score([RewardRequest("", "")])
        seen = result.extras
        directory = Path(seen["cwd"])
        assert directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith("rlvr-reward-")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    environ = seen["environ"]
    assert "RLVR_TEST_SECRET" not in environ and b"hunter2" not in seen["initial environ"]
    assert environ["RLVR_TEST_PASSED"] == "yes" and "RLVR_TEST_UNSET" not in environ
    assert environ["TMPDIR"] == environ["TMP"] == environ["TEMP"] == seen["cwd"]
    assert set(environ) - sandbox.INHERITED_ENV - {"RLVR_TEST_PASSED", "TMPDIR", "TMP", "TEMP", sandbox.MARKER} == {
        name for name in environ if name.startswith("LC_")}
    assert environ["PATH"] == os.environ["PATH"]
    assert seen["stdin"] == "/dev/null"
    assert seen["sid"] == seen["pid"]
    assert not directory.exists()  # removed with its worker


def _escape(rewards: str, tmp_path: Path, **options: object) -> dict[str, object]:
    """What :func:`escape` reaches from a pool with ``options``, in a run started with RLVR_TEST_SECRET in its
    environment (a secret set later is not in /proc/<pid>/environ), against a socket listening in the run's
    network namespace."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as server:
        fields = {"outside": str(outside), "port": server.getsockname()[1]}
        script = (
            f"import json, sys; sys.path[:0] = [{str(REPO)!r}, {str(tmp_path)!r}]\n"
            "from rlvr.rewards.pool import RewardPool, RewardRequest\n"
            f"with RewardPool({rewards + ':escape'!r}, num_workers=1, spare_workers=0, **{options!r}) as pool:\n"
            f"    (result,) = pool.score([RewardRequest('', '', {fields!r})])\n"
            "print(json.dumps([result.error, result.extras]))\n"
        )
        run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "RLVR_TEST_SECRET": "hunter2"})
    assert run.returncode == 0, run.stderr
    error, extras = json.loads(run.stdout)
    assert error is None, error
    written = ["written-by-a-reward"] if extras["write"] == "allowed" else []
    assert [path.name for path in outside.iterdir()] == written
    return extras


def test_what_a_reward_reaches_with_the_network_off_and_writes_kept_in_its_directory(
    rewards: str, tmp_path: Path,
) -> None:
    """Issue 16: a reward tries to write outside its temp dir, read a secret from the run's environment and
    open a socket. Where the system has Landlock and user and network namespaces (this machine: Linux 6.18,
    Landlock ABI 7, root in a container), all three are blocked: the write by Landlock, the socket by the
    network namespace, and the secret is neither in the reward's environment nor readable from the run's
    /proc/<pid>/environ, which the kernel does not let a process in a child user namespace read."""
    if sandbox.landlock_abi() < 1:
        with pytest.raises(SandboxError, match="reward writes='temp_dir' needs Landlock"):
            RewardPool(f"{rewards}:escape", writes="temp_dir")
        return
    try:
        sandbox.check_supported(network=False, writes="anywhere")
    except SandboxError as error:
        assert "reward network=False needs a network namespace" in str(error)
        return
    assert _escape(rewards, tmp_path, network=False, writes="temp_dir") == {
        "write": "blocked: Permission denied",
        "secret in os.environ": False,
        "secret in /proc/self/environ": False,
        "secret in the run's /proc/<pid>/environ": "blocked: Permission denied",
        "socket": "blocked: Network is unreachable",
    }


def test_by_default_a_reward_writes_anywhere_uses_the_network_and_can_find_the_runs_secrets(
    rewards: str, tmp_path: Path,
) -> None:
    """The defaults: the secret is not in the reward's own environment, but the reward runs as the run's user
    in the run's namespaces, so it reads the run's /proc/<pid>/environ, writes outside its directory and
    connects."""
    assert _escape(rewards, tmp_path) == {
        "write": "allowed",
        "secret in os.environ": False,
        "secret in /proc/self/environ": False,
        "secret in the run's /proc/<pid>/environ": True,
        "socket": "connected",
    }


def test_a_system_without_landlock_stops_the_pool_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    with pytest.raises(SandboxError, match=r"needs Landlock \(Linux 5.13 or later.*Set reward.writes: anywhere"):
        RewardPool("boxed_format", writes="temp_dir")


def test_the_recipe_section_builds_the_pool() -> None:
    defaults = RewardPool.from_config(RewardConfig())
    plain = RewardPool("math_answer")
    options = ("function", "num_workers", "spare_workers", "timeout_s", "failure_score", "limits", "env", "network",
               "writes")
    assert [getattr(defaults, name) for name in options] == [getattr(plain, name) for name in options]
    config = RewardConfig(function="boxed_format", num_workers=3, spare_workers=0, timeout_s=4.0, failure_score=-1.0,
                          limits={"memory_mb": 512, "cpu_s": 3, "file_size_mb": 10, "processes": 100},
                          env=["OPENAI_API_KEY"], network=False, writes="temp_dir")
    pool = RewardPool.from_config(config)
    assert [getattr(pool, name) for name in options] == [
        "reward_fns.boxed_format:reward", 3, 0, 4.0, -1.0, Limits(512, 3, 10, 100), ("OPENAI_API_KEY",), False,
        "temp_dir"]
