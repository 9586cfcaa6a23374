"""A wandb-style script runs unchanged with ``import runstream as wandb``."""

import subprocess
import sys
from pathlib import Path

from runstream import events
from tests.helpers import metric_points, spooled_events

SCRIPT = Path(__file__).parents[1] / "scripts" / "wandb_example.py"


def test_wandb_style_script_runs_unchanged(tmp_path):
    env = {"RUNSTREAM_MODE": "offline", "RUNSTREAM_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runstream-runs").glob("run-*"))
    evs = spooled_events(run_dir)
    by_type = {}
    for event in evs:
        by_type.setdefault(event.type, []).append(event)

    start = by_type[events.RUN_START][0].data
    assert (
        start["config"]["learning_rate"] == 0.01 and start["tags"] == ["example"] and start["notes"] == "runs unchanged"
    )
    points = metric_points(evs)
    assert len([p for p in points if p[1] == "train/loss"]) == 100
    assert {p[2] for p in points if p[1] == "epoch"} == {0.0, 1.0, 2.0, 3.0, 4.0}
    media = {e.data["meta"]["key"]: e.data for e in by_type[events.FILE] if e.data["kind"] == "media"}
    assert set(media) == {"examples", "weights", "predictions"}
    assert all((run_dir / "files" / m["path"]).exists() for m in media.values())
    assert by_type[events.ALERT][0].data["title"] == "Training done"
    assert (
        len([e for e in by_type[events.FILE] if e.data.get("meta", {}).get("key") == "examples"]) == 5 * 4
    )  # galleries
    # The summary's wandb shape, in the script's own view; only the value the user set travels (the
    # server computes the rest from every point).
    best_loss = min(p[2] for p in points if p[1] == "train/loss")
    assert f"summary {{'max': 0.9}} {{'min': {best_loss!r}}}" in result.stdout
    sent = {k: v for e in by_type[events.RUN_UPDATE] for k, v in e.data.get("summary", {}).items()}
    assert sent == {"best_val_acc": 0.9}
    assert by_type[events.RUN_FINISH][0].data["state"] == "finished"
