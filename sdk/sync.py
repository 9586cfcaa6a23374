"""``runstream sync``: send what runs left in their spools (offline runs, crashes, outages).

Sending twice changes nothing downstream: events carry (run, seq), and the
spool's acknowledged cursor means a finished sync sends nothing the next time.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from runstream.lifecycle import LEGACY_RUNS_DIR_NAMES, RUNS_DIR_NAME
from runstream.sender import RunIdentity, upload_files
from runstream.spool import Spool, SpoolLocked
from runstream.transport import TransportError, open_transport, open_uploader


@dataclass
class SyncResult:
    run_dir: Path
    sent: int = 0
    skipped: str = ""


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


async def sync_run(
    run_dir: Path, url: str | None, api_key: str = "", progress: bool = True, files_url: str | None = None
) -> SyncResult:
    meta = orjson.loads((run_dir / "run.json").read_bytes())
    result = SyncResult(run_dir)
    target = url or meta.get("url")
    if not target:
        result.skipped = "no URL to send to: pass --url or set RUNSTREAM_URL"
        return result
    try:
        spool = Spool(run_dir / "spool", writer=False)
    except SpoolLocked:
        result.skipped = "the run is still running (its process holds the spool)"
        return result
    transport = open_transport(target, api_key)
    uploader = open_uploader(transport, files_url or meta.get("files_url", ""), api_key)
    identity = RunIdentity(meta["team"], meta["project"], meta["run_id"])
    key = identity.key
    bar = None
    try:
        total = spool.pending_bytes()
        if progress and total:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=run_dir.name, file=sys.stderr, leave=True)
        cursor = spool.acked_cursor()
        while True:
            records, after = spool.read(cursor)
            if not records:
                break
            try:
                await upload_files(uploader, identity, run_dir / "files", records)
                await transport.send(records, key)
            except TransportError as exc:
                result.skipped = f"sending failed after {result.sent} events: {exc}; run sync again later"
                break
            spool.ack(after)
            if bar is not None:
                bar.update(sum(len(topic) + len(event) + 2 for topic, event in records))
            cursor = after
            result.sent += len(records)
    finally:
        if bar is not None:
            bar.close()
        await transport.close()
        spool.close()
    return result


def sync(
    paths: Iterable[str | Path],
    url: str | None = None,
    api_key: str = "",
    progress: bool = True,
    files_url: str | None = None,
) -> list[SyncResult]:
    async def run_all() -> list[SyncResult]:
        return [await sync_run(run_dir, url, api_key, progress, files_url) for run_dir in find_run_dirs(paths)]

    return asyncio.run(run_all())
