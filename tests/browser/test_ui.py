"""The web UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright with
``executable_path``; no browser download), against ``runstream server`` with the demo sweep.

Screenshots go to tmp/artifacts/browser (or $RUNSTREAM_ARTIFACTS); the path is printed.
``pytest -m browser`` runs exactly these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from infra.net import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
RUNSTREAM = Path(sys.executable).parent / "runstream"
ARTIFACTS = Path(os.environ.get("RUNSTREAM_ARTIFACTS", ROOT / "tmp" / "artifacts")) / "browser"
TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    return os.environ.get("RUNSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return orjson.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``runstream server`` in its own process, with ``runstream demo`` logged into it."""
    data_dir = tmp_path_factory.mktemp("ui-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The demo's killed run is marked crashed after 5 s of silence (not the default 90), and its sweep finishes.
    env = {**os.environ, "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml"), "RUNSTREAM_CRASH_TIMEOUT": "5"}
    process = subprocess.Popen(
        [RUNSTREAM, "server", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                assert process.stdout is not None  # stdout=PIPE
                raise AssertionError(f"the server exited: {process.stdout.read()}")
            try:
                if _get(f"{url}/api/v1/health")["status"] == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 90 s"
            time.sleep(0.3)
        demo = subprocess.run(
            [RUNSTREAM, "demo", "--url", url, "--quiet"], env=env, capture_output=True, text=True, timeout=300
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make test` installs it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {ARTIFACTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh context (no stored key) and page; page errors fail the test; a screenshot whatever happens."""
    # bypass_csp: these tests poll with string predicates, which Playwright evaluates in the page
    # (the UI's CSP refuses eval); test_run_media_and_downloads_with_an_api_key keeps the CSP.
    context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    context.close()
    assert not errors, f"errors in the page: {errors}"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _runs_count(page) -> str:
    return page.locator(".table-head .count").inner_text()


def _loss_panel(page, attribute: str, value: str) -> None:
    """Wait until the train/loss panel (every demo run logs it) has data-<attribute> = value."""
    page.wait_for_function(
        f"(document.querySelector(\".panel[data-metric='train/loss']\") || {{dataset: {{}}}})"
        f".dataset.{attribute} === '{value}'"
    )


def _open_workspace(page, url: str) -> None:
    page.goto(f"{url}/projects/default/demo")
    page.wait_for_selector("main[data-ready]")


def test_projects_page_lists_the_demo(page, server: str) -> None:
    page.goto(server)
    page.get_by_role("link", name="default/demo").click()
    page.wait_for_selector("main[data-ready]")
    assert page.url.endswith("/projects/default/demo")


def test_the_demo_is_a_finished_grid_sweep(page, server: str) -> None:
    """A newcomer's Sweeps tab: the demo's 24 runs are one finished grid sweep, with its best run and charts."""
    sweeps = f"{server}/api/v1/projects/default/demo/sweeps"
    wait_for(lambda: _get(sweeps)["sweeps"][0]["state"] == "finished", "the killed run crashed: the sweep finished")
    (sweep,) = _get(sweeps)["sweeps"]
    page.goto(f"{server}/projects/default/demo/sweeps")
    page.wait_for_selector("table.sweeps")
    row = page.locator("table.sweeps tbody tr")
    assert row.count() == 1 and row.get_attribute("data-sweep") == sweep["sweep_id"]
    assert [row.locator("td").nth(i).inner_text() for i in (2, 3, 4, 5)] == ["grid", "val/loss ↓", "finished", "24"]
    row.locator("td a").click()
    page.wait_for_selector(".sweep-runs-table")
    assert page.locator(".sweep-state .state").inner_text() == "finished"
    assert page.locator(".sweep-runs-table tbody tr").count() == 24
    states = page.locator(".sweep-runs-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert sorted(states) == sorted(["finished"] * 22 + ["failed", "crashed"])
    assert page.locator(".sweep-best-run a").count() == 1
    page.wait_for_selector(".sweep-parallel[data-runs='24'] canvas.parallel-canvas")
    assert page.locator(".sweep-parallel").get_attribute("data-axes") == "lr,batch_size,optimizer,val/loss"
    page.screenshot(path=str(ARTIFACTS / "demo-sweep.png"), full_page=True)
    page.locator(".sweep-best-run a").click()  # the best run's page links back to its sweep
    page.wait_for_selector("a.run-sweep")
    assert page.locator("a.run-sweep").inner_text() == sweep["sweep_id"]


def test_workspace_filter_group_and_toggle(page, server: str) -> None:
    _open_workspace(page, server)
    assert _runs_count(page) == "24 runs"
    panels = page.locator(".panels .panel")
    assert panels.count() == 5  # every metric the demo logs, up to six
    _loss_panel(page, "lines", "24")
    page.wait_for_function("[...document.querySelectorAll('.panel')].every(p => Number(p.dataset.lines) > 20)")
    assert page.evaluate("performance.getEntriesByName('workspace-first-render').length") == 1
    _shot(page, "workspace")

    # Filter: optimizer = adam.
    page.get_by_role("button", name="+ filter").click()
    page.locator(".filter .filter-field").select_option("config.optimizer")
    page.locator(".filter .filter-value").fill("adam")
    page.locator(".filter .filter-value").dispatch_event("change")
    page.wait_for_function("document.querySelector('.table-head .count').textContent === '12 runs'")
    assert all(name.startswith("adam") for name in page.locator("table.runs td.name").all_inner_texts())
    _loss_panel(page, "lines", "12")

    # The eye hides a run from every chart without a refetch; the toggle is measured.
    first = page.locator("table.runs tbody tr").first
    first.locator("button.eye").click()
    assert first.locator("button.eye").get_attribute("aria-pressed") == "false"
    _loss_panel(page, "visible", "11")
    page.wait_for_function("performance.getEntriesByName('toggle-run').length > 0")
    first.locator("button.eye").click()
    _loss_panel(page, "visible", "12")

    # Sort by a column header (server-side).
    page.locator("th.sortable", has_text="name").click()
    page.wait_for_function("document.querySelector('th.sortable[data-key=name]').textContent.includes('▼')")
    names = page.locator("table.runs td.name").all_inner_texts()
    assert names == sorted(names, reverse=True)

    # Remove the filter; group by optimizer: two groups, the charts draw their bands.
    page.locator(".filter button", has_text="✕").click()
    page.wait_for_function("document.querySelector('.table-head .count').textContent === '24 runs'")
    page.locator("details.group-by summary").click()
    page.locator("details.group-by label", has_text="config.optimizer").locator("input").check()
    page.locator("details.group-by summary").click()
    page.wait_for_selector("table.runs tr.group")
    assert sorted(page.locator("table.runs tr.group").evaluate_all("rows => rows.map(r => r.dataset.group)")) == [
        "adam",
        "sgd",
    ]
    _loss_panel(page, "lines", "2")
    page.locator("table.runs tr.group button.eye").first.click()
    _loss_panel(page, "visible", "1")
    page.locator("table.runs tr.group button.expand").first.click()
    page.wait_for_selector("table.runs td.indent")
    assert page.locator("table.runs td.indent").count() == 12
    _shot(page, "workspace-grouped")
    # The layout (grouping included) is saved for this project in this browser: undo it for the other tests.
    page.locator("details.group-by summary").click()
    page.locator("details.group-by label", has_text="config.optimizer").locator("input").uncheck()
    page.wait_for_function("document.querySelector('.table-head .count').textContent === '24 runs'")


def test_workspace_tags_and_panels(page, server: str) -> None:
    _open_workspace(page, server)
    row = page.locator("table.runs tbody tr").first
    run_id = row.get_attribute("data-run")
    row.locator("button.edit-tags").click()
    row.locator("input.tag-input").fill("demo, best")
    row.locator("input.tag-input").press("Enter")
    page.wait_for_function(f"document.querySelector('tr[data-run=\"{run_id}\"] td.tags').textContent.includes('best')")
    run = _get(f"{server}/api/v1/runs/default/demo/{run_id}")
    assert "best" in run["tags"]

    # A system-metric panel, then a panel's settings: log scale, smoothing, x axis.
    page.locator("select.add-panel").select_option("system:cpu.percent")
    page.wait_for_selector(".panel[data-metric='cpu.percent']")
    loss = page.locator(".panel[data-metric='train/loss']")
    loss.locator("input.log").check()
    loss.locator("select.x-axis").select_option("relative")
    _loss_panel(page, "lines", "24")
    # Zooming (a drag across the chart) fetches finer data for the zoomed step range; a double-click undoes it.
    acc = page.locator(".panel[data-metric='train/accuracy']")
    box = acc.locator(".u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    with page.expect_request(
        lambda r: r.url.endswith("/series") and r.post_data and "step_range" in r.post_data
    ) as zoom:
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=5)
        page.mouse.up()
    first, last = orjson.loads(zoom.value.post_data)["step_range"]
    assert 0 < first < last < 400
    page.wait_for_function(
        "document.querySelector(\".panel[data-metric='train/accuracy']\").classList.contains('zoomed')"
    )
    with page.expect_request(lambda r: r.url.endswith("/series") and r.post_data and "step_range" not in r.post_data):
        acc.locator(".u-over").dblclick()
    # Panels move (the layout's order).
    order = page.locator(".panels .panel").evaluate_all("ps => ps.map(p => p.dataset.metric)")
    page.locator(".panel[data-metric='train/loss'] button.move").click()
    moved = page.locator(".panels .panel").evaluate_all("ps => ps.map(p => p.dataset.metric)")
    i = order.index("train/loss")
    assert moved[i - 1] == "train/loss" and moved[i] == order[i - 1]
    # The layout survives a reload.
    page.reload()
    page.wait_for_selector("main[data-ready]")
    assert page.locator(".panel[data-metric='cpu.percent']").count() == 1
    assert page.locator(".panel[data-metric='train/loss'] input.log").is_checked()
    assert page.locator(".panels .panel").evaluate_all("ps => ps.map(p => p.dataset.metric)") == moved


def test_run_page_git_diff_console_media(page, server: str) -> None:
    _open_workspace(page, server)
    page.locator("table.runs td.name a").first.click()
    page.wait_for_selector("pre.diff")
    assert "+LR = 3e-4" in page.locator("pre.diff").inner_text()
    assert "commit" in page.locator(".overview").inner_text()
    _shot(page, "run-overview")

    page.locator("nav.run-tabs a", has_text="console").click()
    page.wait_for_function(
        "document.querySelector('pre.console') && document.querySelector('pre.console').textContent.includes('step 99')"
    )
    page.locator("input.console-search").fill("step 399")
    page.wait_for_function("!document.querySelector('pre.console').textContent.includes('step 99:')")
    assert "step 399" in page.locator("pre.console").inner_text()
    _shot(page, "run-console")

    page.locator("nav.run-tabs a", has_text="charts").click()
    page.wait_for_selector(".panel canvas")
    page.locator("nav.run-tabs a", has_text="media").click()
    page.wait_for_selector("canvas.histogram")
    assert page.locator(".image-grid img").count() >= 1
    assert page.locator("section.media table.grid").count() == 1
    page.locator("nav.run-tabs a", has_text="files").click()
    page.wait_for_selector("table.files")
    assert "diff.patch" in page.locator("table.files").inner_text()


def test_a_gallery_shows_every_image_of_the_chosen_step(page, server: str, tmp_path) -> None:
    import numpy as np

    import runstream

    run = runstream.init(
        entity="default",
        project="galleries",
        id="gallery1",
        dir=tmp_path,
        settings={"url": server, "console": False, "system_metrics": False, "git": False},
    )
    run.log({"examples": [runstream.Image(np.full((8, 8), 40, dtype=np.uint8), caption="first")]}, step=1)
    images = [
        runstream.Image(np.full((8, 8), v, dtype=np.uint8), caption=c)
        for v, c in ((0, "cat"), (120, "dog"), (250, "bird"))
    ]
    run.log({"examples": images}, step=2)
    assert run.finish().unacked_events == 0
    page.goto(f"{server}/projects/default/galleries/runs/gallery1#media")
    page.wait_for_selector("select.gallery-step")
    figures = page.locator(".image-grid.gallery figure")
    page.wait_for_function("document.querySelectorAll('.image-grid.gallery img[src]').length === 3")
    assert figures.locator("figcaption").all_inner_texts() == ["cat", "dog", "bird"]  # the latest step, in order
    _shot(page, "run-media-gallery")
    page.locator("select.gallery-step").select_option("1")
    page.wait_for_function("document.querySelectorAll('.image-grid.gallery img[src]').length === 1")
    assert figures.locator("figcaption").all_inner_texts() == ["first"]


def test_a_failed_run_shows_its_traceback_and_charts_take_the_step_metric(page, server: str) -> None:
    traceback = 'Traceback (most recent call last):\n  File "train.py", line 9, in <module>\nValueError: boom\n'
    now = time.time()

    def event(seq: int, type: str, data: dict) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "type": type,
                "team": "default",
                "project": "failing",
                "run_id": "f1",
                "seq": seq,
                "ts": now + seq,
                "data": data,
            }
        )

    steps = list(range(8))
    lines = [
        event(1, "run_start", {"name": "f1"}),
        event(2, "run_update", {"define_metric": [{"name": "val/*", "step_metric": "epoch"}]}),
        event(
            3,
            "metrics",
            {
                "step": steps,
                "time": [now + s for s in steps],
                "values": {
                    "epoch": [s // 2 for s in steps],
                    "val/acc": [s / 10 for s in steps],
                    "loss": [1 / (s + 1) for s in steps],
                },
            },
        ),
        event(4, "run_finish", {"state": "failed", "exit_code": 1, "traceback": traceback}),
    ]
    request = urllib.request.Request(
        f"{server}/api/v1/events",
        data=b"\n".join(lines),
        method="POST",
        headers={"Content-Type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    page.goto(f"{server}/projects/default/failing/runs/f1")
    page.wait_for_selector("pre.traceback")
    assert "ValueError: boom" in page.locator(".overview pre.traceback").inner_text()
    _shot(page, "run-traceback")
    page.locator("nav.run-tabs a", has_text="charts").click()
    page.wait_for_selector(".panel[data-metric='val/acc'] canvas")
    acc, loss = page.locator(".panel[data-metric='val/acc']"), page.locator(".panel[data-metric='loss']")
    assert (acc.locator("select.x-axis").input_value(), acc.locator("select.x-metric").input_value()) == (
        "metric",
        "epoch",
    )
    assert loss.locator("select.x-axis").input_value() == "step"

    # The workspace's default panels: every shown run (the one) defines val/*'s step metric.
    page.goto(f"{server}/projects/default/failing")
    page.wait_for_selector("main[data-ready]")
    page.wait_for_function("document.querySelector(\".panel[data-metric='val/acc'] select.x-axis\").value === 'metric'")
    assert page.locator(".panel[data-metric='val/acc'] select.x-metric").input_value() == "epoch"
    assert page.locator(".panel[data-metric='loss'] select.x-axis").input_value() == "step"


def _as_local_admin(url: str, method: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/api/v1{path}", method=method, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def test_run_media_and_downloads_with_an_api_key(browser, server: str) -> None:
    """With a key (a cluster user), images and downloads are fetched with the Authorization
    header (an <img src> would send none and fail), and the UI's CSP allows what it does."""
    # The demo logs into team "default", which the embedded server creates at start-up.
    _as_local_admin(server, "PUT", "/teams/default/members/mediauser", {"role": "member"})
    key = _as_local_admin(server, "POST", "/teams/default/keys", {"user": "mediauser", "name": "browser"})["key"]
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.add_init_script(f"localStorage.setItem('runstream.apiKey', {orjson.dumps(key).decode()})")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        _open_workspace(page, server)
        assert "mediauser" in page.locator("header .who").inner_text()
        page.locator("table.runs td.name a").first.click()
        page.wait_for_selector("pre.diff")
        with page.expect_download() as download:
            page.locator(".overview h3 a", has_text="download").click()
        assert "+LR = 3e-4" in Path(download.value.path()).read_text()
        page.locator("nav.run-tabs a", has_text="media").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.image-grid img')].some((i) => i.complete && i.naturalWidth > 0)"
        )
        # Images get their src as each fetch finishes: wait for the first one's, then check where it points.
        page.wait_for_function("() => !!document.querySelector('.image-grid img')?.getAttribute('src')")
        assert page.locator(".image-grid img").first.get_attribute("src").startswith("blob:")
        _shot(page, "run-media-with-key")
    finally:
        context.close()
    assert not problems, problems


def test_alerts_live_list_and_rules(page, server: str) -> None:
    page.goto(f"{server}/projects/default/demo/alerts")
    page.wait_for_selector("tr.alert-row")
    page.wait_for_function("document.querySelector('.live').textContent.includes('live')")
    assert "diverged" in page.locator("table.alerts").inner_text()
    page.get_by_role("button", name="+ rule").click()
    page.locator("input[name=rule-name]").fill("loss too high")
    page.locator(".rule-editor button", has_text="save").click()
    page.wait_for_function("document.querySelector('.rules').textContent.includes('loss too high')")
    rules = _get(f"{server}/api/v1/projects/default/demo/alert-rules")["rules"]
    assert any(r["name"] == "loss too high" and r["kind"] == "threshold" for r in rules)


def test_report_and_share_link_without_a_key(page, browser, server: str) -> None:
    page.goto(f"{server}/projects/default/demo/reports")
    page.locator("input[name=report-title]").fill("Sweep findings")
    page.get_by_role("button", name="create report").click()
    page.wait_for_selector(".report-view .panel canvas")
    assert page.locator("h2", has_text="Sweep findings").count() == 1
    page.get_by_role("button", name="share link").click()
    link = page.locator("a.share-link").get_attribute("href")
    assert link.startswith("/share/")
    _shot(page, "report")

    # A fresh context: no stored key, nothing but the link. Every API call carries the share token.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    try:
        shared = context.new_page()
        calls: list[tuple[str, str | None]] = []
        shared.on(
            "request",
            lambda r: calls.append((r.url, r.headers.get("x-runstream-share"))) if "/api/v1/" in r.url else None,
        )
        shared.goto(server + link)
        shared.wait_for_selector("h2.shared-title")
        assert shared.locator("h2.shared-title").inner_text() == "Sweep findings"
        shared.wait_for_function(
            "document.querySelector('.report-view .panel') && Number(document.querySelector('.report-view .panel').dataset.lines) > 20"
        )
        shared.screenshot(path=str(ARTIFACTS / "shared-report.png"), full_page=True)
        token = link.rsplit("/", 1)[1]
        assert calls and all(header == token for url, header in calls if "/shared/" not in url), calls
    finally:
        context.close()


def test_report_markdown_is_safe(page, server: str) -> None:
    body = (
        '# Findings\n\n<script>window.pwned = 1</script>\n\n<img src=x onerror="window.pwned = 2">\n\n'
        "[click](javascript:window.pwned=3) and [docs](https://example.org) **bold** `x < y`\n\n- a\n- b\n"
    )
    request = urllib.request.Request(
        f"{server}/api/v1/projects/default/demo/reports",
        method="POST",
        data=orjson.dumps({"title": "safety", "body": body}),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        report = orjson.loads(response.read())
    page.goto(f"{server}/projects/default/demo/reports/{report['id']}")
    article = page.locator("article.markdown")
    page.wait_for_selector("article.markdown h1")
    assert article.locator("script, img").count() == 0
    assert "<script>" in article.inner_text()  # shown as text, never run
    assert article.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))") == [
        "https://example.org"
    ]
    assert article.locator("strong").inner_text() == "bold"
    assert article.locator("code").inner_text() == "x < y"
    assert article.locator("li").count() == 2
    assert page.evaluate("window.pwned === undefined")


def test_settings_team_members_and_keys(page, server: str) -> None:
    page.goto(f"{server}/settings")
    page.locator("input[placeholder='new team']").fill("acme")
    page.get_by_role("button", name="create team").click()
    # The page reloads onto the new team; team "default" was shown before, so wait for acme's table.
    page.wait_for_selector("table.members[data-team=acme]")
    page.locator("input[name=member-user]").fill("alice")
    page.get_by_role("button", name="add member").click()
    page.wait_for_function("document.querySelector('table.members').textContent.includes('alice')")
    page.locator("input[name=key-name]").fill("laptop")
    assert page.locator("select[name=key-scope]").input_value() == "ingest"  # a training job's key by default
    page.locator("select[name=key-scope]").select_option("read")
    page.get_by_role("button", name="create key").click()
    secret = page.locator("code.secret").inner_text()
    assert secret.startswith("rs_")
    page.wait_for_function("document.querySelector('table.keys').textContent.includes('laptop')")
    row = page.locator("table.keys tbody tr", has_text="laptop").inner_text()
    assert "read" in row
    page.locator("table.keys button", has_text="revoke").click()
    page.wait_for_function("!document.querySelector('table.keys button')")
    _shot(page, "settings")


def test_settings_shows_the_audit_log(page, server: str) -> None:
    """The UI's own requests are same-origin, so they still act as the local admin; what they change is audited."""
    page.goto(f"{server}/settings")
    page.locator("input[placeholder='new team']").fill("audited")
    page.get_by_role("button", name="create team").click()
    page.wait_for_selector("table.members[data-team=audited]")
    page.locator("input[name=member-user]").fill("bea")
    page.get_by_role("button", name="add member").click()
    page.wait_for_function("document.querySelector('table.members').textContent.includes('bea')")
    page.locator("input[name=key-name]").fill("ci")
    page.get_by_role("button", name="create key").click()
    page.locator("code.secret").wait_for()
    page.locator("table.keys button", has_text="revoke").click()
    page.wait_for_function("document.querySelectorAll('table.audit tbody tr').length === 4")
    actions = page.locator("table.audit tbody tr").evaluate_all("rows => rows.map(r => r.dataset.action)")
    assert actions == ["key.revoke", "key.create", "member.add", "team.create"]
    newest = page.locator("table.audit tbody tr").first.inner_text()
    assert "local admin" in newest and "127.0.0.1" in newest
    page.locator("select[name=audit-action]").select_option("member.add")
    page.wait_for_function("document.querySelectorAll('table.audit tbody tr').length === 1")
    assert "bea" in page.locator("table.audit tbody tr").first.inner_text()
    _shot(page, "settings-audit")
