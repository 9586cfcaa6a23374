"""What a resumed run continues from: its last step, name, config, tags and summary.

Two sources, both optional:

- **this machine**: the run's directory (``run.json``, rewritten as the run changes, and the
  spool's ``progress``, rewritten by every drain that spooled rows), which knows what this
  machine logged even when it never reached the server (offline, a SIGKILL, an outage);
- **the server**: ``GET /runs/{team}/{project}/{id}`` and ``.../statistics``, which know what
  every machine logged, so a preempted job restarted on another node continues too.

When both know the run, the server's metadata wins (it has the edits made through the API)
and the last step is the larger of the two.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from runstream import names

#: Fields of the run's record that a resume restores (besides config and summary).
META_FIELDS = ("tags", "notes", "group", "job_type")
RECORD_FILE = "run.json"
PROGRESS_FILE = "progress"  # in the spool directory: {"last_step": ..., "last_seq": ...}


class ServerUnreachable(RuntimeError):
    """The server could not say whether it knows the run."""


class KeyCannotRead(ServerUnreachable):
    """The server refused to answer the key (403): a key of scope ingest writes runs and reads nothing."""

    def __str__(self) -> str:
        return f"a key of scope ingest cannot ask the server about a run, it can only write runs ({self.args[0]})"


@dataclass
class Previous:
    """A run as it stood before this process resumed it."""

    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: The largest step stored, or None when nothing was logged.
    last_step: int | None = None
    #: The largest sequence number used (on this machine, or folded by the server): a resume continues after it.
    last_seq: int | None = None
    #: Per-metric statistics (count, min, max, mean, last) from the server.
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The server's run summary.
    summary: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    #: How many times the server has it rewound (init(resume_from=...)).
    rewinds: int = 0


# -- fork_from and resume_from: "RUN_ID?_step=N" ------------------------------------------------

_STEP = re.compile(r"[0-9]{1,19}")
MAX_STEP = 2**63 - 1  # the event contract's


def run_at_step(value: Any, argument: str) -> tuple[str, int]:
    """``init(fork_from=...)`` or ``init(resume_from=...)``, spelt as wandb does ("RUN_ID?_step=N"), as
    (run id, step); ``ValueError`` saying what is wrong otherwise."""
    form = "'RUN_ID?_step=N' (the run's id, then the step, e.g. 'a1b2c3?_step=200')"
    if not isinstance(value, str):
        raise ValueError(f"init({argument}=...) must be a string {form}, got {type(value).__name__}")
    run_id, sep, query = value.partition("?")
    if not sep or not query.startswith("_step="):
        raise ValueError(f"init({argument}={value!r}) must be {form}")
    if not names.is_run_id(run_id):
        raise ValueError(f"init({argument}={value!r}): the run id {run_id!r} must be {names.RUN_ID_RULE}")
    step = query[len("_step=") :]
    if not _STEP.fullmatch(step) or int(step) > MAX_STEP:
        raise ValueError(f"init({argument}={value!r}): the step {step!r} must be a whole number from 0 to {MAX_STEP}")
    return run_id, int(step)


# -- this machine ------------------------------------------------------------------------------


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(value))
        os.replace(tmp, path)
    except OSError:  # a full disk: the old file stays whole, and no partial copy is left beside it
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def read_progress(spool_dir: Path) -> tuple[int | None, int | None]:
    """(last step, last seq) a run's spool recorded; an older spool kept only ``last_seq``."""
    progress = read_json(spool_dir / PROGRESS_FILE)
    last_step, last_seq = progress.get("last_step"), progress.get("last_seq")
    if last_seq is None:
        try:
            last_seq = int((spool_dir / "last_seq").read_text())
        except (FileNotFoundError, ValueError):
            pass
    return (last_step if isinstance(last_step, int) else None), (last_seq if isinstance(last_seq, int) else None)


def from_local(run_dir: Path) -> Previous:
    record = read_json(run_dir / RECORD_FILE)
    last_step, last_seq = read_progress(run_dir / "spool")
    return Previous(
        name=record.get("name"),
        config=record.get("config") or {},
        meta={k: record[k] for k in META_FIELDS if record.get(k) is not None},
        last_step=last_step,
        last_seq=last_seq,
        where=str(run_dir),
    )


# -- the server --------------------------------------------------------------------------------


def server_url(url: str, files_url: str) -> str | None:
    """The API that can answer for a run: the run's URL when it is the API, else its files URL."""
    for candidate in (url, files_url):
        if candidate and urlparse(candidate).scheme in ("http", "https"):
            return candidate.rstrip("/")
    return None


def from_server(
    base: str, api_key: str, team: str, project: str, run_id: str, timeout: float = 10.0
) -> Previous | None:
    """The run as the server has it, or None when the server does not know it; ``ServerUnreachable``
    when it gives no answer (down, a refused key, something else at that address)."""
    from runstream.public_api import (
        Api,
        ApiError,
        _run_path,
    )  # the client users read runs with; it imports Run, so late

    api = Api(url=base, api_key=api_key, timeout=timeout)
    try:
        run = api._get_run(team, project, run_id)
        stats = api._request("GET", _run_path(team, project, run_id) + "/statistics")
    except ApiError as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise KeyCannotRead(str(exc)) from None
        raise ServerUnreachable(str(exc)) from None
    return Previous(
        name=run.get("name"),
        config=run.get("config") or {},
        meta={k: run[k] for k in META_FIELDS if run.get(k) not in (None, "", [])},
        last_step=stats.get("last_step"),
        last_seq=stats.get("last_seq"),
        metrics=stats.get("metrics") or {},
        summary=run.get("summary") or {},
        where=base,
        rewinds=len(run.get("rewinds") or ()),
    )


def combine(local: Previous | None, server: Previous | None) -> Previous | None:
    """One view of the run: the server's metadata over this machine's, the larger last step."""
    if local is None or server is None:
        return local or server
    steps = [s for s in (local.last_step, server.last_step) if s is not None]
    seqs = [s for s in (local.last_seq, server.last_seq) if s is not None]
    return Previous(
        name=server.name or local.name,
        config={**local.config, **server.config},
        meta={**local.meta, **server.meta},
        last_step=max(steps) if steps else None,
        last_seq=max(seqs) if seqs else None,
        metrics=server.metrics,
        summary=server.summary,
        where=f"{local.where} and {server.where}",
        rewinds=server.rewinds,
    )


# -- resume="auto": the last run started in a directory, until it ends well -----------------------

AUTO_RESUME_FILE = "resume.json"


def auto_resume_id(root: Path) -> str | None:
    run_id = read_json(root / AUTO_RESUME_FILE).get("run_id")
    return run_id if isinstance(run_id, str) and run_id else None


def remember_for_auto_resume(root: Path, run_id: str) -> None:
    write_json(root / AUTO_RESUME_FILE, {"run_id": run_id})


def forget_auto_resume(root: Path, run_id: str) -> None:
    if auto_resume_id(root) == run_id:
        (root / AUTO_RESUME_FILE).unlink(missing_ok=True)
