#!/usr/bin/env python
"""Screenshot the MLflow UI's compare view of a sweep, in a real headless Chromium against a real `mlflow server`.

    .venv/bin/python scripts/ui_screenshot.py --store runs/mlflow.db --experiment organism-study --out ui.png

Starts `mlflow server` on the sqlite store (127.0.0.1, a free port), opens the compare-runs page of the experiment's
FINISHED quant/reference runs (the page whose scatter plot of `fid.kld_mean` against `bench.composite.acc` and
parallel-coordinates plot the run names, params and metric names are chosen for), writes the PNG, checks it is a real
rendering (non-blank, compare page reached), and stops the server. Needs Debian's chromium
(scripts/install_system_deps.sh). Exit status 0 only when the page rendered and named the runs' metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store.resolve()}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(uri: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlflow server at {uri} not healthy after {timeout:.0f} s")


def api(uri: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        uri + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def get_by_name(uri: str, experiment: str) -> str:
    q = urllib.parse.urlencode({"experiment_name": experiment})
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/get-by-name?{q}", timeout=60) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def screenshot(url: str, out: Path, chromium: str, budget_ms: int) -> str:
    """PNG of the page and its rendered DOM (to check the page really is the compare view)."""
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        subprocess.run(
            [*base, "--window-size=1600,1400", f"--screenshot={out}", url], capture_output=True, timeout=240, check=True
        )
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, timeout=240, text=True)
    return dom.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="runs/mlflow.db", help="sqlite file of the sweep's store")
    p.add_argument("--experiment", default="organism-study")
    p.add_argument("--out", default="runs/ui_compare.png")
    p.add_argument("--max-runs", type=int, default=60)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--budget-ms", type=int, default=20000, help="Chromium virtual time for the page to render")
    args = p.parse_args(argv)
    store, out = Path(args.store), Path(args.out)
    if not store.exists():
        print(f"error: --store {store}: no such sqlite file; run a sweep first", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"error: {args.chromium} not found; run scripts/install_system_deps.sh", file=sys.stderr)
        return 2
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(store, port, out.with_suffix(".server.log"))
    try:
        wait_healthy(uri, proc)
        exp_id = get_by_name(uri, args.experiment)
        found = api(
            uri,
            "/api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [exp_id],
                "filter": "attributes.status = 'FINISHED' and tags.`quantfid.role` != 'sweep'",
                "max_results": args.max_runs,
            },
        ).get("runs", [])
        if not found:
            print(f"error: experiment {args.experiment!r} has no FINISHED quant/reference runs", file=sys.stderr)
            return 2
        ids = [r["info"]["run_id"] for r in found]
        url = f"{uri}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}"
        dom = screenshot(url, out, args.chromium, args.budget_ms)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    size = out.stat().st_size if out.exists() else 0
    seen = [m for m in ("fid.kld_mean", "bench.composite.acc", "quant.backend") if m in dom]
    print(json.dumps({"png": str(out), "bytes": size, "runs": len(ids), "url": url, "names_in_page": seen}))
    return 0 if size > 20_000 and len(seen) >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
