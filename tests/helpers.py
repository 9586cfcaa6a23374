"""Builders of valid events for tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from runstream import events


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_event(type: str, data: dict[str, Any], seq: int = 0, run_id: str = "run1", **envelope: Any) -> dict[str, Any]:
    return {
        "v": events.SCHEMA_VERSION,
        "type": type,
        "team": envelope.get("team", "acme"),
        "project": envelope.get("project", "mnist"),
        "run_id": run_id,
        "seq": seq,
        "ts": envelope.get("ts", time.time()),
        "data": data,
    }


def metrics_event(seq: int = 0, run_id: str = "run1", steps: range = range(3), **envelope: Any) -> dict[str, Any]:
    now = time.time()
    data = {
        "step": list(steps),
        "time": [now + i for i in range(len(steps))],
        "values": {"loss": [1.0 / (s + 1) for s in steps], "acc": [s / 10 for s in steps]},
    }
    return make_event(events.METRICS, data, seq=seq, run_id=run_id, **envelope)
