"""The workspace's panels beyond lines, its sections, saved views and run comparer, in headless Chromium
against ``runstream server`` with ``runstream demo`` logged into it (test_ui.py's fixtures, reused).

Screenshots (panel-parallel.png, panel-scatter.png, panel-bar.png, panel-importance.png,
workspace-sections.png, run-comparer.png) go where test_ui.py's go; docs/img holds copies.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser import test_ui
from tests.browser.test_ui import ARTIFACTS, _open_workspace, _shot

# test_ui.py's fixtures: a server with the demo logged into it (one per module), the browser, a fresh page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.browser

WORKSPACE = "/projects/default/demo"


def _add(page, kind: str, checks: tuple[str, ...] = (), **choices: str | list[str]) -> Any:
    """Add a panel of a new kind through the "+ panel…" menu's form; the panel's locator."""
    before = page.locator(f".custom-panel[data-kind={kind}]").count()
    page.locator("select.add-panel").select_option(f"new:{kind}")
    for name, value in choices.items():
        page.locator(f".panel-form select.pf-{name}").select_option(value)
    for name in checks:
        page.locator(f".panel-form input.pf-{name}").check()
    page.locator(".panel-form button.pf-add").click()
    panel = page.locator(f".custom-panel[data-kind={kind}]").nth(before)
    panel.locator(".panel-status").filter(has_text="runs").wait_for()
    return panel


def _brush(page, panel, axis: int, low: float, high: float) -> None:
    """Drag along an axis of a parallel-coordinates panel from `low` to `high` (0 bottom, 1 top)."""
    canvas = panel.locator("canvas")
    canvas.evaluate("c => c.scrollIntoView({block: 'center'})")  # all of it on screen
    box = canvas.bounding_box()
    x = box["x"] + int(canvas.get_attribute("data-axis-x").split(",")[axis])
    top, bottom = (int(v) for v in canvas.get_attribute("data-axis-y").split(","))
    before = page.evaluate("performance.getEntriesByName('brush').length")
    page.mouse.move(x, box["y"] + bottom - low * (bottom - top))
    page.mouse.down()
    page.mouse.move(x, box["y"] + bottom - (low + high) / 2 * (bottom - top), steps=4)
    page.mouse.move(x, box["y"] + bottom - high * (bottom - top), steps=4)
    page.mouse.up()
    page.wait_for_function(f"performance.getEntriesByName('brush').length > {before}")


def test_parallel_coordinates_brush_the_runs_table(page, server: str) -> None:
    _open_workspace(page, server)
    # Sections by metric prefix: train/…, val/…, and "Charts" for lr; each folds.
    sections = page.locator("details.section").evaluate_all("ds => ds.map(d => d.dataset.section)")
    assert sorted(sections) == ["Charts", "train", "val"]
    page.locator("details.section[data-section=val] > summary").click()
    assert page.locator("details.section[data-section=val]").evaluate("d => d.open") is False

    panel = _add(
        page,
        "parallel",
        axes=["config.lr", "config.batch_size", "config.optimizer", "summary.train/accuracy"],
        color="summary.train/accuracy",
    )
    body = panel.locator(".panel-body")
    assert body.get_attribute("data-runs") == "24"
    assert body.get_attribute("data-axes") == "batch_size,lr,optimizer,train/accuracy"  # in the catalog's order
    assert page.locator("details.section[data-section=Custom] .custom-panel").count() == 1

    # Brush the optimizer axis's top (sgd; adam sits at the bottom): the table shows the 12 sgd runs.
    _brush(page, panel, 2, 0.8, 1.0)
    page.wait_for_function("document.querySelector('.table-head .count').textContent === '12 runs'")
    assert "optimizer" in page.locator(".brush-chip").inner_text()
    assert all(name.startswith("sgd") for name in page.locator("table.runs td.name").all_inner_texts())
    assert body.get_attribute("data-selected") == "12"
    assert page.locator("table.runs tbody tr").count() == 12  # the server's filter agrees with the panel
    # A second axis ANDs: the lower half of the learning rates; the table and the panel agree.
    _brush(page, panel, 1, 0.0, 0.5)
    selected = body.get_attribute("data-selected")
    assert 0 < int(selected) < 12
    page.wait_for_function(f"document.querySelector('.table-head .count').textContent === '{selected} runs'")
    assert page.locator("table.runs tbody tr").count() == int(selected)
    panel.screenshot(path=str(ARTIFACTS / "panel-parallel.png"))

    # The chip's ✕ clears every brush: all 24 runs again.
    page.locator(".brush-chip button.chip-remove").click()
    page.wait_for_function("document.querySelector('.table-head .count').textContent === '24 runs'")
    assert page.locator(".brush-chip").count() == 0
    assert body.get_attribute("data-selected") == "24"

    # Scatter (coloured by a third field), bars per group with error bars, parameter importance.
    scatter = _add(page, "scatter", ("logx", "logy"), x="config.lr", y="summary.train/loss", color="config.batch_size")
    assert int(scatter.locator(".panel-body").get_attribute("data-points")) >= 20
    scatter.screenshot(path=str(ARTIFACTS / "panel-scatter.png"))
    bars = _add(page, "bar", value="summary.train/accuracy", by="config.optimizer")
    assert bars.locator(".panel-body").get_attribute("data-bars") == "2"
    bars.screenshot(path=str(ARTIFACTS / "panel-bar.png"))
    page.locator("select.add-panel").select_option("new:importance")
    page.locator(".panel-form select.pf-metric").select_option("summary.train/loss")
    page.locator(".panel-form button.pf-add").click()
    importance = page.locator(".custom-panel[data-kind=importance]")
    importance.locator("table.importance tbody tr").first.wait_for()
    params = importance.locator("table.importance tbody tr").evaluate_all("rs => rs.map(r => r.dataset.param)")
    assert "config.lr" in params and "config.optimizer" in params
    importance.screenshot(path=str(ARTIFACTS / "panel-importance.png"))
    page.locator("details.section[data-section=val] > summary").click()  # open again for the picture
    _shot(page, "workspace-sections")

    # "save as report" carries the new kinds: the report draws them the same, from its filter.
    page.get_by_role("button", name="save as report").click()
    page.wait_for_url("**/reports/*")
    page.locator(".report-view .custom-panel[data-kind=parallel] .panel-body[data-runs='24']").wait_for()
    page.locator(".report-view .custom-panel[data-kind=importance] table.importance tbody tr").first.wait_for()
    assert page.locator(".report-view .custom-panel").count() == 4


def test_saved_view_opens_as_the_default(page, browser, server: str) -> None:
    _open_workspace(page, server)
    _add(page, "scatter", x="config.batch_size", y="summary.train/accuracy")
    page.locator("details.section[data-section=train] > summary").click()  # folded, saved in the view
    page.locator("button.view-save-as").click()
    page.locator("input.view-name").fill("scatter view")
    page.locator("button.view-save-as-ok").click()
    page.wait_for_url("**?view=*")
    page.wait_for_selector("main[data-ready]")
    view_id = page.url.split("view=")[1]
    assert page.locator("select.view-picker").input_value() == view_id
    page.locator("button.view-default").click()
    page.wait_for_function("document.querySelector('select.view-picker option:checked')?.textContent.includes('★')")

    # A fresh browser (nothing in its localStorage) opening the project opens the default view.
    context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    try:
        other = context.new_page()
        _open_workspace(other, server)
        assert other.locator("select.view-picker").input_value() == view_id
        other.locator(".custom-panel[data-kind=scatter] .panel-body[data-points]").wait_for()
        assert other.locator("details.section[data-section=train]").evaluate("d => d.open") is False
    finally:
        context.close()

    # Delete it (the dialog asks first): the workspace falls back to this browser's layout.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button.view-delete").click()
    page.wait_for_url("**?view=none")
    page.wait_for_selector("main[data-ready]")
    assert page.locator("select.view-picker option").count() == 1
    page.goto(f"{server}{WORKSPACE}")
    page.wait_for_selector("main[data-ready]")
    assert page.locator("select.view-picker").input_value() == "none"


def test_run_comparer_highlights_differences(page, server: str) -> None:
    _open_workspace(page, server)
    assert page.locator("button.compare").is_disabled()
    rows = page.locator("table.runs tbody tr")
    rows.nth(0).locator("input.select-run").check()
    rows.nth(1).locator("input.select-run").check()
    page.locator("button.compare").click()
    table = page.locator("table.compare-table")
    table.wait_for()
    assert table.locator("thead th").count() == 3  # the key column and two runs
    assert table.locator("tr.differs").count() > 0
    assert table.locator("tr[data-key='config.epochs']").get_attribute("class") == "same"
    _shot(page, "run-comparer")
    page.locator("input.diff-only").check()
    assert not table.locator("tr[data-key='config.epochs']").is_visible()
    assert table.locator("tr.differs").first.is_visible()
    page.locator("input.diff-only").uncheck()
    assert table.locator("tr[data-key='config.epochs']").is_visible()
