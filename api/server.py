"""The embedded server (``runstream server``): API, web UI and the processing logic in one process.

Storage is the embedded ClickHouse engine in the data directory, events are
processed in-process (no Kafka), and a client on loopback needs no key (it is
the machine's own user); a client from elsewhere needs one. The same directory
opened again shows everything that was acknowledged: a batch is answered only
after it is written.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson

from runstream.settings import Settings

log = logging.getLogger("runstream.server")

#: The team of runs that name no entity (``runstream.init``'s default).
DEFAULT_TEAM = "default"


def embedded_settings(
    settings: Settings, data_dir: str | None = None, host: str | None = None, port: int | None = None
) -> Settings:
    """The server's settings: ``--data-dir`` (else RUNSTREAM_DATA_DIR) holds the engine's files and the file store.

    The engine lives in ``<data dir>/clickhouse`` unless RUNSTREAM_CLICKHOUSE_DSN names
    another database and no ``--data-dir`` was given.
    """
    root = Path(data_dir or settings.data_dir).expanduser().resolve()
    dsn = settings.clickhouse_dsn
    if data_dir or dsn == Settings().clickhouse_dsn:
        dsn = f"chdb://{root / 'clickhouse'}"
    return dataclasses.replace(
        settings,
        data_dir=str(root),
        clickhouse_dsn=dsn,
        kafka="",
        host=host or settings.host,
        port=port or settings.port,
    )


class ServerError(RuntimeError):
    """Why the server cannot start, and what to do about it."""


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"cannot listen on {host}:{port} ({exc.strerror}): is another server running there? "
                f"Pass --port to use another port"
            ) from None


def _open_storage(settings: Settings) -> None:
    from runstream.storage import accounts
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate_once

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        client = connect(settings.clickhouse_dsn)
        migrate_once(client)
        accounts.ensure_team(client, DEFAULT_TEAM)  # where runs go without an entity: members and keys start there
    except Exception as exc:  # noqa: BLE001 - the engine's own message, with what to do
        raise ServerError(
            f"cannot open the database in {settings.data_dir} ({type(exc).__name__}: {exc}). "
            "Another runstream server may be using that directory: stop it, or pass --data-dir"
        ) from None


def serve(settings: Settings, demo: bool = False, log_level: str = "warning") -> None:
    """Run the embedded server until Ctrl-C (or SIGTERM); ``demo`` logs the demo sweep into it once it is up."""
    import uvicorn

    from runstream.api.app import create_app
    from runstream.api.backend import Backend

    _check_port(settings.host, settings.port)
    _open_storage(settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
    app = create_app(settings, Backend(settings, local_admin=True))
    print(f"runstream server at {url}  (data in {settings.data_dir}; Ctrl-C stops it)", flush=True)
    if demo:
        threading.Thread(target=_load_demo, args=(url,), name="runstream-demo", daemon=True).start()
    # No proxy headers: who is local is decided by the socket's peer alone (see auth.py).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )


def _load_demo(url: str) -> None:
    """Wait for the server, then run ``runstream demo`` against it in a child process (the SDK's own process)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/v1/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    try:  # a data directory that has the demo already: show it, do not log it twice
        with urllib.request.urlopen(f"{url}/api/v1/projects/default/demo", timeout=10) as response:
            if orjson.loads(response.read()).get("run_count"):
                print(f"the demo is loaded already: open {url}", flush=True)
                return
    except OSError:
        pass  # 404: not loaded yet
    print("logging the demo sweep (24 runs, about 20 s) ...", flush=True)
    # This machine's own server needs no key (a key for another server would be refused).
    env = {k: v for k, v in os.environ.items() if k != "RUNSTREAM_API_KEY"} | {"RUNSTREAM_URL": url}
    demo = subprocess.Popen(
        [sys.executable, "-m", "runstream.demo", "--url", url], env=env, stdout=subprocess.PIPE, text=True
    )
    atexit.register(_stop, demo)  # Ctrl-C on the server ends the demo too
    out, _ = demo.communicate()  # the runs' console lines, then the demo's summary (JSON) as the last line
    if demo.returncode != 0:
        print(f"the demo failed (exit {demo.returncode}); the server keeps running", file=sys.stderr, flush=True)
        return
    sweep_url = orjson.loads(out.splitlines()[-1])["sweep_url"]
    print(f"demo loaded: open {url}  (its sweep: {sweep_url})", flush=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
