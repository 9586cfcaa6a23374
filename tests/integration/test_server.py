"""The embedded server as a user runs it: ``runstream server`` in its own process, the SDK over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

import runstream
from infra.net import free_port
from tests.helpers import Server, training_script, unique

RUNSTREAM = Path(sys.executable).parent / "runstream"


@pytest.fixture
def server_factory(tmp_path):
    servers: list[Server] = []

    def make(data_dir: Path | None = None, port: int | None = None, **env: str) -> Server:
        server = Server(data_dir or tmp_path / "data", port or free_port(), **env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return orjson.loads(response.read())


def test_a_killed_server_restarts_with_every_point_exactly_once(server_factory, tmp_path):
    server = server_factory().start()
    project, steps = unique("p"), 3000
    script = training_script(str(tmp_path / "runs"), server.url, project, "survivor", steps, pause=0.001)
    env = {**os.environ, "RUNSTREAM_CONFIG": str(tmp_path / "none.toml")}
    trainer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert trainer.stdout.readline().strip() == "started"
    # Kill the server once some of the run is in, while the SDK is still sending.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = (
            _get(f"{server.url}/api/v1/runs/default/{project}/survivor/history/scan?page_size=1&keys=loss")
            if _exists(server.url, project)
            else None
        )
        if page and page["columns"]["_step"]:
            break
        time.sleep(0.1)
    server.kill()
    time.sleep(1.0)
    restarted = server_factory(server.data_dir, server.port).start()
    out, err = trainer.communicate(timeout=180)
    assert trainer.returncode == 0, err
    result = orjson.loads(out.splitlines()[-1])
    assert result["unacked"] == 0

    run = runstream.Api(url=restarted.url, api_key="").run(f"default/{project}/survivor")
    assert run.state == "finished"
    rows = list(run.scan_history(keys=["loss", "acc"], page_size=1000))
    assert [row["_step"] for row in rows] == list(range(steps))
    assert all(row["loss"] == 1.0 / (row["_step"] + 1) for row in rows)
    assert run.summary["loss"] == 1.0 / steps
    restarted.stop()


def _exists(url: str, project: str) -> bool:
    try:
        _get(f"{url}/api/v1/runs/default/{project}/survivor")
        return True
    except OSError:
        return False


def test_ctrl_c_then_a_restart_shows_everything_again(server_factory, tmp_path):
    server = server_factory().start()
    project = unique("p")
    script = training_script(str(tmp_path / "runs"), server.url, project, "kept", 200)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUNSTREAM_CONFIG": str(tmp_path / "none.toml")},
    )
    assert done.returncode == 0, done.stderr
    output = server.stop()
    assert server.process.returncode == 0, output
    assert "runstream server at" in output
    again = server_factory(server.data_dir, server.port).start()
    run = runstream.Api(url=again.url, api_key="").run(f"default/{project}/kept")
    assert [row["_step"] for row in run.scan_history(keys=["loss"])] == list(range(200))
    again.stop()


def test_a_second_server_on_the_same_port_says_what_to_do(server_factory):
    first = server_factory().start()
    second = subprocess.run(
        [RUNSTREAM, "server", "--data-dir", str(first.data_dir.parent / "other"), "--port", str(first.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=first.env,
    )
    assert second.returncode == 2
    assert "--port" in second.stderr and "Traceback" not in second.stderr
    # The server holds its directory: server-side key commands say how to manage keys meanwhile.
    keys = subprocess.run(
        [RUNSTREAM, "keys", "list", "--team", "acme", "--dsn", f"chdb://{first.data_dir / 'clickhouse'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=first.env,
    )
    assert keys.returncode == 2 and "runstream server" in keys.stderr and "Traceback" not in keys.stderr
    first.stop()


def test_the_demo_shows_its_runs_alert_and_crashed_run(server_factory, tmp_path):
    server = server_factory(RUNSTREAM_CRASH_TIMEOUT="3").start()
    env = {**os.environ, "RUNSTREAM_URL": server.url, "RUNSTREAM_CONFIG": str(tmp_path / "none.toml")}
    demo = subprocess.run(
        [RUNSTREAM, "demo", "--quiet"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = orjson.loads(demo.stdout.splitlines()[-1])
    assert summary["runs"] == 24
    assert "runstream agent:" not in demo.stderr  # the progress bar says as much
    team, project, sweep_id = summary["sweep"].split("/")
    assert (team, project) == ("default", "demo")
    assert summary["sweep_url"] == f"{server.url}/projects/default/demo/sweeps/{sweep_id}"

    api = runstream.Api(url=server.url, api_key="")
    deadline = time.monotonic() + 60
    while True:  # the killed run is marked crashed after 3 s of silence, at the next sweep
        runs = list(api.runs("default/demo", per_page=100))
        states = sorted(run.state for run in runs)
        if "crashed" in states or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(runs) == 24
    assert states.count("crashed") == 1 and states.count("failed") == 1 and states.count("finished") == 22
    by_name = {run.name: run for run in runs}
    diverged = by_name["sgd-lr0.003-bs32"]
    assert diverged.git["commit"] and diverged.git.get("dirty") is True
    assert [t["team"] for t in _get(f"{server.url}/api/v1/teams")["teams"]] == ["default"]  # made at start-up
    alerts = _get(f"{server.url}/api/v1/projects/default/demo/alerts?limit=100")["alerts"]
    kinds = {(a["run_id"], a["title"]) for a in alerts}
    assert any(run_id == diverged.id and "diverged" in title for run_id, title in kinds), alerts
    crashed = next(run for run in runs if run.state == "crashed")
    assert any(run_id == crashed.id for run_id, _ in kinds), alerts
    history = diverged.history(keys=["train/loss"], samples=50)
    assert history["train/loss"].max() > 10 * history["train/loss"].min()

    # The 24 runs are the grid sweep's, one per cell; every one ended (the crash too), so it is finished.
    sweep = _get(f"{server.url}/api/v1/projects/default/demo/sweeps/{sweep_id}")
    assert (sweep["method"], sweep["state"], sweep["run_count"]) == ("grid", "finished", 24)
    assert sweep["metric"] == {"name": "val/loss", "goal": "minimize"}
    assert sweep["counts"] == {"finished": 22, "failed": 1, "crashed": 1}
    assert by_name[sweep["best"]["name"]].state == "finished"
    cells = {(r.config["lr"], r.config["batch_size"], r.config["optimizer"]) for r in runs}
    assert len(cells) == 24 and {r.name for r in runs} == {f"{o}-lr{lr:g}-bs{b}" for lr, b, o in cells}
    assert all(_get(f"{server.url}/api/v1/runs/default/demo/{r.id}")["sweep"] == sweep_id for r in runs)
    server.stop()
