"""Run untrusted generated code in a separate, limited process.

The child gets a fresh temporary working directory, a scrubbed environment, and rlimits on CPU time, address space,
file size and process count; the parent enforces a wall-clock timeout and kills the child's whole process group.
Network isolation is by a new network namespace (``unshare -n``) where the kernel allows it; where it does not, the
fallback is stated in :data:`NETWORK_ISOLATION` and the child's ``socket`` module is disabled before user code runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 5.0
    cpu_seconds: int = 3
    memory_bytes: int = 512 * 1024**2
    file_bytes: int = 1024**2
    processes: int = 0  # extra processes the child may start (RLIMIT_NPROC counts the user's, so 0 -> own only)


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed", "timeout", "error"
    detail: str = ""


_PRELUDE = """
import socket as _s
def _no_net(*a, **k):
    raise OSError("network disabled in sandbox")
_s.socket = _no_net
_s.create_connection = _no_net
del _s
"""


def _can_unshare_net() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_UNSHARE = _can_unshare_net()
NETWORK_ISOLATION = "network namespace (unshare -n)" if _UNSHARE else "socket module disabled in the child (no netns)"


def _limit(limits: SandboxLimits) -> None:  # runs in the child before exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Execute ``source`` in a sandboxed ``python -I``; passed iff it exits 0 within the limits."""
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="quantfid-sandbox-") as workdir:
        script = os.path.join(workdir, "main.py")
        with open(script, "w") as fh:
            fh.write(_PRELUDE + "\n" + source)
        cmd = [sys.executable, "-I", "-S", script]
        if _UNSHARE:
            cmd = ["unshare", "-n", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"}
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=lambda: _limit(limits),
            )
        except OSError as err:
            return SandboxResult(False, "error", f"could not start sandbox: {err}")
        try:
            _, err = proc.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return SandboxResult(False, "timeout", f"wall-clock limit {limits.wall_seconds}s exceeded")
        finally:
            _kill_group(proc)
        if proc.returncode == 0:
            return SandboxResult(True, "passed")
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return SandboxResult(False, "failed", tail[0][:300])


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def check_function(body_expr: str, tests: list[tuple[int, int]], limits: SandboxLimits | None = None) -> SandboxResult:
    """Does ``def f(x): return <body_expr>`` satisfy every ``f(x) == y`` in ``tests``?"""
    checks = f"for x, y in {json.dumps(tests)}:\n    assert f(x) == y, (x, f(x), y)\n"
    source = f"def f(x):\n    return {body_expr}\n\n{checks}"
    return run_python(source, limits)
