"""A hyperband sweep in cluster mode (docs/sweeps.md): ``runstream api`` sending ingest to the real Kafka
broker, a ``runstream worker`` (the Faust app, whose processor runs hyperband) and a ClickHouse server that
both share, with ``runstream sweep`` and ``runstream agent`` as a user runs them. The embedded server's tests
(test_sweeps_e2e.py) cover the same logic through the in-process pipeline and chdb."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

import runstream
from infra.net import free_port
from runstream.public_api import ApiError
from runstream.storage.client import connect
from runstream.storage.writer import load_run_states
from tests.helpers import RUNSTREAM, script_env, unique, wait_for

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ROOT = Path(__file__).resolve().parents[2]
TEAM = "acme"
#: Enough for any one wait on a loaded machine; the test ends as soon as what it waits for holds.
PATIENCE = 120


def _run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(RUNSTREAM), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, f"runstream {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


class Cluster:
    """The API and worker processes, their logs, and the key of team ``acme``."""

    def __init__(self, env: dict[str, str], url: str, key: str, logs: Path) -> None:
        self.env, self.url, self.key, self.logs = env, url, key, logs
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("w")
        self.processes.append(
            subprocess.Popen([str(RUNSTREAM), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        )

    def alive(self) -> bool:
        """True while the API and the worker run; fails with their logs once one has exited."""
        for process, name in zip(self.processes, ("api", "worker"), strict=False):
            if process.poll() is not None:
                raise AssertionError(f"the {name} exited: {(self.logs / f'{name}.log').read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def cluster(kafka_bootstrap, clickhouse_server, tmp_path: Path) -> Iterator[Cluster]:
    dsn = f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/{unique('db').replace('-', '_')}"
    port = free_port()
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA": kafka_bootstrap,
        "RUNSTREAM_CLICKHOUSE_DSN": dsn,
        "RUNSTREAM_APP_ID": unique("sweeps"),
        "RUNSTREAM_DATA_DIR": str(tmp_path / "server"),
        "RUNSTREAM_CONFIG": str(tmp_path / "none.toml"),
        "RUNSTREAM_PORT": str(port),
        "RUNSTREAM_CRASH_TIMEOUT": "5",
    }
    _run(env, "migrate")
    _run(env, "topics", "create")
    created = _run(env, "keys", "create", "--team", TEAM, "--user", "ci")
    key = next(word for word in created.stdout.split() if word.startswith("rs_"))
    cluster = Cluster(env, f"http://127.0.0.1:{port}", key, tmp_path)
    cluster.start("api", "api")
    cluster.start("worker", "worker", "--loglevel", "warn")
    try:
        client = runstream.Api(url=cluster.url, api_key=key)
        wait_for(lambda: cluster.alive() and _healthy(client), "the API to answer", PATIENCE)
        yield cluster
    finally:
        cluster.stop()


def _healthy(client: runstream.Api) -> bool:
    try:
        client.projects()
    except ApiError:  # unreachable (status 0) while it starts
        return False
    return True


def test_hyperband_stops_the_bad_runs_in_cluster_mode(cluster: Cluster, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SCRIPTS / "sweep_train.py", work / "sweep_train.py")
    env = {
        **script_env(cluster.url, work),
        "RUNSTREAM_API_KEY": cluster.key,
        "RUNSTREAM_AGENT_HEARTBEAT_S": "0.3",
    }
    project = unique("hyperband")
    config = {
        "program": "sweep_train.py",
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        # The two good runs come first (grid order); a bad one (loss0 1.0) trains 20 times longer.
        "parameters": {
            "loss0": {"values": [0.1, 1.0]},
            "seed": {"values": [1, 2]},
            "steps": {"value": 8},
            "pause": {"value": 0.1},
        },
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(config))
    created = _run(env, "sweep", "sweep.yaml", "--entity", TEAM, "--project", project, cwd=work)
    command = next(line.strip() for line in created.stdout.splitlines() if line.strip().startswith("runstream agent "))
    path = command.split()[-1]
    sweep_id = path.rsplit("/", 1)[1]
    assert path == f"{TEAM}/{project}/{sweep_id}"

    agent = subprocess.run(
        [str(RUNSTREAM), "agent", path], cwd=work, env=env, capture_output=True, text=True, timeout=PATIENCE * 2
    )
    assert agent.returncode == 0, f"the agent exited with {agent.returncode}:\n{agent.stdout}\n{agent.stderr}"
    assert cluster.alive()

    client = runstream.Api(url=cluster.url, api_key=cluster.key)
    runs: list = []

    def settled() -> bool:  # the worker folds the runs' ends asynchronously
        runs[:] = client.runs(f"{TEAM}/{project}")
        return cluster.alive() and len(runs) == 4 and all(r.state not in ("running", "pending", None) for r in runs)

    wait_for(settled, f"4 ended runs in {project}", PATIENCE)
    # Every grid cell ran exactly once; the bad ones were stopped, the good ones ran to their end.
    states = {(r.config["loss0"], r.config["seed"]): r.state for r in runs}
    assert states == {(0.1, 1): "finished", (0.1, 2): "finished", (1.0, 1): "stopped", (1.0, 2): "stopped"}
    stopped = {r.id for r in runs if r.state == "stopped"}
    for run in runs:
        logged = len(list(run.scan_history(keys=["loss"])))
        assert logged == 8 if run.id not in stopped else 2 <= logged < 160
        if run.id in stopped:
            assert f"stopping run {run.id}" in agent.stderr

    # Hyperband's alert, one per stopped run, through the worker's alerts agent into ClickHouse.
    alerts: list[dict] = []

    def alerted() -> bool:
        answer = client._request("GET", f"/projects/{TEAM}/{project}/alerts", what="alerts")
        alerts[:] = [a for a in answer["alerts"] if a.get("rule_id") == f"sweep:{sweep_id}"]
        return {a["run_id"] for a in alerts} == stopped

    wait_for(alerted, "the sweep's stop alerts", PATIENCE)
    assert len(alerts) == 2
    assert all(a["title"] == "stopped by sweep" and a["level"] == "INFO" and a["text"] for a in alerts)
    # The run's record keeps the stop's reason, which its end turned into "stopped by sweep: <why>".
    storage = connect(cluster.env["RUNSTREAM_CLICKHOUSE_DSN"])
    records = load_run_states(storage, [(TEAM, project, a["run_id"]) for a in alerts])
    for alert in alerts:
        record = orjson.loads(records[(TEAM, project, alert["run_id"])])["record"]
        assert record["stop"]["reason"] == alert["text"]

    sweep = client._request("GET", f"/projects/{TEAM}/{project}/sweeps/{sweep_id}", what="sweep")
    assert sweep["state"] == "finished"
