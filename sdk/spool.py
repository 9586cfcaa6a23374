"""The run's spool: every event is written here before it is sent.

A spool is a directory of segment files (``seg-00000001.log`` ...), each a
sequence of lines ``<topic>\\t<event JSON>\\n`` (orjson never writes a raw tab or
newline inside JSON). ``acked`` holds the cursor (segment, byte offset) up to
which the transport has acknowledged everything; segments wholly before it are
deleted. Whatever lies after it is sent again by a later ``runstream sync`` —
downstream idempotency makes a resend harmless.

A process that dies mid-write leaves at most a partial last line; a writer never
appends to an existing segment. A write the disk refuses (ENOSPC, EDQUOT) is cut
back to the last whole record (or, when even that fails, the next records start
on a fresh line), and the records it held are kept in memory and written again
at the next flush, up to ``MAX_HELD_BYTES``; beyond that they are dropped and
counted (``dropped_events``). Readers skip whatever is not a whole record — a
torn tail, a line a power loss zeroed or cut short, anywhere in a segment — and
count its bytes (``damaged_bytes``); every whole record before and after is read.
The torn tail of the newest segment is skipped only when its writer is known to be
gone (``local``: the run was started on this host, so the lock we hold excludes it,
and the segment has not changed for ``TORN_TAIL_AGE`` s): on a filesystem where
locks do not reach across nodes it may be a live run's record being written.
The writer holds an exclusive lock on the directory, so ``sync`` leaves a live
run's spool alone.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEGMENT_BYTES = 32 << 20
#: Records a full disk refused, kept in memory to be written at the next flush (beyond this, dropped and counted).
MAX_HELD_BYTES = 16 << 20
#: A topic's name (Kafka's own limit is 249 characters), any but one holding ``runstream.`` after its start.
_TOPIC = re.compile(rb"[a-z0-9._-]{1,249}\Z")
#: Where a record glued behind damage starts: the contract's topics (``runstream.<kind>``), whose prefix tells
#: where the damage ends (any topic shape would also match the damaged bytes before it).
_CONTRACT_TOPIC = re.compile(rb"runstream\.[a-z-]{1,64}\Z")
#: How long the newest segment of a gone writer must have been left alone before its torn tail is skipped.
TORN_TAIL_AGE = 10.0
#: How long opening a spool waits for a lock held for a moment (``inspect``'s probe).
LOCK_WAIT = 0.5


#: Beside the spool (``run-<id>/quarantine/``): batches the server refused for good, with its reasons.
QUARANTINE_DIR = "quarantine"


class SpoolLocked(RuntimeError):
    pass


@dataclass(frozen=True, order=True)
class Cursor:
    segment: int
    offset: int


def _whole(line: bytes) -> tuple[str, bytes] | None:
    """(topic, event) when ``line`` has the shape of a whole record: a topic, a tab, a JSON object."""
    topic, tab, event = line.partition(b"\t")
    if not tab or event[:1] != b"{" or event[-1:] != b"}" or _TOPIC.match(topic) is None or b"\t" in event:
        return None  # (JSON never holds a raw tab: another tab means records glued together)
    if topic.find(b"runstream.", 1) > 0:
        return None  # a torn record's last bytes glued to a contract topic (``_last_record_start`` splits them)
    return topic.decode(), event


def _last_record_start(line: bytes) -> int | None:
    """Where the whole record that ends a damaged ``line`` starts (> 0), if it ends in one."""
    tab = line.rfind(b"\t")
    if tab <= 0:
        return None
    topic = _CONTRACT_TOPIC.search(line, 0, tab)
    if topic is None or topic.start() == 0 or _whole(line[topic.start() :]) is None:
        return None
    return topic.start()


def _segment_name(number: int) -> str:
    return f"seg-{number:08d}.log"


def this_host() -> str:
    """This machine's name, as a run's ``run.json`` records it (``host``)."""
    return socket.gethostname()


def _lock(fd: int, wait: float) -> bool:
    """Take ``fd``'s exclusive lock, trying for ``wait`` s (a probe may hold it for a moment)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


class Spool:
    def __init__(
        self, directory: str | Path, *, writer: bool = True, segment_bytes: int = SEGMENT_BYTES, local: bool = False
    ) -> None:
        """``local`` (a reader): the run was started on this host, so holding the lock proves its writer gone."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._local = local
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(self._lock_fd, LOCK_WAIT):
            os.close(self._lock_fd)
            raise SpoolLocked(f"{self.dir} is in use by a running process")
        self._buffer: list[bytes] = []
        self._file: io.FileIO | None = None
        self._segment = max(self.segments(), default=0)
        self._size = 0
        self._writer = writer
        self._torn = False  # the current segment may end in a partial record: the next write starts a line
        #: Records that could not be written (a full disk) and were given up: counted, never silently.
        self.dropped_events = 0
        #: The last error a write met (None once a write succeeds again): what the SDK reports.
        self.write_error: OSError | None = None
        #: Bytes readers skipped as not whole records (torn by a crash, a power loss or a full disk).
        self.damaged_bytes = 0
        self._damage_seen: set[tuple[int, int]] = set()  # (segment, offset) of damage already counted
        if writer:
            try:
                self._open_segment(self._segment + 1)
            except OSError as exc:  # a full disk: the first flush tries again
                self.write_error = exc

    # -- writing ---------------------------------------------------------------------
    def _open_segment(self, number: int) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._segment = number
        self._size = 0
        self._torn = False
        self._file = open(self.dir / _segment_name(number), "ab", buffering=0)  # noqa: SIM115 - open until the next segment

    def append(self, topic: str, data: bytes) -> None:
        self._buffer.append(b"%s\t%s\n" % (topic.encode(), data))

    def flush(self) -> None:
        """Write the buffered records; roll to a new segment once this one is large.

        Never raises for a full disk or another write error: what was already written stays whole,
        the refused records are held for the next flush (``MAX_HELD_BYTES`` of them), and the rest
        are counted in ``dropped_events``; ``write_error`` says why."""
        if not self._buffer or not self._writer:
            return
        try:
            if self._file is None:
                self._open_segment(self._segment)  # the one a full disk would not let us create
            chunk = b"".join(self._buffer)
            if self._torn:
                chunk = b"\n" + chunk  # whatever a failed write left: its own (damaged) line
            self._write_all(chunk)
        except OSError as exc:
            self.write_error = exc
            self._write_what_fits()
            self._hold()
            return
        self._buffer.clear()
        self.write_error = None
        if self._size >= self._segment_bytes:
            try:
                self._open_segment(self._segment + 1)
            except OSError as exc:  # the next flush tries again
                self.write_error = exc

    def _write_all(self, chunk: bytes) -> None:
        """``chunk`` at the end of the segment, whole, or the segment as it was before (or marked torn)."""
        assert self._file is not None
        view = memoryview(chunk)
        written = 0
        try:
            while written < len(chunk):
                n = self._file.write(view[written:])
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
        except OSError:
            if written:
                try:
                    os.ftruncate(self._file.fileno(), self._size)  # cut the partial write back
                except OSError:
                    self._torn = True  # could not: the next records start on a line of their own
                    self._size += written
            raise
        self._size += written
        self._torn = False

    def _write_what_fits(self) -> None:
        """After a refused write: the buffered records one by one, oldest first, as long as the disk takes them."""
        written = 0
        if self._file is not None:
            for record in self._buffer:
                try:
                    self._write_all(b"\n" + record if self._torn else record)
                except OSError:
                    break
                written += 1
        del self._buffer[:written]

    def _hold(self) -> None:
        """Keep the refused records for the next flush, oldest first, up to ``MAX_HELD_BYTES``; drop the rest."""
        kept: list[bytes] = []
        size = 0
        for record in self._buffer:
            if size + len(record) > MAX_HELD_BYTES:
                self.dropped_events += 1
                continue
            kept.append(record)
            size += len(record)
        self._buffer[:] = kept

    @property
    def held_events(self) -> int:
        """Records a full disk refused that are still waiting in memory for the next flush."""
        return len(self._buffer) if self.write_error is not None else 0

    # -- reading ---------------------------------------------------------------------
    def segments(self) -> list[int]:
        return sorted(int(p.name[4:12]) for p in self.dir.glob("seg-*.log"))

    def acked_cursor(self) -> Cursor:
        try:
            segment, offset = (self.dir / "acked").read_text().split()
            return Cursor(int(segment), int(offset))
        except (FileNotFoundError, ValueError):
            first = min(self.segments(), default=1)
            return Cursor(first, 0)

    def read(
        self, cursor: Cursor, max_bytes: int = 4 << 20, *, ends: list[Cursor] | None = None
    ) -> tuple[list[tuple[str, bytes]], Cursor]:
        """Complete records after ``cursor`` (about ``max_bytes`` of them) and the cursor after them;
        ``ends`` gets the cursor after each record (to acknowledge part of them).

        Lines that are not whole records are skipped, and their bytes counted in ``damaged_bytes``
        (once each); so are the bytes after the last newline of a segment that is finished (one
        before the last, or the last when its writer is known to be gone: ``_writer_gone``)."""
        records: list[tuple[str, bytes]] = []
        budget = max_bytes
        while budget > 0:
            data = self._read_at(cursor, budget)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == budget:  # one record longer than the budget: take it whole
                budget *= 2
                continue
            offset = cursor.offset
            for line in data[:end].split(b"\n")[:-1]:
                record = self._record(line, cursor.segment, offset)
                offset += len(line) + 1
                if record is not None:
                    records.append(record)
                    if ends is not None:
                        ends.append(Cursor(cursor.segment, offset))
            cursor = Cursor(cursor.segment, cursor.offset + end)
            budget -= end
            if len(data) == budget + end:  # the budget ran out before the end of the segment
                break
            later = [number for number in self.segments() if number > cursor.segment]
            if not later:  # the segment being written: nothing more yet
                if len(data) > end and self._writer_gone(cursor.segment):  # its torn tail: never completed
                    self._damaged(cursor.segment, cursor.offset, len(data) - end)
                    cursor = Cursor(cursor.segment, cursor.offset + len(data) - end)
                break
            # A finished segment. Bytes after its last newline are a write torn by a crash: never sent, skipped.
            if len(data) > end:
                self._damaged(cursor.segment, cursor.offset, len(data) - end)
            cursor = Cursor(later[0], 0)
        return records, cursor

    def _writer_gone(self, segment: int) -> bool:
        """The newest segment will never grow: a reader of a run started here, untouched for ``TORN_TAIL_AGE`` s."""
        if self._writer or not self._local:
            return False
        try:
            age = time.time() - (self.dir / _segment_name(segment)).stat().st_mtime
        except OSError:
            return False
        return age >= TORN_TAIL_AGE

    def _record(self, line: bytes, segment: int, offset: int) -> tuple[str, bytes] | None:
        """(topic, event) of a whole record; None (its bytes counted as damaged) for anything else.

        A line that is not a whole record may end in one: after zeros a power loss left, or after a
        record torn without its newline (a raw tab never occurs inside a record's JSON, so the last
        tab of the line starts the last record). That record is kept; what precedes it is damage."""
        record = _whole(line)
        if record is not None:
            return record
        start = _last_record_start(line)
        if start is None:
            self._damaged(segment, offset, len(line) + 1)
            return None
        self._damaged(segment, offset, start)
        return _whole(line[start:])

    def _damaged(self, segment: int, offset: int, size: int) -> None:
        if (segment, offset) not in self._damage_seen:
            self._damage_seen.add((segment, offset))
            self.damaged_bytes += size

    def _read_at(self, cursor: Cursor, size: int) -> bytes:
        try:
            with open(self.dir / _segment_name(cursor.segment), "rb") as f:
                f.seek(cursor.offset)
                return f.read(size)
        except FileNotFoundError:
            return b""

    def ack(self, cursor: Cursor) -> None:
        """Record that everything before ``cursor`` was acknowledged; drop finished segments.

        A full disk may refuse the cursor's file: the finished segments go anyway (that frees
        space), and a reader that finds its cursor in a deleted segment starts at the next one."""
        tmp = self.dir / "acked.tmp"
        try:
            tmp.write_text(f"{cursor.segment} {cursor.offset}\n")
            tmp.replace(self.dir / "acked")
        except OSError:  # the records are sent again later: harmless
            tmp.unlink(missing_ok=True)
        for number in self.segments():
            if number < cursor.segment and number != self._segment:
                (self.dir / _segment_name(number)).unlink(missing_ok=True)

    def _after(self, cursor: Cursor | None) -> Iterator[tuple[Path, int]]:
        """(segment file, offset to start at) for everything after ``cursor`` (default: the acked cursor)."""
        cursor = cursor or self.acked_cursor()
        for number in self.segments():
            if number >= cursor.segment:
                yield self.dir / _segment_name(number), cursor.offset if number == cursor.segment else 0

    def count(self, cursor: Cursor | None = None) -> int:
        """Complete records after ``cursor`` (default: the acked cursor)."""
        total = 0
        for path, offset in self._after(cursor):
            with open(path, "rb") as f:
                f.seek(offset)
                for block in iter(lambda: f.read(1 << 20), b""):
                    total += block.count(b"\n")
        return total

    def pending_bytes(self, cursor: Cursor | None = None) -> int:
        """Bytes written after ``cursor`` (default: the acked cursor), for progress displays."""
        return sum(path.stat().st_size - offset for path, offset in self._after(cursor))

    def close(self) -> None:
        """Write what is buffered (what a full disk still refuses is dropped and counted), let go of the lock."""
        self.flush()
        if self._buffer and self._writer:
            self.dropped_events += len(self._buffer)
            self._buffer.clear()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0


@dataclass(frozen=True)
class Pending:
    """What a spool holds that its server has not acknowledged, seen without taking its lock."""

    events: int
    bytes: int
    live: bool  # a process holds the spool (a running run, or a sync)


def inspect(directory: str | Path, *, quick: bool = False) -> Pending:
    """Unacknowledged records and bytes of the spool at ``directory``, and whether a process holds it.

    Takes no lock beyond a probe released at once (a writer opening the spool meanwhile waits for it,
    ``LOCK_WAIT``); a run may be writing: the counts are a moment's. ``quick``: only whether there is
    something (``events`` 0 or 1), and nothing read of a live spool."""
    directory = Path(directory)
    live = False
    try:
        fd = os.open(directory / "lock", os.O_RDONLY)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            live = True
        finally:
            os.close(fd)  # releases the probe's lock
    if live and quick:
        return Pending(0, 0, live)
    try:
        segment, offset = (directory / "acked").read_text().split()
        cursor = Cursor(int(segment), int(offset))
    except (OSError, ValueError):
        cursor = Cursor(0, 0)
    events = size = 0
    for path in sorted(directory.glob("seg-*.log")):
        try:
            number = int(path.name[4:12])
        except ValueError:
            continue
        if number < cursor.segment:
            continue
        start = cursor.offset if number == cursor.segment else 0
        try:
            with open(path, "rb") as f:
                f.seek(start)
                for block in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                    if quick and b"\n" in block:
                        return Pending(1, block.index(b"\n") + 1, live)
                    events += block.count(b"\n")
                    size += len(block)
        except OSError:
            continue
    return Pending(events, size, live)


# -- quarantine: what the server refused for good -------------------------------------------------------


def write_quarantine(directory: Path, records: list[tuple[str, bytes]], errors: list[Any], url: str) -> Path:
    """``records`` (the spool's line format) in a new ``<name>.log`` under ``directory``, and beside it
    ``<name>.json``: where they were sent, when, and each one's refusal (status, reason). The JSON is
    written first: a batch is listed by it, so no ``.log`` is ever left unlisted (a crash before the
    ``.log`` leaves a JSON alone, which is ignored; the records are still in the spool). Raises OSError
    (a full disk), leaving nothing behind."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"batch-{time.strftime('%Y%m%d_%H%M%S')}-{secrets.token_hex(3)}"
    meta = {
        "url": url,
        "time": time.time(),
        "events": len(records),
        "status": getattr(errors[0], "status", None) if errors else None,
        "reason": getattr(errors[0], "reason", str(errors[0])) if errors else "",
        "refusals": [
            {"line": n, "status": getattr(e, "status", None), "reason": getattr(e, "reason", str(e))}
            for n, e in enumerate(errors, start=1)
        ],
        "retry": f"runstream sync --quarantined {directory.parent}",
    }
    meta_path, data = directory / f"{name}.json", directory / f"{name}.log"
    tmp = directory / f"{name}.json.tmp"
    try:
        tmp.write_bytes(json.dumps(meta, indent=1).encode())
        os.replace(tmp, meta_path)
        data.write_bytes(b"".join(b"%s\t%s\n" % (topic.encode(), event) for topic, event in records))
    except OSError:
        for path in (tmp, meta_path, data):
            path.unlink(missing_ok=True)
        raise
    return data


def quarantined(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The quarantined batches under ``directory``: (records file, what the server said), oldest first."""
    batches = []
    for meta_path in sorted(directory.glob("batch-*.json")):
        data = meta_path.with_suffix(".log")
        try:
            meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):
            continue
        if data.exists():
            batches.append((data, meta if isinstance(meta, dict) else {}))
    return batches


def read_records(path: Path) -> list[tuple[str, bytes]]:
    """The whole records of a quarantined batch's file."""
    records = []
    for line in path.read_bytes().split(b"\n"):
        record = _whole(line)
        if record is not None:
            records.append(record)
    return records
