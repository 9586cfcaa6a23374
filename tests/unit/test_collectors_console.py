"""Console capture: lines, carriage returns, the untouched original streams, failures, threads."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time

import pytest
from tqdm import tqdm

from runstream.collectors.console import BATCH_LINES, MAX_LINE, ConsoleCapture


class Collector:
    """An ``on_lines`` that records every batch and the thread it came on."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[float, str, str]]] = []
        self.threads: set[threading.Thread] = set()

    def __call__(self, lines: list[tuple[float, str, str]]) -> None:
        self.threads.add(threading.current_thread())
        self.batches.append(lines)

    @property
    def lines(self) -> list[tuple[float, str, str]]:
        return [line for batch in self.batches for line in batch]

    def texts(self, stream: str | None = None) -> list[str]:
        return [text for _, s, text in self.lines if stream in (None, s)]


@pytest.fixture
def streams(monkeypatch, tmp_path):
    """Real text files as the original stdout and stderr (they have a fileno), without newline translation.

    Installed when the test calls it: pytest puts its own capture back on sys.stdout
    between a fixture's setup and the test.
    """
    files = [open(tmp_path / name, "w+", encoding="utf-8", newline="") for name in ("stdout.txt", "stderr.txt")]  # noqa: SIM115 - closed at teardown

    def install() -> list:
        monkeypatch.setattr(sys, "stdout", files[0])
        monkeypatch.setattr(sys, "stderr", files[1])
        return files

    yield install
    for file in files:
        file.close()


def _capture(flush_interval: float = 0.05) -> tuple[ConsoleCapture, Collector]:
    collector = Collector()
    capture = ConsoleCapture(collector, flush_interval=flush_interval)
    capture.start()
    return capture, collector


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_print_and_stderr_become_timestamped_lines(streams):
    streams()
    t0 = time.time()
    capture, got = _capture()
    print("hello", 42)
    print("oops", file=sys.stderr)
    sys.stdout.write("a\nb\n\nc")
    sys.stdout.write("d\n")
    _wait_for(lambda: len(got.lines) == 6)
    assert got.threads and threading.main_thread() not in got.threads, "delivered from the background thread"
    capture.stop()
    t1 = time.time()
    assert [(s, text) for _, s, text in got.lines] == [
        ("stdout", "hello 42"),
        ("stderr", "oops"),
        ("stdout", "a"),
        ("stdout", "b"),
        ("stdout", ""),
        ("stdout", "cd"),
    ]
    times = [ts for ts, _, _ in got.lines]
    assert t0 <= times[0] and times == sorted(times) and times[-1] <= t1


def test_a_redrawn_progress_bar_is_one_line_with_its_final_text(streams):
    streams()
    capture, got = _capture()
    sys.stdout.write("epoch 1\n")
    for i in range(1001):
        sys.stdout.write(f"\r{i / 10:5.1f}% |{'#' * (i // 50):20}|")
    sys.stdout.write("\n")
    sys.stdout.write("progress 50%\r\n")  # a trailing \r overwrites nothing
    sys.stdout.write("windows line\r\n")
    capture.stop()
    assert got.texts() == ["epoch 1", "100.0% |####################|", "progress 50%", "windows line"]
    assert sys.stdout.tell() > 30_000, "the original got every redraw"


def test_real_tqdm_on_stderr(streams):
    streams()
    capture, got = _capture()
    for _ in tqdm(range(200), mininterval=0, miniters=1, ascii=True, desc="train"):
        pass
    print("done")
    capture.stop()
    assert got.texts("stdout") == ["done"]
    [bar] = got.texts("stderr")
    assert bar.startswith("train: 100%") and "200/200" in bar and "\r" not in bar
    assert sys.stderr.tell() > 200 * 20


def test_the_unfinished_last_line_is_delivered_at_stop(streams):
    streams()
    capture, got = _capture(flush_interval=60)
    print("first")
    print("loading", end="")
    sys.stderr.write("\r 10%\r 20%")
    capture.stop()
    assert [(s, text) for _, s, text in got.lines] == [("stdout", "first"), ("stdout", "loading"), ("stderr", " 20%")]


def test_a_bar_that_cleared_itself_leaves_no_line(streams):
    streams()
    capture, got = _capture()
    sys.stderr.write("\r 50%\r     \r")  # tqdm(leave=False) erases its bar
    capture.stop()
    assert got.lines == []


def test_the_original_streams_receive_exactly_the_same_text(streams, tmp_path):
    streams()
    writes = [
        "plain\n",
        "no newline yet",
        " ... done\n",
        "\r10%",
        "\r100%",
        "\n",
        "crlf\r\n",
        "ünïcødé ✓ 🚀\n",
        "",
        "x" * 70_000,
        "\n",
    ]

    def emit() -> None:
        for text in writes:
            sys.stdout.write(text)
            sys.stderr.write(text)
        sys.stdout.writelines(["w1\n", "w2"])
        print("p", 1, 2.5, sep="|", end="!\n")
        sys.stdout.flush()
        sys.stderr.flush()

    emit()
    expected = [(tmp_path / name).read_bytes() for name in ("stdout.txt", "stderr.txt")]
    for stream in (sys.stdout, sys.stderr):
        stream.seek(0)
        stream.truncate()
    capture, got = _capture()
    emit()
    capture.stop()
    assert [(tmp_path / name).read_bytes() for name in ("stdout.txt", "stderr.txt")] == expected
    assert "x" * MAX_LINE in got.texts("stdout"), "a long line is captured truncated"


def test_the_tees_pass_everything_else_through(streams):
    out, err = streams()
    capture, got = _capture()
    try:
        assert sys.stdout is not out and sys.stderr is not err
        assert sys.stdout.fileno() == out.fileno() and sys.stderr.fileno() == err.fileno()
        assert sys.stdout.isatty() is False
        assert sys.stdout.encoding == "utf-8" and sys.stdout.errors == out.errors
        assert sys.stdout.buffer is out.buffer and sys.stdout.name == out.name
        assert sys.stdout.write("abc\n") == 4
        with pytest.raises(TypeError):
            sys.stdout.write(b"bytes")  # as the original would
        handler = logging.StreamHandler()  # takes sys.stderr now: the tee
        logger = logging.getLogger("test_console_passthrough")
        logger.addHandler(handler)
        try:
            logger.warning("via logging")
        finally:
            logger.removeHandler(handler)
    finally:
        capture.stop()
    assert got.texts() == ["abc", "via logging"]


def test_stop_restores_the_streams_and_is_idempotent(streams):
    out, err = streams()
    capture, got = _capture()
    tee = sys.stdout
    capture.stop()
    capture.stop()
    assert sys.stdout is out and sys.stderr is err
    tee.write("after stop\n")  # a handler that kept the tee still prints, but nothing is captured
    assert got.lines == []
    capture.start()
    assert sys.stdout is out, "a stopped capture does not start again"


def test_stop_leaves_a_stream_that_someone_else_replaced(streams):
    _out, err = streams()
    capture, _got = _capture()
    theirs = io.StringIO()
    sys.stdout = theirs
    capture.stop()
    assert sys.stdout is theirs and sys.stderr is err


def test_an_on_lines_that_raises_does_not_break_printing(streams, caplog):
    streams()
    calls = []

    def on_lines(lines):
        calls.append(lines)
        raise RuntimeError("sink is down")

    capture = ConsoleCapture(on_lines, flush_interval=0.02)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        capture.start()
        print("one")
        _wait_for(lambda: len(calls) >= 1)
        print("two")
        _wait_for(lambda: len(calls) >= 2)
        capture.stop()
    assert [texts for batch in calls for _, _, texts in batch][:2] == ["one", "two"]
    assert len([r for r in caplog.records if "sink is down" in r.getMessage()]) == 1
    sys.stdout.seek(0)
    assert sys.stdout.read().startswith("one\ntwo\n")


def test_many_threads_printing_at_once_lose_no_lines(streams):
    streams()
    capture, got = _capture(flush_interval=0.01)
    n_threads, n_lines = 8, 2000

    def worker(t: int) -> None:
        for i in range(n_lines):
            sys.stdout.write(f"thread {t} line {i}\n")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    capture.stop()
    expected = sorted(f"thread {t} line {i}" for t in range(n_threads) for i in range(n_lines))
    assert sorted(got.texts()) == expected
    assert max(len(batch) for batch in got.batches) <= BATCH_LINES
    for t in range(n_threads):  # each thread's lines in its own order
        mine = [text for text in got.texts() if text.startswith(f"thread {t} ")]
        assert mine == [f"thread {t} line {i}" for i in range(n_lines)]
    sys.stdout.seek(0)
    assert sys.stdout.read().splitlines() == got.texts(), "captured in the order the stream got them"


def test_a_full_batch_is_delivered_before_the_flush_interval(streams):
    streams()
    capture, got = _capture(flush_interval=60)
    for i in range(BATCH_LINES + 10):
        print(i)
    _wait_for(lambda: len(got.lines) >= BATCH_LINES)
    assert len(got.lines) >= BATCH_LINES
    capture.stop()
    assert got.texts() == [str(i) for i in range(BATCH_LINES + 10)]
