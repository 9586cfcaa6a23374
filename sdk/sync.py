"""``runstream sync``: send what runs left in their spools (offline runs, crashes, outages), and
retry what the server refused for good (``--quarantined``).

Sending twice changes nothing downstream: events carry (run, seq), and the
spool's acknowledged cursor means a finished sync sends nothing the next time.

This user's runs with something unsent are remembered in a small registry, a
folder of one-line files (run directory, host) in the config file's directory
(``~/.config/runstream/runstream-unsent/``): a run is entered when it starts and
leaves once everything it spooled was acknowledged. ``runstream sync --all`` and
``runstream status`` read it (with the runs folders of the current directory and
``RUNSTREAM_DIR``), so runs started from other directories are found too. A home
directory shared by several nodes shares the registry: an entry whose run directory
is not visible here is dropped only by its own host (or after ``LEFTOVER_MAX_AGE``).

``init()`` hands the leftovers that log to its own server to ``resend_leftovers``
in the background; only runs started on this host (``run.json``'s ``host``), whose
lock this host can rely on. A resend is harmless to abandon: it gives way to an
``init()`` resuming the run at once (between batches), as the markers below say.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from runstream.lifecycle import LEGACY_RUNS_DIR_NAMES, RUNS_DIR_NAME
from runstream.sender import Delivery, RunIdentity, deliver, upload_files
from runstream.spool import (
    QUARANTINE_DIR,
    Cursor,
    Spool,
    SpoolLocked,
    inspect,
    quarantined,
    read_records,
    this_host,
    write_quarantine,
)
from runstream.transport import TransportError, key_hint, open_transport, open_uploader

log = logging.getLogger("runstream")

#: Leftovers an init() looks at are runs remembered at most this long ago (older ones: `runstream sync --all`).
LEFTOVER_MAX_AGE = 30 * 86400
#: ``resending.<pid>`` in a spool: a background resend holds it, or is about to (written before its lock is
#: taken, removed after it is let go). An init() resuming the run writes ``WANTED`` and waits while the
#: resending process lives, at most ``RESUME_WAIT`` s (one HTTP request's timeout and a margin).
RESENDING = "resending."
WANTED = "wanted"
RESUME_WAIT = 35.0
#: A ``wanted`` file older than this is left over from an init() that died: ignored.
WANTED_MAX_AGE = 2 * RESUME_WAIT


@dataclass
class SyncResult:
    run_dir: Path
    sent: int = 0
    skipped: str = ""
    #: Records the server refused for good during this sync, set aside in the run's quarantine.
    quarantined: int = 0
    #: Bytes of the spool that were not whole records (torn by a crash, a power loss or a full disk): skipped.
    damaged_bytes: int = 0
    #: With ``--quarantined``: quarantined records sent now, and those still refused (with why).
    retried: int = 0
    still_refused: list[str] = field(default_factory=list)
    #: The server refused the key or the address (``skipped`` says so): other runs to it would be refused too.
    refused: bool = False
    #: Skipped because a process holds the run (or wants it back): nothing is wrong with the server.
    busy: bool = False


# -- the registry of runs with something unsent ---------------------------------------------------


def registry_dir() -> Path:
    """Where this user's runs with unsent events are remembered: a folder of its own in the config directory."""
    from runstream.settings import config_path

    return config_path().parent / "runstream-unsent"


def _entry(run_dir: Path) -> Path:
    return registry_dir() / hashlib.sha256(str(run_dir.absolute()).encode()).hexdigest()[:24]


def remember(run_dir: Path) -> None:
    """Enter ``run_dir`` in the registry (it has, or may come to have, something unsent)."""
    entry = _entry(run_dir)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{run_dir.absolute()}\t{this_host()}\n")
    os.replace(tmp, entry)


def forget(run_dir: Path) -> None:
    """``run_dir`` has nothing unsent (and nothing quarantined): it leaves the registry."""
    _entry(run_dir).unlink(missing_ok=True)


def remembered(max_age: float | None = None) -> list[Path]:
    """Run directories in the registry that exist here. An entry whose directory is gone is dropped when this
    host made it, or when it is older than ``LEFTOVER_MAX_AGE`` (another node's may be on a disk not seen here)."""
    found = []
    try:
        entries = list(registry_dir().iterdir())
    except OSError:
        return []
    now, here = time.time(), this_host()
    for entry in sorted(entries):
        if entry.name.endswith(".tmp"):
            continue
        try:
            path, _, host = entry.read_text().strip().partition("\t")
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        run_dir = Path(path)
        if not (run_dir / "spool").is_dir():
            if host == here or age > LEFTOVER_MAX_AGE:
                entry.unlink(missing_ok=True)
            continue
        if max_age is None or age <= max_age:
            found.append(run_dir)
    return found


def settle(run_dir: Path) -> None:
    """Forget ``run_dir`` when nothing of it is left to send (its spool is acknowledged, its quarantine empty);
    its staged artifact files (``artifacts/``, runstream.artifacts.STAGING_DIR) are then not needed either."""
    if not inspect(run_dir / "spool", quick=True).events and not quarantined(run_dir / QUARANTINE_DIR):
        forget(run_dir)
        shutil.rmtree(run_dir / "artifacts", ignore_errors=True)


def default_roots() -> list[Path]:
    """The runs folders this machine uses by default: the current directory's and ``RUNSTREAM_DIR``'s."""
    roots = [Path(".")]
    if os.environ.get("RUNSTREAM_DIR"):
        roots.append(Path(os.environ["RUNSTREAM_DIR"]))
    return roots


def all_run_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Every run directory known on this machine: ``extra``, the default runs folders, the registry."""
    seen: dict[Path, None] = {}
    for run_dir in [*find_run_dirs([*extra, *default_roots()]), *remembered()]:
        seen.setdefault(run_dir.absolute(), None)
    return list(seen)


def find_run_dirs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Run directories in ``paths``: a run directory itself, a ``runstream-runs/`` root (or the
    ``runstream/`` of older versions), or a folder holding one."""
    for path in map(Path, paths):
        if (path / "spool").is_dir() and (path / "run.json").exists():
            yield path
            continue
        roots = [path / name for name in (RUNS_DIR_NAME, *LEGACY_RUNS_DIR_NAMES) if (path / name).is_dir()] or [path]
        for root in roots:
            yield from sorted(p for p in root.glob("run-*") if (p / "spool").is_dir() and not p.is_symlink())


# -- a background resend and an init() resuming the same run ------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def resending(spool_dir: Path) -> bool:
    """A live process (of this host: resends only touch runs started here) is resending this spool."""
    for marker in spool_dir.glob(RESENDING + "*"):
        try:
            pid = int(marker.name[len(RESENDING) :])
        except ValueError:
            continue
        if _pid_alive(pid):
            return True
    return False


def wanted(spool_dir: Path) -> bool:
    """An init() resuming the run waits for the spool: a resend gives way at once."""
    try:
        return time.time() - (spool_dir / WANTED).stat().st_mtime < WANTED_MAX_AGE
    except OSError:
        return False


class _GaveWay(TransportError):
    """A background resend stops: a run resuming wants the spool."""


# -- sending ----------------------------------------------------------------------------------------


async def sync_run(
    run_dir: Path,
    url: str | None,
    api_key: str = "",
    progress: bool = True,
    files_url: str | None = None,
    *,
    quarantined_too: bool = False,
    yielding: bool = False,
) -> SyncResult:
    """Send the unacknowledged part of ``run_dir``'s spool, then, with ``quarantined_too``, its quarantined
    batches again. What the server refuses for good is set aside in the quarantine.

    ``yielding`` (a background resend): a ``resending.<pid>`` marker is in the spool from before its lock
    is taken until after it is let go, and the resend stops between batches as soon as an ``init()``
    resuming the run says it wants the spool (``wanted``): the resumed run sends the rest itself."""
    meta = orjson.loads((run_dir / "run.json").read_bytes())
    result = SyncResult(run_dir)
    target = url or meta.get("url")
    if not target:
        result.skipped = "no URL to send to: pass --url or set RUNSTREAM_URL"
        return result
    spool_dir = run_dir / "spool"
    marker = spool_dir / f"{RESENDING}{os.getpid()}"
    if yielding:
        try:
            marker.write_text("")
        except OSError:
            return result  # not even a marker: leave the run to its next sync
    try:
        try:
            spool = Spool(spool_dir, writer=False, local=meta.get("host") == this_host())
        except SpoolLocked:
            result.skipped, result.busy = "the run is still running (its process holds the spool)", True
            return result
        try:
            await _send_spool(
                spool, run_dir, meta, target, api_key, progress, files_url, quarantined_too, yielding, result
            )
        finally:
            spool.close()
    finally:
        if yielding:
            marker.unlink(missing_ok=True)
    if not result.skipped:
        try:
            settle(run_dir)
        except OSError:
            pass
    return result


async def _send_spool(
    spool: Spool,
    run_dir: Path,
    meta: dict,
    target: str,
    api_key: str,
    progress: bool,
    files_url: str | None,
    quarantined_too: bool,
    yielding: bool,
    result: SyncResult,
) -> None:
    transport = open_transport(target, api_key)
    uploader = open_uploader(transport, files_url or meta.get("files_url", ""), api_key)
    identity = RunIdentity(meta["team"], meta["project"], meta["run_id"])
    key = identity.key

    async def attempt(records: list[tuple[str, bytes]]) -> None:
        if yielding and wanted(spool.dir):  # also between the requests that narrow a refused batch down
            raise _GaveWay("a resumed run wants the spool (it sends the rest)")
        await upload_files(uploader, identity, run_dir / "files", records)
        await transport.send(records, key)

    bar = None
    total = spool.pending_bytes()
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=run_dir.name, file=sys.stderr, leave=True)
    try:
        cursor = spool.acked_cursor()
        while True:
            ends: list[Cursor] = []
            records, after = spool.read(cursor, ends=ends)
            if not records:
                if after != cursor:  # damaged bytes only
                    spool.ack(after)
                    cursor = after
                    continue
                break
            done = Delivery()
            error = ""
            try:
                await deliver(attempt, records, done)
            except _GaveWay as exc:
                error, result.busy = str(exc), True
            except TransportError as exc:
                error = _failed(exc, result.sent, target, api_key)
                result.refused = exc.refused
            # What was found before a failure is kept: the refusals in the settled prefix set aside, the prefix
            # acknowledged (refusals after it are found again next time).
            settled = done.prefix()
            refusals = [(i, e) for i, e in done.refused if i < settled]
            if refusals:
                try:
                    refused = [records[i] for i, _ in refusals]
                    write_quarantine(run_dir / QUARANTINE_DIR, refused, [e for _, e in refusals], target)
                except OSError as exc:  # a full disk: they stay in the spool
                    result.skipped = f"could not set refused events aside in {run_dir / QUARANTINE_DIR}: {exc}"
                    break
            end = after if settled == len(records) else ends[settled - 1] if settled else cursor
            if end != cursor:
                spool.ack(end)
            if bar is not None:
                bar.update(sum(len(topic) + len(event) + 2 for topic, event in records[:settled]))
            result.sent += settled - len(refusals)
            result.quarantined += len(refusals)
            cursor = end
            if error:
                result.skipped = error
                break
        result.damaged_bytes += spool.damaged_bytes
        if quarantined_too and not result.skipped:
            await _retry_quarantined(run_dir, attempt, target, api_key, result)
    finally:
        if bar is not None:
            bar.close()
        await transport.close()


async def _retry_quarantined(run_dir: Path, attempt, target: str, api_key: str, result: SyncResult) -> None:  # noqa: ANN001
    """Send each quarantined batch again: what goes through leaves the quarantine, the rest stays (with the new reason)."""
    for path, _ in quarantined(run_dir / QUARANTINE_DIR):
        records = read_records(path)
        try:
            refused = await deliver(attempt, records) if records else []
            if refused:
                kept = write_quarantine(path.parent, [records[i] for i, _ in refused], [e for _, e in refused], target)
                result.still_refused.append(f"{len(refused)} event(s), now in {kept}: {refused[0][1].reason}")
        except TransportError as exc:
            result.skipped = _failed(exc, result.retried, target, api_key, "quarantined events")
            result.refused = exc.refused
            return
        except OSError as exc:
            result.skipped = f"could not rewrite {path}: {exc}"
            return
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        result.retried += len(records) - len(refused)


def _failed(exc: TransportError, sent: int, target: str, api_key: str, what: str = "events") -> str:
    if exc.blames_key:
        return (
            f"{target} refused {key_hint(api_key)} ({exc.reason}) after {sent} {what}: "
            "pass the right key with --api-key KEY (or set RUNSTREAM_API_KEY)"
        )
    if exc.refused:  # a wrong address, or a proxy's 4xx
        return f"{target} answered {exc.reason} after {sent} {what}: check the address (--url) and any proxy"
    return f"sending failed after {sent} {what}: {exc}; run sync again later"


def sync(
    paths: Iterable[str | Path],
    url: str | None = None,
    api_key: str = "",
    progress: bool = True,
    files_url: str | None = None,
    *,
    quarantined_too: bool = False,
    run_dirs: Iterable[Path] | None = None,
) -> list[SyncResult]:
    """Sync the runs in ``paths`` (or exactly ``run_dirs``). ``api_key`` "" means: each run's server's key
    from the settings."""
    dirs = list(run_dirs) if run_dirs is not None else list(find_run_dirs(paths))

    async def run_all() -> list[SyncResult]:
        return [
            await sync_run(run_dir, url, api_key, progress, files_url, quarantined_too=quarantined_too)
            for run_dir in dirs
        ]

    return asyncio.run(run_all())


# -- leftovers: what earlier runs on this machine did not get through, sent by the next init() ---------


def leftovers(url: str, roots: Iterable[Path] = ()) -> list[Path]:
    """Runs started on this host, not running, with unacknowledged events, that logged to ``url`` (online runs
    only). Runs with nothing left (nothing unsent, nothing quarantined) leave the registry on the way."""
    found = []
    candidates: dict[Path, None] = {}
    for run_dir in [*find_run_dirs(roots), *remembered(LEFTOVER_MAX_AGE)]:
        candidates.setdefault(run_dir.absolute(), None)
    here = this_host()
    for run_dir in candidates:
        try:
            meta = orjson.loads((run_dir / "run.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if meta.get("host") != here:  # another node's run (a shared disk): its lock may not reach us
            continue
        pending = inspect(run_dir / "spool", quick=True)
        if pending.live:
            continue
        if not pending.events:
            if not quarantined(run_dir / QUARANTINE_DIR):
                forget(run_dir)
            continue
        if meta.get("mode") == "online" and str(meta.get("url", "")).rstrip("/") == url.rstrip("/"):
            found.append(run_dir)
    return found


def resend_leftovers(url: str, api_key: str, roots: Iterable[Path], skip: Iterable[Path] = ()) -> threading.Thread:
    """Offer the leftovers of earlier runs that logged to ``url`` again, on a daemon thread of their own:
    the new run never waits for them, and a live run's spool is never touched (its lock refuses)."""
    skipped = {p.absolute() for p in skip}

    def main() -> None:
        from runstream.sender import ExitSafeExecutor

        loop = asyncio.new_event_loop()
        loop.set_default_executor(ExitSafeExecutor())  # sends may run as the interpreter exits
        try:
            for run_dir in leftovers(url, roots):
                if run_dir in skipped:
                    continue
                result = loop.run_until_complete(sync_run(run_dir, url, api_key, progress=False, yielding=True))
                if result.sent:
                    log.info("runstream: sent %d events %s had left", result.sent, run_dir)
                if result.skipped and not result.busy:
                    break  # a refused key, or a server that does not take them now: the next run tries again
        except Exception as exc:  # noqa: BLE001 - never in the user's way
            log.debug("runstream: resending leftovers failed: %s", exc)
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="runstream-leftovers", daemon=True)
    thread.start()
    return thread
