"""Console capture: ``sys.stdout`` and ``sys.stderr`` are teed into timestamped lines (wandb's "wrap" mode).

Every write goes first, unchanged, to the original stream, so the user sees
exactly what they would have seen; a copy is cut into lines the way a terminal
shows them: a carriage return inside a line means the line was redrawn, so only
the text after the last one counts (a progress bar redrawn a thousand times is
one line, its final state). Lines are handed to ``on_lines`` in batches from a
background thread, never from inside ``write()``.

Only Python-level writes are seen: output written to file descriptors 1 and 2
directly (C extensions, subprocesses, ``sys.stdout.buffer``) is not captured.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("runstream")

Line = tuple[float, str, str]  # (Unix time, "stdout" | "stderr", text)

#: Longer lines are truncated: one runaway line must not become one huge event.
MAX_LINE = 16 * 1024
#: At most this many lines per ``on_lines`` call; that many pending wake the flusher early.
BATCH_LINES = 1000
#: How long ``stop()`` waits for the last delivery.
STOP_TIMEOUT = 5.0


def _shown(text: str) -> str:
    """What a terminal shows of ``text`` (one line): what follows its last carriage return, capped.

    A trailing carriage return (``"50%\\r"``, or ``"\\r\\n"`` line ends) overwrites
    nothing until more text follows, so it is ignored.
    """
    body = text.rstrip("\r")
    start = body.rfind("\r") + 1
    return body[start : start + MAX_LINE]


class _Tee:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: writes go to the original, a copy becomes lines.

    Everything but writing is the original's (``isatty``, ``fileno``, ``encoding``,
    ``buffer``...), so code that inspects the stream sees the real one.
    """

    def __init__(self, original: Any, stream: str, capture: ConsoleCapture) -> None:
        self._original = original
        self._stream = stream
        self._capture = capture
        self._partial = ""  # the line being written, already reduced to what it shows
        self._capturing = True
        # Held across the original's write too, so the lines come in the order the stream got the text.
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        with self._lock:
            written = self._original.write(text)  # its errors are the caller's, exactly as without us
            if self._capturing and isinstance(text, str):
                try:
                    self._split(text)
                except Exception as exc:  # noqa: BLE001 - capture breaks, printing must not
                    self._capturing = False
                    log.warning("runstream: console capture of %s disabled: %r", self._stream, exc)
        return written

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def close_capture(self) -> None:
        """Stop capturing (writes still pass through) and hand on the unfinished last line."""
        with self._lock:
            if not self._capturing:
                return
            self._capturing = False
            shown = _shown(self._partial)
            self._partial = ""
        if shown.strip():
            self._capture.add([(time.time(), self._stream, shown)])

    def _split(self, text: str) -> None:
        *lines, rest = (self._partial + text).split("\n")
        # Reduced at once, so a bar redrawn forever without a newline keeps one line's worth.
        self._partial = _shown(rest) + ("\r" if rest.endswith("\r") else "")
        if lines:
            now = time.time()
            self._capture.add([(now, self._stream, _shown(line)) for line in lines])


class ConsoleCapture:
    """Tees ``sys.stdout`` and ``sys.stderr`` from ``start()`` to ``stop()`` and hands their lines to ``on_lines``.

    ``on_lines`` gets batches of ``(unix_time, "stdout" | "stderr", text)`` every
    ``flush_interval`` s (sooner when ``BATCH_LINES`` are waiting), on a
    background thread; if it raises, that is logged once and capture goes on.
    """

    def __init__(self, on_lines: Callable[[list[Line]], None], flush_interval: float = 1.0) -> None:
        self._on_lines = on_lines
        self._flush_interval = flush_interval
        self._pending: list[Line] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._tees: dict[str, _Tee] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._delivery_failed = False

    def start(self) -> None:
        """Replace ``sys.stdout`` and ``sys.stderr`` with tees; a second call does nothing."""
        if self._thread is not None or self._stopped:
            return
        self._thread = threading.Thread(target=self._run, name="runstream-console", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as exc:  # no more threads: no capture, and the streams stay untouched
            self._stopped = True
            log.warning("runstream: console capture disabled: %s", exc)
            return
        for name in ("stdout", "stderr"):
            original = getattr(sys, name)
            if original is not None:  # None under pythonw
                self._tees[name] = _Tee(original, name, self)
                setattr(sys, name, self._tees[name])

    def stop(self) -> None:
        """Restore the streams (those still ours), deliver the rest including unfinished lines; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for name, tee in self._tees.items():
            if getattr(sys, name) is tee:  # someone who replaced it since keeps theirs (and it keeps teeing)
                setattr(sys, name, tee._original)
            tee.close_capture()
        # Only now: the flusher's last delivery must include the unfinished lines just added.
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_TIMEOUT)

    def add(self, lines: list[Line]) -> None:
        """Queue finished lines (called by the tees, under their lock: must stay cheap)."""
        with self._pending_lock:
            self._pending.extend(lines)
            full = len(self._pending) >= BATCH_LINES
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._deliver()
        self._deliver()  # what stop() flushed

    def _deliver(self) -> None:
        with self._pending_lock:
            lines, self._pending = self._pending, []
        for i in range(0, len(lines), BATCH_LINES):
            try:
                self._on_lines(lines[i : i + BATCH_LINES])
            except Exception as exc:  # noqa: BLE001 - the receiver's error; keep capturing
                if not self._delivery_failed:
                    self._delivery_failed = True
                    log.warning("runstream: delivering console lines failed: %r", exc)
