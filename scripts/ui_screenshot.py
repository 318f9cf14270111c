#!/usr/bin/env python
"""Screenshot the MLflow UI's compare view of a sweep, in a real headless Chromium against a real `mlflow server`.

    .venv/bin/python scripts/ui_screenshot.py --store runs/mlflow.db --experiment organism-study \
        --setting code.256 --out docs/img/mlflow_compare.png --max-png-kb 400

Starts `mlflow server` on the sqlite store (127.0.0.1, a free port), opens the compare-runs page
(`#/compare-runs?runs=[...]&experiments=[...]`) of the experiment's FINISHED `quant`/`reference` runs, and drives it
through the DevTools protocol (over `--remote-debugging-pipe`: no websocket library, no playwright): it records what
MLflow plots by default, switches to the scatter plot with x = `fid.kld_mean`, y = `bench.composite.acc`, closes the
assistant side panel, writes the PNG, and checks that the page is the compare view of these runs (every run name in
the run table), that the plot's axes name the metrics and that it drew one point per run, and that the PNG is a real
rendering (size, many distinct colours). Stops the browser and the server. Needs Debian's chromium
(scripts/install_system_deps.sh). Exit status 0 only when every check passed; the JSON on stdout says which failed.

MLflow 3.17's defaults do not plot the fidelity metrics: the parallel-coordinates plot starts with the first three
differing params (alphabetically) and the first shared metric, the scatter plot with the first param against the first
metric. Hence the explicit axis selection here (two clicks in the UI).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from quantfid.tracking.team import free_port, stop_process_group, wait_healthy
from quantfid.tracking.ui import experiment_url, runs_url

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]
ROLES = ("quant", "reference")


@contextmanager
def mlflow_server(store: Path, log: Path, timeout: float = 300) -> Iterator[tuple[str, int]]:
    """A real `mlflow server` on the sqlite store; yields its URI and process group, stops the whole group on exit."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri"]
    cmd += [f"sqlite:///{store.resolve()}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(uri, proc, log, timeout)
        yield uri, proc.pid
    finally:
        stop_process_group(proc.pid, 30, proc)


def api(uri: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
    """One MLflow REST call (POST with a JSON body, or GET with a query)."""
    url = uri + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def compare_runs(uri: str, experiment: str, setting: str | None, max_runs: int) -> tuple[str, list[dict[str, Any]]]:
    """The experiment id and its FINISHED quant/reference runs (optionally one `<corpus>.<context>` setting)."""
    exp_id = api(uri, "/api/2.0/mlflow/experiments/get-by-name", query={"experiment_name": experiment})
    exp_id = exp_id["experiment"]["experiment_id"]
    flt = "attributes.status = 'FINISHED'"
    if setting:
        corpus, _, context = setting.partition(".")
        flt += f" and params.`fidelity.corpus` = '{corpus}' and params.`fidelity.context` = '{context}'"
    runs, token = [], None
    while True:  # MLflow's search filter has no IN for tags: filter the role here
        body = {"experiment_ids": [exp_id], "filter": flt, "max_results": 1000, "order_by": ["attributes.run_name"]}
        page = api(uri, "/api/2.0/mlflow/runs/search", {**body, **({"page_token": token} if token else {})})
        for r in page.get("runs", []):
            tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
            if tags.get("quantfid.role") in ROLES:
                metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
                runs.append({"id": r["info"]["run_id"], "name": r["info"]["run_name"], "metrics": metrics})
        token = page.get("next_page_token")
        if not token:
            return exp_id, runs[:max_runs]


def compare_url(uri: str, exp_id: str, run_ids: list[str]) -> str:
    """MLflow 3.17's compare view: a hash route of the React app with JSON lists of run and experiment ids."""
    return f"{uri}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}"


class Chromium:
    """Headless Chromium driven over the DevTools protocol on `--remote-debugging-pipe` (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1200) -> None:
        self.profile = tempfile.mkdtemp(prefix="quantfid-chromium-")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # move the child's ends above 9 so that bash can place them on 3 and 4 without clobbering one with the other
        hi_r, hi_w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        redirect = f'exec "$0" "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-'
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", redirect, binary, *args],
            pass_fds=(hi_r, hi_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._out, self._in = to_child_w, from_child_r
        self._buf, self._id, self.session = b"", 0, ""
        pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)

    def send(self, method: str, params: dict | None = None) -> dict:
        """One protocol command; events in between are dropped (nothing here subscribes to any)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (rc {self.proc.poll()}) during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expr: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            exc = res["exceptionDetails"]
            why = exc.get("exception", {}).get("description") or exc.get("text")
            raise RuntimeError(f"page script failed: {why} in {expr[:300]}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float, what: str) -> None:
        """Poll a page expression until it is truthy (the SPA renders asynchronously after its fetches)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.js(f"!!({expr})"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never showed {what} within {timeout:.0f} s")
            time.sleep(0.25)

    def click(self, element_expr: str) -> None:
        """A real mouse click in the middle of an element (Radix widgets react to pointer events, not .click())."""
        centre = self.js(
            f"(() => {{ const e = {element_expr}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if centre is None:
            raise RuntimeError(f"no element for {element_expr}")
        x, y = centre
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def screenshot(self, out: Path, box_of: str | None = None) -> list[float] | None:
        """PNG of the viewport at the top of the page; returns the [x, y, w, h] of `box_of` in it, if given."""
        self.js("window.scrollTo(0, 0)")
        box = None
        if box_of:
            box = self.js(
                f"(() => {{ const e = {box_of}; if (!e) return null; const r = e.getBoundingClientRect();"
                " return [r.x, r.y, r.width, r.height]; })()"
            )
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return box

    def close(self) -> None:
        try:
            os.close(self._out)
            os.close(self._in)
        except OSError:
            pass
        stop_process_group(self.proc.pid, 10, self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)


@contextmanager
def chromium(binary: str, width: int = 1600, height: int = 1200) -> Iterator[Chromium]:
    browser = Chromium(binary, width, height)
    try:
        yield browser
    finally:
        browser.close()


ACTIVE_PANEL = "document.querySelector('[role=tabpanel][data-state=active]')"
PAGE_TEXT = "document.body ? document.body.innerText : ''"


def _select(browser: Chromium, select_id: str, value: str, timeout: float) -> list[str]:
    """Pick `value` in one of the scatter plot's axis selects (a Radix combobox button and its listbox); returns the
    names the listbox offered (every param and metric of the compared runs)."""
    trigger = f"document.getElementById({json.dumps(select_id)})"
    browser.wait_for(trigger, timeout, f"the {select_id}")
    browser.click(trigger)
    options = "[...document.querySelectorAll('[role=option]')]"
    option = f"{options}.find(e => e.textContent.trim() === {json.dumps(value)})"
    browser.wait_for(option, timeout, f"the option {value} of {select_id}")
    offered = browser.js(f"{options}.map(e => e.textContent.trim())")
    browser.click(option)
    browser.wait_for(f"{trigger}.textContent.trim() === {json.dumps(value)}", timeout, f"{value} chosen in {select_id}")
    return offered


def drive_compare_page(browser: Chromium, url: str, run_names: list[str], x: str, y: str, timeout: float) -> dict:
    """Open the compare view, note MLflow's default plot choices, plot y against x, and read back what is shown."""
    browser.send("Page.navigate", {"url": url})
    browser.wait_for(f"{PAGE_TEXT}.includes('Comparing {len(run_names)} Runs')", timeout, "the compare-runs title")
    last = json.dumps(run_names[-1])
    browser.wait_for(f"{PAGE_TEXT}.includes({last})", timeout, "the run table")
    browser.wait_for(f"{ACTIVE_PANEL} && {ACTIVE_PANEL}.querySelector('svg')", timeout, "the default plot")
    chips = f"[...{ACTIVE_PANEL}.querySelectorAll('.du-bois-light-select-selection-item-content')]"
    default_parallel = browser.js(f"{chips}.map(e => e.textContent)")
    browser.click("[...document.querySelectorAll('[role=tab]')].find(e => e.textContent === 'Scatter Plot')")
    scatter_ready = f"{ACTIVE_PANEL}.id.endsWith('scatter-plot') && {ACTIVE_PANEL}.querySelector('.xtitle')"
    browser.wait_for(scatter_ready, timeout, "the scatter plot")
    titles = f"['.xtitle', '.ytitle'].map(c => {ACTIVE_PANEL}.querySelector(c).textContent)"
    default_scatter = browser.js(titles)
    offered = _select(browser, "x-axis-selector", x, timeout)
    _select(browser, "y-axis-selector", y, timeout)
    browser.wait_for(f"{titles}.join('|') === {json.dumps(x + '|' + y)}", timeout, f"scatter axes {x}, {y}")
    close_assistant = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
    if browser.js(f"!!{close_assistant}"):  # the assistant side panel takes a third of the width
        browser.click(close_assistant)
        browser.wait_for(f"!{close_assistant}", timeout, "the assistant panel closed")
    time.sleep(1.0)  # plotly's resize after the layout change
    text = browser.js(PAGE_TEXT)
    points = browser.js(  # what plotly was given to draw: [x, y] per point
        f"{ACTIVE_PANEL}.querySelector('.js-plotly-plot').data"
        ".flatMap(t => t.x.map((v, i) => [v, t.y[i]])).filter(p => p[0] != null && p[1] != null)"
    )
    return {
        "default_parallel_coordinates": default_parallel,
        "default_scatter_axes": default_scatter,
        "scatter_axes": browser.js(titles),
        "scatter_points": points,
        "axis_options": offered,
        "run_names_on_page": [name for name in run_names if name in text],
        "title": next((ln for ln in text.splitlines() if ln.startswith("Comparing")), ""),
    }


def drive_experiment_page(
    browser: Chromium, uri: str, exp_id: str, run_ids: list[str], run_names: list[str], timeout: float
) -> dict:
    """Open the experiment from a fresh profile, first by its bare address (``#/experiments/<id>``: MLflow 3.17 opens
    the GenAI overview there whatever the experiment's kind tag says, because a fresh browser's workflow type is
    GenAI), then by the link quantfid prints (``experiment_url``: the runs table); then open the sweep's runs link and
    check that it lists the sweep's job runs by name."""

    def land(url: str) -> str:
        browser.send("Page.navigate", {"url": url})
        browser.wait_for("location.hash.split('?')[0].split('/').length > 3", timeout, f"a view of {url}")
        time.sleep(2.0)  # the redirect to the default tab follows the experiment's fetch
        return browser.js("location.hash.split('?')[0]")

    bare = land(f"{uri}/#/experiments/{exp_id}")
    landed = land(experiment_url(uri, exp_id))
    browser.send("Page.navigate", {"url": runs_url(uri, exp_id, run_ids=run_ids)})
    names = " && ".join(f"{PAGE_TEXT}.includes({json.dumps(n)})" for n in run_names)
    browser.wait_for(names, timeout, "every job run in the runs table")
    close_assistant = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
    if browser.js(f"!!{close_assistant}"):  # the assistant side panel takes a third of the width
        browser.click(close_assistant)
        browser.wait_for(f"!{close_assistant}", timeout, "the assistant panel closed")
    time.sleep(1.0)
    shown = [n for n in run_names if n in browser.js(PAGE_TEXT)]
    return {"bare_url_landed_on": bare, "landed_on": landed, "runs_link_names_on_page": shown}


def png_facts(path: Path, plot_box: list[float] | None = None) -> dict:
    """Size and colour count of the PNG (a blank or error page has a handful of colours, the compare view thousands),
    and how many saturated pixels lie inside the plot area: the scatter is WebGL, so its markers exist only as pixels
    (the page's axes, grid and text are grey)."""
    import numpy as np
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.int32)
    height, width = px.shape[:2]
    packed = (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]
    facts = {"bytes": len(data), "width": width, "height": height, "colours": int(np.unique(packed).size)}
    marker = 0
    if plot_box:
        x, y, w, h = (round(v) for v in plot_box)
        area = px[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)]
        marker = int(((area.max(axis=-1) - area.min(axis=-1)) > 60).sum())
    facts["plot_marker_pixels"] = marker
    return facts


def shrink_png(path: Path, max_bytes: int) -> None:
    """Quantize to a 256-colour palette when the PNG is larger than `max_bytes` (for the committed docs image)."""
    from PIL import Image

    if path.stat().st_size <= max_bytes:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def run(
    store: Path,
    experiment: str,
    out: Path,
    chromium_bin: str,
    setting: str | None = None,
    max_runs: int = 60,
    x: str = "fid.kld_mean",
    y: str = "bench.composite.acc",
    timeout: float = 120,
    max_png_bytes: int | None = None,
) -> dict:
    """Everything main() does, as a function (the test calls it): returns the facts and `ok`, writes the PNG.

    On failure the server log and the page's HTML are left next to the PNG (`<out>.server.log`, `<out>.html`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantfid-ui-") as tmp:
        log = Path(tmp) / "server.log"
        try:
            with mlflow_server(store, log) as (uri, server_group):
                exp_id, runs = compare_runs(uri, experiment, setting, max_runs)
                if not runs:
                    raise RuntimeError(f"experiment {experiment!r} has no FINISHED quant/reference runs")
                url = compare_url(uri, exp_id, [r["id"] for r in runs])
                with chromium(chromium_bin) as browser:
                    groups = [server_group, browser.proc.pid]
                    try:
                        names = [r["name"] for r in runs]
                        experiment_page = drive_experiment_page(
                            browser, uri, exp_id, [r["id"] for r in runs], names, timeout
                        )
                        browser.screenshot(out.with_name(out.stem + "_runs.png"))
                        page = drive_compare_page(browser, url, names, x, y, timeout)
                    except BaseException:  # what the page looked like is the diagnosis
                        browser.screenshot(out)
                        out.with_suffix(".html").write_text(browser.js("document.documentElement.outerHTML") or "")
                        raise
                    plot_box = browser.screenshot(out, f"{ACTIVE_PANEL}.querySelector('.nsewdrag')")
        except BaseException:
            shutil.copyfile(log, out.with_suffix(".server.log"))
            raise
    plottable = sum(x in r["metrics"] and y in r["metrics"] for r in runs)
    facts = {"png": str(out), **png_facts(out, plot_box), "runs": len(runs), "plottable_runs": plottable, "url": url}
    if max_png_bytes:  # the checks are on the rendering; the palette copy only has to be small
        shrink_png(out, max_png_bytes)
        shrink_png(out.with_name(out.stem + "_runs.png"), max_png_bytes)
        facts["bytes"] = out.stat().st_size
    facts.update(page)
    facts.update(experiment_page)
    facts["process_groups"] = groups  # all stopped by now: the test checks that nothing of them is left
    facts["checks"] = {
        "all_run_names_on_page": len(page["run_names_on_page"]) == len(runs),
        "metrics_offered_as_axes": {x, y} <= set(page["axis_options"]),
        "axes_name_the_metrics": page["scatter_axes"] == [x, y],
        "one_point_per_run": len(page["scatter_points"]) == plottable > 0,
        "png_is_a_rendering": facts["bytes"] > 20_000 and facts["colours"] >= 200,
        "markers_drawn_in_plot": facts["plot_marker_pixels"] >= 20 * min(plottable, 5),
        "experiment_opens_on_runs_table": experiment_page["landed_on"].endswith("/runs"),
        "runs_link_lists_every_run": len(experiment_page["runs_link_names_on_page"]) == len(runs),
    }
    facts["ok"] = all(facts["checks"].values())
    return facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--store", default="runs/mlflow.db", help="sqlite file of the sweep's store")
    p.add_argument("--experiment", default="organism-study")
    p.add_argument("--setting", help="only runs of this fidelity setting, `<corpus>.<context>` (e.g. code.256)")
    p.add_argument("--out", default="runs/ui_compare.png")
    p.add_argument("--max-runs", type=int, default=60)
    p.add_argument("--x", default="fid.kld_mean", help="scatter x axis (a metric or param name)")
    p.add_argument("--y", default="bench.composite.acc", help="scatter y axis")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--timeout", type=float, default=120, help="seconds for each step of the page to render")
    p.add_argument("--max-png-kb", type=int, help="palette-quantize the PNG when it is larger than this")
    args = p.parse_args(argv)
    store = Path(args.store)
    if not store.is_file():
        print(f"error: --store {store}: no such sqlite file; run a sweep first", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"error: {args.chromium} not found; run scripts/install_system_deps.sh", file=sys.stderr)
        return 2
    max_bytes = args.max_png_kb * 1024 if args.max_png_kb else None
    facts = run(store, args.experiment, Path(args.out), args.chromium, args.setting, args.max_runs, args.x, args.y,
                args.timeout, max_bytes)  # fmt: skip
    brief = {k: v for k, v in facts.items() if k not in ("url", "scatter_points", "axis_options", "process_groups")}
    brief["run_names_on_page"] = len(facts["run_names_on_page"])
    print(json.dumps(brief, indent=1))
    return 0 if facts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
