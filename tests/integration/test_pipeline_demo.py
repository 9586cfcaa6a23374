"""The README's first command: the demo runs the pipeline end to end and shows what landed."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_demo_logs_runs_through_the_sdk_and_shows_them_from_clickhouse(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infra.pipeline_demo", "--runs", "3", "--steps", "300", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "1,800/1,800 points in ClickHouse" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("run0")]
    assert sorted(line.split()[0] for line in table) == ["run00", "run01", "run02"]
    assert all(line.split()[3] == "300" for line in table)  # every step of every run landed
    assert "SDK -> Kafka -> Faust -> ClickHouse" in result.stdout
