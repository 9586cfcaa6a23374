"""Whether a runaway script's ingest flood starves another team's dashboard, with and without quotas.

    .venv/bin/python -m bench.quotas [--window 3] [--rounds 5] [--flooders 2] [--threads 3] [--flood-quota 5000]
                                     [--burst-s 2] [--flood-steps 1000] [--ignore-retry-after] [--data-dir DIR]

Two embedded servers (``runstream server``, each its own process, on a fresh data
directory), one per mode, each with two teams made by ``runstream keys create``:
``flood`` and ``calm``. The calm team's project holds 20 runs x 2,000 steps of two
metrics. ``--rounds`` times, on one server and then on the other (the idle one costs
nothing; in turn, so that the machine's other load falls on both modes alike):

- quiet: the calm key asks for its chart (``POST /api/v1/projects/calm/p/series``,
  20 runs x ``loss``, 200 points), one request after another, for ``--window`` seconds;
- flood: the same, while ``--flooders`` processes of ``--threads`` threads each post
  metric batches (``--flood-steps`` x 10 metrics: 10,000 points a request by default)
  with the flood key as fast as the server takes them (from a second before the window
  to its end). On 429 a flooder waits ``Retry-After`` as the SDK does
  (``--ignore-retry-after``: it asks again at once, as a hostile client would).

Modes: ``quotas off`` (every ``RUNSTREAM_QUOTA_*`` 0) and ``quotas on`` (the defaults,
with ``RUNSTREAM_QUOTA_KEY_POINTS_PER_S`` and ``..._TEAM_POINTS_PER_S`` at
``--flood-quota`` and ``RUNSTREAM_QUOTA_BURST_S`` at ``--burst-s``: the defaults' 1M
points/s are far above what a 2-core embedded server ingests, so they would not bind
here, and a 10 s burst would outlast a phase).

Printed per mode: the calm chart's p50/p99 quiet and under flood, the ratios of the
p99s (target <= 2) and of the p50s, the flood's points accepted per second and its
429s, and CPU seconds of the server (quiet windows / flood windows) and of the
flooders. The last line is JSON. Nothing is asserted.
About 2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench.embedded import RUNSTREAM, EmbeddedServer, server_env

CALM_RUNS, CALM_STEPS = 20, 2000
FLOOD_METRICS = 10
RAMP_S = 1.0  # from starting the flooders to measuring under their flood


# -- the server ----------------------------------------------------------------------------------


def create_key(data_dir: Path, team: str, user: str) -> str:
    """``runstream keys create`` on the (stopped) server's database: the key it prints."""
    out = subprocess.run(
        [RUNSTREAM, "keys", "create", "--team", team, "--user", user],
        env=server_env(data_dir),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.strip() for line in out.splitlines() if line.strip().startswith("rs_"))


# -- requests ------------------------------------------------------------------------------------


def _metrics(team: str, project: str, run_id: str, seq: int, first_step: int, steps: int, metrics: int) -> dict:
    now = time.time()
    names = ["loss", "acc", *(f"m{m}" for m in range(2, metrics))][:metrics]
    return {
        "v": 1,
        "type": "metrics",
        "team": team,
        "project": project,
        "run_id": run_id,
        "seq": seq,
        "ts": now,
        "data": {
            "step": list(range(first_step, first_step + steps)),
            "time": [now] * steps,
            "values": {name: [1.0 / (s + 1 + m) for s in range(steps)] for m, name in enumerate(names)},
        },
    }


def _start(team: str, project: str, run_id: str) -> dict:
    data = {"name": run_id, "config": {}}
    return {
        "v": 1,
        "type": "run_start",
        "team": team,
        "project": project,
        "run_id": run_id,
        "seq": 0,
        "ts": 0,
        "data": data,
    }


class Client:
    """One keep-alive connection with a key."""

    def __init__(self, url: str, key: str) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.key = key
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": content_type}
        for attempt in range(2):
            try:
                self.connection.request("POST", path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def ingest(client: Client, events: list[dict]) -> tuple[int, dict[str, str]]:
    status, headers, _ = client.post("/api/v1/events", b"\n".join(map(orjson.dumps, events)), "application/x-ndjson")
    return status, headers


def seed(url: str, key: str) -> None:
    """The calm team's project: CALM_RUNS runs x CALM_STEPS steps of loss and acc."""
    client = Client(url, key)
    for r in range(CALM_RUNS):
        run_id = f"r{r}"
        batch = [_start("calm", "p", run_id)]
        batch += [_metrics("calm", "p", run_id, 1 + i, i * 500, 500, 2) for i in range(CALM_STEPS // 500)]
        status, _ = ingest(client, batch)
        assert status == 200, status


CHART = orjson.dumps({"metrics": ["loss"], "run_ids": [f"r{r}" for r in range(CALM_RUNS)], "points": 200})


def chart_latencies(url: str, key: str, seconds: float) -> tuple[list[float], int]:
    """Seconds per calm chart request, one after another for ``seconds``; and how many were not 200."""
    client = Client(url, key)
    latencies, failed = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, _, body = client.post("/api/v1/projects/calm/p/series", CHART, "application/json")
        latencies.append(time.perf_counter() - started)
        if status != 200 or not orjson.loads(body)["series"]:
            failed += 1
    return latencies, failed


# -- the flood (its own processes) ------------------------------------------------------------------


def flood(
    url: str, key: str, seconds: float, threads: int, steps: int, name: str, honour_retry_after: bool
) -> dict[str, Any]:
    counts = {"requests": 0, "accepted_points": 0, "refused": 0, "other": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one(n: int) -> None:
        client = Client(url, key)
        run_id = f"{name}-{n}"
        ingest(client, [_start("flood", "f", run_id)])
        seq, step = 1, 0
        while time.monotonic() < deadline:
            batch = [_metrics("flood", "f", run_id, seq, step, steps, FLOOD_METRICS)]
            status, headers = ingest(client, batch)
            with lock:
                counts["requests"] += 1
                if status == 200:
                    counts["accepted_points"] += steps * FLOOD_METRICS
                elif status == 429:
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
                    counts["last_other"] = status
            if status == 200:
                seq, step = seq + 1, step + steps
            elif status == 429 and honour_retry_after:
                time.sleep(min(float(headers.get("retry-after", "1")), max(0.0, deadline - time.monotonic())))

    workers = [threading.Thread(target=one, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {**counts, "cpu_s": time.process_time()}


def start_flooders(args: argparse.Namespace, url: str, key: str, name: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.quotas",
                "--flooder",
                url,
                key,
                str(args.window + RAMP_S),
                str(args.threads),
                str(args.flood_steps),
                f"{name}-{n}",
                "0" if args.ignore_retry_after else "1",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(args.flooders)
    ]


# -- the measurement --------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Mode:
    """One server and what was measured on it."""

    def __init__(self, name: str, data_dir: Path, quotas: dict[str, str]) -> None:
        self.name = name
        data_dir.mkdir(parents=True, exist_ok=True)
        self.keys = {team: create_key(data_dir, team, f"{team}-user") for team in ("flood", "calm")}
        seeding = EmbeddedServer(data_dir)  # the default quotas: the seed is 80,000 points at once
        try:
            seed(seeding.url, self.keys["calm"])
        finally:
            seeding.stop()
        self.server = EmbeddedServer(data_dir, quotas)
        try:
            chart_latencies(self.server.url, self.keys["calm"], 2)  # warm-up
        except BaseException:
            self.server.stop()
            raise
        self.quiet: list[float] = []
        self.loud: list[float] = []
        self.failed, self.cpu_quiet, self.cpu_flood = 0, 0.0, 0.0
        self.flood_stats: list[dict[str, Any]] = []

    def quiet_window(self, args: argparse.Namespace) -> None:
        cpu = self.server.cpu_s()
        latencies, failures = chart_latencies(self.server.url, self.keys["calm"], args.window)
        self.quiet += latencies
        self.failed += failures
        self.cpu_quiet += self.server.cpu_s() - cpu

    def flood_window(self, args: argparse.Namespace, round_: int) -> None:
        cpu = self.server.cpu_s()
        name = f"{self.name.replace(' ', '-')}-{round_}"  # new runs each window: a resent (run, seq) is a no-op
        flooders = start_flooders(args, self.server.url, self.keys["flood"], name)
        time.sleep(RAMP_S)  # the flood is up
        latencies, failures = chart_latencies(self.server.url, self.keys["calm"], args.window)
        self.loud += latencies
        self.failed += failures
        self.flood_stats += [json.loads(f.communicate()[0].strip().splitlines()[-1]) for f in flooders]
        self.cpu_flood += self.server.cpu_s() - cpu

    def result(self, args: argparse.Namespace) -> dict[str, Any]:
        fields = ("requests", "accepted_points", "refused", "other", "cpu_s")
        total = {k: sum(s.get(k, 0) for s in self.flood_stats) for k in fields}
        if total["other"]:
            example = next(s["last_other"] for s in self.flood_stats if "last_other" in s)
            print(f"{self.name}: {total['other']} flood requests failed, e.g. HTTP {example}")
        flood_seconds = args.rounds * (args.window + RAMP_S)
        result = {
            "mode": self.name,
            "quiet_p50_ms": _ms(self.quiet, 0.5),
            "quiet_p99_ms": _ms(self.quiet, 0.99),
            "flood_p50_ms": _ms(self.loud, 0.5),
            "flood_p99_ms": _ms(self.loud, 0.99),
            "charts_quiet": len(self.quiet),
            "charts_flood": len(self.loud),
            "chart_failures": self.failed,
            "flood_points_per_s": round(total["accepted_points"] / flood_seconds),
            "flood_requests": total["requests"],
            "flood_429": total["refused"],
            "flood_other_errors": total["other"],
            "server_cpu_s_quiet": round(self.cpu_quiet, 2),
            "server_cpu_s_flood": round(self.cpu_flood, 2),
            "flooders_cpu_s": round(total["cpu_s"], 2),
        }
        result["p99_ratio"] = round(result["flood_p99_ms"] / result["quiet_p99_ms"], 2)
        result["p50_ratio"] = round(result["flood_p50_ms"] / result["quiet_p50_ms"], 2)
        return result


def measure(args: argparse.Namespace, data_dir: Path, settings: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Both servers up at once (the idle one costs nothing), their windows in turn: quiet then flood on
    one, then on the other, ``--rounds`` times, so changes in the machine's other load fall on both."""
    modes: list[Mode] = []
    try:
        for name, quotas in settings.items():
            modes.append(Mode(name, data_dir / name.replace(" ", "-"), quotas))
        for round_ in range(args.rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                mode.quiet_window(args)
                mode.flood_window(args, round_)
    finally:
        for mode in modes:
            mode.server.stop()
    return [mode.result(args) for mode in modes]


QUOTA_SETTINGS = (
    "KEY_POINTS_PER_S",
    "TEAM_POINTS_PER_S",
    "KEY_BYTES_PER_S",
    "TEAM_BYTES_PER_S",
    "KEY_QUERIES_PER_S",
    "TEAM_QUERIES_PER_S",
    "ANONYMOUS_QUERIES_PER_S",
    "KEY_STREAMS",
    "TEAM_STREAMS",
    "ANONYMOUS_STREAMS",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=3, help="seconds of each quiet and each flood window")
    parser.add_argument("--rounds", type=int, default=5, help="quiet and flood windows of each mode")
    parser.add_argument("--flooders", type=int, default=2, help="flooding processes")
    parser.add_argument("--threads", type=int, default=3, help="connections per flooding process")
    parser.add_argument("--flood-quota", type=int, default=5000, help="points/s of the flood key and team, quotas on")
    parser.add_argument("--burst-s", type=int, default=2, help="RUNSTREAM_QUOTA_BURST_S, quotas on")
    parser.add_argument("--ignore-retry-after", action="store_true", help="flooders ask again at once after a 429")
    parser.add_argument("--data-dir", type=Path, help="the servers' data go here (default: a temporary directory)")
    parser.add_argument("--flood-steps", type=int, default=1000, help="steps of 10 metrics per flood request")
    parser.add_argument("--flooder", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flooder:
        url, key, seconds, threads, steps, name, honour = args.flooder
        print(json.dumps(flood(url, key, float(seconds), int(threads), int(steps), name, honour == "1")), flush=True)
        return
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-quotas-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        off = {f"RUNSTREAM_QUOTA_{name}": "0" for name in QUOTA_SETTINGS}
        on = {f"RUNSTREAM_QUOTA_{name}": str(args.flood_quota) for name in ("KEY_POINTS_PER_S", "TEAM_POINTS_PER_S")}
        on["RUNSTREAM_QUOTA_BURST_S"] = str(args.burst_s)
        results = measure(args, data_dir, {"quotas off": off, "quotas on": on})
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    how = "asks again at once" if args.ignore_retry_after else "waits Retry-After"
    print(
        f"calm team's chart (20 runs x loss, 200 points) while {args.flooders}x{args.threads} flood connections "
        f"post {args.flood_steps * FLOOD_METRICS:,}-point batches (on 429 the flood {how}); quotas on: "
        f"{args.flood_quota:,} points/s, burst {args.burst_s} s"
    )
    print(
        f"{'mode':<11} {'quiet p50':>9} {'p99':>7} {'flood p50':>9} {'p99':>7} {'p99 ratio':>9} {'p50 ratio':>9} "
        f"{'flood pts/s':>11} "
        f"{'429s':>6} {'srv CPU quiet/flood':>19} {'flooders CPU':>12}"
    )
    for r in results:
        print(
            f"{r['mode']:<11} {r['quiet_p50_ms']:>7.1f}ms {r['quiet_p99_ms']:>5.1f}ms {r['flood_p50_ms']:>7.1f}ms "
            f"{r['flood_p99_ms']:>5.1f}ms {r['p99_ratio']:>8.2f}x {r['p50_ratio']:>8.2f}x {r['flood_points_per_s']:>11,} "
            f"{r['flood_429']:>6} "
            f"{r['server_cpu_s_quiet']:>8.1f}s/{r['server_cpu_s_flood']:>5.1f}s {r['flooders_cpu_s']:>11.1f}s"
        )
    print(json.dumps({"results": results, "wall_s": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main()
