"""What the HTTP API adds on top of storage, and how many runs-table requests per second it answers.

    .venv/bin/python -m bench.api [--runs 1000] [--steps 10000] [--meta-runs 10000] [--repeat 20]
                                  [--concurrency 16] [--duration 15] [--data-dir DIR]

Loads the storage benchmark's project (``bench.query``'s loader: 1,000 runs x 10
metrics x 10,000 steps and 10,000 runs of metadata by default, a few minutes on
two cores; ``--runs``/``--steps`` for a quick check). ``--data-dir`` keeps the
data, and a directory that already holds the project at this size (one left by
``bench.query --data-dir`` or by this benchmark) is reused without loading.

Then serves the real app (``create_app``, real uvicorn as ``runstream api``
runs it: h11, access log on) in a thread of
this process (chdb opens a directory from one process only) and drives it from
a client in a separate process, so the two never share a GIL. Requests carry a
real API key (``Authorization: Bearer``), so each one pays the key check an
actual caller pays (from memory, ``api/keyring.py``; the summary also times the
ClickHouse lookup every request made before); the engine is the embedded one, in
the server's process.

- compare chart: ``POST /api/v1/projects/{team}/{project}/series`` for every run
  x ``loss``, 500 points, timed end to end (request sent -> whole body read,
  rendering and transfer included), asking for the arrays the web UI's panels
  draw with 1,000 runs (x and y) and for every array, interleaved with the same storage call (``storage.series.series``)
  made directly in this process while the server idles; the overhead ratio is
  API p50 / raw p50 (target <= 1.2), for the UI's request (``api_overhead_ratio``)
  and every array (``api_overhead_ratio_all_fields``);
- runs table: ``GET /api/v1/projects/{team}/{project}/runs`` with bench.query's
  filter, order and page, one request at a time (p50 beside the raw query), then
  under load from ``--concurrency`` connections for ``--duration`` seconds
  (asyncio + aiohttp in the client process): requests/s, latency p50/p99 and
  answers other than 200 (there should be none).

The last line is JSON with ``api_overhead_ratio``, ``runs_table_rps`` and the other
figures. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.query import (
    CHART_METRIC,
    CHART_POINTS,
    METRIC_NAMES,
    PROJECT,
    RUNS_FILTER,
    RUNS_ORDER,
    RUNS_PAGE,
    TEAM,
    load,
    run_id,
)

API_TARGET = 1.2
USER = "bench-reader"
SERIES_PATH = f"/api/v1/projects/{TEAM}/{PROJECT}/series"
#: What the web UI's panels ask for with 1,000 runs (web/src/data.ts): x and y, no envelope.
UI_FIELDS = {"fields": ["x", "y"]}
RUNS_PATH = (
    f"/api/v1/projects/{TEAM}/{PROJECT}/runs?filters={quote(json.dumps(RUNS_FILTER))}"
    f"&order={quote(RUNS_ORDER)}&limit={RUNS_PAGE}"
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the client process ---------------------------------------------------------------------------


def client_process(conn: Connection, port: int, key: str) -> None:
    """Answers commands from the benchmark: one timed request at a time, or a load run."""
    import http.client

    import orjson

    headers = {"Authorization": f"Bearer {key}"}
    http_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while True:
        command = conn.recv()
        op = command[0]
        if op == "stop":
            conn.send(None)
            return
        if (
            op == "request"
        ):  # one request on a kept-alive connection: (status, ms to whole body, bytes, parse ms, items)
            _, method, path, body = command
            sent_headers = {**headers, **({"Content-Type": "application/json"} if body is not None else {})}
            start = time.perf_counter()
            http_conn.request(method, path, body=body, headers=sent_headers)
            response = http_conn.getresponse()
            data = response.read()
            elapsed = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            parse_ms = (time.perf_counter() - start) * 1000
            items = (
                len(parsed["series"] if "series" in parsed else parsed.get("runs", []))
                if isinstance(parsed, dict)
                else -1
            )
            detail = "" if response.status == 200 else data[:300].decode(errors="replace")
            conn.send((response.status, elapsed, len(data), parse_ms, items, detail))
        elif op == "load":
            _, path, concurrency, duration, warmup = command
            before = resource.getrusage(resource.RUSAGE_SELF)
            result = asyncio.run(load_run(f"http://127.0.0.1:{port}{path}", headers, concurrency, duration, warmup))
            after = resource.getrusage(resource.RUSAGE_SELF)
            result["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            conn.send(result)


async def load_run(
    url: str, headers: dict[str, str], concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` connections requesting ``url`` back to back; figures for those sent after the warm-up."""
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration
    last_done = measure_from
    answered = 0  # the warm-up's too: server CPU is measured over the whole run

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal last_done, answered
        while (start := time.perf_counter()) < stop_at:
            status = 0
            try:
                async with session.get(url) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                failures[type(exc).__name__] += 1
            done = time.perf_counter()
            answered += 1
            if start >= measure_from:
                latencies.append((done - start) * 1000)
                statuses[status] += 1
                last_done = max(last_done, done)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = last_done - measure_from
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": statistics.median(latencies) if latencies else math.nan,
        "p99_ms": percentile(latencies, 0.99) if latencies else math.nan,
        "statuses": dict(statuses),
        "errors": sum(n for s, n in statuses.items() if s != 200),
        "failures": dict(failures),
        "answered": answered,
    }


# -- the server, in this process ------------------------------------------------------------------


class NoSink:
    """The benchmark only reads: no pipeline (whose timer would sweep the generated runs) and no Kafka."""

    applied_on_send = True

    async def start(self) -> None:
        return None

    async def send(self, events: Any, encoded: Any = None) -> None:
        raise RuntimeError("the API benchmark does not ingest")

    async def reset(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Served:
    """The app under real uvicorn on a free loopback port, in a thread; its logs go to ``log_path``."""

    def __init__(self, app: Any, access_log: bool, log_path: Path) -> None:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        from infra.net import free_port

        log_config = copy.deepcopy(LOGGING_CONFIG)
        for handler in log_config["handlers"].values():  # same formatting and writes, into a file, not this terminal
            handler.pop("stream", None)
            handler.update({"class": "logging.FileHandler", "filename": str(log_path)})
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, access_log=access_log, log_config=log_config, log_level="info"
            )
        )

    def __enter__(self) -> Served:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start; see its log")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class ClientProcess:
    """The client process and its end of the pipe."""

    def __init__(self, port: int, key: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=client_process, args=(child, port, key), daemon=True)
        self.process.start()

    def ask(self, *command: Any) -> Any:
        try:
            self.conn.send(command)
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            raise RuntimeError(
                f"the client process ended (exit code {self.process.exitcode}); its error is printed above"
            ) from None

    def close(self) -> None:
        if self.process.is_alive():
            self.ask("stop")
        self.process.join(timeout=30)


# -- the benchmark --------------------------------------------------------------------------------


def loaded(client: Any, runs: int, steps: int, meta_runs: int) -> bool | None:
    """Whether the directory already holds the project at this size (None: it holds nothing)."""
    have_points = int(
        client.command(
            "SELECT count() FROM metric_points WHERE team = {t:String} AND project = {p:String}",
            parameters={"t": TEAM, "p": PROJECT},
        )
        or 0
    )
    have_runs = int(
        client.command(
            "SELECT count() FROM runs FINAL WHERE team = {t:String} AND project = {p:String}",
            parameters={"t": TEAM, "p": PROJECT},
        )
        or 0
    )
    if have_points == 0 and have_runs == 0:
        return None
    return have_points == runs * len(METRIC_NAMES) * steps and have_runs == meta_runs


def measure(
    args: argparse.Namespace, settings: Any, client: Any, key: str, ids: list[str], access_log: bool, log_path: Path
) -> dict[str, Any]:
    """One server configuration: the compare chart and runs table, sequentially and under load."""
    import orjson

    from runstream.api.app import create_app
    from runstream.api.backend import Backend
    from runstream.storage.runs import search_runs
    from runstream.storage.series import series

    backend = Backend(settings, client=client, sink=NoSink())
    chart_body = orjson.dumps({"run_ids": ids, "metrics": [CHART_METRIC], "points": CHART_POINTS})
    # The web UI's request: the arrays its lines draw (storage computes them all anyway).
    ui_body = orjson.dumps({"run_ids": ids, "metrics": [CHART_METRIC], "points": CHART_POINTS, **UI_FIELDS})
    label = "on" if access_log else "off"
    with Served(create_app(settings, backend=backend), access_log, log_path) as served:
        http = ClientProcess(served.port, key)
        try:

            def raw_chart() -> float:
                start = time.perf_counter()
                series(client, TEAM, PROJECT, ids, [CHART_METRIC], points=CHART_POINTS)
                return (time.perf_counter() - start) * 1000

            runs_raw_cpu: list[float] = []

            def raw_runs() -> float:
                cpu, start = time.process_time(), time.perf_counter()
                search_runs(client, TEAM, PROJECT, filters=RUNS_FILTER, order=RUNS_ORDER, limit=RUNS_PAGE)
                runs_raw_cpu.append((time.process_time() - cpu) * 1000)  # the engine's threads included
                return (time.perf_counter() - start) * 1000

            out: dict[str, Any] = {"errors": 0, "problems": []}

            def api(method: str, path: str, body: bytes | None, want: int) -> tuple[float, int, float]:
                status, ms, size, parse_ms, items, detail = http.ask("request", method, path, body)
                if status != 200 or items != want:
                    out["errors"] += 1
                    if len(out["problems"]) < 3:
                        out["problems"].append(f"{method} {path[:80]}: {status}, {items} items (want {want}) {detail}")
                return ms, size, parse_ms

            # Interleaved, one warm-up each: raw and API samples see the same caches and machine state.
            print(f"  access log {label}: compare chart x {args.repeat} (raw and API interleaved) ...", flush=True)
            raw_chart()
            api("POST", SERIES_PATH, chart_body, len(ids))
            api("POST", SERIES_PATH, ui_body, len(ids))
            chart_raw, chart_api, chart_parse, chart_bytes = [], [], [], 0
            ui_api, ui_parse, ui_bytes = [], [], 0
            for _ in range(args.repeat):
                chart_raw.append(raw_chart())
                ms, chart_bytes, parse_ms = api("POST", SERIES_PATH, chart_body, len(ids))
                chart_api.append(ms)
                chart_parse.append(parse_ms)
                ms, ui_bytes, parse_ms = api("POST", SERIES_PATH, ui_body, len(ids))
                ui_api.append(ms)
                ui_parse.append(parse_ms)
            print(f"  access log {label}: runs table x {args.repeat * 5} (raw and API interleaved) ...", flush=True)
            raw_runs()
            api("GET", RUNS_PATH, None, RUNS_PAGE)
            runs_raw, runs_api = [], []
            for _ in range(args.repeat * 5):
                runs_raw.append(raw_runs())
                runs_api.append(api("GET", RUNS_PATH, None, RUNS_PAGE)[0])
            print(
                f"  access log {label}: runs table under load, {args.concurrency} connections for "
                f"{args.duration:g} s ...",
                flush=True,
            )
            server_cpu = resource.getrusage(resource.RUSAGE_SELF)
            under_load = http.ask("load", RUNS_PATH, args.concurrency, args.duration, args.warmup)
            after = resource.getrusage(resource.RUSAGE_SELF)
            under_load["server_cpu_s"] = (after.ru_utime + after.ru_stime) - (server_cpu.ru_utime + server_cpu.ru_stime)
        finally:
            http.close()
    out["errors"] += under_load["errors"] + sum(under_load["failures"].values())
    out.update(
        {
            "chart_raw_p50": statistics.median(chart_raw),
            "chart_api_p50": statistics.median(chart_api),
            "chart_api_p95": percentile(chart_api, 0.95),
            "chart_parse_p50": statistics.median(chart_parse),
            "chart_bytes": chart_bytes,
            "ui_api_p50": statistics.median(ui_api),
            "ui_api_p95": percentile(ui_api, 0.95),
            "ui_parse_p50": statistics.median(ui_parse),
            "ui_bytes": ui_bytes,
            "runs_raw_p50": statistics.median(runs_raw),
            "runs_api_p50": statistics.median(runs_api),
            "runs_raw_cpu_p50": statistics.median(runs_raw_cpu),
            "load": under_load,
        }
    )
    return out


def rendering(client: Any, ids: list[str], repeat: int) -> tuple[float, int]:
    """p50 ms to render the storage result as the API's JSON response (in this process), and its size."""
    from runstream.api.responses import json_response
    from runstream.storage.series import series

    chart = series(client, TEAM, PROJECT, ids, [CHART_METRIC], points=CHART_POINTS)
    samples, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = len(json_response(chart).body)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), size


def key_lookup(client: Any, key: str, repeat: int) -> float:
    """p50 ms of a key's lookup in ClickHouse (``accounts.resolve_key``), in this process: what every keyed
    request paid before keys were checked from memory, and what a replica pays for a key id it does not hold."""
    from runstream.storage import accounts

    samples = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        accounts.resolve_key(client, key)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples[1:])


def key_check(settings: Any, client: Any, key: str, repeat: int) -> float:
    """p50 microseconds of the check every keyed request makes (``api.keyring``: the key's hash against
    the copy in memory, its member's role), on a copy loaded from this database."""
    from runstream.api.keyring import Keyring
    from runstream.storage import accounts

    class Loaded:  # what a Keyring reads of its backend here: the settings only (nothing is started)
        pass

    backend = Loaded()
    backend.settings = settings  # type: ignore[attr-defined]
    ring = Keyring(backend)
    for change in accounts.access_records(client):
        ring.apply(change)
    assert ring.held_owner(key) is not None, "the bench key is not held"
    samples = []
    for _ in range(max(1000, repeat * 50)):
        start = time.perf_counter()
        ring.held_owner(key)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs with metric history (all of them in the chart)")
    parser.add_argument("--steps", "--metric-steps", dest="steps", type=int, default=10_000, help="steps per run")
    parser.add_argument("--meta-runs", type=int, default=10_000, help="runs in the runs table")
    parser.add_argument("--repeat", type=int, default=20, help="compare-chart samples (runs table: 5x as many)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the load generator")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per server configuration")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--data-dir", type=Path, help="chdb directory, kept and reused (default: a temporary one)")
    args = parser.parse_args()

    from runstream.settings import Settings
    from runstream.storage import accounts
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate

    meta_runs = max(args.meta_runs, args.runs)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="runstream-bench-api-"))
    work_dir = Path(tempfile.mkdtemp(prefix="runstream-bench-api-server-"))
    dsn = f"chdb://{data_dir}?database=bench"
    client = connect(dsn)
    migrate(client)
    state = loaded(client, args.runs, args.steps, meta_runs)
    if state is None:
        load(client, args.runs, args.steps, meta_runs, data_dir)
    elif state:
        print(f"reusing the project already loaded in {data_dir}", flush=True)
    else:
        print(
            f"error: {data_dir} holds a {TEAM}/{PROJECT} project of another size; use another --data-dir",
            file=sys.stderr,
        )
        return 2

    accounts.ensure_team(client, TEAM)
    accounts.set_member(client, TEAM, USER, "member")
    _, key = accounts.create_key(client, TEAM, USER, "bench.api")
    settings = Settings(clickhouse_dsn=dsn, data_dir=str(work_dir))
    ids = [run_id(i) for i in range(args.runs)]
    render_ms, render_bytes = rendering(client, ids, max(3, args.repeat // 2))
    key_ms = key_lookup(client, key, args.repeat)
    key_us = key_check(settings, client, key, args.repeat)

    load_before = os.getloadavg()[0]
    r = measure(args, settings, client, key, ids, True, work_dir / "uvicorn-access.log")
    json_ratio = r["chart_api_p50"] / r["chart_raw_p50"]
    ui_ratio = r["ui_api_p50"] / r["chart_raw_p50"]
    load_run = r["load"]
    cores = len(os.sched_getaffinity(0))
    print(f"""
API benchmark ({args.runs:,} runs x {args.steps:,} steps, {meta_runs:,} runs of metadata; uvicorn (h11, access log on)
in this process, the client in another, {cores} cores, an API key on every request; 1-minute load average, this
benchmark included: {load_before:.1f} before measuring, {os.getloadavg()[0]:.1f} after)
  compare chart ({args.runs:,} runs x {CHART_METRIC}, {CHART_POINTS} points), raw storage call p50 {r["chart_raw_p50"]:.1f} ms:
    the web UI's request (x and y)        p50 {r["ui_api_p50"]:7.1f} ms (p95 {r["ui_api_p95"]:.1f})  ratio {ui_ratio:.2f}  (target <= {API_TARGET})  {r["ui_bytes"] / 1e6:.1f} MB, client parse {r["ui_parse_p50"]:.1f} ms
    every array                           p50 {r["chart_api_p50"]:7.1f} ms (p95 {r["chart_api_p95"]:.1f})  ratio {json_ratio:.2f}  {r["chart_bytes"] / 1e6:.1f} MB, client parse {r["chart_parse_p50"]:.1f} ms
  runs table (page of {RUNS_PAGE}), one at a time: raw p50 {r["runs_raw_p50"]:6.1f} ms   API p50 {r["runs_api_p50"]:6.1f} ms   ratio {r["runs_api_p50"] / r["runs_raw_p50"]:.2f}
  runs table under load ({args.concurrency} connections, {load_run["seconds"]:.1f} s): {load_run["rps"]:7.1f} requests/s   p50 {load_run["p50_ms"]:6.1f} ms   p99 {load_run["p99_ms"]:6.1f} ms
    answers: {load_run["statuses"]}, failed connections {load_run["failures"] or 0}; CPU s: server process {load_run["server_cpu_s"]:.1f}, load generator {load_run["client_cpu_s"]:.1f}
    server CPU per request {1000 * load_run["server_cpu_s"] / max(1, load_run["answered"]):.1f} ms (the raw query alone: {r["runs_raw_cpu_p50"]:.1f} ms)
  errors (non-200 or wrong item count): {r["errors"]}{"".join(chr(10) + "    " + p for p in r["problems"])}
  in-process parts of a request: rendering the chart's storage result as JSON p50 {render_ms:.1f} ms ({render_bytes / 1e6:.1f} MB); the API key check p50 {key_us:.1f} us
    (from memory, api/keyring.py; a key's lookup in ClickHouse, which every request made before, p50 {key_ms:.1f} ms)
  server logs: {work_dir}""")
    print(
        json.dumps(
            {
                "api_overhead_ratio": round(ui_ratio, 3),
                "runs_table_rps": round(load_run["rps"], 1),
                "api_overhead_ratio_all_fields": round(json_ratio, 3),
                "compare_raw_p50_ms": round(r["chart_raw_p50"], 2),
                "compare_api_p50_ms": round(r["ui_api_p50"], 2),
                "compare_all_fields_api_p50_ms": round(r["chart_api_p50"], 2),
                "compare_ui_json_bytes": r["ui_bytes"],
                "compare_json_bytes": r["chart_bytes"],
                "compare_render_p50_ms": round(render_ms, 2),
                "key_lookup_p50_ms": round(key_ms, 2),
                "key_check_p50_us": round(key_us, 2),
                "runs_table_api_p50_ms": round(r["runs_api_p50"], 2),
                "runs_table_raw_p50_ms": round(r["runs_raw_p50"], 2),
                "runs_table_p50_ms": round(load_run["p50_ms"], 2),
                "runs_table_p99_ms": round(load_run["p99_ms"], 2),
                "errors": r["errors"],
                "concurrency": args.concurrency,
                "runs": args.runs,
                "steps": args.steps,
                "meta_runs": meta_runs,
            }
        )
    )
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
