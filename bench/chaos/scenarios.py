"""The chaos scenarios: each logs real runs through the SDK, injects one fault, heals it, and counts.

Every scenario takes a working directory and its windows (the defaults are the issue's; ``--quick``
and the tests pass shorter ones) and returns a ``harness.Result``. Services are stopped in
``finally``: nothing outlives a scenario.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.chaos.harness import (
    FINISH_GRACE_S,
    REPO,
    TEAM,
    ClickHouse,
    EmbeddedServer,
    Result,
    Trainer,
    apply_runs,
    chdb_counts,
    connect,
    counts,
    duplicated,
    fill,
    run_states,
    runstream_sync,
    settle,
    tmpfs,
)
from bench.chaos.logger import event_points
from bench.fleet import spawn, stop
from infra.tcp_proxy import TcpProxy

DAY = 86_400.0


@contextlib.contextmanager
def embedded_on_clickhouse(work: Path, crash_timeout: int = 90) -> Iterator[tuple[ClickHouse, EmbeddedServer]]:
    """A ClickHouse server and ``runstream server``'s pipeline writing to it (no Kafka): storage the
    scenario can count (and break) from outside while the server runs."""
    ch = ClickHouse(work / "clickhouse").start()
    server = EmbeddedServer(work / "server", work / "server.log", dsn=ch.dsn, crash_timeout=crash_timeout)
    try:
        server.start()
        yield ch, server
    finally:
        server.stop()
        ch.stop()


def _trainer(work: Path, name: str, url: str, project: str, runs: list[str], **config: Any) -> Trainer:
    config = {"url": url, "dir": str(work / name), "project": project, "runs": runs} | config
    return Trainer(config, work / f"{name}.log")


def _wait_stored(client: Any, project: str, want: int, timeout: float) -> float | None:
    """Seconds until ``project`` has ``want`` points stored (None: not within ``timeout``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if counts(client, project)["stored"] >= want:
                return time.monotonic() - began
        except Exception:  # noqa: BLE001 - storage still coming back
            pass
        time.sleep(0.25)
    return None


def _conclude(result: Result, c: dict[str, int], want: int) -> Result:
    result.stored = c["stored"]
    result.lost = max(0, want - c["stored"])
    result.duplicated = duplicated(c)
    result.extra.update(raw_rows=c["raw"], summarised=c["summarised"], bucketed=c["bucketed"])
    if c.get("misordered"):
        result.note(f"{c['misordered']} points of 's' stored at another step than logged")
    return result


def _post(url: str, body: bytes) -> int:
    """POST an NDJSON batch to the ingest endpoint; the status (0: no answer)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request("POST", "/api/v1/events", body=body, headers={"Content-Type": "application/x-ndjson"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def _probe_event(project: str, seq: int) -> bytes:
    from runstream import events

    event = {
        "v": events.SCHEMA_VERSION,
        "type": "metrics",
        "team": TEAM,
        "project": project,
        "run_id": "probe",
        "seq": seq,
        "ts": time.time(),
        "data": {"step": [seq], "time": [time.time()], "values": {"s": [float(seq)]}},
    }
    return json.dumps(event).encode() + b"\n"


class Prober:
    """Posts one single-point batch a second to an ingest endpoint and remembers each answer, so a 200
    for a batch the server did not store shows up as a probe point missing from storage."""

    def __init__(self, url: str, project: str) -> None:
        self.url, self.project = url, project
        self.answers: list[tuple[float, int]] = []
        self.seq = 0

    def probe(self) -> int:
        self.seq += 1
        status = _post(self.url, _probe_event(self.project, self.seq))
        self.answers.append((time.monotonic(), status))
        return status

    def sleep(self, seconds: float) -> None:
        """Probe about every second for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            self.probe()
            time.sleep(max(0.0, min(1.0 - (time.monotonic() - began), end - time.monotonic())))

    def acked(self) -> int:
        return sum(status == 200 for _, status in self.answers)

    def statuses(self, since: float, until: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, status in self.answers:
            if since <= t <= until:
                out[str(status)] = out.get(str(status), 0) + 1
        return out


# -- 1. ClickHouse unavailable -------------------------------------------------------------------------


def clickhouse_embedded(work: Path, outage_s: float = 30, rate: float = 20, metrics: int = 5) -> Result:
    """The embedded server's pipeline writing to a ClickHouse server that is SIGKILLed for ``outage_s``
    and started again on the same port and data."""
    result = Result("clickhouse-down-embedded")
    project = "chaos-ch-embedded"
    finish_timeout = 10.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    with embedded_on_clickhouse(work) as (ch, server):
        client = connect(ch.dsn)
        prober = Prober(server.url, project + "-probe")
        trainer = _trainer(work, "trainer", server.url, project, ["r1", "r2"], rate=rate, metrics=metrics,
                           finish_timeout=finish_timeout)  # fmt: skip
        try:
            trainer.wait_ready()
            prober.sleep(3)
            ch.kill()
            down = time.monotonic()
            prober.sleep(outage_s)
            logged = trainer.logged()
            ch.start()
            healed = time.monotonic()
            result.extra["ingest_answers_while_down"] = prober.statuses(down, healed)
            result.recover_s = _wait_stored(client, project, logged, timeout=120)
            prober.sleep(2)
            runs, done = trainer.finish()
            apply_runs(result, runs, done)
        finally:
            trainer.close()
        c, _ = settle(client, project, result.sent, timeout=120)
        _conclude(result, c, result.sent)
        probes = counts(client, project + "-probe")["stored"]
        result.extra["probe_200s_not_stored"] = max(0, prober.acked() - probes)
        result.extra["server_alive"] = server.alive()
    ok_while_down = result.extra["ingest_answers_while_down"].get("200", 0)
    if ok_while_down:
        result.note(f"ingest answered 200 {ok_while_down} times while ClickHouse was down")
    result.lost += result.extra["probe_200s_not_stored"]
    result.recovered = result.recover_s is not None and result.extra["server_alive"]
    return result


@contextlib.contextmanager
def cluster(work: Path, crash_timeout: int = 90) -> Iterator[tuple[str, ClickHouse, subprocess.Popen]]:
    """Cluster mode: a Kafka broker with the pipeline's topics, a ClickHouse server, one Faust worker
    (``tests/scripts/worker.py``: the real app, sweeping every second). Yields the bootstrap address."""
    from infra.kafka_broker import KafkaBroker
    from runstream.storage.migrations import migrate
    from runstream.streams.topics import create_topics_sync

    broker = KafkaBroker(data_dir=work / "kafka")
    ch = ClickHouse(work / "clickhouse")
    worker = None
    try:
        broker.start()
        create_topics_sync(broker.bootstrap)
        ch.start()
        migrate(connect(ch.dsn))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        env |= {"RUNSTREAM_KAFKA": broker.bootstrap, "RUNSTREAM_CLICKHOUSE_DSN": ch.dsn, "RUNSTREAM_APP_ID": "chaos"}
        env |= {"RUNSTREAM_DATA_DIR": str(work / "worker"), "RUNSTREAM_CRASH_TIMEOUT": str(crash_timeout)}
        env |= {"PYTHONPATH": str(REPO)}
        worker_py = str(REPO / "tests" / "scripts" / "worker.py")
        worker = spawn([sys.executable, worker_py], env, work / "worker.log", stdout=subprocess.DEVNULL)
        yield broker.bootstrap, ch, worker
    finally:
        if worker is not None:
            stop([worker], timeout=20)
        ch.stop()
        broker.cleanup()


def clickhouse_cluster(work: Path, outage_s: float = 30, rate: float = 20, metrics: int = 5) -> Result:
    """Cluster mode: SDK → Kafka → a Faust worker → a ClickHouse server that is SIGKILLed for
    ``outage_s`` and started again; the worker must carry on by itself."""
    result = Result("clickhouse-down-cluster")
    project = "chaos-ch-cluster"
    finish_timeout = 10.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    with cluster(work) as (bootstrap, ch, worker):
        client = connect(ch.dsn)
        trainer = _trainer(work, "trainer", f"kafka://{bootstrap}", project, ["r1", "r2"], rate=rate,
                           metrics=metrics, finish_timeout=finish_timeout)  # fmt: skip
        try:
            trainer.wait_ready()
            if _wait_stored(client, project, 1, timeout=120) is None:
                raise RuntimeError(f"the worker stored nothing: see {work / 'worker.log'}")
            time.sleep(2)
            ch.kill()
            time.sleep(outage_s)
            logged = trainer.logged()
            ch.start()
            result.recover_s = _wait_stored(client, project, logged, timeout=180)
            time.sleep(2)
            runs, done = trainer.finish()
            apply_runs(result, runs, done)
        finally:
            trainer.close()
        c, _ = settle(client, project, result.sent, timeout=180)
        _conclude(result, c, result.sent)
        result.extra["worker_alive"] = worker.poll() is None
    result.recovered = result.recover_s is not None and result.extra["worker_alive"]
    if not result.extra["worker_alive"]:
        result.note(f"the worker exited ({worker.returncode}): see {work / 'worker.log'}")
    return result


# -- 2. network stall and reset -------------------------------------------------------------------------


def network(work: Path, stall_s: float = 20, reset_s: float = 3, rate: float = 20, metrics: int = 5) -> Result:
    """SDK → TCP proxy → embedded server. The proxy black-holes for ``stall_s`` (connections held, nothing
    flows), heals, then resets every connection and refuses new ones (RST) for ``reset_s``. A second
    run calls ``finish()`` in the middle of a stall: it returns within its bound, and ``runstream sync``
    sends what it left once the network is back."""
    result = Result("network-stall-reset")
    project = "chaos-network"
    finish_timeout = 5.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    with embedded_on_clickhouse(work) as (ch, server), TcpProxy(server.port) as proxy:
        client = connect(ch.dsn)
        trainer = _trainer(work, "trainer", proxy.url, project, ["r1", "r2"], rate=rate, metrics=metrics,
                           finish_timeout=finish_timeout)  # fmt: skip
        late = _trainer(work, "late", proxy.url, project, ["finish-in-stall"], rate=rate, metrics=metrics,
                        finish_timeout=finish_timeout)  # fmt: skip
        try:
            trainer.wait_ready()
            late.wait_ready()
            time.sleep(2)
            proxy.mode = "blackhole"
            time.sleep(stall_s)
            logged = trainer.logged() + late.logged()
            proxy.mode = "forward"
            result.recover_s = _wait_stored(client, project, logged, timeout=120)
            time.sleep(1)
            proxy.mode = "reset"
            time.sleep(reset_s)
            logged = trainer.logged() + late.logged()
            proxy.mode = "forward"
            reset_recover = _wait_stored(client, project, logged, timeout=120)
            result.extra["recover_after_reset_s"] = None if reset_recover is None else round(reset_recover, 2)
            time.sleep(1)
            runs, done = trainer.finish()
            apply_runs(result, runs, done)
            proxy.mode = "blackhole"  # the late run finishes in a stall
            time.sleep(1)
            runs_late, done_late = late.finish()
            apply_runs(result, runs_late, done_late)
            result.extra["finish_in_stall_s"] = done_late["finish_s"]
            result.extra["left_in_spool"] = sum(r["unacked_points"] for r in runs_late)
            time.sleep(1)
            proxy.mode = "forward"
        finally:
            trainer.close()
            late.close()
        if result.extra["left_in_spool"]:
            _resend_leftovers(work, result, client, project, proxy.url, [r["run_dir"] for r in runs_late])
        result.extra.update(proxy_connections=proxy.accepted, proxy_resets=proxy.resets)
        c, _ = settle(client, project, result.sent, timeout=120)
        _conclude(result, c, result.sent)
    result.recovered = result.recover_s is not None and reset_recover is not None and result.lost == 0
    return result


def _resend_leftovers(work: Path, result: Result, client: Any, project: str, url: str, run_dirs: list[str]) -> None:
    """What a run left in its spool reaches the server: through the next ``init()`` on this machine (which
    resends the leftovers of earlier runs in the background) if it does, else through ``runstream sync``."""
    nxt = _trainer(work, "next", url, project, ["next-run"], dir=str(Path(run_dirs[0]).parents[1]), steps=20,
                   finish_after_steps=True)  # fmt: skip
    try:
        apply_runs(result, *nxt.wait_done(timeout=120))
    finally:
        nxt.close()
    if _wait_stored(client, project, result.sent, timeout=30) is not None:
        result.note("finish() in the stall left points in the spool; the next init() resent them by itself")
        result.extra["leftovers_sent_by"] = "next init()"
        return
    synced, _ = runstream_sync(run_dirs, url, work)
    result.extra.update(leftovers_sent_by="runstream sync", sync=synced)
    result.note("finish() in the stall left points in the spool; `runstream sync` sent them")


# -- 3. disk full ---------------------------------------------------------------------------------------


def _spool_damage(run_dir: Path) -> tuple[int, int]:
    """(complete records, records whose bytes do not decode) in every segment of a run's spool."""
    import orjson

    good = bad = 0
    for segment in sorted((run_dir / "spool").glob("seg-*.log")):
        data = segment.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            try:
                orjson.loads(line.partition(b"\t")[2])
                good += 1
            except orjson.JSONDecodeError:
                bad += 1
    return good, bad


def sdk_disk_full(work: Path, full_s: float = 15, size: str = "512k", rate: float = 400, metrics: int = 10) -> Result:
    """The run's spool on a ``size`` tmpfs while the server cannot be reached (connections reset): the
    disk fills, and stays full for ``full_s``; the training loop carries on. Then the server comes back
    and the run finishes."""
    result = Result("sdk-disk-full")
    project = "chaos-sdk-disk"
    finish_timeout = 10.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    with embedded_on_clickhouse(work) as (ch, server), TcpProxy(server.port) as proxy:
        client = connect(ch.dsn)
        with tmpfs(work / "sdk-disk", size) as disk:
            proxy.mode = "reset"
            trainer = Trainer(
                {"url": proxy.url, "dir": str(disk), "project": project, "runs": ["r1"], "rate": rate,
                 "metrics": metrics, "finish_timeout": finish_timeout},
                work / "trainer.log",
            )  # fmt: skip
            try:
                trainer.wait_ready()
                began = time.monotonic()
                while _free(disk) > 16 << 10 and time.monotonic() - began < 120:
                    time.sleep(0.2)
                result.extra["disk_full_after_s"] = round(time.monotonic() - began, 1)
                time.sleep(full_s)
                result.extra["disk_free_bytes_at_heal"] = _free(disk)
                logged = trainer.logged()
                proxy.mode = "forward"
                result.recover_s = _wait_stored(client, project, 1, timeout=60)
                time.sleep(3)
                runs, done = trainer.finish()
                apply_runs(result, runs, done)
            finally:
                trainer.close()
            for run in runs:
                good, bad = _spool_damage(Path(run["run_dir"]))
                result.extra.update(spool_records=good, spool_damaged_records=bad)
                result.extra["finish_result"] = run["result"]
        log = (work / "trainer.log").read_text(errors="replace")
        result.extra["sdk_reports"] = [line for line in log.splitlines() if "runstream:" in line]
        result.extra["logged_before_heal"] = logged
        c, _ = settle(client, project, result.sent, timeout=30)
        # The SDK counts the events it dropped, not their points: the points missing count as dropped when
        # they are whole steps in no more runs of steps than the events it reported.
        dropped_events = sum(int(run["result"].get("dropped_events") or 0) for run in runs)
        gaps, partial = _step_gaps(client, project, "r1", runs[0]["steps"], metrics)
        result.extra.update(dropped_events=dropped_events, missing_step_ranges=len(gaps), partial_steps=partial)
        missing = max(0, result.sent - c["stored"])
        if missing and not partial and len(gaps) <= dropped_events:
            result.dropped = missing
            result.acked -= missing  # the logger counted them as spooled, and so as acknowledged
        _conclude(result, c, result.sent - result.dropped)
    if result.extra.get("spool_damaged_records"):
        result.note(f"{result.extra['spool_damaged_records']} damaged records in the spool")
    result.recovered = result.recover_s is not None and result.lost == 0
    return result


def _step_gaps(client: Any, project: str, run_id: str, steps: int, metrics: int) -> tuple[list[tuple[int, int]], int]:
    """Ranges of steps below ``steps`` with nothing stored, and the number of steps stored incompletely."""
    rows = client.query(
        "SELECT step, count() FROM metric_points FINAL WHERE team = {t:String} AND project = {p:String} "
        "AND run_id = {r:String} GROUP BY step ORDER BY step",
        parameters={"t": TEAM, "p": project, "r": run_id},
    ).result_rows
    gaps, expect = [], 0
    for step, _ in rows:
        if step > expect:
            gaps.append((expect, step - 1))
        expect = step + 1
    if expect < steps:
        gaps.append((expect, steps - 1))
    return gaps, sum(n != metrics for _, n in rows)


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _api_stored(server: EmbeddedServer, project: str, run_ids: list[str], metrics: int) -> int:
    """Points stored, through the server's chart endpoint: the count of ``s`` × the keys of a row."""
    from bench.fleet import api

    body = {"run_ids": run_ids, "metrics": ["s"], "points": 500, "fields": ["count"]}
    chart = api(server.port, "POST", f"/api/v1/projects/{TEAM}/{project}/series", body)
    return metrics * int(sum(sum(s["count"]) for s in chart["series"]))


def server_disk_full(
    work: Path, outage_s: float = 30, size: str = "256m", rate: float = 20, metrics: int = 5
) -> Result:
    """The embedded server (engine and file store) on a ``size`` tmpfs that a filler file fills while
    runs log; then the filler is deleted. Ingest must refuse (never 200) what it cannot store."""
    result = Result("server-disk-full")
    project = "chaos-server-disk"
    finish_timeout = 10.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    with tmpfs(work / "server-disk", size) as disk:
        server = EmbeddedServer(disk / "data", work / "server.log")
        prober = Prober(server.url, project + "-probe")
        trainer = None
        try:
            server.start()
            trainer = _trainer(work, "trainer", server.url, project, ["r1", "r2"], rate=rate, metrics=metrics,
                               finish_timeout=finish_timeout)  # fmt: skip
            trainer.wait_ready()
            prober.sleep(3)
            result.extra["filler_bytes"] = fill(disk)
            full = time.monotonic()
            prober.sleep(outage_s)
            logged = trainer.logged()
            (disk / "filler").unlink()
            healed = time.monotonic()
            result.extra["ingest_answers_while_full"] = prober.statuses(full, healed)
            began = time.monotonic()
            while time.monotonic() - began < 120:
                try:
                    if _api_stored(server, project, ["r1", "r2"], metrics) >= logged:
                        result.recover_s = time.monotonic() - began
                        break
                except (OSError, RuntimeError):
                    pass
                time.sleep(0.5)
            prober.sleep(2)
            runs, done = trainer.finish()
            apply_runs(result, runs, done)
            result.extra["server_alive"] = server.alive()
        finally:
            if trainer is not None:
                trainer.close()
            server.stop()
        c = chdb_counts(disk / "data" / "clickhouse", project)
        _conclude(result, c, result.sent)
        probes = chdb_counts(disk / "data" / "clickhouse", project + "-probe")["stored"]
    result.extra["probe_200s_not_stored"] = max(0, prober.acked() - probes)
    result.lost += result.extra["probe_200s_not_stored"]
    ok_while_full = result.extra["ingest_answers_while_full"].get("200", 0)
    if ok_while_full:
        result.note(f"ingest answered 200 {ok_while_full} times while the disk was full")
    result.recovered = result.recover_s is not None and result.extra.get("server_alive", False)
    return result


# -- 4. torn spool segment -------------------------------------------------------------------------------


def _lines(segment: Path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each complete line of a segment (end: after its newline)."""
    data = segment.read_bytes()
    out, start = [], 0
    while (end := data.find(b"\n", start)) >= 0:
        out.append((start, end + 1))
        start = end + 1
    return out


def _tear(spool: Path, glue: bool) -> tuple[int, int]:
    """Tear a metrics record of the run's last segment in the middle, as a power loss does; the bytes
    damaged. ``glue``: the torn record stays in the middle of the segment, the records after it
    directly behind its torn bytes (a restarted writer appending to the file); otherwise the segment
    ends in the torn bytes (a restarted writer starts a new segment, as runstream's does). Also the
    points the torn record held."""
    segment = max(spool.glob("seg-*.log"))
    data = segment.read_bytes()
    lines = [(s, e) for s, e in _lines(segment) if data[s:e].startswith(b"runstream.metrics\t")]
    start, end = lines[len(lines) // 2] if glue else lines[-1]
    cut = start + (end - start) // 2
    points = event_points(data[start:end].partition(b"\t")[2])
    if glue:
        segment.write_bytes(data[:cut] + data[end:])  # half a record, no newline, then the next records
    else:
        segment.write_bytes(data[:cut])  # the records after it were never written
    return cut - start, points


TEARS = ("tail", "glued")


def torn_segment(work: Path, steps: int = 400, metrics: int = 5, tears: tuple[str, ...] = TEARS) -> Result:
    """Offline runs write their spools; a record is torn mid-line (a power loss), the run is resumed
    offline (new records after the damage), and ``runstream sync`` sends it all. A run per kind of
    ``tears``: ``tail``, the torn record ends its segment (the resumed writer starts a new one);
    ``glued``, good records follow the torn bytes directly in the same segment."""
    result = Result("torn-spool-segment")
    project = "chaos-torn"
    with embedded_on_clickhouse(work) as (ch, server):
        client = connect(ch.dsn)
        torn = 0
        dirs = []
        for run_id, glue in ((f"torn-{tear}", tear == "glued") for tear in tears):
            for part in ("before", "after"):
                t = _trainer(work, f"{run_id}-{part}", server.url, project, [run_id], mode="offline",
                             dir=str(work / "runs"), rate=100, metrics=metrics, steps=steps,
                             finish_after_steps=True, resume="allow")  # fmt: skip
                try:
                    runs, done = t.wait_done(timeout=120)
                finally:
                    t.close()
                apply_runs(result, runs, done)
                spool = Path(runs[0]["run_dir"]) / "spool"
                if part == "before":
                    damaged, points = _tear(spool, glue)
                    result.extra[f"{run_id}_damaged_bytes"] = damaged
                    torn += points
            dirs.append(runs[0]["run_dir"])
        result.dropped = torn  # the torn records: gone with the power
        complete = result.sent - torn
        result.extra["points_in_complete_records"] = complete
        began = time.monotonic()
        synced, out = runstream_sync(dirs, server.url, work)
        result.recover_s = time.monotonic() - began
        result.extra["sync"] = synced
        if not synced:
            result.note(f"runstream sync failed: {out[-500:]}")
        for r in synced:
            if r.get("skipped"):
                result.note(f"sync skipped {Path(r['run_dir']).name}: {r['skipped']}")
        result.extra["damaged_bytes_reported"] = [r.get("damaged_bytes") for r in synced]
        c, _ = settle(client, project, complete, timeout=60)
        _conclude(result, c, complete)
    result.recovered = bool(synced) and result.lost == 0
    return result


# -- 5. client clock off by a day --------------------------------------------------------------------------


def clock_skew(work: Path, crash_timeout: int = 20, steps: int = 200, rate: float = 10, metrics: int = 3) -> Result:
    """Training processes whose clocks are a day ahead or behind: a run resumed by a process whose clock
    is two days behind the first one's; live runs that must not be marked crashed; SIGKILLed runs that
    must be, within the crash timeout + 10 s."""
    result = Result("client-clock-skew")
    project, killed_project = "chaos-clock", "chaos-clock-killed"
    finish_timeout = 10.0
    result.finish_bound_s = finish_timeout + FINISH_GRACE_S
    bound = crash_timeout + 10
    with embedded_on_clickhouse(work, crash_timeout=crash_timeout) as (ch, server):
        client = connect(ch.dsn)
        common = {"rate": rate, "metrics": metrics, "finish_timeout": finish_timeout, "heartbeat_interval": 5.0}
        trainers: list[Trainer] = []
        try:
            # The resumed run: +1 day, then -1 day (its second process's events are older than its first's).
            for part, offset in (("ahead", DAY), ("behind", -DAY)):
                t = _trainer(work, f"resume-{part}", server.url, project, ["resumed"], dir=str(work / "resume"),
                             clock_offset_s=offset, steps=steps, finish_after_steps=True, resume="allow",
                             **common)  # fmt: skip
                trainers.append(t)
                runs, done = t.wait_done(timeout=120)
                apply_runs(result, runs, done)
                result.extra[f"resume_{part}_first_step"] = runs[0]["first_step"]
            live = [_trainer(work, f"live-{sign}", server.url, project, [f"live-{sign}"], clock_offset_s=s * DAY, **common)
                    for sign, s in (("ahead", 1), ("behind", -1))]  # fmt: skip
            doomed = [
                _trainer(work, f"killed-{sign}", server.url, killed_project, [f"killed-{sign}"], clock_offset_s=s * DAY,
                         **common)
                for sign, s in (("ahead", 1), ("behind", -1))
            ]  # fmt: skip
            trainers += live + doomed
            for t in live + doomed:
                t.wait_ready()
            time.sleep(3)
            for t in doomed:
                t.kill()
                if t.slowest_log_ms() > result.log_blocked_max_ms:
                    result.log_blocked_max_ms = t.slowest_log_ms()
                    result.extra["log_max_cpu_ms"] = t.slowest_log_cpu_ms()
            killed = time.monotonic()
            crashed_after: dict[str, float] = {}
            live_crashed: set[str] = set()
            while time.monotonic() - killed < bound + 5:
                try:
                    states = run_states(client, killed_project) | run_states(client, project)
                except Exception:  # noqa: BLE001
                    states = {}
                for run_id, state in states.items():
                    if state == "crashed":
                        if run_id.startswith("killed"):
                            crashed_after.setdefault(run_id, time.monotonic() - killed)
                        else:
                            live_crashed.add(run_id)
                time.sleep(1)
            for t in live:
                runs, done = t.finish()
                apply_runs(result, runs, done)
        finally:
            for t in trainers:
                t.close()
        c, _ = settle(client, project, result.sent, timeout=60)
        _conclude(result, c, result.sent)
        states = run_states(client, project)
        resumed = counts_for_run(client, project, "resumed")
    result.extra["crashed_after_s"] = {k: round(v, 1) for k, v in crashed_after.items()}
    result.extra["final_states"] = states
    result.extra["resumed_run_points"] = resumed
    result.recover_s = max(crashed_after.values()) if len(crashed_after) == 2 else None
    problems = []
    if len(crashed_after) < 2 or max(crashed_after.values()) > bound:
        problems.append(f"killed runs not all crashed within {bound} s: {crashed_after}")
    if live_crashed:
        problems.append(f"live runs marked crashed: {sorted(live_crashed)}")
    if result.extra["resume_behind_first_step"] != steps:
        problems.append(f"the resumed run started at step {result.extra['resume_behind_first_step']}, not {steps}")
    if resumed != 2 * steps * metrics:
        problems.append(f"the resumed run has {resumed} points, not {2 * steps * metrics}")
    if any(state != "finished" for state in states.values()):
        problems.append(f"runs not finished: {states}")
    for p in problems:
        result.note(p)
    result.recovered = not problems and result.lost == 0
    return result


def counts_for_run(client: Any, project: str, run_id: str) -> int:
    return int(
        client.command(
            "SELECT count() FROM metric_points FINAL WHERE team = {t:String} AND project = {p:String} "
            "AND run_id = {r:String}",
            parameters={"t": TEAM, "p": project, "r": run_id},
        )
    )


# -- 6. a thousand runs SIGKILLed -------------------------------------------------------------------------


def mass_kill(
    work: Path,
    runs: int = 1000,
    per_process: int = 100,
    crash_timeout: int = 20,
    rate: float = 1,
    metrics: int = 3,
    late_s: float = 180,
) -> Result:
    """``runs`` runs in processes of ``per_process`` log through Kafka (cluster mode, one worker); every
    process is SIGKILLed at once. Every run must be marked crashed within the crash timeout + 10 s, and no state
    may flap (sampled every second): crashed never goes back to running. A few runs that finished
    before the kill must stay finished."""
    result = Result("sigkill-runs")
    result.extra["runs"] = runs
    project = "chaos-kill"
    bound = crash_timeout + 10
    finishing = max(1, runs // 50)
    with cluster(work, crash_timeout=crash_timeout) as (bootstrap, ch, _):
        client = connect(ch.dsn)
        url = f"kafka://{bootstrap}"
        common = {"rate": rate, "metrics": metrics, "finish_timeout": 30.0, "flush_interval": 1.0}
        ids = [f"k{i:05d}" for i in range(runs)]
        groups = [ids[i : i + per_process] for i in range(0, runs, per_process)]
        doomed = [_trainer(work, f"p{k}", url, project, group, **common) for k, group in enumerate(groups)]
        done_ids = [f"f{i:03d}" for i in range(finishing)]
        finisher = _trainer(work, "finisher", url, project, done_ids, steps=5, finish_after_steps=True, **common)
        try:
            for t in [*doomed, finisher]:
                t.wait_ready(timeout=600)
            finisher.wait_done(timeout=120)
            began = time.monotonic()
            while time.monotonic() - began < 300:
                states = run_states(client, project)
                if sum(states.get(i) == "running" for i in ids) == runs and all(
                    states.get(i) == "finished" for i in done_ids
                ):
                    break
                time.sleep(1)
            else:
                result.note(f"not every run was running before the kill: {len(states)} runs known")
            result.extra["all_running_after_s"] = round(time.monotonic() - began, 1)
            for t in doomed:  # all at once
                os.killpg(t.proc.pid, 9)
            killed = time.monotonic()
            for t in doomed:
                t.proc.wait()
                if t.slowest_log_ms() > result.log_blocked_max_ms:
                    result.log_blocked_max_ms = t.slowest_log_ms()
                    result.extra["log_max_cpu_ms"] = t.slowest_log_cpu_ms()
            history: dict[str, list[str]] = {}
            crashed_at: dict[str, float] = {}
            samples = 0
            points, drained = -1, 0.0
            # Past the bound, go on (up to ``late_s``) to see when the runs do crash: a worker behind its
            # backlog sees the runs' last events late, and measures their silence from then.
            while time.monotonic() - killed < bound + 10 + (late_s if len(crashed_at) < runs else 0):
                began = time.monotonic()
                try:
                    states = run_states(client, project)
                    now_points = counts(client, project)["raw"]
                except Exception:  # noqa: BLE001
                    continue
                if now_points != points:
                    points, drained = now_points, began - killed
                samples += 1
                for run_id, state in states.items():
                    seen = history.setdefault(run_id, [])
                    if not seen or seen[-1] != state:
                        seen.append(state)
                    if state == "crashed":
                        crashed_at.setdefault(run_id, began - killed)
                last = max(crashed_at.values(), default=0.0)
                if len(crashed_at) == runs and time.monotonic() - killed > max(bound, last + 10):
                    break  # and no run came back in the 10 s after the last crash
                time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        finally:
            for t in [*doomed, finisher]:
                t.close()
    flaps = {r: h for r, h in history.items() if any(b == "running" and a == "crashed" for a, b in pairwise(h))}
    finished_crashed = [r for r in done_ids if "crashed" in history.get(r, [])]
    latest = max(crashed_at.values()) if crashed_at else None
    result.extra.update(
        samples=samples,
        crashed=len(crashed_at),
        crash_latency_max_s=None if latest is None else round(latest, 1),
        crash_latency_min_s=round(min(crashed_at.values()), 1) if crashed_at else None,
        flapped=len(flaps),
        backlog_drained_after_kill_s=round(drained, 1),
        finished_became_crashed=len(finished_crashed),
        bound_s=bound,
    )
    if flaps:
        result.note(f"state flapped: {dict(list(flaps.items())[:3])}")
    if finished_crashed:
        result.note(f"finished runs marked crashed: {finished_crashed[:5]}")
    missing = [r for r in ids if r not in crashed_at]
    if missing:
        result.note(f"{len(missing)} runs never marked crashed, e.g. {missing[:3]}")
    result.recover_s = latest
    result.recovered = not missing and latest is not None and latest <= bound and not flaps and not finished_crashed
    return result


SCENARIOS: dict[str, Callable[..., Result]] = {
    "clickhouse-cluster": clickhouse_cluster,
    "clickhouse-embedded": clickhouse_embedded,
    "network": network,
    "sdk-disk-full": sdk_disk_full,
    "server-disk-full": server_disk_full,
    "torn-segment": torn_segment,
    "clock-skew": clock_skew,
    "sigkill-runs": mass_kill,
}

#: Shorter windows for ``--quick``.
QUICK: dict[str, dict[str, Any]] = {
    "clickhouse-cluster": {"outage_s": 10},
    "clickhouse-embedded": {"outage_s": 10},
    "network": {"stall_s": 8, "reset_s": 2},
    "sdk-disk-full": {"full_s": 5},
    "server-disk-full": {"outage_s": 10},
    "torn-segment": {"steps": 200},
    "clock-skew": {"crash_timeout": 10, "steps": 100},
    "sigkill-runs": {"runs": 200, "crash_timeout": 10, "late_s": 60},
}
