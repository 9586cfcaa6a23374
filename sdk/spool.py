"""The run's spool: every event is written here before it is sent.

A spool is a directory of segment files (``seg-00000001.log`` ...), each a
sequence of lines ``<topic>\\t<event JSON>\\n`` (orjson never writes a raw tab or
newline inside JSON). ``acked`` holds the cursor (segment, byte offset) up to
which the transport has acknowledged everything; segments wholly before it are
deleted. Whatever lies after it is sent again by a later ``runstream sync`` —
downstream idempotency makes a resend harmless.

A process that dies mid-write leaves at most a partial last line, which readers
ignore; a writer never appends to an existing segment. The writer holds an
exclusive lock on the directory, so ``sync`` leaves a live run's spool alone.
"""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 32 << 20


class SpoolLocked(RuntimeError):
    pass


@dataclass(frozen=True, order=True)
class Cursor:
    segment: int
    offset: int


def _segment_name(number: int) -> str:
    return f"seg-{number:08d}.log"


class Spool:
    def __init__(self, directory: str | Path, *, writer: bool = True, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"{self.dir} is in use by a running process") from None
        self._buffer: list[bytes] = []
        self._file: io.FileIO | None = None
        self._segment = max(self.segments(), default=0)
        self._size = 0
        if writer:
            self._open_segment(self._segment + 1)

    # -- writing ---------------------------------------------------------------------
    def _open_segment(self, number: int) -> None:
        if self._file is not None:
            self._file.close()
        self._segment = number
        self._file = open(self.dir / _segment_name(number), "ab", buffering=0)  # noqa: SIM115 - open until the next segment
        self._size = 0

    def append(self, topic: str, data: bytes) -> None:
        self._buffer.append(b"%s\t%s\n" % (topic.encode(), data))

    def flush(self) -> None:
        """Write the buffered records; roll to a new segment once this one is large."""
        if not self._buffer or self._file is None:
            return
        chunk = b"".join(self._buffer)
        self._buffer.clear()
        self._file.write(chunk)
        self._size += len(chunk)
        if self._size >= self._segment_bytes:
            self._open_segment(self._segment + 1)

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

    def read(self, cursor: Cursor, max_bytes: int = 4 << 20) -> tuple[list[tuple[str, bytes]], Cursor]:
        """Complete records after ``cursor`` (about ``max_bytes`` of them) and the cursor after them."""
        records: list[tuple[str, bytes]] = []
        budget = max_bytes
        while budget > 0:
            data = self._read_at(cursor, budget)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == budget:  # one record longer than the budget: take it whole
                budget *= 2
                continue
            for line in data[:end].splitlines():
                topic, _, event = line.partition(b"\t")
                records.append((topic.decode(), event))
            cursor = Cursor(cursor.segment, cursor.offset + end)
            budget -= end
            if len(data) == budget + end:  # the budget ran out before the end of the segment
                break
            later = [number for number in self.segments() if number > cursor.segment]
            if not later:  # the segment being written: nothing more yet
                break
            # A finished segment. Bytes after its last newline are a write torn by a crash: never sent, skipped.
            cursor = Cursor(later[0], 0)
        return records, cursor

    def _read_at(self, cursor: Cursor, size: int) -> bytes:
        try:
            with open(self.dir / _segment_name(cursor.segment), "rb") as f:
                f.seek(cursor.offset)
                return f.read(size)
        except FileNotFoundError:
            return b""

    def ack(self, cursor: Cursor) -> None:
        """Record that everything before ``cursor`` was acknowledged; drop finished segments."""
        tmp = self.dir / "acked.tmp"
        tmp.write_text(f"{cursor.segment} {cursor.offset}\n")
        tmp.replace(self.dir / "acked")
        for number in self.segments():
            if number < cursor.segment:
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
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        os.close(self._lock_fd)
