"""A ClickHouse server for development and tests, served by chdb (no ClickHouse install needed).

chdb runs ClickHouse in-process, and only one process may open a data directory.
To let several processes (test process, Faust workers, the API) share one
database, this module runs chdb's full clickhouse-local engine in a dedicated
child process and has it listen with the real ClickHouse HTTP and native TCP
protocols on 127.0.0.1; everyone else connects as to any ClickHouse server, e.g.
``clickhouse_connect.get_client(dsn=server.dsn)``.

FOR DEVELOPMENT AND TESTS ONLY. Production uses the official ClickHouse server.
The ``default`` user has no password and full rights; the server binds to
127.0.0.1 only, so only local processes can reach it.

How the child works (chdb 4.4.0 / chdb-core 26.9; it relies on undocumented
behaviour, hence the pinned version):

* ``chdb._chdb.query(sql, "TabSeparated", path=DATA_DIR)`` runs a full
  clickhouse-local that reads ``config.xml`` from the current working directory
  (``listen_host``, ``http_port``, ``tcp_port``, ...). The output format becomes
  the HTTP default format, and clickhouse-connect's handshake expects
  TabSeparated.
* ``SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP`` opens the listeners,
  which live only while that call runs. The call's last statement therefore
  blocks: it reads a named pipe (``SELECT * FROM file('stop.fifo', 'LineAsString')``)
  and returns, closing the listeners, once a line is written to the pipe and it
  is closed. On the way out the engine waits up to 5 s for open connections
  (see ``_KEEP_ALIVE_TIMEOUT``).
* The call runs in a thread (it releases the GIL); the child's main thread
  handles SIGTERM/SIGINT and polls the parent's pid (every 0.2 s), and in
  either case writes the stop line, so the server never outlives its parent.
  This works once per process (a second call fails with a LOGICAL_ERROR), so the
  child exits right after it; the serving process cannot run queries itself.
* A failing statement (port in use, data directory locked by another chdb)
  does not raise: chdb prints the error and the call returns without the stop
  line. The child then exits with status 1 and ``start()`` raises with its output.
* ``<logger>`` in config.xml has no effect on the serving session; the child's
  stdout/stderr (``log_path``, in a temporary working directory that ``stop()``
  removes) is its log.
* A SIGKILLed child leaves a consistent data directory (its lock is released
  with the process); the next ``start()`` on it works.

A cluster (``cluster_servers``): several such servers, one per shard, each with a
``<remote_servers>`` entry naming them all, ``{shard}``/``{replica}`` macros, and the
settings a cluster's clients need in the default profile (``distributed_foreground_insert
= 1``, ``distributed_product_mode = 'global'``), so ``Distributed`` tables over plain
MergeTree tables work as on real servers. What chdb's clickhouse-local cannot do
(chdb 4.4.0, engine 26.9), so a dev cluster has no replication:

* ``ON CLUSTER`` fails with "Code: 392. DB::Exception: Replicated DDL queries are
  disabled. (QUERY_IS_PROHIBITED)": clickhouse-local runs no distributed DDL worker.
  Apply DDL on each server (``runstream migrate --cluster NAME --no-replication``).
* Replicated tables are created (each server has ClickHouse's in-process test Keeper,
  ``testkeeper``, since there is no Keeper to share) but stay read-only: their replica
  never activates, and ``system.errors`` says "Parameter 'interserver_http(s)_port'
  required for replication is not specified in configuration file." whatever the
  config says (only the real server sets up the interserver address). Inserts into
  them hang and ALTERs fail with TABLE_IS_READ_ONLY; creating them checks their DDL.

By hand:  python -m infra.clickhouse_server --data-dir DIR [--http-port 8123] [--tcp-port 9000]
prints the DSN and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from infra.net import HOST, accepts_connections, free_port

_STOP_LINE = "stop"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Seconds the child gives chdb to return after the stop line (it waits for open connections).
_CHILD_STOP_GRACE = 30.0
# Seconds an idle HTTP keep-alive connection stays open (the engine's default is 30). On stop the
# engine waits up to 5 s for open connections, and clickhouse-connect keeps its pooled connections
# open (even after Client.close()), so the default made every stop take 5 s; with 1 s it takes ~1 s.
# clickhouse-connect transparently reconnects when it finds a pooled connection closed.
_KEEP_ALIVE_TIMEOUT = 1


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR, as ClickHouse itself binds: a port in TIME_WAIT after a stop counts as free.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    # http.client, not urllib: no proxy from the environment may get in the way of 127.0.0.1.
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@dataclass(frozen=True)
class ClusterNode:
    """A server's place in a dev cluster: one server (replica) per shard, all on 127.0.0.1."""

    name: str
    #: The native TCP port of every shard's server, shard 1 first.
    shard_tcp_ports: tuple[int, ...]
    #: This server's shard number, from 1.
    shard: int


def _cluster_xml(node: ClusterNode, users_path: Path) -> str:
    shards = "".join(
        f"<shard><internal_replication>true</internal_replication><replica><host>{HOST}</host><port>{port}</port>"
        "</replica></shard>"
        for port in node.shard_tcp_ports
    )
    return f"""    <remote_servers><{node.name}>{shards}</{node.name}></remote_servers>
    <macros><shard>{node.shard}</shard><replica>replica{node.shard}</replica></macros>
    <!-- No Keeper to share: the in-process test Keeper lets Replicated tables be created (read-only). -->
    <zookeeper><implementation>testkeeper</implementation></zookeeper>
    <users_config>{users_path}</users_config>
"""


# The users clickhouse-local has without a users config, with the settings a cluster's clients need
# (runstream.storage.cluster.Cluster.required_settings; docs/storage.md, "On a ClickHouse cluster").
_CLUSTER_USERS_XML = """<clickhouse>
    <profiles><default>
        <distributed_foreground_insert>1</distributed_foreground_insert>
        <distributed_product_mode>global</distributed_product_mode>
    </default></profiles>
    <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile>
        <quota>default</quota><access_management>1</access_management></default></users>
    <quotas><default></default></quotas>
</clickhouse>
"""


def _config_xml(http_port: int, tcp_port: int, display_name: str, cluster: str = "") -> str:
    return f"""<clickhouse>
    <!-- Written by infra/clickhouse_server.py: dev/test server, user default has no password. -->
    <listen_host>{HOST}</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <!-- Lets the parent check that /ping was answered by this server and not another one. -->
    <display_name>{display_name}</display_name>
    <!-- Idle keep-alive connections are closed soon, so they hold a stop up for 1 s instead of 5. -->
    <keep_alive_timeout>{_KEEP_ALIVE_TIMEOUT}</keep_alive_timeout>
{cluster}</clickhouse>
"""


class ClickHouseServer:
    """ClickHouse (chdb) on 127.0.0.1 in a child process; ``start``/``stop`` may be repeated on the same data."""

    def __init__(
        self,
        data_dir: str | Path,
        http_port: int | None = None,
        tcp_port: int | None = None,
        cluster: ClusterNode | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.http_port = http_port or free_port()
        self.tcp_port = tcp_port or free_port()
        self.cluster = cluster
        # Set by start(): seconds from spawning the child to the first good /ping.
        self.startup_seconds: float | None = None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"clickhouse://default:@{HOST}:{self.http_port}/default"

    @property
    def log_path(self) -> Path | None:
        """The child's output (chdb's errors included) while it runs; removed by stop()."""
        return None if self._workdir is None else self._workdir / "server.log"

    def start(self, timeout: float = 60) -> ClickHouseServer:
        """Spawn the server and wait until it answers ``/ping``; raise RuntimeError if it cannot."""
        if self.running:
            return self
        self.stop()  # tidy up after a child that died on its own (its working directory)
        for name, port in (("HTTP", self.http_port), ("TCP", self.tcp_port)):
            if _port_in_use(port):
                raise RuntimeError(f"cannot start ClickHouse: {name} port {port} on {HOST} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="runstream-clickhouse-"))
        display_name = f"runstream-dev-{uuid.uuid4().hex[:12]}"
        cluster = ""
        if self.cluster is not None:
            (self._workdir / "users.xml").write_text(_CLUSTER_USERS_XML)
            cluster = _cluster_xml(self.cluster, self._workdir / "users.xml")
        (self._workdir / "config.xml").write_text(_config_xml(self.http_port, self.tcp_port, display_name, cluster))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable, "-m", "infra.clickhouse_server", "_serve",
            "--data-dir", str(self.data_dir),
            "--workdir", str(self._workdir),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        began = time.monotonic()
        with open(self._workdir / "server.log", "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=_PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches only the parent, which stops the child cleanly.
                start_new_session=True,
            )
        try:
            self._wait_ready(display_name, deadline=began + timeout)
        except BaseException:
            self._terminate(timeout=5)
            self._remove_workdir()  # the error message carries the log's tail
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, display_name: str, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"ClickHouse (chdb) exited with status {self._proc.returncode} during start-up "
                    f"(http port {self.http_port}, tcp port {self.tcp_port}, data {self.data_dir}); "
                    f"its output:\n{self._log_tail()}"
                )
            try:
                if _http_get(self.http_port, "/ping", timeout=1) == (200, "Ok.\n"):
                    status, body = _http_get(self.http_port, "/?query=" + quote("SELECT displayName()"))
                    if status == 200 and body.strip() == display_name:
                        if not accepts_connections(self.tcp_port):
                            raise RuntimeError(f"ClickHouse answers on HTTP but not on TCP port {self.tcp_port}")
                        return
                    raise RuntimeError(
                        f"cannot start ClickHouse: another server answers on {HOST}:{self.http_port} "
                        f"(display name {body.strip()!r})"
                    )
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ClickHouse (chdb) did not answer /ping on {HOST}:{self.http_port} within the timeout; "
                    f"its output:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(tail) or "(empty log)"

    def _terminate(self, timeout: float) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()  # the child turns SIGTERM into the stop line
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self, timeout: float = 15) -> None:
        """Stop cleanly (open connections get up to ~5 s), killing the child if it takes longer than timeout."""
        self._terminate(timeout)
        self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> ClickHouseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_servers(data_root: str | Path, shards: int = 2, name: str = "runstream") -> list[ClickHouseServer]:
    """Servers (not started) that make up cluster ``name``: one per shard, data in ``data_root/shardN``."""
    chosen: list[int] = []
    while len(chosen) < 2 * shards:  # free_port may hand out a port twice; the servers need distinct ones
        if (port := free_port()) not in chosen:
            chosen.append(port)
    ports = list(zip(chosen[::2], chosen[1::2]))
    tcp_ports = tuple(tcp for _, tcp in ports)
    return [
        ClickHouseServer(Path(data_root) / f"shard{shard}", http, tcp, ClusterNode(name, tcp_ports, shard))
        for shard, (http, tcp) in enumerate(ports, start=1)
    ]


# --- the child ---------------------------------------------------------------------------------------------


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _serve(data_dir: Path, workdir: Path, parent_pid: int) -> int:
    """Run in the child: serve until SIGTERM/SIGINT or the parent's death. Returns the exit status."""
    if os.getppid() != parent_pid:
        print("parent already gone; not starting", flush=True)
        return 1
    fifo = workdir / "stop.fifo"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo, 0o600)
    # chdb reads config.xml from the working directory, at import too (it runs SELECT version() then).
    os.chdir(workdir)

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from chdb import _chdb

    # TCP before HTTP: once /ping answers, both listeners are up (a failing statement ends the call).
    sql = f"SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; SELECT * FROM file({_sql_string(str(fifo))}, 'LineAsString')"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = _chdb.query(sql, "TabSeparated", path=str(data_dir))  # type: ignore[attr-defined]  # compiled
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    server = threading.Thread(target=run, name="chdb-server", daemon=True)
    server.start()
    print(f"chdb {_chdb_version()} serving {data_dir} (pid {os.getpid()})", flush=True)

    stop_sent_at: float | None = None
    orphaned = False
    while server.is_alive():
        server.join(0.2)
        if stop_sent_at is None and (stop_requested.is_set() or os.getppid() != parent_pid):
            if not stop_requested.is_set():
                print("parent process is gone: stopping", flush=True)
                stop_requested.set()
                orphaned = True
            if _write_stop_line(fifo):
                stop_sent_at = time.monotonic()
        elif stop_sent_at is not None and time.monotonic() - stop_sent_at > _CHILD_STOP_GRACE:
            print("chdb did not return after the stop line: exiting anyway", flush=True)
            return 1

    if "error" in outcome:
        print(f"chdb failed: {outcome['error']!r}", flush=True)
        return 1
    result = str(outcome.get("result", ""))
    if _STOP_LINE not in result.split():
        # A failing statement (port in use, locked data directory) makes chdb print the error and return early.
        print("chdb returned before being asked to stop (see the error above)", flush=True)
        return 1
    print("stopped", flush=True)
    if orphaned:  # nobody is left to clean up after us
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _write_stop_line(fifo: Path) -> bool:
    """Write the stop line if chdb is reading the pipe; False if it is not reading (yet)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet: chdb is still starting up
            return False
        raise
    try:
        os.write(fd, f"{_STOP_LINE}\n".encode())
    finally:
        os.close(fd)
    return True


def _chdb_version() -> str:
    try:
        import chdb

        return f"{chdb.__version__} (engine {chdb.engine_version})"
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def _serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.clickhouse_server _serve")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    status = _serve(args.data_dir, args.workdir, args.parent_pid)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the engine has shut down already, and its threads must not race Python's exit.
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        return _serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m infra.clickhouse_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the database's directory (created if missing)")
    parser.add_argument("--http-port", type=int, help="HTTP port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--tcp-port", type=int, help="native TCP port on 127.0.0.1 (default: a free port)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    server = ClickHouseServer(args.data_dir, http_port=args.http_port, tcp_port=args.tcp_port)
    try:
        server.start()
        print(f"ClickHouse (chdb) is ready in {server.startup_seconds:.1f} s — DEV/TEST ONLY, no password")
        print(f"  data: {server.data_dir}   log: {server.log_path}")
        print(f"  native TCP: {HOST}:{server.tcp_port}")
        print(f"  DSN: {server.dsn}   — Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print(f"ClickHouse exited unexpectedly; log {server.log_path}:\n{server._log_tail()}", file=sys.stderr)
                return 1
    finally:
        print("stopping ClickHouse ...", file=sys.stderr, flush=True)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
