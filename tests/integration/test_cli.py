"""The runstream command, run as a user runs it."""

import subprocess
import sys
from pathlib import Path

RUNSTREAM = Path(sys.executable).parent / "runstream"


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([RUNSTREAM, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def test_migrate_applies_then_reports_up_to_date(tmp_path):
    dsn = f"chdb://{tmp_path / 'db'}"
    first = run("migrate", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_metrics" in first.stdout
    second = run("migrate", RUNSTREAM_CLICKHOUSE_DSN=dsn)
    assert second.returncode == 0 and "none (the schema is up to date)" in second.stdout


def test_a_bad_dsn_is_a_clear_error(tmp_path):
    result = run("migrate", "--dsn", "postgres://localhost/x")
    assert result.returncode == 2
    assert "unsupported ClickHouse DSN" in result.stderr and "chdb:///path/to/dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_topics_create_against_the_broker(kafka_bootstrap):
    result = run("topics", "create", "--bootstrap", kafka_bootstrap)
    assert result.returncode == 0, result.stderr
    assert "runstream.metrics" in result.stdout and "exists" in result.stdout


def test_worker_without_kafka_says_what_to_set():
    result = run("worker", RUNSTREAM_KAFKA="")
    assert result.returncode == 2 and "RUNSTREAM_KAFKA" in result.stderr


def test_sync_sends_an_offline_run_once(kafka_bootstrap, tmp_path):
    import runstream

    training = runstream.init(
        project="cli-sync",
        mode="offline",
        dir=tmp_path,
        settings={"console": False, "system_metrics": False, "git": False},
    )
    training.log({"x": 1.0})
    training.finish()
    first = run("sync", str(tmp_path), "--url", f"kafka://{kafka_bootstrap}", "--quiet")
    assert first.returncode == 0, first.stderr
    assert "sent 0 events" not in first.stdout and "sent" in first.stdout
    second = run("sync", str(tmp_path), "--url", f"kafka://{kafka_bootstrap}", "--quiet")
    assert second.returncode == 0 and "sent 0 events" in second.stdout


def test_sync_of_an_empty_folder_says_so(tmp_path):
    result = run("sync", str(tmp_path))
    assert result.returncode == 1 and "no runs found" in result.stderr
