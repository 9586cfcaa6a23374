"""A training process for the chaos scenarios: runs that log through the SDK until told to finish.

    python -m bench.chaos.logger '{"url": ..., "dir": ..., "project": ..., "runs": ["r1", ...], ...}'

Every run of the process logs one row of ``metrics`` keys per step at ``rate`` steps/s (the
key ``s`` holds the step itself, so ordering can be checked in storage). It prints:

- ``READY {"init_s": ...}`` once every run has started;
- ``P <points> <ms> <cpu ms>`` about every 0.5 s: the points logged so far (all runs), the slowest
  ``log()`` call and the CPU time that call used (the rest it waited for a core or the GIL);
- ``RUN {...}`` per run after ``finish()``: points logged, points acknowledged (those not left in
  the spool after the acknowledged cursor), the ``FinishResult`` fields, its spool directory;
- ``DONE {...}``: the slowest ``log()`` call (ms) and how long ``finish()`` took (s).

It logs until a line ``finish`` (or end of input) arrives on stdin, or ``steps`` steps are done
(then it waits for ``finish``, unless ``finish_after_steps``). A process that is SIGKILLed prints
nothing more, like a crashed training job.

``clock_offset_s`` shifts this process's wall clock (``time.time``/``time_ns``, patched before
the SDK is imported): what a machine whose clock is off sends.
"""

from __future__ import annotations

import json
import sys
import time

_config = json.loads(sys.argv[1]) if len(sys.argv) > 1 and __name__ == "__main__" else {}
if _config.get("clock_offset_s"):
    _offset = float(_config["clock_offset_s"])
    _real_time, _real_time_ns = time.time, time.time_ns
    time.time = lambda: _real_time() + _offset  # a skewed clock, for the SDK
    time.time_ns = lambda: _real_time_ns() + int(_offset * 1e9)

import dataclasses  # noqa: E402 - after the clock is shifted
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def row(step: int, metrics: int) -> dict[str, float]:
    """One logged row: ``s`` is the step, the others follow from it."""
    out = {"s": float(step)}
    for k in range(1, metrics):
        out[f"m{k}"] = step * 0.001 + k
    return out


def spool_points(spool_dir: str | Path, acked_only_after: bool = True) -> tuple[int, int]:
    """(events, metric points) in a spool after its acknowledged cursor (from its start when not
    ``acked_only_after``): what was not acknowledged."""
    from runstream.spool import Cursor, Spool

    spool = Spool(spool_dir, writer=False)
    try:
        cursor = spool.acked_cursor() if acked_only_after else Cursor(min(spool.segments(), default=1), 0)
        records, _ = spool.read(cursor, max_bytes=1 << 30)
    finally:
        spool.close()
    return len(records), sum(event_points(raw) for _, raw in records)


def event_points(raw: bytes) -> int:
    """Metric points in one spooled event (0 for other events and for undecodable bytes)."""
    import orjson

    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    if event.get("type") != "metrics":
        return 0
    return sum(sum(v is not None for v in column) for column in event["data"]["values"].values())


def main(config: dict[str, Any]) -> None:
    import runstream

    settings = {
        "url": config["url"],
        "console": False,
        "system_metrics": False,
        "git": False,
        "finish_timeout": config.get("finish_timeout", 10.0),
        "flush_interval": config.get("flush_interval", 0.25),
        "heartbeat_interval": config.get("heartbeat_interval", 15.0),
    }
    began = time.monotonic()
    Path(config["dir"]).mkdir(parents=True, exist_ok=True)
    runs = [
        runstream.init(
            project=config["project"],
            id=run_id,
            dir=config["dir"],
            mode=config.get("mode", "online"),
            resume=config.get("resume"),
            reinit="create_new",
            settings=settings,
        )
        for run_id in config["runs"]
    ]
    print(f"READY {json.dumps({'init_s': round(time.monotonic() - began, 3)})}", flush=True)

    stop = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip() == "finish":
                break
        stop.set()

    threading.Thread(target=read_commands, daemon=True).start()
    rate, metrics = float(config.get("rate", 20.0)), int(config.get("metrics", 5))
    max_steps = config.get("steps")
    first = [run.step for run in runs]  # a resumed run continues after its last step
    slowest = slowest_cpu = points = 0.0
    step = 0
    start = last_report = time.monotonic()
    while not stop.is_set() and (max_steps is None or step < max_steps):
        late = time.monotonic() - (start + step / rate)
        if late < 0:
            stop.wait(-late)
        for run, offset in zip(runs, first):
            values = row(offset + step, metrics)
            t, cpu = time.perf_counter(), time.thread_time()
            run.log(values)
            took = time.perf_counter() - t
            if took > slowest:  # and the CPU it used: the rest is waiting (for a core, or the GIL)
                slowest, slowest_cpu = took, time.thread_time() - cpu
            points += len(values)
        step += 1
        if time.monotonic() - last_report >= 0.5:
            last_report = time.monotonic()
            print(f"P {int(points)} {slowest * 1000:.3f} {slowest_cpu * 1000:.3f}", flush=True)
    print(f"P {int(points)} {slowest * 1000:.3f} {slowest_cpu * 1000:.3f}", flush=True)
    if not config.get("finish_after_steps"):
        stop.wait()
    finish_began = time.monotonic()
    with ThreadPoolExecutor(max(1, len(runs))) as pool:  # together: N runs wait out one bound, not N
        results = list(pool.map(lambda run: run.finish(), runs))
    finish_s = time.monotonic() - finish_began
    for run, offset, result in zip(runs, first, results):
        fields = dataclasses.asdict(result) if dataclasses.is_dataclass(result) and not isinstance(result, type) else {}
        try:
            unacked_events, unacked_points = spool_points(result.spool_dir)
        except Exception as exc:  # noqa: BLE001 - a spool the disk-full scenario broke: reported as such
            unacked_events, unacked_points = -1, -1
            fields["spool_error"] = f"{type(exc).__name__}: {exc}"
        logged = step * metrics
        report = {
            "run_id": run.id,
            "first_step": offset,
            "steps": step,
            "points": logged,
            "acked_points": min(logged, max(0, logged - unacked_points)) if unacked_points >= 0 else None,
            "unacked_points": unacked_points,
            "unacked_events_in_spool": unacked_events,
            "run_dir": str(Path(result.spool_dir).parent),
            "result": {k: v for k, v in fields.items() if isinstance(v, int | float | str | bool | None)},
        }
        print("RUN " + json.dumps(report), flush=True)
    done = {
        "log_max_ms": round(slowest * 1000, 3),
        "log_max_cpu_ms": round(slowest_cpu * 1000, 3),
        "finish_s": round(finish_s, 3),
        "logged": int(points),
    }
    print("DONE " + json.dumps(done), flush=True)


if __name__ == "__main__":
    main(_config)
