"""The web UI with 1,000 runs: first render of a 6-panel workspace and toggling a run, measured in the browser.

    .venv/bin/python -m bench.ui [--runs 1000] [--steps 1000] [--repeat 5] [--toggles 20] [--data-dir DIR]
    .venv/bin/python -m bench.ui --panel parallel [--runs 10000] [--repeat 5] [--brushes 20]

Loads ``bench.query``'s generated project (``--runs`` runs x 10 metrics x ``--steps``
steps, through its loader) into the engine directory of an embedded server, starts
``runstream server`` on it as a user would, and opens the project's workspace in headless
Chromium (Debian's ``chromium``, driven by Playwright) with its charts set to show 1,000
runs: six panels (the first six metrics), each one line per run.

The UI marks its own timings with the Performance API, and this benchmark reads them from
the page: ``workspace-first-render`` (from the page's start of the workspace to the
browser's paint after every panel drew: key catalog, runs table, the chart runs and six
series requests, JSON parsing and uPlot included) and ``toggle-run`` (from the click on a
run's eye to the paint after every panel hid or showed it). The first render is measured
``--repeat`` times, each in a fresh browser context (cold: the first; warm: the others);
the toggle ``--toggles`` times on the table's first rows. Targets: first render <= 2 s,
toggle <= 100 ms. The last line is JSON. Nothing is asserted.

``--panel parallel`` measures a parallel-coordinates panel instead: ``--runs`` runs (10,000 by
default in this mode) with config (lr, batch_size, dropout, optimizer, ...) and summary (loss,
acc, ...) and no history, loaded through the same loader; the workspace opens with one panel of
six axes (four config keys, two summary keys; coloured by loss). ``parallel-first-render`` runs
from the workspace's start to the paint after the panel drew (key catalog, ``POST runs/columns``
of every run, JSON parsing, the canvas); ``brush`` from the end of a drag along an axis to the
paint of the runs table filtered to the runs inside (its ``runs`` and ``runs/count`` requests
included), ``--brushes`` drags over the axes in turn, then the chip's clear; ``brush-panel`` from
the end of a drag to the paint of the panel redrawn with its brush (no request). Targets: first
render <= 2 s, brush <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.query import METRIC_NAMES, PROJECT, TEAM

FIRST_RENDER_TARGET_MS = 2000
TOGGLE_TARGET_MS = 100
BRUSH_TARGET_MS = 100
PANELS = 6
PARALLEL_AXES = [
    "config.lr",
    "config.batch_size",
    "config.dropout",
    "config.optimizer",
    "summary.loss",
    "summary.acc",
]


def _load(data_dir: str, runs: int, steps: int, meta_runs: int) -> None:
    """In a child process, which lets go of the engine directory when it exits (chdb: one process per directory)."""
    from bench.api import loaded
    from bench.query import load
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate

    client = connect(f"chdb://{data_dir}/clickhouse")
    migrate(client)
    state = loaded(client, runs, steps, meta_runs)
    if state is None:
        load(client, runs, steps, meta_runs, data_dir)
    elif state:
        print(f"reusing the project already loaded in {data_dir}", flush=True)
    else:
        raise SystemExit(f"{data_dir} holds a {TEAM}/{PROJECT} project of another size; use another --data-dir")


def _free_port() -> int:
    from infra.net import free_port

    return free_port()


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=5) as r:
                if json.loads(r.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become healthy")


def measure(url: str, runs: int, repeat: int, toggles: int, chromium: str, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    workspace = f"{url}/projects/{TEAM}/{PROJECT}"
    # The workspace as a user set it up: charts of 1,000 runs, six metric panels.
    state = {
        "chartLimit": runs,
        "panels": [
            {"id": f"p{i}", "metric": m, "kind": "metric", "x": "step", "smoothing": 0}
            for i, m in enumerate(sorted(METRIC_NAMES)[:PANELS])
        ],
    }
    init = f"localStorage.setItem('runstream.workspace.local.{TEAM}/{PROJECT}', {json.dumps(json.dumps(state))});"
    first: list[float] = []
    toggle: list[float] = []
    lines: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        for i in range(repeat):
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.add_init_script(init)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(workspace)
            page.wait_for_selector("main[data-ready]")
            ms = page.evaluate("performance.getEntriesByName('workspace-first-render')[0].duration")
            lines = page.locator(".panel").evaluate_all("ps => ps.map(p => p.dataset.lines)")
            first.append(ms)
            print(f"  first render {i + 1}/{repeat}: {ms:7.0f} ms  (lines per panel: {', '.join(lines)})", flush=True)
            if i == repeat - 1:
                if shots:
                    page.screenshot(path=str(shots / "workspace-1000-runs.png"))
                eyes = page.locator("table.runs tbody tr button.eye")
                for t in range(toggles):
                    before = page.evaluate("performance.getEntriesByName('toggle-run').length")
                    eyes.nth((t // 2) % eyes.count()).click()
                    page.wait_for_function(f"performance.getEntriesByName('toggle-run').length > {before}")
                    ms = page.evaluate("performance.getEntriesByName('toggle-run').at(-1).duration")
                    toggle.append(ms)
                print(f"  toggle a run ({toggles}x): " + " ".join(f"{t:.0f}" for t in toggle) + " ms", flush=True)
            context.close()
        browser.close()
    return {"first": first, "toggle": toggle, "lines": lines}


def measure_parallel(url: str, repeat: int, brushes: int, chromium: str, shots: Path | None) -> dict:
    """First render of a parallel-coordinates panel of every run, and brush latency (drag -> table painted)."""
    from playwright.sync_api import sync_playwright

    workspace = f"{url}/projects/{TEAM}/{PROJECT}"
    state = {
        "chartLimit": 10,
        "panels": [{"id": "par", "kind": "parallel", "axes": PARALLEL_AXES, "color": "summary.loss"}],
    }
    init = f"localStorage.setItem('runstream.workspace.local.{TEAM}/{PROJECT}', {json.dumps(json.dumps(state))});"
    first: list[float] = []
    brush: list[float] = []
    panel: list[float] = []
    drawn = "0"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        for i in range(repeat):
            # bypass_csp: wait_for_function evaluates its predicate in the page, which the UI's CSP refuses.
            context = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
            context.add_init_script(init)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{workspace}?view=none")
            page.wait_for_function("performance.getEntriesByName('parallel-first-render').length > 0")
            ms = page.evaluate("performance.getEntriesByName('parallel-first-render')[0].duration")
            body = page.locator(".custom-panel[data-kind=parallel] .panel-body")
            drawn = body.get_attribute("data-runs") or "0"
            first.append(ms)
            print(f"  parallel first render {i + 1}/{repeat}: {ms:7.0f} ms  ({drawn} runs drawn)", flush=True)
            if i < repeat - 1:
                context.close()
                continue
            page.wait_for_selector("main[data-ready]")
            canvas = page.locator(".custom-panel[data-kind=parallel] canvas")
            canvas.evaluate("c => c.scrollIntoView({block: 'center'})")  # all of it on screen
            box = canvas.bounding_box()
            assert box is not None
            xs = [int(x) for x in (canvas.get_attribute("data-axis-x") or "").split(",")]
            top, bottom = (int(y) for y in (canvas.get_attribute("data-axis-y") or "").split(","))
            for b in range(brushes + 1):
                before = page.evaluate("performance.getEntriesByName('brush').length")
                if b < brushes:
                    # Over the axes in turn, ranges of 40-65% of the axis: several axes AND together.
                    x = box["x"] + xs[b % len(xs)]
                    y0 = box["y"] + top + (bottom - top) * (0.15 + 0.05 * (b % 4))
                    y1 = box["y"] + top + (bottom - top) * (0.8 - 0.05 * (b % 3))
                    page.mouse.move(x, y0)
                    page.mouse.down()
                    page.mouse.move(x, (y0 + y1) / 2, steps=3)
                    page.mouse.move(x, y1, steps=3)
                    page.mouse.up()
                else:
                    page.locator(".brush-chip button.chip-remove").click()
                page.wait_for_function(f"performance.getEntriesByName('brush').length > {before}")
                ms = page.evaluate("performance.getEntriesByName('brush').at(-1).duration")
                brush.append(ms)
                if b < brushes:  # the panel's own redraw (a clear from the chip redraws no drag)
                    page.wait_for_function(f"performance.getEntriesByName('brush-panel').length > {b}")
                    panel.append(page.evaluate("performance.getEntriesByName('brush-panel').at(-1).duration"))
                if b == 2 and shots:
                    page.screenshot(path=str(shots / "parallel-10000-runs.png"))
            count = page.locator(".table-head .count").inner_text()
            print(
                f"  brush ({brushes} drags, then clear): " + " ".join(f"{t:.0f}" for t in brush) + f" ms; table {count}"
            )
            context.close()
        browser.close()
    return {"first": first, "brush": brush, "panel": panel, "drawn": int(drawn)}


def parallel_main(args: argparse.Namespace, url: str, chromium: str) -> dict:
    result = measure_parallel(url, args.repeat, args.brushes, chromium, args.screenshot)
    first, brush = result["first"], result["brush"]
    warm = first[1:] or first
    figures = {
        "panel": "parallel",
        "runs": args.runs,
        "axes": len(PARALLEL_AXES),
        "runs_drawn": result["drawn"],
        "parallel_first_render_cold_ms": round(first[0]),
        "parallel_first_render_warm_p50_ms": round(statistics.median(warm)),
        "brush_p50_ms": round(statistics.median(brush)) if brush else None,
        "brush_max_ms": round(max(brush)) if brush else None,
        "brush_panel_p50_ms": round(statistics.median(result["panel"])) if result["panel"] else None,
        "brush_panel_max_ms": round(max(result["panel"])) if result["panel"] else None,
        "targets": {"first_render_ms": FIRST_RENDER_TARGET_MS, "brush_ms": BRUSH_TARGET_MS},
    }
    figures["meets_targets"] = (
        figures["parallel_first_render_warm_p50_ms"] <= FIRST_RENDER_TARGET_MS
        and (figures["brush_p50_ms"] or 0) <= BRUSH_TARGET_MS
    )
    print(
        f"parallel coordinates of {result['drawn']:,} runs: first render cold {figures['parallel_first_render_cold_ms']} ms, "
        f"warm p50 {figures['parallel_first_render_warm_p50_ms']} ms (target <= {FIRST_RENDER_TARGET_MS}); "
        f"brush (drag -> table filtered and painted): p50 {figures['brush_p50_ms']} ms, max {figures['brush_max_ms']} ms "
        f"(target <= {BRUSH_TARGET_MS}); the panel's own redraw: p50 {figures['brush_panel_p50_ms']} ms, "
        f"max {figures['brush_panel_max_ms']} ms"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panel", choices=["parallel"], help="measure a panel of this kind instead of line charts")
    parser.add_argument("--runs", type=int, help="runs (default 1,000; 10,000 with --panel)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run and metric")
    parser.add_argument("--repeat", type=int, default=5, help="first renders, each in a fresh browser context")
    parser.add_argument("--toggles", type=int, default=20)
    parser.add_argument("--brushes", type=int, default=20, help="drags along an axis (--panel parallel)")
    parser.add_argument(
        "--data-dir", type=Path, help="server data directory, kept and reused (default: a temporary one)"
    )
    parser.add_argument("--screenshot", type=Path, help="a folder for a screenshot of the workspace")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 10_000 if args.panel else 1000
    chromium = os.environ.get("RUNSTREAM_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        print("error: needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    # Absolute: chdb://tmp/x/clickhouse would name the directory /x/clickhouse ("tmp" read as a host).
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="runstream-bench-ui-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    loader = multiprocessing.get_context("spawn").Process(
        target=_load,
        # A panel reads config and summary only: runs without history (no metric points).
        args=(str(data_dir), 0 if args.panel else args.runs, 0 if args.panel else args.steps, args.runs),
    )
    loader.start()
    loader.join()
    if loader.exitcode:
        return loader.exitcode
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml")}
    server = subprocess.Popen(
        [Path(sys.executable).parent / "runstream", "server", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(url, server)
        if args.screenshot:
            args.screenshot.mkdir(parents=True, exist_ok=True)
        if args.panel:
            print(f"workspace of {args.runs:,} runs with a parallel-coordinates panel at {url}", flush=True)
            print(json.dumps(parallel_main(args, url, chromium)))
            return 0
        print(f"workspace of {args.runs:,} runs x {PANELS} panels ({args.steps:,} steps each) at {url}", flush=True)
        result = measure(url, args.runs, args.repeat, args.toggles, chromium, args.screenshot)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    first, toggle = result["first"], result["toggle"]
    warm = first[1:] or first
    figures = {
        "runs": args.runs,
        "panels": PANELS,
        "steps": args.steps,
        "lines_per_panel": [int(n) for n in result["lines"]],
        "first_render_cold_ms": round(first[0]),
        "first_render_warm_p50_ms": round(statistics.median(warm)),
        "toggle_p50_ms": round(statistics.median(toggle)) if toggle else None,
        "toggle_max_ms": round(max(toggle)) if toggle else None,
        "targets": {"first_render_ms": FIRST_RENDER_TARGET_MS, "toggle_ms": TOGGLE_TARGET_MS},
    }
    figures["meets_targets"] = (
        figures["first_render_warm_p50_ms"] <= FIRST_RENDER_TARGET_MS
        and (figures["toggle_p50_ms"] or 0) <= TOGGLE_TARGET_MS
    )
    print(
        f"first render: cold {figures['first_render_cold_ms']} ms, warm p50 {figures['first_render_warm_p50_ms']} ms "
        f"(target <= {FIRST_RENDER_TARGET_MS}); toggle a run: p50 {figures['toggle_p50_ms']} ms, "
        f"max {figures['toggle_max_ms']} ms (target <= {TOGGLE_TARGET_MS})"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
