"""Run untrusted generated code in a separate, limited process.

Every run gets a fresh temporary working directory, a scrubbed environment, rlimits on CPU time, address space, file
size, process count and open files, and a wall-clock timeout after which the whole process tree is killed. How much
more isolation there is depends on what the host allows; the strongest available *mode* is chosen once per process by
running a probe snippet, and stated in :data:`ISOLATION`:

``namespaces`` (root, and ``unshare`` works: the case in the project's containers)
    ``unshare --net --pid --mount --fork --kill-child``: a new network namespace (no interface but a down loopback:
    no network at all), a new PID namespace (the child cannot see or signal host processes; when its init dies every
    process it started dies), a private mount namespace in which the working directory is bind-mounted over ``/tmp``
    and fresh tmpfs cover ``/dev/shm`` and ``/var/tmp``; then ``setpriv`` drops to a throw-away uid/gid (no groups,
    no capabilities, no new privileges), so the rest of the filesystem is read-only to it and ``RLIMIT_NPROC`` counts
    only its own processes.
``uid`` (root, but no namespaces)
    the same uid drop and rlimits without namespaces. No network isolation: the ``socket`` module is disabled before
    user code runs, which stops ordinary code but not a determined attacker (``_socket``/``ctypes``).
``rlimits`` (not root; as root this mode is refused with :class:`SandboxUnavailableError`, since RLIMIT_NPROC
does not bind root and a fork bomb would take the host)
    rlimits only, ``RLIMIT_NPROC`` set just above the user's current process count, the ``socket`` module disabled.
    The child runs as the caller's uid: it can write wherever the caller can and could signal the caller. Use it for
    trusted-ish code only; the hostile-snippet tests skip the cases this mode cannot stop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run; ``processes`` is how many extra processes the child may start."""

    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_bytes: int = 512 * 1024**2
    file_bytes: int = 1024**2
    processes: int = 0
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    """``status`` is ``passed``, ``failed`` (non-zero exit or killed by a limit), ``timeout`` or ``error``."""

    passed: bool
    status: str
    detail: str = ""


# Disables the socket module where no network namespace exists (weak: ``_socket`` and ``ctypes`` get around it).
_NO_SOCKET_PRELUDE = """import socket as _s
def _no_net(*a, **k):
    raise OSError("network disabled in sandbox")
_s.socket = _no_net
_s.create_connection = _no_net
_s.socketpair = _no_net
del _s
"""
_UID_BASE, _UID_SPAN = 2_000_000, 1_000_000_000  # throw-away uids, far above any real account
# Root inside the new namespaces: make mounts private, show only the work dir as /tmp, then drop to the throw-away uid
# with a clean environment ($1 work dir, $2 uid, $3 python, then the environment as NAME=value words).
_NS_SETUP = (
    'w="$1"; u="$2"; py="$3"; shift 3; '
    'mount --make-rprivate / && mount --bind "$w" /tmp && cd /tmp && '
    "mount -t tmpfs -o size=1m,mode=1777 tmpfs /dev/shm && "
    "{ [ ! -d /var/tmp ] || mount -t tmpfs -o size=1m,mode=1777 tmpfs /var/tmp; } && "
    'setpriv --reuid="$u" --regid="$u" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs '
    'env -i "$@" "$py" -I -S /tmp/main.py'
)


def _set_limits(limits: SandboxLimits, nproc: int, uid: int | None) -> None:
    """Runs in the child between fork and exec: own session (one killable group), rlimits, optional uid drop."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _user_process_count() -> int:
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{pid}").st_uid == uid
    return n


class SandboxUnavailableError(RuntimeError):
    """No safe way to run untrusted code here (e.g. root without namespaces or a usable throw-away uid)."""


def _run(source: str, limits: SandboxLimits, mode: str, python: str) -> SandboxResult:
    uid = _UID_BASE + random.SystemRandom().randrange(_UID_SPAN) if mode in ("namespaces", "uid") else None
    with (
        tempfile.TemporaryDirectory(prefix="quantfid-sandbox-") as workdir,
        tempfile.TemporaryDirectory(prefix="quantfid-sandbox-io-") as iodir,
    ):
        script = os.path.join(workdir, "main.py")
        with open(script, "w") as fh:
            fh.write(source if mode == "namespaces" else _NO_SOCKET_PRELUDE + source)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        if mode == "namespaces":
            child_env = [f"{k}={v}" for k, v in env.items()]
            cmd = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "/bin/sh", "-c", _NS_SETUP]
            cmd += ["sandbox-init", workdir, str(uid), python, *child_env]
            env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
            nproc = 1 + limits.processes  # counted for the throw-away uid only (root's setup is exempt)
        else:
            env.update(HOME=workdir, TMPDIR=workdir)
            cmd = [python, "-I", "-S", script]
            nproc = 1 + limits.processes + (0 if uid is not None else _user_process_count())
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(script, uid, uid)
        # Output goes to files outside the sandbox's view, capped by RLIMIT_FSIZE: a flood cannot fill our memory.
        with open(os.path.join(iodir, "out"), "wb") as out, open(os.path.join(iodir, "err"), "wb+") as err:
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    preexec_fn=functools.partial(_set_limits, limits, nproc, None if mode == "namespaces" else uid),
                )
            except OSError as exc:
                return SandboxResult(False, "error", f"could not start sandbox: {exc}")
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return SandboxResult(False, "timeout", f"wall-clock limit {limits.wall_seconds}s exceeded")
            finally:
                _kill_group(proc)
                if mode == "uid":
                    _kill_uid(uid)
            if proc.returncode == 0:
                return SandboxResult(True, "passed")
            err.seek(0)
            lines = err.read(65536).decode(errors="replace").strip().splitlines()
            if proc.returncode < 0:
                why = f"killed by {signal.Signals(-proc.returncode).name}"
            elif proc.returncode > 128 and mode == "namespaces":
                why = f"killed by signal {proc.returncode - 128}"
            else:
                why = f"exit code {proc.returncode}"
            return SandboxResult(False, "failed", ((lines[-1] + "; ") if lines else "") + why)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_uid(uid: int | None) -> None:
    """SIGKILL every process left running as the throw-away ``uid`` (children that left the process group)."""
    if uid is None:
        return
    for _ in range(100):
        pids = []
        for pid in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                    pids.append(int(pid))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _interpreters() -> list[str]:
    """Pythons the child may run: ours first; a system one when ours is unreadable to a throw-away uid (pyenv in a
    0700 home). User code needs only the standard library (``-I -S``: no site-packages)."""
    found = [os.path.realpath(sys.executable)]
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if cand and os.path.isfile(cand) and os.path.realpath(cand) not in found:
            found.append(os.path.realpath(cand))
    return found


@functools.cache
def _choice() -> tuple[str, str]:
    modes = []
    if os.geteuid() == 0:
        if shutil.which("unshare") and shutil.which("setpriv") and os.path.isdir("/dev/shm"):
            modes.append("namespaces")
        modes.append("uid")
    else:
        modes.append("rlimits")
    probe = "import json, math, re, collections\nprint('ok')\n"
    for mode in modes:
        for python in _interpreters():
            if _run(probe, SandboxLimits(wall_seconds=30, cpu_seconds=10), mode, python).passed:
                return mode, python
    raise SandboxUnavailableError(
        f"no sandbox mode works here (tried {modes} with {_interpreters()}). As root, untrusted code is never run "
        "with rlimits alone (RLIMIT_NPROC does not bind root: a fork bomb would take the host). Install util-linux "
        "(unshare, setpriv) or give a python3 that a throw-away uid can execute."
    )


def isolation_mode() -> str:
    """The strongest mode that runs a probe snippet here (probed once per process); see the module docstring."""
    return _choice()[0]


def sandbox_python() -> str:
    """The interpreter the sandbox runs user code with."""
    return _choice()[1]


_DESCRIPTIONS = {
    "namespaces": "network, PID and mount namespaces (unshare) + throw-away uid + rlimits",
    "uid": "throw-away uid + rlimits; no network namespace: socket module disabled in the child (weak)",
    "rlimits": "rlimits only, caller's uid; no network namespace: socket module disabled in the child (weak)",
}


def isolation() -> str:
    """One line saying how untrusted code is isolated on this host (logged with every run that executes code)."""
    mode, python = _choice()
    return f"{mode}: {_DESCRIPTIONS[mode]}; interpreter {python}"


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Execute ``source`` in a sandboxed ``python -I -S``; passed iff it exits 0 within the limits."""
    mode, python = _choice()
    return _run(source, limits or SandboxLimits(), mode, python)


def run_many(
    sources: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None, desc: str = "execute"
) -> list[SandboxResult]:
    """:func:`run_python` over many programs in parallel (threads; each run is its own process), order kept."""
    if not sources:
        return []
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    isolation_mode()  # probe once, before the threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_python, s, limits) for s in sources]
        return [f.result() for f in tqdm(futures, desc=desc, unit="program", leave=False)]


def check_function(body_expr: str, tests: list[tuple[int, int]], limits: SandboxLimits | None = None) -> SandboxResult:
    """Does ``def f(x): return <body_expr>`` satisfy every ``f(x) == y`` in ``tests``?"""
    checks = f"for x, y in {json.dumps(tests)}:\n    assert f(x) == y, (x, f(x), y)\n"
    source = f"def f(x):\n    return {body_expr}\n\n{checks}"
    return run_python(source, limits)
