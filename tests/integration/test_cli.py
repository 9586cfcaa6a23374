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
    assert "applied 0001_metric_points" in first.stdout
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
