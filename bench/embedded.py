"""``runstream server`` in a child process on a data directory of its own, as a benchmark starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from infra.net import free_port

RUNSTREAM = Path(sys.executable).parent / "runstream"


def server_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the user's runstream (or wandb) settings, pointed at ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    return {
        **env,
        "RUNSTREAM_CONFIG": str(data_dir / "no-config.toml"),
        "RUNSTREAM_DATA_DIR": str(data_dir),
        "RUNSTREAM_CLICKHOUSE_DSN": f"chdb://{data_dir / 'clickhouse'}",
        **(extra or {}),
    }


class EmbeddedServer:
    """``runstream server`` on ``data_dir``, started and healthy when constructed; the local admin (no key)
    logs and reads, as on a laptop. ``env``: settings beside the data directory's (quotas, ...)."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [RUNSTREAM, "server", "--port", str(self.port)],
            env=server_env(data_dir, env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
