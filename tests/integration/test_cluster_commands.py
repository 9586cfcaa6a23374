"""Cluster mode as an operator runs it: ``migrate``, ``topics create``, ``api`` and ``worker`` processes against
the real Kafka broker and a ClickHouse server, with a training script logging through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

import runstream
from infra.net import free_port
from tests.helpers import training_script, unique

RUNSTREAM = Path(sys.executable).parent / "runstream"
ROOT = Path(__file__).resolve().parents[2]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the API exited: {log.read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=5) as response:
                if orjson.loads(response.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the API never became healthy: {log.read_text()}")


def test_api_and_worker_processes_carry_a_run_from_the_sdk_to_queries(kafka_bootstrap, clickhouse_server, tmp_path):
    dsn = f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/{unique('db').replace('-', '_')}"
    port = free_port()
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA": kafka_bootstrap,
        "RUNSTREAM_CLICKHOUSE_DSN": dsn,
        "RUNSTREAM_APP_ID": unique("group"),
        "RUNSTREAM_DATA_DIR": str(tmp_path / "server"),
        "RUNSTREAM_CONFIG": str(tmp_path / "none.toml"),
        "RUNSTREAM_PORT": str(port),
    }
    for command in (["migrate"], ["topics", "create"]):
        done = subprocess.run([RUNSTREAM, *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    created = subprocess.run(
        [RUNSTREAM, "keys", "create", "--team", "acme", "--user", "ci"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = next(word for word in created.stdout.split() if word.startswith("rs_"))

    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api = subprocess.Popen([RUNSTREAM, "api"], env=env, stdout=api_log.open("w"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen(
        [RUNSTREAM, "worker", "--loglevel", "warn"],
        env=env,
        stdout=worker_log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, api, api_log)
        project, steps = unique("p"), 500
        script = training_script(str(tmp_path / "runs"), url, project, "clustered", steps)
        script = script.replace("runstream.init(", "runstream.init(entity='acme', ")
        trained = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "RUNSTREAM_API_KEY": key},
        )
        assert trained.returncode == 0, trained.stderr
        assert orjson.loads(trained.stdout.splitlines()[-1])["unacked"] == 0

        client = runstream.Api(url=url, api_key=key)
        deadline = time.monotonic() + 90
        while True:  # the worker folds the run asynchronously
            try:
                run = client.run(f"acme/{project}/clustered")
                if run.state == "finished" and run.summary.get("loss") == 1.0 / steps:
                    break
            except runstream.public_api.ApiError:
                pass
            assert worker.poll() is None, f"the worker exited: {worker_log.read_text()}"
            assert time.monotonic() < deadline, f"the run never arrived; worker log: {worker_log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert [row["_step"] for row in run.scan_history(keys=["loss"])] == list(range(steps))
        # Without the key the private project does not exist.
        assert runstream.Api(url=url, api_key="").projects() == []
    finally:
        for process in (api, worker):
            process.terminate()
        for process in (api, worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
