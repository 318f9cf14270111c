"""Hostile snippets end as failed outcomes, the host is unharmed and the sweep goes on."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from quantfid.bench import sandbox
from quantfid.bench.sandbox import SandboxLimits, run_many, run_python

FAST = SandboxLimits(wall_seconds=4.0, cpu_seconds=1, memory_bytes=256 * 1024**2, file_bytes=64 * 1024)
STRONG = sandbox.isolation_mode() in ("namespaces", "uid")
needs_strong = pytest.mark.skipif(not STRONG, reason=f"isolation mode {sandbox.isolation_mode()!r} cannot stop this")


def test_strongest_isolation_is_used_as_root():
    # In the project's containers we run as root with unshare available: anything weaker is a regression.
    if os.geteuid() == 0:
        assert sandbox.isolation_mode() == "namespaces", sandbox.isolation()
    assert sandbox.isolation().startswith(sandbox.isolation_mode())


def test_good_code_passes_in_a_fresh_dir_with_a_scrubbed_env(monkeypatch):
    monkeypatch.setenv("QUANTFID_SECRET", "hunter2")
    src = (
        "import os, sys\n"
        "assert os.listdir('.') == ['main.py'], os.listdir('.')\n"
        "assert 'QUANTFID_SECRET' not in os.environ, 'env leaked'\n"
        "assert sorted(os.environ) == sorted(['PATH', 'HOME', 'TMPDIR', 'LANG', 'PYTHONHASHSEED']), os.environ\n"
        "open('scratch.txt', 'w').write('ok')\n"
    )
    assert run_python(src, FAST).passed
    # fresh each time: the scratch file of the previous run is gone
    assert run_python("import os\nassert os.listdir('.') == ['main.py']\n", FAST).passed


def test_a_failing_assertion_is_a_failed_outcome_with_the_reason():
    res = run_python("assert 1 == 2, 'nope'\n", FAST)
    assert (res.passed, res.status) == (False, "failed")
    assert "AssertionError: nope" in res.detail


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    t0 = time.monotonic()
    res = run_python("while True:\n    pass\n", FAST)
    assert not res.passed and res.status in ("failed", "timeout")
    assert time.monotonic() - t0 < FAST.wall_seconds + 2


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    res = run_python("import time\ntime.sleep(1000)\n", SandboxLimits(wall_seconds=1.0))
    assert (res.passed, res.status) == (False, "timeout")


def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    os.fork()\n"
    res = run_python(bomb, FAST)
    assert not res.passed
    res = run_python(bomb, SandboxLimits(wall_seconds=3.0, cpu_seconds=1, processes=8))
    assert not res.passed
    assert run_python("print('still alive')\n", FAST).passed


def test_huge_allocation_fails():
    res = run_python("x = bytearray(64 * 1024**3)\n", FAST)
    assert not res.passed and "MemoryError" in res.detail
    res = run_python("xs = []\nwhile True:\n    xs.append(' ' * 10**7)\n", FAST)
    assert not res.passed


def test_output_flood_and_huge_files_are_cut():
    assert not run_python("while True:\n    print('x' * 10**6)\n", FAST).passed
    assert not run_python("open('big', 'w').write('x' * 10**8)\n", FAST).passed


@needs_strong
def test_writing_outside_the_temp_dir_fails(tmp_path: Path):
    tmp_path.chmod(0o755)
    here = Path(__file__).resolve().parent
    targets = [tmp_path / "x", here / "escape.txt", Path("/etc/quantfid-escape"), Path.home() / "quantfid-escape"]
    for target in targets:
        res = run_python(f"open({str(target)!r}, 'w').write('pwned')\n", FAST)
        assert not res.passed, res
        assert any(e in res.detail for e in ("PermissionError", "FileNotFoundError", "Read-only")), res
        assert not target.exists()


@pytest.mark.skipif(sandbox.isolation_mode() != "namespaces", reason="needs a mount namespace")
def test_files_written_to_tmp_stay_inside_the_sandbox():
    name = f"quantfid-escape-{os.getpid()}"
    res = run_python(f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')\n", FAST)
    assert res.passed  # /tmp and /dev/shm are private to the sandbox ...
    assert not Path(f"/tmp/{name}").exists()  # ... and vanish with it
    assert not Path(f"/dev/shm/{name}").exists()


@pytest.mark.skipif(sandbox.isolation_mode() != "namespaces", reason="needs a network namespace")
def test_opening_a_socket_fails_and_nothing_reaches_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3.0)
    port = server.getsockname()[1]
    got: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            got.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    src = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    res = run_python(src, FAST)
    res2 = run_python("import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))\n", FAST)
    thread.join()
    server.close()
    assert not res.passed and not res2.passed
    assert got == []


def test_socket_module_is_disabled_without_a_network_namespace():
    # Every mode refuses an ordinary socket; only the namespace mode also stops the raw _socket module.
    assert not run_python("import socket\nsocket.socket()\nsocket.create_connection(('1.1.1.1', 80), 1)\n", FAST).passed


@needs_strong
def test_killing_the_parent_fails_and_the_parent_lives():
    me = os.getpid()
    for src in (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        f"import os, signal\nos.kill({me}, signal.SIGKILL)\n",
        "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
    ):
        res = run_python(src, FAST)
        assert not res.passed, src
    os.kill(me, 0)  # still here


def test_a_sweep_of_hostile_and_good_programs_keeps_going():
    hostile = [
        "while True:\n    pass\n",
        "import os\nwhile True:\n    os.fork()\n",
        "x = bytearray(64 * 1024**3)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "raise SystemExit(1)\n",
    ]
    good = ["assert sum(range(10)) == 45\n", "print('hello')\n"]
    results = run_many(hostile + good, FAST, workers=4)
    assert [r.passed for r in results] == [False] * len(hostile) + [True] * len(good)
    os.kill(os.getpid(), 0)
    assert signal.getsignal(signal.SIGINT) is not None


def test_check_function_runs_the_tests():
    assert sandbox.check_function("x * 3 + 1", [(0, 1), (2, 7)]).passed
    assert not sandbox.check_function("x * 3", [(0, 1)]).passed


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid fallback needs root")
def test_uid_fallback_without_namespaces_also_contains_hostile_code():
    # The mode used where unshare is missing: no namespaces, but the throw-away uid and rlimits still hold.
    python = sandbox.sandbox_python()
    assert sandbox._run("print('ok')\n", FAST, "uid", python).passed
    for src in (
        "import os\nwhile True:\n    os.fork()\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        f"open({str(Path(__file__).resolve().parent / 'escape.txt')!r}, 'w')\n",
        "x = bytearray(64 * 1024**3)\n",
    ):
        assert not sandbox._run(src, FAST, "uid", python).passed, src
    assert not (Path(__file__).resolve().parent / "escape.txt").exists()
