"""Team mode: a real `mlflow server` on PostgreSQL, with the artifact proxy and basic auth, started and stopped here.

    python -m quantfid.tracking.team start [--dir runs/team] [--port 5000]   # prints the client environment
    python -m quantfid.tracking.team stop  [--dir runs/team] [--purge]
    python -m quantfid.tracking.team status [--dir runs/team]

(scripts/team_server.sh wraps these.) PostgreSQL comes from Debian's package (scripts/install_system_deps.sh); the
cluster is the server's own, on 127.0.0.1 with password auth, in ``<dir>/pgdata`` (or a temp folder when the postgres
user cannot reach ``<dir>``; such a throwaway cluster is removed on stop). Artifacts go through the server's proxy
(``--serve-artifacts``) into the content-addressed repository at ``<dir>/artifacts`` (``cas://``), so identical
artifacts logged by the whole team are stored once. Clients use the usual variables, written to
``<dir>/client.env``: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
STATE = "team.json"
START_TIMEOUT_S = float(os.environ.get("QUANTFID_TEAM_START_TIMEOUT", "300"))


class TeamServerError(RuntimeError):
    """The team server cannot be started or stopped; the message says what is missing and what to do."""


@dataclass
class TeamState:
    dir: str
    pgdata: str
    pgdata_is_temp: bool
    pg_port: int
    pg_password: str
    port: int
    admin_user: str
    admin_password: str
    server_pid: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": self.admin_user,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        if (Path(d) / name).exists():
            return str(Path(d) / name)
    found = shutil.which(name)
    if found:
        return found
    raise TeamServerError(
        f"PostgreSQL's {name} was not found; install Debian's postgresql package (scripts/install_system_deps.sh)"
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError as err:
        raise TeamServerError("running as root but there is no 'postgres' user; install Debian's postgresql") from err
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise TeamServerError(f"{' '.join(cmd)} failed ({proc.returncode}): {detail}")


def _postgres_can_use(directory: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(directory)], capture_output=True)
    return probe.returncode == 0


def _start_postgres(state_dir: Path) -> tuple[Path, bool, int, str]:
    persistent = state_dir / "pgdata"
    temp = not _postgres_can_use(state_dir)
    pgdata = Path(tempfile.mkdtemp(prefix="quantfid-pg-")) if temp else persistent
    pg_port, password = free_port(), secrets.token_urlsafe(18)
    pwfile = Path(tempfile.mkstemp(prefix="quantfid-pgpw-")[1])
    pwfile.write_text(password + "\n")
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            for p in (pgdata, pwfile):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        os.chmod(pgdata, 0o700)
        if not (pgdata / "PG_VERSION").exists():
            initdb = [pg_bin("initdb"), "-D", str(pgdata), "-U", "quantfid", "--auth=scram-sha-256"]
            _run(_as_postgres([*initdb, f"--pwfile={pwfile}"]))
    finally:
        pwfile.unlink(missing_ok=True)
    opts = f"-p {pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={pgdata} -c max_connections=200"
    log = str(pgdata / "server.log")
    _run(_as_postgres([pg_bin("pg_ctl"), "-D", str(pgdata), "-o", opts, "-l", log, "-w", "start"]))
    return pgdata, temp, pg_port, password


def _psql(pg_port: int, password: str, sql: str) -> None:
    env = {**os.environ, "PGPASSWORD": password}
    _run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "quantfid", "-d", "postgres", "-c", sql], env)


def wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout: float | None = None) -> None:
    """Block until the `mlflow server` at ``uri`` answers /health; fail with its log when it exits or times out."""
    timeout = timeout or START_TIMEOUT_S
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TeamServerError(f"mlflow server exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise TeamServerError(f"mlflow server at {uri} not healthy after {timeout:.0f} s; see {log}")


def start(state_dir: str | os.PathLike, port: int | None = None, workers: int = 2) -> TeamState:
    """Start PostgreSQL and `mlflow server --serve-artifacts --app-name basic-auth`; returns the state."""
    d = Path(state_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if (d / STATE).exists():
        raise TeamServerError(f"a team server state exists in {d}; stop it first (scripts/team_server.sh stop {d})")
    pgdata, temp, pg_port, pg_password = _start_postgres(d)
    try:
        _psql(pg_port, pg_password, "CREATE DATABASE mlflow")
        _psql(pg_port, pg_password, "CREATE DATABASE mlflow_auth")
    except TeamServerError as err:
        if "already exists" not in str(err):
            raise
    port = port or free_port()
    admin_password = secrets.token_urlsafe(18)
    db = f"postgresql+psycopg2://quantfid:{pg_password}@127.0.0.1:{pg_port}"
    (d / "artifacts" / ".cas").mkdir(parents=True, exist_ok=True)
    auth_ini = d / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {db}/mlflow_auth\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    os.chmod(auth_ini, 0o600)
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
    }
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        f"{db}/mlflow",
        "--serve-artifacts",
        "--artifacts-destination",
        f"cas://{d / 'artifacts'}",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    log = d / "mlflow.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=d)
    state = TeamState(str(d), str(pgdata), temp, pg_port, pg_password, port, "admin", admin_password, proc.pid)
    (d / STATE).write_text(json.dumps(asdict(state), indent=1))
    os.chmod(d / STATE, 0o600)
    try:
        wait_healthy(state.uri, proc, log)
    except TeamServerError:
        stop(d)
        raise
    env_file = d / "client.env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in state.client_env().items()))
    os.chmod(env_file, 0o600)
    return state


def load_state(state_dir: str | os.PathLike) -> TeamState:
    path = Path(state_dir).resolve() / STATE
    if not path.exists():
        raise TeamServerError(f"no team server state in {path.parent}; start one (scripts/team_server.sh start)")
    return TeamState(**json.loads(path.read_text()))


def stop_process_group(pid: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM a process group (a server started with start_new_session=True and everything it spawned), wait until
    no member is left, SIGKILL what remains after ``timeout``. ``proc``: the leader, when it is our child, so it is
    reaped (a zombie leader would keep the group alive)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline + 10:  # then give up on an unkillable (D-state) member
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pid, 0 if time.monotonic() < deadline else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)


def stop(state_dir: str | os.PathLike, purge: bool = False) -> None:
    """Stop the mlflow server (its whole process group) and PostgreSQL; a temp cluster is removed."""
    d = Path(state_dir).resolve()
    state = load_state(d)
    stop_process_group(state.server_pid)
    pgdata = Path(state.pgdata)
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres([pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )
    if state.pgdata_is_temp or purge:
        shutil.rmtree(pgdata, ignore_errors=True)
    if purge:
        shutil.rmtree(d / "artifacts", ignore_errors=True)
    (d / STATE).unlink(missing_ok=True)
    (d / "client.env").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantfid-team", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("start", "stop", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=os.environ.get("QUANTFID_TEAM_DIR", "runs/team"))
        if name == "start":
            p.add_argument("--port", type=int, default=None)
            p.add_argument("--workers", type=int, default=2)
        if name == "stop":
            p.add_argument("--purge", action="store_true", help="also delete the database and the artifacts")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "start":
            state = start(args.dir, args.port, args.workers)
            print(f"team server up at {state.uri} (PostgreSQL on 127.0.0.1:{state.pg_port}, artifacts proxied)")
            print(f"client environment: source {Path(state.dir) / 'client.env'}")
        elif args.cmd == "stop":
            stop(args.dir, args.purge)
            print(f"team server in {Path(args.dir).resolve()} stopped")
        else:
            state = load_state(args.dir)
            try:
                with urllib.request.urlopen(state.uri + "/health", timeout=3) as r:
                    print(f"{state.uri}: {r.status} (pid {state.server_pid})")
            except OSError as err:
                print(f"{state.uri}: not answering ({err})")
                return 1
    except TeamServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
