"""The web UI's sweeps pages in headless Chromium against ``runstream server`` (the browser set-up of
test_ui_artifacts.py, whose fixtures these tests share).

A sweep is made through the public API, and two agents run its trials by speaking the agents' protocol
over HTTP as ``runstream agent`` does (register, next, heartbeat), each trial's run sending its events
as the SDK would: no training processes, so nothing here races a process's start-up. Hyperband stops the
trials whose loss is far worse than the others' at its first bracket; the agent learns it from a
heartbeat and the run ends, ``stopped``.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from infra.net import free_port
from tests.browser import test_ui_artifacts
from tests.browser.test_ui import ARTIFACTS
from tests.helpers import Server, wait_for

pytestmark = pytest.mark.browser

# The artifacts tests' browser and page (the UI's CSP kept; page errors and CSP refusals fail the test).
browser = test_ui_artifacts.browser
page = test_ui_artifacts.page

TEAM = "default"
PROJECT = "tuning"
TRIALS = 12
#: The trials hyperband stops: their loss is 4x everyone else's at the first bracket (iteration 3).
BAD = {2, 5, 7, 10}
ITERATIONS = 9
CONFIG = {
    "name": "lr-search",
    "description": "learning rate, batch size and dropout of the CNN",
    "program": "train.py",
    "method": "random",
    "metric": {"name": "val/loss", "goal": "minimize"},
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "batch_size": {"values": [16, 32, 64, 128]},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "epochs": {"value": ITERATIONS},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
    "run_cap": 40,  # more than the trials run here: the sweep stays running, so it can be paused
}


def _json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return orjson.loads(text) if text else None


def _api(url: str, method: str, path: str, body: Any = None) -> Any:
    """The project's API as the embedded server's local admin (no key: from this machine)."""
    return _json(f"{url}/api/v1/projects/{TEAM}/{PROJECT}{path}", method, body)


class Trials:
    """Runs of a sweep's trials as the SDK sends them: run_start (with the sweep), metrics, run_finish."""

    def __init__(self, url: str, sweep_id: str) -> None:
        self.url, self.sweep_id = url, sweep_id
        self.seq = 0

    def send(self, run_id: str, *events: tuple[str, dict]) -> None:
        lines = []
        for type_, data in events:
            self.seq += 1
            envelope = {"v": 1, "type": type_, "team": TEAM, "project": PROJECT, "run_id": run_id}
            lines.append(orjson.dumps({**envelope, "seq": self.seq, "ts": time.time(), "data": data}))
        request = urllib.request.Request(
            f"{self.url}/api/v1/events",
            method="POST",
            data=b"\n".join(lines),
            headers={"Content-Type": "application/x-ndjson"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    def losses(self, trial: int, iterations: range) -> list[float]:
        """A trial's val/loss at each iteration: each good trial is better than every earlier one at every
        iteration (so hyperband never stops it), a bad one 4x worse."""
        base = 2.0 if trial in BAD else 0.5 - 0.02 * trial
        return [round(base * (1 + 2 * 0.7**i), 4) for i in iterations]

    def run(self, agent: Agent, trial: int) -> str:
        """The trial the agent is handed next: its run logs val/loss; a bad one waits to be told to stop."""
        suggestion = agent.next()
        run_id = suggestion["run_id"]
        logged = range(1, 5) if trial in BAD else range(1, ITERATIONS + 1)
        losses = self.losses(trial, logged)
        now = time.time()
        self.send(
            run_id,
            (
                "run_start",
                {
                    "name": f"lr-search-{trial + 1}",
                    "sweep": self.sweep_id,
                    "config": suggestion["params"],
                    "program": "train.py",
                    "host": agent.host,
                },
            ),
            (
                "metrics",
                {
                    "step": list(logged),
                    "time": [now + i for i in range(len(losses))],
                    "values": {"val/loss": losses, "train/loss": [v * 0.9 for v in losses]},
                },
            ),
        )
        if trial in BAD:
            # As the agent does: heartbeats until the sweep says stop, then SIGTERM (the run exits, killed).
            wait_for(lambda: run_id in agent.stops(run_id), f"hyperband stopping trial {trial} ({run_id})", 60)
            self.send(run_id, ("run_finish", {"state": "killed", "exit_code": 143}))
        else:
            self.send(run_id, ("run_finish", {"state": "finished", "exit_code": 0}))
        return run_id


class Agent:
    """An agent of the sweep, through the agents' protocol (docs/sweeps.md)."""

    def __init__(self, url: str, sweep_id: str, host: str, pid: int) -> None:
        self.base = f"{url}/api/v1/projects/{TEAM}/{PROJECT}/sweeps/{sweep_id}"
        self.host = host
        self.agent_id = _json(f"{self.base}/agents", "POST", {"host": host, "pid": pid})["agent_id"]

    def next(self) -> dict:
        answer = _json(f"{self.base}/agents/{self.agent_id}/next", "POST", {})
        assert "run_id" in answer, answer
        return answer

    def stops(self, *running: str) -> set[str]:
        answer = _json(f"{self.base}/agents/{self.agent_id}/heartbeat", "POST", {"running": list(running)})
        return {s["run_id"] for s in answer["stop"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = Server(tmp_path_factory.mktemp("ui-sweeps"), free_port()).start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def tuning(server: str) -> dict[str, Any]:
    """default/tuning: the sweep lr-search with 12 trials run by two agents (4 stopped by hyperband, the
    last good one the best), still running; warmup-grid, stopped without runs; dropout, running, empty."""
    url = server
    sweep = _api(url, "POST", "/sweeps", {"config": CONFIG})
    sweep_id = sweep["sweep_id"]
    trials = Trials(url, sweep_id)
    agents = [Agent(url, sweep_id, "gpu-box-1", 4242), Agent(url, sweep_id, "gpu-box-2", 5151)]
    run_ids = [trials.run(agents[k % 2], k) for k in range(TRIALS)]

    def ended() -> bool:
        runs = _api(
            url, "GET", "/runs?" + urllib.parse.urlencode({"filters": orjson.dumps({"sweep": sweep_id}).decode()})
        )
        return len(runs["runs"]) == TRIALS and all(r["state"] in ("finished", "stopped") for r in runs["runs"])

    wait_for(ended, "every trial ended", 60)
    good = [k for k in range(TRIALS) if k not in BAD]
    wait_for(
        lambda: (_api(url, "GET", f"/sweeps/{sweep_id}").get("best") or {}).get("run_id") == run_ids[good[-1]],
        "the best run",
        60,
    )
    grid = _api(
        url,
        "POST",
        "/sweeps",
        {
            "config": {
                "name": "warmup-grid",
                "method": "grid",
                "metric": {"name": "val/loss", "goal": "minimize"},
                "parameters": {"warmup": {"values": [0, 100, 500]}, "batch_size": {"values": [32, 64]}},
            }
        },
    )
    _api(url, "PATCH", f"/sweeps/{grid['sweep_id']}", {"state": "stopped"})
    other = _api(
        url,
        "POST",
        "/sweeps",
        {
            "config": {
                "name": "dropout",
                "method": "bayes",
                "metric": {"name": "val/acc", "goal": "maximize"},
                "parameters": {"dropout": {"min": 0.0, "max": 0.6}},
            }
        },
    )
    return {
        "url": url,
        "sweep_id": sweep_id,
        "run_ids": run_ids,
        "best": run_ids[good[-1]],
        "grid": grid["sweep_id"],
        "other": other["sweep_id"],
    }


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _open(page, url: str, path: str) -> None:
    page.goto(f"{url}/projects/{TEAM}/{PROJECT}{path}")
    page.wait_for_selector("main[data-ready]")


def test_a_project_without_sweeps_says_how_to_start_one(page, server: str) -> None:
    page.goto(f"{server}/projects/{TEAM}/empty/sweeps")
    page.wait_for_selector("main[data-ready]")
    hint = page.locator(".sweep-hint")
    assert "runstream sweep sweep.yaml --project empty" in hint.inner_text()
    assert "runstream agent default/empty/SWEEP_ID" in hint.inner_text()
    assert page.locator("nav.tabs a.active").inner_text() == "sweeps"


def test_the_sweeps_list(page, tuning: dict) -> None:
    _open(page, tuning["url"], "")
    page.locator("nav.tabs a", has_text="sweeps").click()
    page.wait_for_selector("table.sweeps")
    rows = page.locator("table.sweeps tbody tr")
    assert rows.count() == 3
    # Newest first: dropout, warmup-grid, lr-search.
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(3)] == ["dropout", "warmup-grid", "lr-search"]
    main = rows.nth(2)
    assert main.get_attribute("data-sweep") == tuning["sweep_id"]
    cells = [main.locator("td").nth(i).inner_text() for i in range(6)]
    assert cells == ["lr-search", tuning["sweep_id"], "random", "val/loss ↓", "running", str(TRIALS)]
    assert rows.nth(1).locator(".state").inner_text() == "stopped"
    _shot(page, "sweeps")
    main.get_by_role("link", name="lr-search").click()
    page.wait_for_selector(".sweep-runs-table")
    assert page.locator("h2.sweep-title").inner_text().startswith("lr-search")


def test_the_sweep_page(page, tuning: dict) -> None:
    _open(page, tuning["url"], f"/sweeps/{tuning['sweep_id']}")
    assert page.locator(".sweep-state .state").inner_text() == "running"
    assert "runstream agent default/tuning/" + tuning["sweep_id"] in page.locator(".sweep-overview").inner_text()
    assert "hyperband" in page.locator("pre.sweep-config").inner_text()
    # The agents, each with its host.
    assert page.locator(".sweep-agents-table tbody tr").count() == 2
    assert "gpu-box-2" in page.locator(".sweep-agents-table").inner_text()
    # The best run, a link to its page.
    best = page.locator(".sweep-best-run a")
    assert best.get_attribute("href") == f"/projects/{TEAM}/{PROJECT}/runs/{tuning['best']}"
    # The runs, oldest first; the stopped ones with hyperband's reason.
    rows = page.locator(".sweep-runs-table tbody tr")
    assert rows.count() == TRIALS
    assert [rows.nth(i).get_attribute("data-run") for i in range(TRIALS)] == tuning["run_ids"]
    stopped = [i for i in range(TRIALS) if rows.nth(i).get_attribute("data-state") == "stopped"]
    assert stopped == sorted(BAD)
    assert "val/loss" in rows.nth(2).locator(".stop-reason").inner_text()
    assert rows.nth(TRIALS - 1).get_attribute("class") == "best"
    # The metric over runs: a point per run; parallel coordinates: a line per run (constants get no axis).
    page.wait_for_selector(f".sweep-chart[data-points='{TRIALS}'] canvas")
    parallel = page.wait_for_selector(f".sweep-parallel[data-runs='{TRIALS}'] canvas.parallel-canvas")
    assert page.locator(".sweep-parallel").get_attribute("data-axes") == "lr,batch_size,dropout,val/loss"
    assert parallel.bounding_box()["height"] > 100
    _shot(page, "sweep")
    # The best run's link opens its page.
    best.click()
    page.wait_for_url(f"**/projects/{TEAM}/{PROJECT}/runs/{tuning['best']}", wait_until="commit")
    assert page.locator("h2.run-title").inner_text().startswith(f"lr-search-{TRIALS}")


def test_pause_resume_and_cancel(page, tuning: dict) -> None:
    url, sweep_id = tuning["url"], tuning["sweep_id"]
    _open(page, url, f"/sweeps/{sweep_id}")
    page.locator("button.sweep-pause").click()
    page.wait_for_selector("main[data-state='paused']")
    assert _api(url, "GET", f"/sweeps/{sweep_id}")["state"] == "paused"
    assert page.locator("button.sweep-pause").count() == 0
    page.locator("button.sweep-resume").click()
    page.wait_for_selector("main[data-state='running']")
    assert _api(url, "GET", f"/sweeps/{sweep_id}")["state"] == "running"
    # Cancel asks first: dismissing the dialog changes nothing; confirming cancels.
    other = tuning["other"]
    _open(page, url, f"/sweeps/{other}")
    page.locator("button.sweep-cancel").click()
    dialog = page.locator("dialog.danger-dialog")
    dialog.get_by_role("button", name="Cancel", exact=True).click()
    assert _api(url, "GET", f"/sweeps/{other}")["state"] == "running"
    page.locator("button.sweep-cancel").click()
    dialog.get_by_role("button", name="Cancel sweep").click()
    page.wait_for_selector("main[data-state='canceled']")
    assert _api(url, "GET", f"/sweeps/{other}")["state"] == "canceled"
    assert page.locator(".sweep-controls button").count() == 0
