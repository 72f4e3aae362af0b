"""What a reward process may touch, and how every process it started is found and killed (Linux).

:mod:`rlvr.rewards.pool` starts each reward worker in its own session, in a private temporary directory, with
stdin from ``/dev/null`` and the short environment of :func:`worker_environment`; before it imports the
reward, the worker calls what the pool's options ask for:

- :func:`apply_limits` (always): ``setrlimit`` on private writable memory (``RLIMIT_DATA``), file size
  (``RLIMIT_FSIZE``) and processes (``RLIMIT_NPROC``), soft and hard limit alike so the reward cannot raise
  them again, and no core files; :func:`arm_cpu_limit` re-arms ``RLIMIT_CPU`` before each call. Every process
  the worker starts inherits them.
- :func:`disable_network` (``network=False``): a new user and network namespace, in which the only interface
  is a loopback that is down. The user namespace makes it work without root, keeps a root reward from joining
  the run's network namespace again, and puts the run's processes out of the reward's ptrace reach: the
  kernel lets no process in a child user namespace read ``/proc/<pid>/environ`` (or ``mem``) of a process
  outside it. Where only root may make namespaces, a network namespace alone is used, which a root reward
  could leave, and which hides nothing in ``/proc``.
- :func:`restrict_writes` (``writes="temp_dir"``): a Landlock ruleset (Linux 5.13+) under which the worker and
  its children may create, change or remove files only in its temp dir (and write ``/dev/null``). Files opened
  before it (stdout, stderr, the pipe to the pool) stay writable.

What none of this isolates: reading. A reward reads every file the run's user can read. A secret in the run's
environment is absent from the reward's own (``os.environ``, ``/proc/self/environ``: the worker is started
with a fresh environment, not one cleared after start), but without a user namespace (``network=True``, the
default) a reward that looks for it reads it in ``/proc/<pid>/environ`` of the run's processes, which run as
the same user; Landlock's ptrace rules do not stop that read. The reward can also signal the run's processes.

:func:`kill_processes` finds what a worker left behind by its session id, and, for processes that left the
session (``setsid``, double forks), by the marker variable each worker's environment carries, which children
inherit unless they replace their environment.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

# Copied from the run into every worker when set: what the interpreter, the reward's imports and locale-aware
# code need, and no credentials. Anything else the reward needs (an API key) is named in reward.env.
INHERITED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH",
    "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV", "CONDA_PREFIX", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
})
# The variable that marks a worker's processes: "<pool token>-<worker number>".
MARKER = "RLVR_REWARD_WORKER"

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory that holds rlvr/

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
# LANDLOCK_ACCESS_FS_* rights that create, change or remove files: ABI 1 (write_file, remove_dir, remove_file,
# make_char, make_dir, make_reg, make_sock, make_fifo, make_block, make_sym), then refer (2) and truncate (3).
_WRITE_FILE = 1 << 1
_WRITES_ABI_1 = _WRITE_FILE | sum(1 << bit for bit in range(4, 13))
_REFER, _TRUNCATE = 1 << 13, 1 << 14


class SandboxError(RuntimeError):
    """The system cannot give a reward worker the isolation its options ask for; the message says what to do."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of each reward worker and every process it starts; None is no limit."""

    memory_mb: int | None = 4096  # RLIMIT_DATA; RewardConfig.limits.memory_mb's default
    cpu_s: int | None = None  # RLIMIT_CPU, per call
    file_size_mb: int | None = None  # RLIMIT_FSIZE
    processes: int | None = None  # RLIMIT_NPROC

    def __post_init__(self) -> None:
        for name in ("memory_mb", "cpu_s", "file_size_mb", "processes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"limits.{name}={value!r} is not allowed; use an integer >= 1, or None for no limit")


DEFAULT_LIMITS = Limits()


# --- the parent side --------------------------------------------------------------------------------


def worker_environment(names: Iterable[str], temp_dir: str, token: str) -> dict[str, str]:
    """A worker's whole environment: the run's :data:`INHERITED_ENV`, ``LC_*`` and ``names`` where the run has
    them, ``TMPDIR`` (and ``TEMP``, ``TMP``) set to ``temp_dir``, and the :data:`MARKER` ``token``."""
    wanted = INHERITED_ENV | set(names)
    env = {name: value for name, value in os.environ.items() if name in wanted or name.startswith("LC_")}
    env.update({"TMPDIR": temp_dir, "TEMP": temp_dir, "TMP": temp_dir, MARKER: token})
    return env


def worker_command(fd: int, name: str) -> list[str]:
    """The command that runs ``rlvr.rewards.pool._worker_main`` on the pipe end ``fd``: the run's interpreter and
    flags, with this copy of rlvr importable whatever the worker's directory (``name`` labels it in ``ps``)."""
    bootstrap = ("import sys; sys.path.insert(0, sys.argv[1]); from rlvr.rewards.pool import _worker_main; "
                 "_worker_main(int(sys.argv[2]))")
    flags = subprocess._args_from_interpreter_flags()  # what multiprocessing's spawn passes on too
    return [sys.executable, *flags, "-c", bootstrap, _PACKAGE_ROOT, str(fd), name]


def check_supported(network: bool, writes: str) -> None:
    """Raise :class:`SandboxError` now if a worker could not turn the network off or restrict its writes."""
    if writes == "temp_dir" and landlock_abi() < 1:
        raise SandboxError(_no_landlock())
    if not network:
        probe = ("import sys; sys.path.insert(0, sys.argv[1]); from rlvr.rewards import sandbox\n"
                 "try:\n    sandbox.disable_network()\nexcept sandbox.SandboxError as error:\n    sys.exit(str(error))")
        done = subprocess.run([sys.executable, "-c", probe, _PACKAGE_ROOT], check=False, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60,
                              env=worker_environment((), tempfile.gettempdir(), ""))
        if done.returncode != 0:
            raise SandboxError(done.stderr.strip() or f"the network probe exited with code {done.returncode}")


def find_processes(sessions: Collection[int], marker: bytes) -> set[int]:
    """Live processes (not zombies) in one of ``sessions``, or whose initial environment contains ``marker``.

    Reads ``/proc``; processes of other users, whose environment is unreadable, count by session only. Empty
    where there is no ``/proc``.
    """
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    me = os.getpid()
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
                state, _ppid, _pgrp, session = stat.read().rsplit(b")", 1)[1].split()[:4]
            if state == b"Z":
                continue
            if int(session) in sessions:
                found.add(int(entry))
                continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker in environ.read():
                    found.add(int(entry))
        except (OSError, ValueError):  # gone meanwhile, or another user's
            continue
    return found


def kill_processes(sessions: Collection[int], marker: bytes) -> None:
    """SIGKILL every process :func:`find_processes` finds, again until none is left (a fork may race a scan)."""
    for _ in range(20):
        pids = find_processes(sessions, marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)  # SIGKILLed processes take a moment to become zombies, which the next scan skips


# --- the worker side --------------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (the run was killed); exit if it already has."""
    if sys.platform == "linux":
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def apply_limits(limits: Limits) -> None:
    """Set this process's resource limits (hard limits too, so they stay); no core files in any case."""
    _limit(resource.RLIMIT_CORE, 0)
    if limits.memory_mb is not None:
        _limit(resource.RLIMIT_DATA, limits.memory_mb << 20)
    if limits.file_size_mb is not None:
        _limit(resource.RLIMIT_FSIZE, limits.file_size_mb << 20)
    if limits.processes is not None:
        _limit(resource.RLIMIT_NPROC, limits.processes)


def arm_cpu_limit(cpu_s: int) -> None:
    """Let this process use ``cpu_s`` more CPU seconds (all threads together) before the kernel sends SIGXCPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def disable_network() -> None:
    """Move this process (which must have one thread) into a new network namespace with the loopback down."""
    if sys.platform != "linux":
        raise SandboxError(f"reward network=False needs Linux network namespaces; this is {sys.platform}. "
                           "Set reward.network: true")
    libc, uid, gid = _libc(), os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        return
    with_user = ctypes.get_errno()
    if libc.unshare(_CLONE_NEWNET) == 0:
        return
    raise SandboxError(
        "reward network=False needs a network namespace, and this system allows none: "
        f"unshare(CLONE_NEWUSER|CLONE_NEWNET) failed ({_errno_text(with_user)}), and so did "
        f"unshare(CLONE_NEWNET) ({_errno_text(ctypes.get_errno())}). Allow unprivileged user namespaces "
        "(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 where it exists; in a "
        "container, a seccomp profile that permits unshare), run as root, or set reward.network: true"
    )


def landlock_abi() -> int:
    """The kernel's Landlock ABI version: 0 when it has none (before Linux 5.13, or not in its ``lsm=`` list)."""
    if sys.platform != "linux":
        return 0
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0


def restrict_writes(temp_dir: str) -> None:
    """From now on, this process and its children may create, change or remove files only under ``temp_dir``
    (and write ``/dev/null``); reading and running files is not restricted."""
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError(_no_landlock())
    handled = _WRITES_ABI_1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    # struct landlock_ruleset_attr {u64 handled_access_fs, handled_access_net, scoped}: kernels that know fewer
    # fields accept the longer struct when the extra ones are zero.
    attr = handled.to_bytes(8, sys.byteorder) + bytes(16)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    try:
        _allow_beneath(ruleset, temp_dir, handled)
        _allow_beneath(ruleset, os.devnull, handled & (_WRITE_FILE | _TRUNCATE))
        if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)


# --- internals --------------------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(number: int, *args: int | bytes | None) -> int:
    # Integers go as longs: syscall(2) is variadic and reads each argument as a full register.
    values = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = _libc().syscall(ctypes.c_long(number), *values)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _allow_beneath(ruleset: int, path: str, access: int) -> None:
    """Add a Landlock rule: ``access`` is allowed at and under ``path``."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        # struct landlock_path_beneath_attr {u64 allowed_access; s32 parent_fd} __attribute__((packed))
        rule = access.to_bytes(8, sys.byteorder) + fd.to_bytes(4, sys.byteorder, signed=True)
        _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0)
    finally:
        os.close(fd)


def _limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


def _no_landlock() -> str:
    return ("reward writes='temp_dir' needs Landlock (Linux 5.13 or later, with landlock in the kernel's lsm= "
            f"list), and this kernel ({os.uname().release}) has none. Set reward.writes: anywhere")
