"""Where and how a run executes: host, user, platform, interpreter, program, hardware, installed packages."""

from __future__ import annotations

import functools
import getpass
import logging
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil

from runstream.collectors.system import MB, gpu_names

log = logging.getLogger("runstream")

T = TypeVar("T")


def host_info() -> dict[str, Any]:
    """What the run's page shows about its process; a value that cannot be read is None, never an error.

    Keys: host, user, os, platform, python, python_implementation, executable,
    program, args, cwd, pid, started_at (the process's start, Unix time),
    cpu_count, memory_total_mb, and gpu_count and gpus (names) where NVML sees
    NVIDIA GPUs.
    """
    info: dict[str, Any] = {
        "host": _attempt("host", socket.gethostname),
        "user": _attempt("user", getpass.getuser, expected=(KeyError, OSError)),
        "os": platform.system(),
        "platform": _attempt("platform", platform.platform),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable or None,
        "program": _attempt("program", _program),
        "args": list(sys.argv[1:]),
        "cwd": _attempt("cwd", os.getcwd),
        "pid": os.getpid(),
        "started_at": _attempt("started_at", lambda: psutil.Process().create_time()) or time.time(),
        "cpu_count": _attempt("cpu_count", os.cpu_count),
        "memory_total_mb": _attempt("memory_total_mb", lambda: psutil.virtual_memory().total / MB),
    }
    gpus = gpu_names()
    if gpus:
        info["gpu_count"] = len(gpus)
        info["gpus"] = gpus
    return info


def installed_packages() -> list[str]:
    """``name==version`` of every distribution in this environment, sorted: the run's requirements.txt.

    Where a distribution is installed twice on ``sys.path``, the first one (the
    one ``import`` finds) wins. Read once per process: a process that starts hundreds of
    runs (``reinit="create_new"``) would otherwise read every package's metadata for each.
    """
    return list(_installed_packages())


@functools.cache
def _installed_packages() -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:  # noqa: BLE001 - unreadable metadata: leave that distribution out
            continue
        if not name or not version:
            continue
        seen.setdefault(_canonical(name), f"{name}=={version}")
    return tuple(seen[key] for key in sorted(seen))


def _program() -> str | None:
    """The script being run: ``__main__.__file__`` (absolute for scripts and ``-m``), else ``sys.argv[0]``."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file:
        return str(Path(main_file).resolve())
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and Path(argv0).is_file():
        return str(Path(argv0).resolve())
    return argv0 or None  # "-c", or nothing in a REPL


def _canonical(name: str) -> str:
    """PEP 503 normalisation: ``Foo_Bar`` and ``foo-bar`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _attempt(what: str, read: Callable[[], T], expected: tuple[type[BaseException], ...] = ()) -> T | None:
    try:
        return read()
    except expected:
        return None
    except Exception as exc:  # noqa: BLE001 - one unreadable value must not cost the rest
        log.warning("runstream: host %s unavailable: %r", what, exc)
        return None
