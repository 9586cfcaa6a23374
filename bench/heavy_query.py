"""Whether one costly request can hold the embedded server (issue 16, section 4.1).

    .venv/bin/python -m bench.heavy_query [--runs 500] [--heavy 4] [--samples 10]

Serves the embedded app (API + in-process pipeline + chdb) with uvicorn on a
loopback port, ingests ``--runs`` runs with config and summary values, then:

- times the most costly filter the bounds allow (``storage.filters``: every
  distinct key, every condition) alone, on ``runs/groups``;
- times the issue's filter of 1,000 distinct ``config.*`` keys (now a 400);
- while ``--heavy`` clients send the maximal filter in a loop, times
  ``/api/v1/health``, a one-heartbeat ingest and a small query, ``--samples``
  each, and prints p50 and max.

The last line is JSON with the figures. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn

from infra.net import free_port
from runstream import events
from runstream.api.app import create_app
from runstream.settings import Settings
from runstream.storage import accounts
from runstream.storage.filters import MAX_CONDITIONS, MAX_MAP_KEYS

TEAM, PROJECT = "bench", "heavy"


def maximal_filter() -> dict[str, Any]:
    """As costly a filter as the bounds allow: every distinct key, about every condition, two branches."""
    half = MAX_MAP_KEYS // 2
    ops = ["$gt", "$ne", "$lt", "$exists"][: max((MAX_CONDITIONS - 4) // MAX_MAP_KEYS, 1)]

    def conditions(i: int) -> dict[str, Any]:
        return {op: (True if op == "$exists" else i) for op in ops}

    return {
        "$or": [
            {f"config.k{i}.value": conditions(i) for i in range(half)},
            {f"summary.s{i}": conditions(i) for i in range(half)},
        ]
    }


def _event(type_: str, run_id: str, seq: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "type": type_,
            "team": TEAM,
            "project": PROJECT,
            "run_id": run_id,
            "seq": seq,
            "ts": time.time(),
            "data": data,
        }
    )


class Http:
    """Just enough of an HTTP client (the standard library's): JSON in, (status, JSON body) out."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base, self.headers = base, headers

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        kind = "application/x-ndjson" if raw is not None else "application/json"
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={**self.headers, "Content-Type": kind}
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:
                return answer.status, orjson.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def _figures(samples: list[float]) -> dict[str, float]:
    return {"p50_s": round(statistics.median(samples), 4), "max_s": round(max(samples), 4)}


def _light(http: Http, samples: int, seq: int) -> dict[str, Any]:
    """Health, a one-heartbeat ingest and a small query, ``samples`` times each: their figures."""
    health, ingest, small = [], [], []
    healthy = True
    for n in range(samples):
        took, (status, _) = _timed(lambda: http.call("GET", "/api/v1/health"))
        health.append(took)
        healthy &= status == 200
        beat = _event(events.HEARTBEAT, "r0", seq + n, {})
        took, (status, answer) = _timed(functools.partial(http.call, "POST", "/api/v1/events", raw=beat))
        ingest.append(took)
        assert status == 200, answer
        took, (status, answer) = _timed(lambda: http.call("GET", f"/api/v1/projects/{TEAM}/{PROJECT}/runs/count"))
        small.append(took)
        assert status == 200, answer
        time.sleep(0.1)
    return {
        "health": _figures(health),
        "health_always_200": healthy,
        "ingest_one_heartbeat": _figures(ingest),
        "small_query_count": _figures(small),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--heavy", type=int, default=4, help="clients sending the maximal filter at once")
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="runstream-heavy-")
    settings = Settings(clickhouse_dsn=f"chdb://{data_dir}/clickhouse", data_dir=data_dir)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    client = app.state.backend.client
    accounts.ensure_team(client, TEAM)
    accounts.set_member(client, TEAM, "bench", "member")
    _, key = accounts.create_key(client, TEAM, "bench")
    headers = {"Authorization": f"Bearer {key}"}
    http = Http(base, headers)

    for first in range(0, args.runs, 250):
        lines = []
        for i in range(first, min(first + 250, args.runs)):
            config = {f"k{j}": {"value": j * i} if j % 2 else j * i for j in range(20)}
            lines.append(_event(events.RUN_START, f"r{i}", 1, {"name": f"r{i}", "config": config}))
            lines.append(_event(events.RUN_UPDATE, f"r{i}", 2, {"summary": {f"s{j}": i / (j + 1) for j in range(20)}}))
        status, answer = http.call("POST", "/api/v1/events", raw=b"\n".join(lines))
        assert status == 200, answer

    groups = f"/api/v1/projects/{TEAM}/{PROJECT}/runs/groups"
    heavy_body = {"by": ["state"], "filters": maximal_filter()}
    alone = [_timed(lambda: http.call("POST", groups, heavy_body))[0] for _ in range(3)]
    old_filter = {"by": ["state"], "filters": {f"config.k{i}": i for i in range(1000)}}
    old_s, old = _timed(lambda: http.call("POST", groups, old_filter))

    quiet = _light(http, args.samples, seq=3)
    stop = threading.Event()
    statuses: list[int] = []

    def heavy_forever() -> None:
        own = Http(base, headers)
        while not stop.is_set():
            statuses.append(own.call("POST", groups, heavy_body)[0])

    heavies = [threading.Thread(target=heavy_forever) for _ in range(args.heavy)]
    for t in heavies:
        t.start()
    time.sleep(1.0)
    busy = _light(http, args.samples, seq=3 + args.samples)
    stop.set()
    for t in heavies:
        t.join()
    server.should_exit = True
    thread.join(timeout=30)

    figures = {
        "runs": args.runs,
        "heavy_clients": args.heavy,
        "maximal_filter_alone": _figures(alone),
        "filter_1000_keys": {"status": old[0], "s": round(old_s, 4), "details": old[1]["error"]["details"]},
        "quiet": quiet,
        "during_heavy": busy | {"heavy_queries_answered": len(statuses), "heavy_statuses": sorted(set(statuses))},
    }
    print(f"maximal filter alone: p50 {figures['maximal_filter_alone']['p50_s']} s")
    print(f"1,000-key filter: {old[0]} in {old_s:.3f} s")
    for name in ("health", "ingest_one_heartbeat", "small_query_count"):
        f, q = busy[name], quiet[name]
        print(
            f"{name}: p50 {f['p50_s']} s, max {f['max_s']} s while {args.heavy} maximal filters run "
            f"(quiet: p50 {q['p50_s']} s, max {q['max_s']} s)"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
