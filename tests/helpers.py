"""Builders of valid events for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

from runstream import events


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fresh_chdb_dsn(chdb_dir: Any) -> str:
    """A DSN for a fresh, empty database in the embedded engine at ``chdb_dir``."""
    return f"chdb://{chdb_dir}?database={unique('test').replace('-', '_')}"


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


def spooled_events(run_dir: str) -> list[events.Event]:
    """Every event a finished run wrote to its spool (acknowledged or not), validated against the contract."""
    from pathlib import Path

    from runstream.spool import Cursor, Spool

    spool = Spool(Path(run_dir) / "spool", writer=False)
    try:
        records, _ = spool.read(Cursor(min(spool.segments(), default=1), 0), max_bytes=1 << 30)
    finally:
        spool.close()
    decoded = [events.decode(event) for _, event in records]
    assert [t for t, _ in records] == [e.topic.name for e in decoded], "each record is spooled under its topic"
    return decoded


def metric_points(evs: list[events.Event]) -> list[tuple[int, str, float]]:
    """(step, metric, value) for every logged point in metrics events."""
    out = []
    for event in evs:
        if event.type == events.METRICS:
            for name, column in event.data["values"].items():
                for step, value in zip(event.data["step"], column):
                    if value is not None:
                        out.append((step, name, cast(float, events.decode_value(value))))  # not None: checked
    return out


async def consume_events(
    bootstrap: str, topics: list[str], project: str, done, timeout: float = 60.0
) -> list[events.Event]:
    """Events of ``project`` from the start of ``topics``, in arrival order, until ``done(events)`` or timeout."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=unique("c")
    )
    await consumer.start()
    found: list[events.Event] = []
    marker = f'"project":"{project}"'.encode()
    try:
        deadline = time.monotonic() + timeout
        while not done(found) and time.monotonic() < deadline:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=30)
            for messages in batches.values():
                found += [events.decode(m.value) for m in messages if marker in m.value]
    finally:
        await consumer.stop()
    return found


def training_script(
    dir: str,  # noqa: A002 - the name of the script's runstream.init(dir=...)
    url: str,
    project: str,
    run_id: str,
    steps: int,
    extra: str = "",
    pause: float = 0.0,
) -> str:
    """A training loop that logs two metrics per step, then prints its FinishResult and slowest log() as JSON."""
    return f"""
import json, time, runstream
run = runstream.init(project={project!r}, id={run_id!r}, dir={dir!r},
                     settings={{"url": {url!r}, "console": False, "system_metrics": False, "git": False,
                               "finish_timeout": 60}})
print("started", flush=True)
slowest = 0.0
for step in range({steps}):
    t = time.perf_counter()
    run.log({{"loss": 1.0 / (step + 1), "acc": step / {steps}}})
    slowest = max(slowest, time.perf_counter() - t)
    if {pause}:
        time.sleep({pause})
{extra}
result = run.finish()
print(json.dumps({{"acked": result.acked_events, "unacked": result.unacked_events, "points": result.points,
                  "slowest_log_s": slowest}}), flush=True)
"""


async def dead_letters_with(bootstrap: str, marker: bytes, want: int, timeout: float = 60.0) -> list:
    """Dead-letter messages whose bytes contain ``marker``, read until ``want`` are found or time runs out."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        events.TOPIC_DEAD_LETTERS.name, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=unique("dl")
    )
    await consumer.start()
    found: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < want and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                found += [m for m in messages if marker in m.value]
    finally:
        await consumer.stop()
    return found


class ServedApp:
    """An ASGI app served by a real uvicorn server on a free loopback port, in a thread (``with ServedApp(app) as url``).

    ``lifespan="off"`` for an app whose lifespan already ran (an ``ApiHarness``'s test client started it).
    """

    def __init__(self, app: Any, lifespan: Literal["auto", "on", "off"] = "auto") -> None:
        import uvicorn

        from infra.net import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan=lifespan, log_level="warning")
        self.server = uvicorn.Server(config)

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


RUNSTREAM = Path(sys.executable).parent / "runstream"


class Server:
    """``runstream server`` on a data directory and port, started and stopped (or killed) by the test."""

    def __init__(self, data_dir: Path, port: int, **env: str) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml"), **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [RUNSTREAM, "server", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stdout is not None  # stdout=PIPE
                raise AssertionError(f"the server exited: {self.process.stdout.read()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not answer within 90 s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; its output."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        assert self.process.stdout is not None  # stdout=PIPE
        return self.process.stdout.read()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def scanned_history(api: Any, path: str) -> list[dict]:
    """Every history row of a run, read through ``runstream.Api``."""
    return list(api.run(path).scan_history())


def script_env(server_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a user's script: this one's, without runstream's or W&B's settings (and no
    config file), sending to ``server_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    return {**env, "RUNSTREAM_URL": server_url, "RUNSTREAM_CONFIG": str(tmp_path / "no-config.toml")}


def as_in_a_terminal() -> None:
    """For ``preexec_fn``: Ctrl-C reaches a script started from a terminal; one started in the background
    of a non-interactive shell (as CI may start the tests) inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
