"""The chdb-backed ClickHouse dev/test server (infra/clickhouse_server.py), against the real engine."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from infra.clickhouse_server import ClickHouseServer

ROOT = Path(__file__).resolve().parents[2]


def ping(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read() == b"Ok.\n"
    except OSError:
        return False
    finally:
        conn.close()


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def server(tmp_path: Path):
    srv = ClickHouseServer(tmp_path / "clickhouse").start()
    yield srv
    srv.stop()


def test_roundtrip_100k_rows_with_parameters(server: ClickHouseServer) -> None:
    assert server.dsn == f"clickhouse://default:@127.0.0.1:{server.http_port}/default"
    client = clickhouse_connect.get_client(dsn=server.dsn)
    client.command(
        "CREATE TABLE metrics (run_id String, step UInt32, value Float64) ENGINE = MergeTree ORDER BY (run_id, step)"
    )
    n = 100_000
    columns: list[list[Any]] = [[f"run-{i % 4}" for i in range(n)], list(range(n)), [i / 2 for i in range(n)]]
    client.insert("metrics", columns, column_names=["run_id", "step", "value"], column_oriented=True)

    assert client.query("SELECT count() FROM metrics").result_rows == [(n,)]
    result = client.query(
        "SELECT run_id, count(), max(step) FROM metrics WHERE step < {x:UInt32} GROUP BY run_id ORDER BY run_id",
        parameters={"x": 1000},
    )
    assert result.result_rows == [("run-0", 250, 996), ("run-1", 250, 997), ("run-2", 250, 998), ("run-3", 250, 999)]
    client.close()


def test_native_tcp_port_speaks_the_clickhouse_protocol(server: ClickHouseServer) -> None:
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def string(text: str) -> bytes:
        return varint(len(text)) + text.encode()

    # Client Hello: packet 0, client name, version 1.0, protocol revision, database, user, password.
    hello = varint(0) + string("runstream-test") + varint(1) + varint(0) + varint(54060)
    hello += string("default") + string("default") + string("")
    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5) as sock:
        sock.sendall(hello)
        reply = sock.recv(4096)
    assert reply.startswith(b"\x00" + string("ClickHouse"))  # server Hello


def test_two_clients_read_and_write_concurrently(server: ClickHouseServer) -> None:
    setup = clickhouse_connect.get_client(dsn=server.dsn)
    setup.command("CREATE TABLE events (writer UInt8, seq UInt32) ENGINE = MergeTree ORDER BY (writer, seq)")
    batches, batch_size = 20, 500
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(writer: int) -> None:
        try:
            client = clickhouse_connect.get_client(dsn=server.dsn)
            start.wait(timeout=10)
            for b in range(batches):
                seqs = list(range(b * batch_size, (b + 1) * batch_size))
                client.insert(
                    "events", [[writer] * batch_size, seqs], column_names=["writer", "seq"], column_oriented=True
                )
                mine = client.query("SELECT count() FROM events WHERE writer = {w:UInt8}", parameters={"w": writer})
                assert mine.result_rows == [((b + 1) * batch_size,)]
            client.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    totals = setup.query("SELECT writer, count(), uniqExact(seq) FROM events GROUP BY writer ORDER BY writer")
    assert totals.result_rows == [
        (1, batches * batch_size, batches * batch_size),
        (2, batches * batch_size, batches * batch_size),
    ]


def test_another_process_shares_the_database(server: ClickHouseServer) -> None:
    client = clickhouse_connect.get_client(dsn=server.dsn)
    client.command("CREATE TABLE shared (n UInt64) ENGINE = MergeTree ORDER BY n")
    code = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
        "c.insert('shared', [list(range(1000))], column_names=['n'], column_oriented=True)\n"
        "print(c.query('SELECT sum(n) FROM shared').result_rows[0][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, server.dsn], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(range(1000)))
    assert client.query("SELECT count() FROM shared").result_rows == [(1000,)]


def test_restart_keeps_data_and_stop_is_idempotent(tmp_path: Path) -> None:
    srv = ClickHouseServer(tmp_path / "clickhouse")
    srv.start()
    dsn = srv.dsn
    client = clickhouse_connect.get_client(dsn=dsn)
    client.command("CREATE TABLE kept (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
    client.insert("kept", [[1, 2, 3], ["a", "b", "c"]], column_names=["k", "v"], column_oriented=True)
    client.close()

    srv.stop()
    assert not srv.running
    assert not ping(srv.http_port)
    srv.stop()  # idempotent
    srv.stop(timeout=1)

    srv.start()
    try:
        assert srv.dsn == dsn  # same ports again
        client = clickhouse_connect.get_client(dsn=srv.dsn)
        assert client.query("SELECT k, v FROM kept ORDER BY k").result_rows == [(1, "a"), (2, "b"), (3, "c")]
        client.close()
    finally:
        srv.stop()
    assert not srv.running
    srv.stop()


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with ClickHouseServer(tmp_path / "clickhouse") as srv:
        assert srv.running and ping(srv.http_port)
        log_path = srv.log_path
        assert log_path is not None and log_path.exists()
    assert not srv.running
    assert not ping(srv.http_port)
    assert not log_path.exists()  # the working directory is cleaned up


@pytest.mark.parametrize("which", ["http_port", "tcp_port"])
def test_busy_port_gives_a_clear_error(tmp_path: Path, which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        srv = ClickHouseServer(tmp_path / "clickhouse", **{which: port})
        with pytest.raises(RuntimeError, match=rf"port {port} on 127.0.0.1 is already in use"):
            srv.start()
        assert not srv.running
        srv.stop()  # harmless after a failed start


def test_second_server_on_the_same_data_dir_fails_with_the_engine_error(server: ClickHouseServer) -> None:
    other = ClickHouseServer(server.data_dir)
    with pytest.raises(RuntimeError, match=r"exited with status 1 during start-up(.|\n)*Cannot lock file"):
        other.start(timeout=30)
    assert not other.running
    assert ping(server.http_port)  # the first one is unharmed


def test_server_stops_when_its_parent_dies(tmp_path: Path) -> None:
    data_dir = tmp_path / "clickhouse"
    code = (
        "import json, sys, time\n"
        "from infra.clickhouse_server import ClickHouseServer\n"
        "s = ClickHouseServer(sys.argv[1]).start()\n"
        "print(json.dumps({'http_port': s.http_port, 'log': str(s.log_path)}), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None  # stdout=PIPE
    try:
        info = json.loads(parent.stdout.readline())
        assert ping(info["http_port"])
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    assert wait_until(lambda: not ping(info["http_port"]), timeout=20), "the server outlived its parent"
    # It stopped cleanly: the orphan removed its working directory, and the data directory is free again.
    assert wait_until(lambda: not Path(info["log"]).exists(), timeout=20)
    with ClickHouseServer(data_dir) as again:
        assert ping(again.http_port)
