"""A workspace media panel, in headless Chromium against ``runstream server``: one key compared across runs.

Three runs log a PR curve (``runstream.plot.pr_curve``, the positive class only) under "pr" at two steps, and
a small image under "samples"; the panel added through the "+ panel…" menu draws one curve per run, each in the
run's colour and named by it, from each run's latest step; the eye in the runs table takes a run off the plot
without a refetch; an image key is a grid of one image per run; a report saved from the workspace draws both.
Screenshot: panel-media-compare.png (docs/img holds a copy).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import runstream
from infra.net import free_port
from tests.browser import test_ui
from tests.browser.test_ui import ARTIFACTS, RUNSTREAM, _get

# test_ui.py's browser and page fixtures (the server here is a bare one, without the demo).
browser, page = test_ui.browser, test_ui.page

pytestmark = pytest.mark.browser

PROJECT = "compare"
RUNS = {"alpha": 0.05, "beta": 0.2, "gamma": 0.35}  # run name -> how noisy its labels are


def _log_runs(url: str, workdir: Any) -> None:
    rng = np.random.default_rng(7)
    for i, (name, noise) in enumerate(RUNS.items()):
        run = runstream.init(
            project=PROJECT,
            name=name,
            config={"noise": noise},
            dir=workdir / name,
            settings={"url": url, "api_key": "", "console": False, "system_metrics": False, "git": False},
        )
        for step in (1, 2):
            y_true = rng.integers(0, 2, 300)
            flipped = np.where(rng.random(300) < noise / step, 1 - y_true, y_true)
            p1 = np.clip(0.5 + (flipped - 0.5) * rng.random(300) * 1.6, 0, 1)
            probas = np.stack([1 - p1, p1], axis=1)
            run.log(
                {"pr": runstream.plot.pr_curve(y_true, probas, labels=["neg", "pos"], classes_to_plot=[1])}, step=step
            )
        pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        pixels[:, :, i] = 200  # red, green, blue: each run its own
        run.log({"samples": runstream.Image(pixels, caption=name)}, step=2)
        assert run.finish().unacked_events == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``runstream server`` in its own process, with the three runs logged into it."""
    data_dir = tmp_path_factory.mktemp("media-compare-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml")}
    process = subprocess.Popen(
        [RUNSTREAM, "server", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "the server exited"
            try:
                if _get(f"{url}/api/v1/health")["status"] == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 90 s"
            time.sleep(0.3)
        _log_runs(url, tmp_path_factory.mktemp("media-compare-runs"))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _add_media_panel(page, key: str) -> Any:
    before = page.locator(".custom-panel[data-kind=media]").count()
    page.locator("select.add-panel").select_option("new:media")
    page.locator(f".panel-form select.pf-key option[value='{key}']").wait_for(state="attached")
    page.locator(".panel-form select.pf-key").select_option(key)
    page.locator(".panel-form button.pf-add").click()
    panel = page.locator(".custom-panel[data-kind=media]").nth(before)
    panel.locator(".panel-status").filter(has_text="runs").wait_for()
    return panel


def test_a_media_panel_draws_one_pr_curve_per_run(page, server: str) -> None:
    page.goto(f"{server}/projects/default/{PROJECT}")
    page.wait_for_selector("main[data-ready]")
    panel = _add_media_panel(page, "pr")
    assert panel.locator(".panel-status").inner_text() == "3 runs"
    chart = panel.locator(".chart-view[data-drawn]")
    chart.wait_for()
    assert chart.get_attribute("data-chart") == "pr_curve"
    assert chart.get_attribute("data-series") == "3"
    # One curve per run, named by it and the class plotted, in its colour (the runs table's swatch).
    labels = chart.locator(".u-legend .u-series .u-label").all_inner_texts()
    assert sorted(label for label in labels if " · " in label) == sorted(f"{name} · pos" for name in RUNS)
    rows = page.locator("table.runs tbody tr")
    swatch = "s => getComputedStyle(s).backgroundColor"
    swatches = {
        row.locator("td.name").inner_text().strip(): row.locator(".swatch").evaluate(swatch) for row in rows.all()
    }
    markers = chart.locator(".u-legend .u-series").evaluate_all(
        "rows => rows.filter(r => r.querySelector('.u-marker')).map(r => "
        "[r.querySelector('.u-label').textContent, getComputedStyle(r.querySelector('.u-marker')).borderColor])"
    )
    drawn = {label.split(" · ")[0]: color for label, color in markers if " · " in label}
    assert drawn == {name: swatches[name] for name in RUNS}, (drawn, swatches)
    panel.screenshot(path=str(ARTIFACTS / "panel-media-compare.png"))

    # The eye takes a run off the plot without asking the server again.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/media/" in r.url else None)
    row = rows.filter(has_text="beta")
    row.locator("button.eye").click()
    page.wait_for_function(
        "document.querySelector('.custom-panel[data-kind=media] .chart-view[data-drawn]')?.dataset.series === '2'"
    )
    assert requests == []
    row.locator("button.eye").click()
    page.wait_for_function(
        "document.querySelector('.custom-panel[data-kind=media] .chart-view[data-drawn]')?.dataset.series === '3'"
    )

    # An image key: a grid of each run's latest image, captioned with the run and its step.
    images = _add_media_panel(page, "samples")
    cells = images.locator("figure.media-compare-cell")
    assert cells.count() == 3
    images.locator("figure.media-compare-cell img[src^='blob:']").nth(2).wait_for()
    captions = cells.locator("figcaption").all_inner_texts()
    assert sorted(c.split(" · ")[0].strip() for c in captions) == sorted(RUNS)
    assert all("step 2" in c for c in captions)
    # Hidden and shown again: the same cells, no file fetched again.
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/api/v1/" in r.url else None)
    row.locator("button.eye").click()
    page.wait_for_function(
        "document.querySelectorAll('.custom-panel[data-kind=media] figure.media-compare-cell').length === 2"
    )
    row.locator("button.eye").click()
    page.wait_for_function(
        "document.querySelectorAll('.custom-panel[data-kind=media] figure.media-compare-cell img[src^=\"blob:\"]')"
        ".length === 3"
    )
    assert not [url for url in fetched if "/media/" in url or "/files/" in url], fetched

    # "save as report" carries the panels: the report draws the curves and the grid from its filter.
    page.get_by_role("button", name="save as report").click()
    page.wait_for_url("**/reports/*")
    report = page.locator(".report-view .custom-panel[data-kind=media]")
    report.first.locator(".chart-view[data-drawn][data-series='3']").wait_for()
    report.nth(1).locator("figure.media-compare-cell img[src^='blob:']").nth(2).wait_for()
