"""What the chaos scenarios share: the services they break, the training processes, the counting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import Lines, spawn, stop
from infra.net import free_port

REPO = Path(__file__).resolve().parents[2]
RUNSTREAM = str(Path(sys.executable).with_name("runstream"))
TEAM = "default"
#: How much longer than ``finish_timeout`` finish() may take (sender.CLOSE_GRACE: closing the transport).
FINISH_GRACE_S = 5.0


@dataclass
class Result:
    """One scenario's figures. Points: one metric value at one step of one run."""

    name: str
    #: Points the training processes logged (``log()`` calls × keys).
    sent: int = 0
    #: Points the SDK had acknowledged by the server or broker when ``finish()`` returned.
    acked: int = 0
    #: Distinct (run, metric, step) in ``metric_points`` (``FINAL``), what queries show.
    stored: int = 0
    #: Points the SDK reported it could not keep (a full disk), counted by the SDK: not lost silently.
    dropped: int = 0
    #: Points logged, not dropped by the SDK, and not stored after the heal (and ``runstream sync``).
    lost: int = 0
    #: Points counted twice where queries read them (see ``count``).
    duplicated: int = 0
    log_blocked_max_ms: float = 0.0
    finish_max_s: float = 0.0
    finish_bound_s: float = 0.0
    #: Seconds from the heal to storage holding everything logged until the heal (crash scenarios:
    #: from the SIGKILL to every run marked crashed).
    recover_s: float | None = None
    recovered: bool = False
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def check(self) -> list[str]:
        """What falls short of the targets (empty: all met)."""
        bad = []
        if self.lost:
            bad.append(f"lost {self.lost}")
        if self.duplicated:
            bad.append(f"duplicated {self.duplicated}")
        if not self.recovered:
            bad.append("did not recover")
        if self.log_blocked_max_ms > 50:
            bad.append(f"log() blocked {self.log_blocked_max_ms:.1f} ms")
        if self.finish_bound_s and self.finish_max_s > self.finish_bound_s:
            bad.append(f"finish() took {self.finish_max_s:.1f} s > {self.finish_bound_s:.0f} s")
        return bad


# -- storage --------------------------------------------------------------------------------------------


def counts(client: Any, project: str) -> dict[str, int]:
    """What storage holds for ``project``.

    - ``stored``: distinct (run, metric, step) rows (``metric_points FINAL``), what history,
      charts and exports show;
    - ``raw``: rows before deduplication (resends not merged away yet: harmless, queries dedupe);
    - ``summarised``: points folded into ``metric_summaries`` (count, mean, min, max);
    - ``bucketed``: points in the level-1 chart buckets.

    A point *duplicated* is one that queries would count twice: ``summarised`` or ``bucketed`` above
    ``stored`` (a redelivery folded again into a run's summary or its chart buckets). Rows that
    ``FINAL`` collapses are not duplicates: no query sees them.
    """
    p = {"t": TEAM, "p": project}
    where = "WHERE team = {t:String} AND project = {p:String}"
    return {
        "stored": int(client.command(f"SELECT count() FROM metric_points FINAL {where}", parameters=p)),
        "raw": int(client.command(f"SELECT count() FROM metric_points {where}", parameters=p)),
        "summarised": int(client.command(f"SELECT sum(count) FROM metric_summaries FINAL {where}", parameters=p) or 0),
        "bucketed": int(
            client.command(f"SELECT sum(count) FROM metric_buckets FINAL {where} AND level = 1", parameters=p) or 0
        ),
        "misordered": int(
            client.command(
                f"SELECT count() FROM metric_points FINAL {where} AND metric = 's' AND value != toFloat64(step)",
                parameters=p,
            )
        ),
    }


def duplicated(c: dict[str, int]) -> int:
    return max(0, c["summarised"] - c["stored"], c["bucketed"] - c["stored"])


def run_states(client: Any, project: str) -> dict[str, str]:
    rows = client.query(
        "SELECT run_id, state FROM runs FINAL WHERE team = {t:String} AND project = {p:String}",
        parameters={"t": TEAM, "p": project},
    ).result_rows
    return {run_id: state for run_id, state in rows}


def connect(dsn: str) -> Any:
    from runstream.storage.client import connect as _connect

    return _connect(dsn)


def settle(client: Any, project: str, want: int, timeout: float) -> tuple[dict[str, int], float | None]:
    """Poll until storage holds ``want`` points, folded into summaries and buckets; the counts, and
    when (monotonic) the points were all there (None: never)."""
    deadline = time.monotonic() + timeout
    reached = None
    c: dict[str, int] = {}
    while True:
        try:
            c = counts(client, project)
        except Exception:  # noqa: BLE001 - the database may still be coming back
            c = c or {}
        if c and c["stored"] >= want:
            reached = reached or time.monotonic()
            if c["summarised"] >= c["stored"] and c["bucketed"] >= c["stored"]:
                return c, reached
        if time.monotonic() > deadline:
            return c or {"stored": 0, "raw": 0, "summarised": 0, "bucketed": 0, "misordered": 0}, reached
        time.sleep(0.5)


def chdb_counts(data_dir: Path, project: str) -> dict[str, int]:
    """``counts`` of an embedded server's engine directory, once the server has stopped (a process
    may open one chdb directory in its life: a child does it)."""
    code = (
        "import json, sys; from bench.chaos.harness import counts, connect; "
        f"print(json.dumps(counts(connect('chdb://{data_dir}'), {project!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- services --------------------------------------------------------------------------------------------


class ClickHouse:
    """``infra.clickhouse_server`` that a scenario can SIGKILL and start again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        from infra.clickhouse_server import ClickHouseServer

        self.server = ClickHouseServer(data_dir)
        self.dsn = f"clickhouse://default:@127.0.0.1:{self.server.http_port}/chaos"

    def start(self) -> ClickHouse:
        self.server.start()
        return self

    def kill(self) -> None:
        """As a crash or an OOM kill: no shutdown."""
        proc = self.server._proc  # the child to crash: ClickHouseServer itself only stops cleanly
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self.server.stop()


class EmbeddedServer:
    """``runstream server`` (API and in-process pipeline). Storage: the embedded engine under
    ``data_dir`` or, given ``dsn``, a ClickHouse server (the pipeline writing to it, no Kafka)."""

    def __init__(self, data_dir: Path, log: Path, dsn: str = "", crash_timeout: int = 90, **env: str) -> None:
        self.data_dir, self.log, self.dsn = data_dir, log, dsn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        self.env |= {"RUNSTREAM_CONFIG": str(data_dir / "no-config.toml"), "RUNSTREAM_DATA_DIR": str(data_dir)}
        self.env |= {"RUNSTREAM_CRASH_TIMEOUT": str(crash_timeout), **env}
        if dsn:
            self.env["RUNSTREAM_CLICKHOUSE_DSN"] = dsn
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> EmbeddedServer:
        cmd = [RUNSTREAM, "server", "--port", str(self.port)]
        if not self.dsn:  # --data-dir puts the engine there (it would override the DSN)
            cmd += ["--data-dir", str(self.data_dir)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(cmd, self.env, self.log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runstream server exited with {self.proc.returncode}: see {self.log}")
            if self.healthy():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"runstream server did not answer within {timeout} s: see {self.log}")

    def healthy(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2).close()
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """As Ctrl-C: what was acknowledged is written."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                stop([self.proc], timeout=5)


# -- training processes ---------------------------------------------------------------------------------


class Trainer:
    """A ``bench.chaos.logger`` process: runs that log until ``finish()`` is asked for."""

    def __init__(self, config: dict[str, Any], log: Path) -> None:
        self.config = config
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        env |= {"PYTHONPATH": str(REPO), "RUNSTREAM_CONFIG": str(log.parent / "no-config.toml")}
        cmd = [sys.executable, "-m", "bench.chaos.logger", json.dumps(config)]
        self.lines = Lines(spawn(cmd, env, log, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        self.proc = self.lines.proc

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait(lambda: self.lines.first("READY") is not None, "READY", timeout)

    def _wait(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None and not check():
                raise RuntimeError(f"the training process exited ({self.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the training process did not say {what} within {timeout} s")
            time.sleep(0.05)

    def logged(self) -> int:
        """Points logged so far, as last reported."""
        reported = [line.split() for _, line in self.lines.lines if line.startswith("P ")]
        return int(reported[-1][1]) if reported else 0

    def slowest_log_ms(self) -> float:
        """The slowest ``log()`` call so far, as last reported (for a process that is killed)."""
        reported = [line.split() for _, line in self.lines.lines if line.startswith("P ")]
        return float(reported[-1][2]) if reported else 0.0

    def slowest_log_cpu_ms(self) -> float:
        reported = [line.split() for _, line in self.lines.lines if line.startswith("P ")]
        return float(reported[-1][3]) if reported and len(reported[-1]) > 3 else 0.0

    def finish(self, timeout: float = 300) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Ask the runs to finish; their RUN reports and the DONE line."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("finish\n")
            self.proc.stdin.flush()
        return self.wait_done(timeout)

    def wait_done(self, timeout: float = 300) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        self._wait(lambda: self.lines.first("DONE") is not None, "DONE", timeout)
        self.proc.wait(30)
        self.lines.join(5)
        runs = [json.loads(line) for line in self.lines.tagged("RUN")]
        done = self.lines.first("DONE")
        assert done is not None
        return runs, json.loads(done[1])

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            stop([self.proc], timeout=10)


def runstream_sync(paths: list[str], url: str, env_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """``runstream sync`` of run directories, in a child process as a user runs it; its results (when
    this SDK's ``sync()`` returns them) and its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env |= {"PYTHONPATH": str(REPO), "RUNSTREAM_CONFIG": str(env_dir / "no-config.toml")}
    code = (
        "import dataclasses, json, sys; from runstream.sync import sync; "
        f"results = sync({paths!r}, url={url!r}, progress=False); "
        "print('SYNC ' + json.dumps([{k: (str(v) if not isinstance(v, int | float | bool | None) else v) "
        "for k, v in dataclasses.asdict(r).items()} for r in results]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    for line in proc.stdout.splitlines():
        if line.startswith("SYNC "):
            return json.loads(line[5:]), out
    return [], out


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (needs root), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, keep_free: int = 0) -> int:
    """Fill the file system of ``path`` with a filler file (leaving about ``keep_free`` bytes); its size."""
    filler = path / "filler"
    written = 0
    block = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        while True:
            free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
            if free <= keep_free:
                break
            try:
                written += f.write(block[: max(4096, min(len(block), free - keep_free))])
            except OSError:
                break
    return written


def apply_runs(result: Result, runs: list[dict[str, Any]], done: dict[str, Any]) -> None:
    """Fold one training process's reports into ``result``."""
    result.sent += sum(r["points"] for r in runs)
    result.acked += sum(r["acked_points"] or 0 for r in runs)
    if done["log_max_ms"] > result.log_blocked_max_ms:
        result.log_blocked_max_ms = done["log_max_ms"]
        result.extra["log_max_cpu_ms"] = done.get("log_max_cpu_ms")
    result.finish_max_s = max(result.finish_max_s, done["finish_s"])
