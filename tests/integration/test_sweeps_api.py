"""Sweeps through the API on the real engine (docs/sweeps.md): create, list and read a sweep; a bad
configuration's every problem; the agents' protocol (register, next, heartbeat) handing each grid cell
out exactly once, to agents in turn and at once; pause and resume; cancel stopping the running runs;
a silent agent's claims handed out again; the run cap; and who may call what."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runstream import events
from runstream.api import sweeps as sweeps_api
from runstream.storage import accounts
from runstream.sweep_config import grid_points, validate
from tests.conftest import ApiHarness
from tests.helpers import fresh_chdb_dsn, make_event, unique, wait_for

TEAM = "acme"
API = "/api/v1"
GRID = {
    "name": "lr-grid",
    "method": "grid",
    "program": "train.py",
    "metric": {"name": "val/loss", "goal": "minimize"},
    "parameters": {"lr": {"values": [0.1, 0.01, 0.001]}, "optimizer": {"parameters": {"beta": {"values": [1, 2]}}}},
}


@pytest.fixture(scope="module")
def api(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    """One embedded app for the module (each test works in its own project)."""
    harness = ApiHarness(fresh_chdb_dsn(chdb_dir), tmp_path_factory.mktemp("sweeps"))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="module")
def admin(api: ApiHarness) -> dict[str, str]:
    return api.key(TEAM, "alice", "admin")


def scoped_key(api: ApiHarness, scope: accounts.Scope) -> dict[str, str]:
    _, key = accounts.create_key(api.storage, TEAM, "alice", scope=scope)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def ingest_key(api: ApiHarness, admin: dict[str, str]) -> dict[str, str]:
    return scoped_key(api, "ingest")


@pytest.fixture(scope="module")
def read_key(api: ApiHarness, admin: dict[str, str]) -> dict[str, str]:
    return scoped_key(api, "read")


def sweeps_url(project: str, *parts: str) -> str:
    return "/".join([f"{API}/projects/{TEAM}/{project}/sweeps", *parts])


def create(api: ApiHarness, headers: dict[str, str], project: str, config: dict[str, Any], **body: Any) -> Any:
    response = api.http.post(sweeps_url(project), json={"config": config, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def register(api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, host: str = "gpu1") -> str:
    response = api.http.post(sweeps_url(project, sweep_id, "agents"), json={"host": host, "pid": 4242}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["agent_id"]


#: (sweep, agent) -> the run last handed to the agent: its next says it ended, as the real agent's does.
_handed: dict[tuple[str, str], str] = {}


def next_run(
    api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, agent: str, *, retry: bool = False
) -> Any:
    """``next`` as an agent asks it after running what it was handed last (``retry``: asked again, as after an
    answer lost on the way, so it names no run as ended)."""
    last = None if retry else _handed.get((sweep_id, agent))
    body = {"ended": [last]} if last else {}
    response = api.http.post(sweeps_url(project, sweep_id, "agents", agent, "next"), json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    if "run_id" in answer:
        _handed[(sweep_id, agent)] = answer["run_id"]
    return answer


def beat(
    api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, agent: str, running: list[str], **more: Any
) -> Any:
    response = api.http.post(
        sweeps_url(project, sweep_id, "agents", agent, "heartbeat"), json={"running": running, **more}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def patch(api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, state: str, status: int = 200) -> Any:
    response = api.http.patch(sweeps_url(project, sweep_id), json={"state": state}, headers=headers)
    assert response.status_code == status, response.text
    return response.json()


def get(api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str) -> Any:
    response = api.http.get(sweeps_url(project, sweep_id), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def key_of(flat: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(flat.items()))


def grid_keys(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(key_of(p) for p in grid_points(validate(config)))


def run_events(
    api: ApiHarness, headers: dict[str, str], project: str, run_id: str, sweep_id: str, *, loss: float | None = None
) -> None:
    """A run of the sweep starts (its run_start names the sweep), and logs val/loss once when given."""
    sent = [make_event(events.RUN_START, {"name": f"n-{run_id}", "sweep": sweep_id}, seq=1, run_id=run_id)]
    if loss is not None:
        metrics = {"step": [0], "time": [sent[0]["ts"]], "values": {"val/loss": [loss]}}
        sent.append(make_event(events.METRICS, metrics, seq=2, run_id=run_id))
    for event in sent:
        event["project"] = project
    response = api.ingest(sent, headers)
    assert response.status_code == 200, response.text


@contextmanager
def crash_timeout(api: ApiHarness, seconds: float) -> Iterator[None]:
    """The API's crash timeout (after which an agent is gone and a claim without a run may be given back)."""
    backend = api.app.state.backend
    saved = backend.settings
    backend.settings = dataclasses.replace(saved, crash_timeout=seconds)
    try:
        yield
    finally:
        backend.settings = saved


def handed_again(
    api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, agent: str, flat: dict[str, Any]
) -> dict[str, Any]:
    """Ask ``next`` until it hands out a run (``flat``'s, asserted); that run."""
    got: list[dict[str, Any]] = []

    def asked() -> bool:
        got.append(next_run(api, headers, project, sweep_id, agent))
        return "run_id" in got[-1]

    wait_for(asked, "a claim handed out again")
    assert got[-1]["flat"] == flat
    return got[-1]


def finish(api: ApiHarness, headers: dict[str, str], project: str, run_id: str, state: str = "finished") -> None:
    event = make_event(events.RUN_FINISH, {"state": state, "exit_code": 0}, seq=9, run_id=run_id)
    event["project"] = project
    response = api.ingest([event], headers)
    assert response.status_code == 200, response.text


# -- create, list, get -----------------------------------------------------------------------------


def test_a_sweep_is_created_listed_and_read(api, admin):
    project = unique("p")
    sweep = create(api, admin, project, GRID)
    assert set(sweep) == {
        "sweep_id",
        "name",
        "method",
        "state",
        "config",
        "metric",
        "created_by",
        "created_at",
        "updated_at",
        "run_count",
    }
    assert events.is_sweep_id(sweep["sweep_id"])
    assert (sweep["name"], sweep["method"], sweep["state"], sweep["config"]) == ("lr-grid", "grid", "running", GRID)
    assert sweep["metric"] == {"name": "val/loss", "goal": "minimize"}
    assert (sweep["created_by"], sweep["run_count"]) == ("alice", 0)

    unnamed = {k: v for k, v in GRID.items() if k != "name"}
    other = create(api, admin, project, unnamed)
    assert other["name"] == other["sweep_id"]  # its id names an unnamed sweep
    named = create(api, admin, project, unnamed, name="by hand")
    assert named["name"] == "by hand"

    listed = api.http.get(sweeps_url(project), headers=admin).json()
    assert listed["total"] == 3
    assert [s["sweep_id"] for s in listed["sweeps"]] == [named["sweep_id"], other["sweep_id"], sweep["sweep_id"]]
    page = api.http.get(sweeps_url(project), params={"limit": 1, "offset": 1}, headers=admin).json()
    assert [s["sweep_id"] for s in page["sweeps"]] == [other["sweep_id"]]

    detail = get(api, admin, project, sweep["sweep_id"])
    assert {k: detail[k] for k in sweep} == sweep
    assert (detail["agents"], detail["counts"], detail["best"]) == ([], {}, None)

    assert api.http.get(sweeps_url(project, "zzzzzzzz"), headers=admin).status_code == 404
    assert api.http.get(sweeps_url(project, "NOT-AN-ID"), headers=admin).status_code == 400


def test_a_bad_configuration_is_refused_with_every_problem(api, admin):
    project = unique("p")
    config = {
        "method": "annealing",
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0.1, "max": 0.01}},
        "colour": "blue",
    }
    response = api.http.post(sweeps_url(project), json={"config": config}, headers=admin)
    assert response.status_code == 422, response.text
    body = response.json()
    problems = body["problems"]
    assert len(problems) >= 3, problems
    for key in ("method", "parameters.lr", "colour"):
        assert any(key in line for line in problems), (key, problems)
    assert body["error"]["code"] == "invalid"
    assert body["error"]["details"]["problems"] == problems
    assert api.http.get(sweeps_url(project), headers=admin).json()["total"] == 0
    # A body that does not fit its declaration is a 400, as everywhere.
    assert api.http.post(sweeps_url(project), json={"config": "grid"}, headers=admin).status_code == 400


# -- handing out runs ---------------------------------------------------------------------------------


def test_each_grid_cell_goes_to_exactly_one_of_two_agents(api, admin, ingest_key):
    project = unique("p")
    sweep_id = create(api, admin, project, GRID)["sweep_id"]
    agents = [register(api, ingest_key, project, sweep_id, host) for host in ("gpu1", "gpu2")]
    handed: list[dict[str, Any]] = []
    for turn in range(6):
        answer = next_run(api, ingest_key, project, sweep_id, agents[turn % 2])
        assert set(answer) == {"run_id", "params", "flat", "command"}, answer
        handed.append(answer)
    assert sorted(key_of(a["flat"]) for a in handed) == grid_keys(GRID)
    assert len({a["run_id"] for a in handed}) == 6
    first = handed[0]
    assert first["flat"] == {"lr": 0.1, "optimizer.beta": 1}  # the grid's order
    assert first["params"] == {"lr": 0.1, "optimizer": {"beta": 1}}
    assert first["command"] == ["/usr/bin/env", "${interpreter}", "train.py", "--lr=0.1", "--optimizer.beta=1"]
    # The grid is covered, its runs not ended: wait (a run may still be given back).
    assert set(next_run(api, ingest_key, project, sweep_id, agents[0])) == {"wait_s"}

    detail = get(api, admin, project, sweep_id)
    assert sorted(a["host"] for a in detail["agents"]) == ["gpu1", "gpu2"]
    assert {a["state"] for a in detail["agents"]} == {"running"}


def _drain(
    api: ApiHarness, headers: dict[str, str], project: str, sweep_id: str, agent: str, out: list, n: int
) -> None:
    """An agent asking until ``n`` runs were handed out in all (``out`` is shared); a race lost to
    another agent's claim answers wait_s, and it asks again."""
    for _ in range(10 * n):
        if len(out) >= n:
            return
        answer = next_run(api, headers, project, sweep_id, agent)
        if "run_id" in answer:
            out.append(answer)


@pytest.mark.parametrize("replicas", [False, True], ids=["one-process", "as-if-replicas"])
def test_agents_asking_at_once_never_share_a_grid_cell(api, admin, ingest_key, monkeypatch, replicas):
    if replicas:  # no process lock: the claims' read-back alone keeps cells apart, as across API replicas
        monkeypatch.setattr(sweeps_api, "_lock", lambda *_: threading.Lock())
    project = unique("p")
    config = {**GRID, "parameters": {"a": {"values": list(range(6))}, "b": {"values": [0, 1]}}}
    cells = grid_keys(config)
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agents = [register(api, ingest_key, project, sweep_id, f"h{i}") for i in range(4)]
    handed: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=_drain, args=(api, ingest_key, project, sweep_id, agent, handed, len(cells)))
        for agent in agents
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(key_of(a["flat"]) for a in handed) == cells  # each cell once, none left out
    assert set(next_run(api, ingest_key, project, sweep_id, agents[0])) == {"wait_s"}


def test_a_paused_sweep_makes_agents_wait_until_it_resumes(api, admin, ingest_key):
    project = unique("p")
    sweep_id = create(api, admin, project, GRID)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    assert patch(api, admin, project, sweep_id, "paused")["state"] == "paused"
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"wait_s": sweeps_api.WAIT_S}
    assert beat(api, ingest_key, project, sweep_id, agent, [])["state"] == "paused"
    assert patch(api, admin, project, sweep_id, "running")["state"] == "running"
    assert "run_id" in next_run(api, ingest_key, project, sweep_id, agent)

    entries = api.http.get(f"{API}/teams/{TEAM}/audit", params={"action": "sweep.state"}, headers=admin).json()
    mine = [e for e in entries["entries"] if e["target"] == f"{project}/{sweep_id}"]
    assert [e["details"] for e in mine] == [{"from": "paused", "to": "running"}, {"from": "running", "to": "paused"}]

    assert patch(api, admin, project, sweep_id, "stopped")["state"] == "stopped"
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"done": True}
    assert patch(api, admin, project, sweep_id, "paused", status=409)["error"]["code"] == "conflict"


def test_a_covered_grid_finishes_once_its_runs_have_ended(api, admin, ingest_key):
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    runs = [next_run(api, ingest_key, project, sweep_id, agent)["run_id"] for _ in range(2)]
    for run_id, loss in zip(runs, (0.5, 0.25), strict=True):
        run_events(api, ingest_key, project, run_id, sweep_id, loss=loss)
    finish(api, ingest_key, project, runs[0])
    assert "wait_s" in next_run(api, ingest_key, project, sweep_id, agent)  # one run still running
    finish(api, ingest_key, project, runs[1], "failed")
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"done": True}

    detail = get(api, admin, project, sweep_id)
    assert (detail["state"], detail["run_count"]) == ("finished", 2)
    assert detail["counts"] == {"finished": 1, "failed": 1}
    assert detail["best"] == {"run_id": runs[1], "name": f"n-{runs[1]}", "value": 0.25}
    assert [a["state"] for a in detail["agents"]] == ["finished"]
    assert patch(api, admin, project, sweep_id, "running", status=409)["error"]["code"] == "conflict"


def test_a_covered_grid_whose_agents_left_finishes_when_read(api, admin, ingest_key):
    """Agents run with --count leave without asking again: the sweep finishes when next looked at."""
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    runs = [next_run(api, ingest_key, project, sweep_id, agent)["run_id"] for _ in range(2)]
    for run_id in runs:
        run_events(api, ingest_key, project, run_id, sweep_id, loss=0.5)
    finish(api, ingest_key, project, runs[0])
    assert get(api, admin, project, sweep_id)["state"] == "running"  # one run still running
    finish(api, ingest_key, project, runs[1], "killed")
    assert get(api, admin, project, sweep_id)["state"] == "finished"
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"done": True}


def test_cancelling_tells_the_agents_to_stop_the_running_runs(api, admin, ingest_key):
    project = unique("p")
    sweep_id = create(api, admin, project, GRID)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    runs = [next_run(api, ingest_key, project, sweep_id, agent)["run_id"] for _ in range(3)]
    run_events(api, ingest_key, project, runs[0], sweep_id)
    run_events(api, ingest_key, project, runs[1], sweep_id)
    finish(api, ingest_key, project, runs[1])
    assert beat(api, ingest_key, project, sweep_id, agent, runs[:1]) == {"state": "running", "stop": []}

    assert patch(api, admin, project, sweep_id, "canceled")["state"] == "canceled"
    # runs[0] was running: told to stop. runs[2] started after the cancel (no run yet): told too.
    answer = beat(api, ingest_key, project, sweep_id, agent, [runs[0], runs[2], "notmine"])
    reason = sweeps_api.CANCELED_REASON
    assert answer == {"state": "canceled", "stop": [{"run_id": r, "reason": reason} for r in sorted(runs[::2])]}
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"done": True}
    assert patch(api, admin, project, sweep_id, "running", status=409)["error"]["code"] == "conflict"


def test_a_silent_agents_claims_are_handed_out_again(api, admin, ingest_key):
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2, 0.3]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    silent, alive = (register(api, ingest_key, project, sweep_id, host) for host in ("gone", "here"))
    lost = next_run(api, ingest_key, project, sweep_id, silent)  # never started
    started = next_run(api, ingest_key, project, sweep_id, silent)  # finished before the agent went silent
    run_events(api, ingest_key, project, started["run_id"], sweep_id)
    finish(api, ingest_key, project, started["run_id"])
    mine = next_run(api, ingest_key, project, sweep_id, alive)
    run_events(api, ingest_key, project, mine["run_id"], sweep_id)
    assert sorted([lost["flat"]["lr"], started["flat"]["lr"], mine["flat"]["lr"]]) == [0.1, 0.2, 0.3]

    backend = api.app.state.backend
    saved = backend.settings
    backend.settings = dataclasses.replace(saved, crash_timeout=1)
    try:
        again: list[dict[str, Any]] = []

        def handed_again() -> bool:
            answer = next_run(api, ingest_key, project, sweep_id, alive)
            again.append(answer)
            return "run_id" in answer

        wait_for(handed_again, "the silent agent's claim handed out again")
        assert again[-1]["flat"] == lost["flat"] and again[-1]["run_id"] != lost["run_id"]
        assert "wait_s" in next_run(api, ingest_key, project, sweep_id, alive)  # the finished run stays done
        states = {a["host"]: a["state"] for a in get(api, admin, project, sweep_id)["agents"]}
        assert states == {"gone": "gone", "here": "running"}
    finally:
        backend.settings = saved


def test_the_run_cap_bounds_the_runs_handed_out(api, admin, ingest_key):
    project = unique("p")
    config = {
        "method": "random",
        "run_cap": 3,
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}},
    }
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    handed = [next_run(api, ingest_key, project, sweep_id, agent) for _ in range(3)]
    assert all(1e-4 <= a["flat"]["lr"] <= 1e-1 for a in handed)
    assert len({a["flat"]["lr"] for a in handed}) == 3  # each claim draws afresh
    assert "command" not in handed[0]  # no program: a function= agent's sweep
    assert "wait_s" in next_run(api, ingest_key, project, sweep_id, agent)


def test_bayes_suggests_within_the_parameters(api, admin, ingest_key):
    project = unique("p")
    config = {
        "method": "bayes",
        "metric": {"name": "val/loss", "goal": "minimize"},
        "parameters": {"lr": {"min": 0.001, "max": 0.1}, "layers": {"values": [1, 2, 3]}},
    }
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    for _ in range(3):
        answer = next_run(api, ingest_key, project, sweep_id, agent)
        assert 0.001 <= answer["flat"]["lr"] <= 0.1 and answer["flat"]["layers"] in (1, 2, 3)
        run_events(api, ingest_key, project, answer["run_id"], sweep_id, loss=answer["flat"]["lr"])
        finish(api, ingest_key, project, answer["run_id"])
    assert get(api, admin, project, sweep_id)["counts"] == {"finished": 3}


def test_a_claim_that_never_became_a_run_is_handed_out_again(api, admin, ingest_key):
    """The program died before init() (or never started): once the claim is older than the crash timeout its
    grid cell goes out again, and the sweep finishes; likewise its room under the run cap."""
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    never = next_run(api, ingest_key, project, sweep_id, agent)
    ran = next_run(api, ingest_key, project, sweep_id, agent)  # says `never` ended
    assert ran["flat"] != never["flat"]
    run_events(api, ingest_key, project, ran["run_id"], sweep_id, loss=0.3)
    finish(api, ingest_key, project, ran["run_id"])
    assert "wait_s" in next_run(api, ingest_key, project, sweep_id, agent)  # within the crash timeout: may be late
    with crash_timeout(api, 1):
        again = handed_again(api, ingest_key, project, sweep_id, agent, never["flat"])
    assert again["run_id"] != never["run_id"]
    run_events(api, ingest_key, project, again["run_id"], sweep_id, loss=0.2)
    finish(api, ingest_key, project, again["run_id"])
    assert next_run(api, ingest_key, project, sweep_id, agent) == {"done": True}
    assert get(api, admin, project, sweep_id)["state"] == "finished"

    capped = create(api, admin, project, {"method": "random", "run_cap": 1, "parameters": {"x": {"min": 0, "max": 1}}})
    agent = register(api, ingest_key, project, capped["sweep_id"])
    assert "run_id" in next_run(api, ingest_key, project, capped["sweep_id"], agent)
    assert "wait_s" in next_run(api, ingest_key, project, capped["sweep_id"], agent)
    with crash_timeout(api, 1):
        wait_for(
            lambda: "run_id" in next_run(api, ingest_key, project, capped["sweep_id"], agent),
            "the cap's room given back",
        )


def test_next_asked_again_hands_out_the_same_claim_until_the_heartbeat_leaves_it(api, admin, ingest_key):
    """A next tried again (its answer lost on the way) gets the claim it made; a claim the agent's heartbeats
    do not name, older than the crash timeout and without a run, is given back; one they name is not."""
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    agent, other = (register(api, ingest_key, project, sweep_id, h) for h in ("a", "b"))
    lost = next_run(api, ingest_key, project, sweep_id, agent)
    assert next_run(api, ingest_key, project, sweep_id, agent, retry=True) == lost
    held = next_run(api, ingest_key, project, sweep_id, other)  # slow to start: no run yet
    released: dict[str, bool] = {}

    def left() -> bool:
        beat(api, ingest_key, project, sweep_id, other, [held["run_id"]])  # first: alive when the next one reads
        beat(api, ingest_key, project, sweep_id, agent, [])
        claims = sweeps_api.sweeps.claims(api.storage, TEAM, project, sweep_id)
        released.update({c.run_id: c.released for c in claims})
        return released[lost["run_id"]]

    with crash_timeout(api, 2):
        wait_for(left, "the claim its agent's heartbeats leave out given back")
        assert not released[held["run_id"]]
        again = next_run(api, ingest_key, project, sweep_id, agent, retry=True)
    assert again["flat"] == lost["flat"] and again["run_id"] != lost["run_id"]


def test_a_silent_agents_running_run_is_left_to_it_and_a_crashed_one_handed_out_again(api, admin, ingest_key):
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    silent, alive = (register(api, ingest_key, project, sweep_id, h) for h in ("silent", "alive"))
    running = next_run(api, ingest_key, project, sweep_id, silent)
    run_events(api, ingest_key, project, running["run_id"], sweep_id, loss=0.5)
    mine = next_run(api, ingest_key, project, sweep_id, alive)
    run_events(api, ingest_key, project, mine["run_id"], sweep_id, loss=0.4)
    finish(api, ingest_key, project, mine["run_id"])
    with crash_timeout(api, 1):
        wait_for(
            lambda: {a["host"]: a["state"] for a in get(api, admin, project, sweep_id)["agents"]}["silent"] == "gone",
            "the agent gone",
        )
        assert "wait_s" in next_run(api, ingest_key, project, sweep_id, alive)  # its run is running: not given back
        api.app.state.backend.sink.pipeline.sweep(timeout_s=1, now=time.time() + 2)  # its run's heartbeats stop
        assert get(api, admin, project, sweep_id)["counts"] == {"crashed": 1, "finished": 1}
        again = handed_again(api, ingest_key, project, sweep_id, alive, running["flat"])
    assert again["run_id"] != running["run_id"]


def test_an_agent_that_ends_says_so_and_stays_finished(api, admin, ingest_key):
    project = unique("p")
    config = {**GRID, "parameters": {"lr": {"values": [0.1]}}}
    sweep_id = create(api, admin, project, config)["sweep_id"]
    ending, done = (register(api, ingest_key, project, sweep_id, h) for h in ("ending", "done"))
    assert beat(api, ingest_key, project, sweep_id, ending, [], state="finished")["state"] == "running"
    run = next_run(api, ingest_key, project, sweep_id, done)
    run_events(api, ingest_key, project, run["run_id"], sweep_id, loss=0.5)
    finish(api, ingest_key, project, run["run_id"])
    assert next_run(api, ingest_key, project, sweep_id, done) == {"done": True}
    assert beat(api, ingest_key, project, sweep_id, done, [])["state"] == "finished"  # a late heartbeat
    states = {a["host"]: a["state"] for a in get(api, admin, project, sweep_id)["agents"]}
    assert states == {"ending": "finished", "done": "finished"}
    bad = api.http.post(
        sweeps_url(project, sweep_id, "agents", done, "heartbeat"), json={"state": "gone"}, headers=ingest_key
    )
    assert bad.status_code == 400 and "state must be running or finished" in bad.text


def test_json_nested_too_deeply_is_refused(api, admin):
    project = unique("p")
    headers = {**admin, "Content-Type": "application/json"}
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    sent = {sweeps_url(project): b"config", f"{API}/projects/{TEAM}/{project}/alert-rules": b"spec"}
    for url, field in sent.items():
        response = api.http.post(url, content=b'{"' + field + b'":' + nested + b"}", headers=headers)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.json()["error"]["message"]


def test_two_claims_at_once_draw_apart():
    """Two replicas claiming with the same count of claims still seed apart: the new run id is in the seed."""
    assert sweeps_api._seed("ab12cd34", 3, "run1") != sweeps_api._seed("ab12cd34", 3, "run2")


# -- who may call what -----------------------------------------------------------------------------------


def test_a_training_key_runs_agents_and_a_read_key_reads(api, admin, ingest_key, read_key):
    project = unique("p")
    refused = api.http.post(sweeps_url(project), json={"config": GRID}, headers=ingest_key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "key_scope"
    sweep_id = create(api, admin, project, GRID)["sweep_id"]
    agent = register(api, ingest_key, project, sweep_id)
    assert "run_id" in next_run(api, ingest_key, project, sweep_id, agent)
    assert beat(api, ingest_key, project, sweep_id, agent, [])["state"] == "running"
    assert (
        api.http.patch(sweeps_url(project, sweep_id), json={"state": "paused"}, headers=ingest_key).status_code == 403
    )
    assert api.http.get(sweeps_url(project, sweep_id), headers=ingest_key).status_code == 403

    assert get(api, read_key, project, sweep_id)["sweep_id"] == sweep_id
    assert api.http.get(sweeps_url(project), headers=read_key).status_code == 200
    agents_url = sweeps_url(project, sweep_id, "agents")
    assert api.http.post(agents_url, json={"host": "h", "pid": 1}, headers=read_key).status_code == 403
    assert api.http.post(sweeps_url(project, sweep_id, "agents", agent, "next"), headers=read_key).status_code == 403
    assert api.http.patch(sweeps_url(project, sweep_id), json={"state": "paused"}, headers=read_key).status_code == 403

    outsider = api.key("other", "olga", "admin")
    assert api.http.get(sweeps_url(project, sweep_id), headers=outsider).status_code == 404
    assert api.http.post(agents_url, json={"host": "h", "pid": 1}, headers=outsider).status_code == 404
    # An agent of another sweep, or none, is not this sweep's.
    assert (
        api.http.post(sweeps_url(project, sweep_id, "agents", "nosuchagent", "next"), headers=ingest_key).status_code
        == 404
    )
