"""The web UI's artifacts tab, a run's artifacts, forks, and deleting and moving runs and projects,
in headless Chromium against ``runstream server`` (see test_ui.py for the browser set-up).

The data goes in through the public API as the SDK sends it (docs/artifacts.md): blobs uploaded to
the project's blob store, the manifest too, then ``artifact`` events naming the manifest's digest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from infra.net import free_port
from tests.browser.test_ui import ARTIFACTS, RUNSTREAM, TIMEOUT_MS, chromium_path

pytestmark = pytest.mark.browser

TEAM = "default"
PROJECT = "arts"


def _request(url: str, method: str = "GET", body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request(url, method=method, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
        return response.status, (
            orjson.loads(data) if data and response.headers.get_content_type() == "application/json" else data
        )


def _status(url: str) -> int:
    try:
        return _request(url)[0]
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


def _state(url: str, project: str, run_id: str) -> str:
    try:
        return _request(f"{url}/api/v1/runs/{TEAM}/{project}/{run_id}")[1]["state"]
    except urllib.error.HTTPError:
        return ""


def _finished(url: str, project: str, run_id: str) -> Callable[[], bool]:
    return lambda: _state(url, project, run_id) == "finished"


def _wait(what: str, check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not so after {seconds} s"
        time.sleep(0.3)


class Seeder:
    """Runs and artifacts logged through the public API, as the SDK logs them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seq = 0

    def events(self, project: str, run_id: str, *events: tuple[str, dict]) -> None:
        lines = []
        for type_, data in events:
            self.seq += 1
            envelope = {
                "v": 1,
                "type": type_,
                "team": TEAM,
                "project": project,
                "run_id": run_id,
                "seq": self.seq,
                "ts": time.time(),
                "data": data,
            }
            lines.append(orjson.dumps(envelope))
        status, _ = _request(f"{self.url}/api/v1/events", "POST", b"\n".join(lines), "application/x-ndjson")
        assert status == 200

    def blob(self, project: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        status, answer = _request(
            f"{self.url}/api/v1/projects/{TEAM}/{project}/blobs/{sha}?offset=0&size={len(data)}",
            "PUT",
            data,
            "application/octet-stream",
        )
        assert status == 200 and answer["stored"], answer
        return sha

    def artifact(self, project: str, run_id: str, name: str, type_: str, files: dict[str, bytes], **fields) -> str:
        """Upload the files and the manifest; log the version; its digest."""
        entries = {path: {"digest": self.blob(project, data), "size": len(data)} for path, data in files.items()}
        digest = self.blob(project, orjson.dumps({"version": 1, "entries": entries}, option=orjson.OPT_SORT_KEYS))
        self.events(
            project,
            run_id,
            (
                "artifact",
                {
                    "action": "log",
                    "name": name,
                    "type": type_,
                    "digest": digest,
                    "size": sum(len(d) for d in files.values()),
                    "file_count": len(files),
                    "description": fields.get("description", ""),
                    "metadata": fields.get("metadata", {}),
                    "aliases": fields.get("aliases", []),
                },
            ),
        )
        return digest

    def use(self, project: str, run_id: str, name: str, digest: str, artifact_project: str = PROJECT) -> None:
        self.events(
            project,
            run_id,
            ("artifact", {"action": "use", "project": artifact_project, "name": name, "digest": digest}),
        )

    def run(self, project: str, run_id: str, name: str, **start) -> None:
        self.events(
            project,
            run_id,
            ("run_start", {"name": name, **start}),
            ("metrics", {"step": [0, 1, 2], "time": [time.time()] * 3, "values": {"loss": [1.0, 0.5, 0.25]}}),
            ("run_finish", {"state": "finished", "exit_code": 0}),
        )

    def versions(self, project: str, name: str) -> list[dict]:
        url = f"{self.url}/api/v1/projects/{TEAM}/{project}/artifacts/{name}/versions"
        try:
            return _request(url)[1]["versions"]
        except urllib.error.HTTPError:
            return []


TRAIN_CSV = b"x,y\n1,2\n3,4\n5,6\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``runstream server`` in its own process."""
    data_dir = tmp_path_factory.mktemp("ui-artifacts")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml")}
    process = subprocess.Popen(
        [RUNSTREAM, "server", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while _status(f"{url}/api/v1/health") != 200:
            if process.poll() is not None:
                assert process.stdout is not None
                raise AssertionError(f"the server exited: {process.stdout.read()}")
            assert time.monotonic() < deadline, "the server did not answer within 90 s"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def lineage(server: str) -> str:
    """A small lineage logged into default/arts: prep logs mnist v0 and v1, train uses mnist v1 and
    logs cnn v0, evaluate uses cnn v0; branch is a fork of train."""
    url = server
    s = Seeder(url)
    for run_id, name in (("prep", "prepare-data"), ("train", "train-cnn"), ("evaluate", "evaluate-cnn")):
        s.run(PROJECT, run_id, name)
    s.artifact(
        PROJECT,
        "prep",
        "mnist",
        "dataset",
        {"train.csv": b"x,y\n1,2\n", "labels/classes.txt": b"0\n1\n"},
        description="the first cut",
        metadata={"rows": 1},
    )
    _wait("mnist v0", lambda: len(s.versions(PROJECT, "mnist")) == 1)  # v0 stored before v1 is logged
    mnist = s.artifact(
        PROJECT,
        "prep",
        "mnist",
        "dataset",
        {"train.csv": TRAIN_CSV, "labels/classes.txt": b"0\n1\n"},
        description="MNIST as CSV, three rows",
        metadata={"rows": 3, "source": {"split": "train"}},
        aliases=["best"],
    )
    s.use(PROJECT, "train", "mnist", mnist)
    cnn = s.artifact(PROJECT, "train", "cnn", "model", {"model.pt": b"\x00weights" * 100}, aliases=["prod"])
    s.use(PROJECT, "evaluate", "cnn", cnn)
    # A run of another project uses the model too.
    s.run("arts-serving", "serve", "serve-cnn")
    s.use("arts-serving", "serve", "cnn", cnn, artifact_project=PROJECT)
    # A fork of train at step 1 (init(fork_from="train?_step=1")).
    s.run(PROJECT, "branch", "train-branch", fork={"run_id": "train", "step": 1})
    # ... and rewound to step 1 (init(resume_from="branch?_step=1")).
    s.events(
        PROJECT,
        "branch",
        ("run_start", {"name": "train-branch", "rewind": {"step": 1}}),
        ("run_finish", {"state": "finished", "exit_code": 0}),
    )
    _wait("the rewind", lambda: _request(f"{url}/api/v1/runs/{TEAM}/{PROJECT}/branch")[1].get("rewinds") != [])
    _wait("the lineage", lambda: len(s.versions(PROJECT, "mnist")) == 2 and len(s.versions(PROJECT, "cnn")) == 1)
    _wait(
        "train's artifacts",
        lambda: _request(f"{url}/api/v1/runs/{TEAM}/{PROJECT}/train/artifacts")[1]["used"] != [],
    )
    _wait(
        "serve's artifacts",
        lambda: _request(f"{url}/api/v1/runs/{TEAM}/arts-serving/serve/artifacts")[1]["used"] != [],
    )
    _wait(
        "evaluate's artifacts",
        lambda: _request(f"{url}/api/v1/runs/{TEAM}/{PROJECT}/evaluate/artifacts")[1]["used"] != [],
    )
    return url


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
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh context and page, the UI's CSP kept (so no string predicates: wait_for_url, selectors); page
    errors and CSP refusals fail the test; a screenshot whatever happens."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    context.close()
    assert not errors, f"errors in the page: {errors}"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _wait_for_path(page, path: str) -> None:
    """Until the address has this path (whatever its hash): the app moves by pushState, with no load event."""
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == path, wait_until="commit")


def _node(page, run_or_artifact: str):
    """A lineage graph node by its title (a run's name, an artifact's name:version)."""
    return page.locator("svg.lineage g.node", has=page.locator("text.title", has_text=run_or_artifact))


def test_artifacts_tab_versions_files_and_lineage(page, lineage: str) -> None:
    server = lineage
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}")
    page.locator("nav.tabs a", has_text="artifacts").click()
    page.wait_for_selector(".artifact-tree")
    types = page.locator(".artifact-type")
    assert types.evaluate_all("els => els.map((e) => e.dataset.type)") == ["dataset", "model"]
    assert "2 versions" in page.locator(".artifact-type[data-type='dataset'] li", has_text="mnist").inner_text()

    page.locator(".artifact-tree a", has_text="mnist").click()
    page.wait_for_selector("section.artifact-version")
    rows = page.locator("table.artifact-versions tbody tr")
    assert rows.evaluate_all("els => els.map((e) => e.dataset.version)") == ["v1", "v0"]  # newest first
    newest = rows.nth(0).inner_text()
    assert "latest" in newest and "best" in newest and "prep" in newest and "20 B" in newest  # aliases, size, producer
    # Without a version in the address, the page shows the newest.
    version = page.locator("section.artifact-version")
    assert version.get_attribute("data-version") == "v1"
    assert "MNIST as CSV, three rows" in version.inner_text()
    assert "source.split" in page.locator(".artifact-metadata").inner_text()

    # A file downloads with the version's bytes.
    with page.expect_download() as download:
        page.locator("table.artifact-files a", has_text="train.csv").click()
    assert Path(download.value.path()).read_bytes() == TRAIN_CSV
    with page.expect_download() as download:  # a path with a folder
        page.locator("table.artifact-files a", has_text="labels/classes.txt").click()
    assert Path(download.value.path()).read_bytes() == b"0\n1\n"

    # Lineage: prep → mnist:v1 → train, and (two hops) train's model and prep's other version.
    page.wait_for_selector(".lineage-box[data-ready='2'] svg.lineage")
    focus = page.locator("svg.lineage g.node.focus")
    assert focus.locator("text.title").text_content() == "mnist:v1"
    for title in ("prepare-data", "train-cnn", "cnn:v0", "mnist:v0"):
        assert _node(page, title).count() == 1, title
    x = {
        t: _node(page, t).evaluate("g => g.transform.baseVal[0].matrix.e")
        for t in ("prepare-data", "mnist:v1", "train-cnn", "cnn:v0")
    }
    assert x["prepare-data"] < x["mnist:v1"] < x["train-cnn"] < x["cnn:v0"]  # producers left, consumers right
    assert _node(page, "evaluate-cnn").count() == 0  # three hops away
    assert page.locator("svg.lineage path.edge").count() == 4
    page.locator("select.lineage-hops").select_option("3")
    page.wait_for_selector(".lineage-box[data-ready='3']")
    assert _node(page, "evaluate-cnn").count() == 1
    _shot(page, "artifacts-version-lineage")

    # A node is a link: the model's version page, then its consumer's run page.
    _node(page, "cnn:v0").click()
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    assert page.url.endswith(f"/projects/{TEAM}/{PROJECT}/artifacts/cnn/v0")
    assert "prod" in page.locator(".version-title").inner_text()
    page.wait_for_selector(".lineage-box[data-ready] svg.lineage")
    _node(page, "evaluate-cnn").click()
    page.wait_for_selector("h2.run-title")
    assert page.url.endswith(f"/projects/{TEAM}/{PROJECT}/runs/evaluate#overview")

    # An old version by its number, and an address that names none.
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}/artifacts/mnist/v0")
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    assert "the first cut" in page.locator("section.artifact-version").inner_text()
    assert page.locator("table.artifact-versions tr.current").get_attribute("data-version") == "v0"
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}/artifacts/mnist/v9")
    page.wait_for_selector("main .error")


def test_run_page_lists_its_artifacts_and_fork(page, lineage: str) -> None:
    server = lineage
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}/runs/train#artifacts")
    page.wait_for_selector(".run-artifacts")
    assert page.locator(".run-logged table tbody tr").all_inner_texts()[0].startswith("cnn:v0")
    assert page.locator(".run-used table tbody tr").all_inner_texts()[0].startswith("mnist:v1")
    _shot(page, "run-artifacts")
    page.locator(".run-used a", has_text="mnist:v1").click()
    page.wait_for_selector("section.artifact-version[data-version='v1']")
    assert page.url.endswith(f"/projects/{TEAM}/{PROJECT}/artifacts/mnist/v1")

    # A run of another project links to the version in the artifact's project; the version's lineage
    # shows the run with its project.
    page.goto(f"{server}/projects/{TEAM}/arts-serving/runs/serve#artifacts")
    page.locator(".run-used a", has_text="cnn:v0").click()
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    assert page.url.endswith(f"/projects/{TEAM}/{PROJECT}/artifacts/cnn/v0")
    page.wait_for_selector(".lineage-box[data-ready] svg.lineage")
    assert _node(page, "serve-cnn").locator("text.sub").text_content().startswith("arts-serving/serve")

    # A run that logged and used nothing says so; a fork names its parent and step.
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}/runs/branch#artifacts")
    page.wait_for_selector(".run-artifacts")
    assert "logged no artifact" in page.locator(".run-artifacts").inner_text()
    page.locator("nav.run-tabs a", has_text="overview").click()
    page.wait_for_selector(".overview .fork")
    assert page.locator(".overview .fork").inner_text() == "train at step 1"
    assert page.locator(".overview .rewinds").inner_text().startswith("to step 1 (")
    _shot(page, "run-fork-and-rewind")
    page.locator(".overview .fork a").click()
    _wait_for_path(page, f"/projects/{TEAM}/{PROJECT}/runs/train")
    page.locator("h2.run-title", has_text="train-cnn").wait_for()  # the parent's page, not the fork's still
    page.wait_for_selector(".overview")
    assert page.locator(".overview .fork").count() == 0  # neither a fork nor rewound
    assert page.locator(".overview .rewinds").count() == 0


def test_aliases_are_set_moved_and_removed(page, lineage: str) -> None:
    server = lineage
    page.goto(f"{server}/projects/{TEAM}/{PROJECT}/artifacts/mnist/v0")
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    editor = page.locator(".version-title .alias-editor")
    assert editor.locator(".alias").all_inner_texts() == []  # v0 is not the newest: no latest

    # Setting best here moves it from v1 (an alias names one version of a name).
    editor.locator("input.alias-input").fill("best")
    editor.locator("button.alias-add").click()
    page.wait_for_selector(".version-title .alias[data-alias='best']")
    rows = page.locator("table.artifact-versions tbody tr")
    assert "best" in rows.nth(1).inner_text() and "best" not in rows.nth(0).inner_text()
    aliases = {v["version"]: v["aliases"] for v in Seeder(server).versions(PROJECT, "mnist")}
    assert "best" in aliases["v0"] and "best" not in aliases["v1"]

    # A bad alias: the server's message, nothing changed.
    editor.locator("input.alias-input").fill("v7")
    editor.locator("button.alias-add").click()
    page.wait_for_selector(".alias-status .error")

    page.locator(".version-title .alias[data-alias='best'] button.alias-remove").click()
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    _wait("best removed", lambda: all("best" not in v["aliases"] for v in Seeder(server).versions(PROJECT, "mnist")))
    page.reload()
    page.wait_for_selector("section.artifact-version[data-version='v0']")
    assert page.locator(".version-title .alias[data-alias='best']").count() == 0


def test_delete_and_move_a_run(page, server: str) -> None:
    s = Seeder(server)
    s.run("scratch", "doomed", "doomed-run")
    s.run("scratch", "mover", "mover-run")
    s.run("elsewhere", "other", "other-run")  # the project to move to
    for project, run_id in (("scratch", "doomed"), ("scratch", "mover"), ("elsewhere", "other")):
        _wait(f"{run_id} finished", _finished(server, project, run_id))

    page.goto(f"{server}/projects/{TEAM}/scratch/runs/doomed")
    page.locator("button.delete-run").click()
    dialog = page.locator("dialog.danger-dialog")
    go = dialog.locator("button.danger")
    assert go.is_disabled()
    dialog.locator("input.confirm-name").fill("doomed")  # the id is not the name
    assert go.is_disabled()
    dialog.locator("input.confirm-name").fill("doomed-run")
    _shot(page, "delete-run-dialog")
    go.click()
    _wait_for_path(page, f"/projects/{TEAM}/scratch")
    _wait("the run deleted", lambda: _status(f"{server}/api/v1/runs/{TEAM}/scratch/doomed") == 404)

    # Cancel leaves the run where it is.
    page.goto(f"{server}/projects/{TEAM}/scratch/runs/mover")
    page.locator("button.move-run").click()
    dialog.locator("button", has_text="Cancel").click()
    assert dialog.count() == 0 and _status(f"{server}/api/v1/runs/{TEAM}/scratch/mover") == 200

    page.locator("button.move-run").click()
    dialog.locator("input.move-target").fill("elsewhere")
    dialog.locator("button.danger").click()
    _wait_for_path(page, f"/projects/{TEAM}/elsewhere/runs/mover")
    page.wait_for_selector("h2.run-title")
    assert "mover-run" in page.locator("h2.run-title").inner_text()
    assert _status(f"{server}/api/v1/runs/{TEAM}/scratch/mover") == 404


def test_a_refused_delete_says_why_and_keeps_the_run(browser, server: str) -> None:
    """A member's read key may read the run but not delete it: the dialog shows the server's refusal and stays."""
    s = Seeder(server)
    s.run("kept", "k1", "kept-run")
    _wait("the run finished", _finished(server, "kept", "k1"))
    _request(f"{server}/api/v1/teams/{TEAM}/members/reader", "PUT", orjson.dumps({"role": "member"}))
    key = _request(
        f"{server}/api/v1/teams/{TEAM}/keys", "POST", orjson.dumps({"user": "reader", "name": "ui", "scope": "read"})
    )[1]["key"]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"localStorage.setItem('runstream.apiKey', {orjson.dumps(key).decode()})")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(f"{server}/projects/{TEAM}/kept/runs/k1")
        page.locator("button.delete-run").click()
        dialog = page.locator("dialog.danger-dialog")
        dialog.locator("input.confirm-name").fill("kept-run")
        dialog.locator("button.danger").click()
        page.wait_for_selector("dialog.danger-dialog .danger-status .error")
        assert dialog.locator("button.danger").is_enabled()  # may try again
        _shot(page, "delete-run-refused")
    finally:
        context.close()
    assert _status(f"{server}/api/v1/runs/{TEAM}/kept/k1") == 200


def test_delete_a_project(page, server: str) -> None:
    s = Seeder(server)
    s.run("doomed-project", "r1", "only-run")
    _wait("the run finished", _finished(server, "doomed-project", "r1"))
    page.goto(f"{server}/projects/{TEAM}/doomed-project")
    page.locator("nav.tabs a", has_text="settings").click()
    page.locator("textarea[name='project-description']").fill("to be deleted")
    page.locator("button.save-project").click()
    page.locator(".settings-status", has_text="saved").wait_for()
    assert _request(f"{server}/api/v1/projects/{TEAM}/doomed-project")[1]["description"] == "to be deleted"
    page.locator("button.delete-project").click()
    dialog = page.locator("dialog.danger-dialog")
    assert "1 run" in dialog.inner_text()
    assert dialog.locator("button.danger").is_disabled()
    dialog.locator("input.confirm-name").fill("doomed-projec")
    dialog.locator("input.confirm-name").press("Enter")  # not the name yet: nothing happens
    assert dialog.locator("button.danger").is_disabled()
    assert _status(f"{server}/api/v1/projects/{TEAM}/doomed-project") == 200
    dialog.locator("input.confirm-name").fill("doomed-project")
    _shot(page, "delete-project-dialog")
    dialog.locator("input.confirm-name").press("Enter")
    _wait_for_path(page, "/")
    page.wait_for_selector("main h2")
    assert "doomed-project" not in page.locator("main").inner_text()
    assert _status(f"{server}/api/v1/projects/{TEAM}/doomed-project") == 404
