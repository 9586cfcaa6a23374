"""The web UI with 1,000 runs: first render of a 6-panel workspace and toggling a run, measured in the browser.

    .venv/bin/python -m bench.ui [--runs 1000] [--steps 1000] [--repeat 5] [--toggles 20] [--data-dir DIR]

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
PANELS = 6


def _load(data_dir: str, runs: int, steps: int) -> None:
    """In a child process, which lets go of the engine directory when it exits (chdb: one process per directory)."""
    from bench.api import loaded
    from bench.query import load
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate

    client = connect(f"chdb://{data_dir}/clickhouse")
    migrate(client)
    state = loaded(client, runs, steps, runs)
    if state is None:
        load(client, runs, steps, runs, data_dir)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000, help="steps per run and metric")
    parser.add_argument("--repeat", type=int, default=5, help="first renders, each in a fresh browser context")
    parser.add_argument("--toggles", type=int, default=20)
    parser.add_argument(
        "--data-dir", type=Path, help="server data directory, kept and reused (default: a temporary one)"
    )
    parser.add_argument("--screenshot", type=Path, help="a folder for a screenshot of the workspace")
    args = parser.parse_args()
    chromium = os.environ.get("RUNSTREAM_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        print("error: needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="runstream-bench-ui-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    loader = multiprocessing.get_context("spawn").Process(target=_load, args=(str(data_dir), args.runs, args.steps))
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
        print(f"workspace of {args.runs:,} runs x {PANELS} panels ({args.steps:,} steps each) at {url}", flush=True)
        if args.screenshot:
            args.screenshot.mkdir(parents=True, exist_ok=True)
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
