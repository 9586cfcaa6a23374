"""The SDK's delivery path in pieces: refusals narrowed down to the refused records, what a
refusal says (status, Retry-After, the lines a 422 names, a key shown by its prefix only),
damaged spools read around their damage, a full disk that damages nothing, and what
``finish()`` says."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runstream.run import unsent_lines
from runstream.sender import Delivery, FinishResult, RunIdentity, Sender, deliver, upload_files
from runstream.spool import MAX_HELD_BYTES, Cursor, Spool, inspect, quarantined, read_records, write_quarantine
from runstream.summary import MetricStats
from runstream.transport import HttpTransport, KafkaTransport, TransportError, key_hint, parse_retry_after

TOPIC = "runstream.metrics"


def _records(n: int) -> list[tuple[str, bytes]]:
    return [(TOPIC, b'{"i":%d}' % i) for i in range(n)]


class FakeServer:
    """Applies a batch whole or not at all, as the API does: refuses (422) any batch holding a bad record."""

    def __init__(self, bad: set[int], name_lines: bool, transient: int = 0) -> None:
        self.bad, self.name_lines, self.transient = bad, name_lines, transient
        self.applied: list[int] = []
        self.requests = 0

    async def attempt(self, records: list[tuple[str, bytes]]) -> None:
        self.requests += 1
        if self.transient:
            self.transient -= 1
            raise TransportError("HTTP 503: busy", status=503)
        ids = [json.loads(event)["i"] for _, event in records]
        named = {n: "bad value" for n, i in enumerate(ids, start=1) if i in self.bad}
        if named:
            raise TransportError(
                "HTTP 422",
                status=422,
                bad_lines=dict(list(named.items())[:100]) if self.name_lines else None,  # the API names 100 at most
                all_invalid=self.name_lines and len(named) == len(ids),
                reason="HTTP 422: invalid",
                rejected=True,
            )
        self.applied += ids


@pytest.mark.parametrize("name_lines", [True, False], ids=["422 names the lines", "halving"])
def test_a_refused_batch_is_narrowed_down_to_its_bad_records(name_lines):
    server = FakeServer(bad={3, 17, 18}, name_lines=name_lines)
    refused = asyncio.run(deliver(server.attempt, _records(40)))
    assert [index for index, _ in refused] == [3, 17, 18]
    assert sorted(server.applied) == [i for i in range(40) if i not in (3, 17, 18)]
    assert all(err.status == 422 for _, err in refused)
    if name_lines:
        assert server.requests == 2  # the batch, then the batch without the lines named
        assert refused[0][1].reason == "HTTP 422: bad value"


def test_a_transient_failure_while_narrowing_keeps_what_was_found():
    """The refusals found and the records delivered before a transient failure are kept in ``progress``:
    the next try starts from there instead of narrowing again from the start (it could starve)."""
    server = FakeServer(bad={1, 5}, name_lines=False)
    calls = 0

    async def attempt(records):
        nonlocal calls
        calls += 1
        if calls == 6:
            raise TransportError("connection reset")  # not final: the pump tries again later
        await server.attempt(records)

    progress = Delivery()
    with pytest.raises(TransportError, match="connection reset"):
        asyncio.run(deliver(attempt, _records(8), progress))
    assert [i for i, _ in progress.refused] == [1] and progress.prefix() == 2  # 0 delivered, 1 set aside
    before = server.requests
    refused = asyncio.run(deliver(server.attempt, _records(8), progress))  # the retry: only the unsettled rest
    assert [i for i, _ in refused] == [1, 5] and progress.prefix() == 8
    assert server.requests - before == 5 and sorted(server.applied) == [0, 2, 3, 4, 6, 7]  # 0 never sent again


def test_a_batch_of_nothing_but_invalid_events_is_refused_in_one_request():
    server = FakeServer(bad=set(range(5000)), name_lines=True)
    refused = asyncio.run(deliver(server.attempt, _records(5000)))
    assert len(refused) == 5000 and server.requests == 1


def test_only_the_apis_own_413_and_422_refuse_events_for_good(answers):
    """A proxy answering 400/415/431 (or a 413/422 that is not the API's JSON) blames no event: retried
    slowly like a refused key, never narrowed down and quarantined."""
    html = {"raw": "<html>Bad Request</html>"}
    api_400 = {"error": {"code": "bad_request", "message": "no"}}
    api_413 = {"error": {"code": "too_large", "message": "the batch is too large"}}
    server = answers([(400, {}, html), (415, {}, html), (431, {}, html), (413, {}, html), (400, {}, api_400),
                      (413, {}, api_413)])  # fmt: skip
    transport = HttpTransport(server.url, "")
    errors = []
    for _ in range(6):
        with pytest.raises(TransportError) as caught:
            asyncio.run(transport.send(_records(2), b""))
        errors.append(caught.value)
    *proxied, too_large = errors
    assert all(e.refused and not e.rejected for e in proxied), [(e.status, e.rejected) for e in proxied]
    assert too_large.rejected and not too_large.refused

    async def proxy(records):
        raise errors[0]

    with pytest.raises(TransportError):  # nothing narrowed, nothing set aside: the whole batch waits
        asyncio.run(deliver(proxy, _records(8)))


def test_retry_after_is_kept_within_bounds():
    assert parse_retry_after("0") == 0.5 and parse_retry_after("-3") == 0.5
    assert parse_retry_after("1e9") == 300.0 and parse_retry_after("nan") is None


def test_kafka_keeps_its_shared_producer_when_it_refuses_a_record_for_its_size():
    class MessageSizeTooLargeError(Exception):
        pass

    class Producer:
        stopped = False

        async def send(self, topic, value, key=None):
            raise MessageSizeTooLargeError("the message is 2000000 bytes")

        async def stop(self):
            self.stopped = True

    transport = KafkaTransport("kafka://broker:9092")
    producer = transport._producer = Producer()
    wired = []
    with pytest.raises(TransportError) as caught:
        asyncio.run(transport.send(_records(1), b"k", on_wire=lambda: wired.append(1)))
    assert caught.value.rejected and wired == [1]
    assert transport._producer is producer and not producer.stopped  # other runs' sends go on through it


def test_a_blob_that_cannot_be_read_is_reported_and_its_metadata_sent(tmp_path, caplog):
    (tmp_path / "unreadable").mkdir()  # reading it fails as a permission error would: an OSError, not missing
    event = json.dumps({"data": {"path": "unreadable", "store_key": "unreadable", "sha256": "0" * 64}}).encode()

    class Uploader:
        async def upload(self, *args):
            raise AssertionError("nothing to upload")

    identity = RunIdentity("t", "p", "r")
    asyncio.run(upload_files(Uploader(), identity, tmp_path, [("runstream.files", event)]))
    assert "unreadable could not be read" in caplog.text


def test_key_hint_never_shows_the_secret():
    key = "rs_abcdef123456_" + "s3cr3t" * 6
    assert key_hint(key) == "key rs_abcdef123456…"
    assert "s3cr3t" not in key_hint(key)
    assert key_hint("") == "no API key"
    other = "supersecretvalue"
    assert key_hint(other).startswith("key ") and other not in key_hint(other) and len(key_hint(other)) < 12


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(when) <= 31


class Answers:
    """A real HTTP server that answers POSTs with the given (status, headers, body) in turn, then 200."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict]], then: tuple | None = None) -> None:
        self.answers = list(answers)
        last: tuple = then or (200, {}, {"accepted": 1})
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.times.append(time.monotonic())
                status, headers, body = outer.answers.pop(0) if outer.answers else last
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def answers() -> Iterator:
    made: list[Answers] = []

    def make(items, then=None):
        made.append(Answers(items, then))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_what_an_http_refusal_carries(answers):
    bad = {"error": {"code": "invalid_events", "message": "1 of 2 events are invalid; nothing was applied",
                     "details": {"errors": [{"line": 2, "reason": "metrics: step must be >= 0"}]}}}  # fmt: skip
    server = answers(
        [
            (429, {"Retry-After": "3"}, {"error": {"code": "too_many_requests", "message": "slow down"}}),
            (422, {}, bad),
            (401, {}, {"error": {"code": "invalid_api_key", "message": "this API key is not valid"}}),
        ]
    )
    transport = HttpTransport(server.url, "rs_0123456789ab_secret")
    errors = []
    for _ in range(3):
        with pytest.raises(TransportError) as caught:
            asyncio.run(transport.send(_records(2), b""))
        errors.append(caught.value)
    throttled, invalid, refused = errors
    assert throttled.status == 429 and throttled.retry_after == 3 and not throttled.permanent
    assert invalid.rejected and invalid.bad_lines == {2: "metrics: step must be >= 0"}
    assert "step must be >= 0" in invalid.reason
    assert refused.refused and not refused.rejected and "not valid" in refused.reason


# -- the spool: damage is read around, never swallowing what follows ---------------------------------------


def _write(spool: Spool, ids: range) -> None:
    for i in ids:
        spool.append(TOPIC, b'{"i":%d}' % i)
    spool.flush()


def _ids(records) -> list[int]:
    return [json.loads(event)["i"] for _, event in records]


def test_damage_in_the_middle_of_a_segment_skips_only_the_damaged_bytes(tmp_path):
    spool = Spool(tmp_path)
    _write(spool, range(3))
    spool.close()
    segment = tmp_path / "seg-00000001.log"
    good = segment.read_bytes()
    # A record cut short (a power loss), then zeros where data should have been, then whole records.
    torn = b'runstream.metrics\t{"i":3,"x":[1,2\n'
    zeros = b"\0" * 40 + b'runstream.metrics\t{"i":4}\n'
    segment.write_bytes(good + torn + b"\0" * 17 + b"\n" + zeros + b'runstream.metrics\t{"i":5}\n')
    reader = Spool(tmp_path, writer=False)
    records, _ = reader.read(reader.acked_cursor())
    assert _ids(records) == [0, 1, 2, 4, 5]
    assert reader.damaged_bytes == len(torn) + 18 + 40
    again, _ = reader.read(reader.acked_cursor())  # read again (a retry): the damage is counted once
    assert _ids(again) == [0, 1, 2, 4, 5] and reader.damaged_bytes == len(torn) + 18 + 40
    reader.close()


def test_a_record_glued_behind_a_torn_one_is_kept(tmp_path):
    """A torn record the next one follows without a newline between: the torn part is damage, the next is whole."""
    spool = Spool(tmp_path)
    _write(spool, range(2))
    spool.close()
    segment = tmp_path / "seg-00000001.log"
    torn = [b'runstream.metrics\t{"i":2,"name":"runstream', b"runstream.me", b'runstream.metrics\t{"i":2,"x":\t']
    for damage in torn:
        segment.write_bytes(b'runstream.metrics\t{"i":0}\n' + damage + b'runstream.metrics\t{"i":3}\n')
        reader = Spool(tmp_path, writer=False)
        records, _ = reader.read(reader.acked_cursor())
        assert _ids(records) == [0, 3] and reader.damaged_bytes == len(damage), damage
        reader.close()


def test_a_segment_cut_short_then_later_segments_written(tmp_path):
    """A power loss truncates a segment mid-record; the resumed run writes a new segment after it."""
    spool = Spool(tmp_path)
    _write(spool, range(5))
    spool.close()
    segment = tmp_path / "seg-00000001.log"
    segment.write_bytes(segment.read_bytes()[:-7])  # record 4 loses its end
    resumed = Spool(tmp_path)
    _write(resumed, range(5, 8))
    resumed.close()
    reader = Spool(tmp_path, writer=False)
    records, cursor = reader.read(reader.acked_cursor())
    assert _ids(records) == [0, 1, 2, 3, 5, 6, 7]
    assert reader.damaged_bytes == len(b'runstream.metrics\t{"i":4}\n') - 7
    reader.ack(cursor)
    assert reader.read(cursor)[0] == [] and reader.count() == 0
    reader.close()


def test_the_torn_tail_of_the_newest_segment_is_skipped_only_when_its_writer_is_known_gone(tmp_path):
    """A run of this host (its lock proves the writer gone) whose last segment was left alone for a while: the
    torn tail is skipped. Otherwise (another node's run on a shared disk, or a fresh write) it may be a record
    being written: the cursor stops before it."""
    spool = Spool(tmp_path)
    _write(spool, range(2))
    spool.close()
    segment = tmp_path / "seg-00000001.log"
    tail = b'runstream.metrics\t{"i":2'
    segment.write_bytes(segment.read_bytes() + tail)
    whole = len(segment.read_bytes()) - len(tail)
    for local in (False, True):  # fresh: kept either way
        reader = Spool(tmp_path, writer=False, local=local)
        records, cursor = reader.read(reader.acked_cursor())
        assert _ids(records) == [0, 1] and cursor == Cursor(1, whole) and reader.damaged_bytes == 0
        reader.close()
    old = time.time() - 60
    os.utime(segment, (old, old))
    remote = Spool(tmp_path, writer=False)  # another node's run: never skipped
    assert remote.read(remote.acked_cursor())[1] == Cursor(1, whole)
    remote.close()
    reader = Spool(tmp_path, writer=False, local=True)
    records, cursor = reader.read(reader.acked_cursor())
    assert _ids(records) == [0, 1] and reader.damaged_bytes == len(tail) and cursor == Cursor(1, whole + len(tail))
    assert reader.read(cursor) == ([], cursor) and reader.damaged_bytes == len(tail)
    reader.close()


def test_an_inspect_probe_never_makes_a_writer_fail(tmp_path):
    """``inspect`` probes the lock for a moment; a run opening its spool meanwhile waits for it."""
    Spool(tmp_path).close()
    import fcntl

    fd = os.open(tmp_path / "lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe, caught holding it
    threading.Timer(0.1, os.close, [fd]).start()
    Spool(tmp_path).close()


def test_the_record_after_a_custom_topic_is_read(tmp_path):
    segment = tmp_path / "seg-00000001.log"
    segment.write_bytes(b'acme.prod.runstream_metrics-2\t{"i":0}\n')
    reader = Spool(tmp_path, writer=False)
    assert _ids(reader.read(reader.acked_cursor())[0]) == [0]
    reader.close()


def test_inspect_counts_without_the_lock_and_sees_a_live_writer(tmp_path):
    spool = Spool(tmp_path)
    _write(spool, range(4))
    live = inspect(tmp_path)
    assert live.events == 4 and live.live and live.bytes > 0
    spool.ack(spool.read(spool.acked_cursor())[1])
    spool.close()
    assert inspect(tmp_path) == inspect(tmp_path) and inspect(tmp_path).events == 0
    assert not inspect(tmp_path).live


def test_finish_is_neutral_about_in_flight_events_unless_the_server_answered_before():
    url = "http://server:8080"
    never = unsent_lines(_result(unacked_events=3, in_flight_events=3), url, 5, "/r", "online")
    assert "no answer yet within 5 s" in never[0] and "most likely arrived" not in never[0]
    answered = unsent_lines(_result(unacked_events=3, in_flight_events=3, answered=True), url, 5, "/r", "online")
    assert "most likely arrived" in answered[0]


def test_quarantine_files_keep_the_records_and_the_reasons(tmp_path):
    err = TransportError("x", status=422, reason="HTTP 422: metrics: bad step", rejected=True)
    path = write_quarantine(tmp_path / "quarantine", _records(2), [err, err], "http://server")
    [(found, meta)] = quarantined(tmp_path / "quarantine")
    assert found == path and read_records(path) == _records(2)
    assert meta["status"] == 422 and meta["events"] == 2 and meta["reason"] == "HTTP 422: metrics: bad step"
    assert meta["retry"].startswith("runstream sync --quarantined")


# -- a full disk: training goes on, nothing kept is damaged, what was lost is counted ------------------------


class FakeFile:
    """A segment file whose disk fills after ``room`` bytes: a short write, then ENOSPC."""

    def __init__(self, real, room: int) -> None:
        self.real, self.room = real, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), self.room)
        self.room -= n
        return self.real.write(bytes(data[:n]))

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_a_short_write_is_cut_back_and_the_refused_records_written_later(tmp_path):
    spool = Spool(tmp_path)
    _write(spool, range(3))
    size = (tmp_path / "seg-00000001.log").stat().st_size
    spool._file = FakeFile(spool._file, room=30)  # the disk fills mid-record
    _write(spool, range(3, 6))
    assert spool.write_error is not None and spool.held_events == 3 and spool.dropped_events == 0
    assert (tmp_path / "seg-00000001.log").stat().st_size == size  # the partial write was cut back
    spool._file.room = 1 << 20  # room again
    _write(spool, range(6, 7))
    assert spool.write_error is None and spool.held_events == 0
    reader_records, _ = spool.read(spool.acked_cursor())
    assert _ids(reader_records) == list(range(7)) and spool.damaged_bytes == 0
    spool.close()


def test_held_records_past_the_bound_are_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path)
    spool._file = FakeFile(spool._file, room=0)
    big = b'{"pad":"' + b"x" * (1 << 20) + b'"}'
    for _ in range(MAX_HELD_BYTES // len(big) + 3):
        spool.append(TOPIC, big)
        spool.flush()
    assert spool.dropped_events >= 2 and spool.held_events > 0
    held = spool.held_events
    spool.close()  # still no room: what was held is dropped too
    assert spool.dropped_events >= held + 2


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_damages_nothing_already_spooled(small_disk):
    spool = Spool(small_disk / "spool")
    payload = b'{"i":%d,"pad":"' + b"p" * 900 + b'"}'
    for i in range(600):  # ~550 KiB: more than the disk holds
        spool.append(TOPIC, payload % i)
        if i % 7 == 0:
            spool.flush()
    spool.close()
    assert spool.dropped_events > 0 and isinstance(spool.write_error, OSError)
    assert spool.write_error.errno in (errno.ENOSPC, errno.EDQUOT)
    reader = Spool(small_disk / "spool", writer=False)
    records, _ = reader.read(Cursor(1, 0), max_bytes=1 << 30)
    ids = _ids(records)
    assert reader.damaged_bytes == 0 and ids == list(range(len(ids)))  # whole records, in order, no gap
    assert len(ids) + spool.dropped_events == 600
    reader.close()
    os.sync()


# -- what finish() says ------------------------------------------------------------------------------------


def _result(**fields) -> FinishResult:
    return FinishResult(**{"acked_events": 10, "unacked_events": 0, "points": 5, "spool_dir": "/r/spool", **fields})


def test_finish_says_sent_but_unanswered_apart_from_never_sent():
    url = "http://server:8080"
    in_flight = unsent_lines(_result(unacked_events=7, in_flight_events=7, answered=True), url, 5, "/r", "online")
    assert len(in_flight) == 1 and "sent to http://server:8080 but its answer had not come" in in_flight[0]
    assert "next run on this machine" in in_flight[0] and "not acknowledged" not in in_flight[0]
    never = unsent_lines(
        _result(unacked_events=9, unsent_events=9, last_error="connection refused"), url, 5, "/r", "online"
    )
    assert "9 events were not sent" in never[0] and "connection refused" in never[0]
    assert "runstream sync --all" in never[0]
    refused = unsent_lines(
        _result(unacked_events=9, unsent_events=9, refused="http://server:8080 refused key rs_ab12…", refused_key=True),
        url,
        5,
        "/r",
        "online",
    )
    assert "runstream sync --api-key KEY /r" in refused[0]
    assert unsent_lines(_result(), url, 5, "/r", "online") == []
    assert unsent_lines(_result(unacked_events=9, unsent_events=9), url, 5, "/r", "offline") == []
    other = unsent_lines(_result(quarantined_events=2, quarantine_dir="/r/quarantine", dropped_events=4), url, 5,
                         "/r", "online")  # fmt: skip
    assert "runstream sync --quarantined /r" in other[0] and "4 events could not be kept" in other[1]


def test_quarantine_batches_never_overwrite_each_other(tmp_path):
    names = {write_quarantine(tmp_path / "quarantine", _records(1), [], "u").name for _ in range(20)}
    assert len(names) == 20 and len(quarantined(tmp_path / "quarantine")) == 20


# -- the registry of runs with something unsent -------------------------------------------------------------


def _run_dir(root: Path, name: str, host: str, pending: int) -> Path:
    run_dir = root / name
    spool = Spool(run_dir / "spool")
    _write(spool, range(pending))
    spool.close()
    meta = {"team": "t", "project": "p", "run_id": name, "url": "http://s", "mode": "online", "host": host}
    (run_dir / "run.json").write_text(json.dumps(meta))
    return run_dir


def test_the_registry_drops_only_this_hosts_vanished_runs(tmp_path, monkeypatch):
    from runstream import sync

    monkeypatch.setenv("RUNSTREAM_CONFIG", str(tmp_path / "conf" / "config.toml"))
    assert sync.registry_dir() == tmp_path / "conf" / "runstream-unsent"
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    sync.remember(ours)
    sync.remember(theirs)
    entry = sync._entry(theirs)
    entry.write_text(f"{theirs}\tanother-node\n")  # a run on another node, its disk not mounted here
    assert sync.remembered() == []
    assert not sync._entry(ours).exists() and entry.exists()
    old = time.time() - sync.LEFTOVER_MAX_AGE - 60
    os.utime(entry, (old, old))
    sync.remembered()
    assert not entry.exists()  # after 30 days, whoever looks drops it


def test_leftovers_are_this_hosts_runs_with_something_unsent_and_finished_ones_are_forgotten(tmp_path, monkeypatch):
    from runstream import sync
    from runstream.spool import this_host

    monkeypatch.setenv("RUNSTREAM_CONFIG", str(tmp_path / "conf" / "config.toml"))
    unsent = _run_dir(tmp_path, "run-unsent", this_host(), 3)
    done = _run_dir(tmp_path, "run-done", this_host(), 0)
    other = _run_dir(tmp_path, "run-other", "another-node", 3)
    for run_dir in (unsent, done, other):
        sync.remember(run_dir)
    assert sync.leftovers("http://s/") == [unsent.absolute()]
    assert not sync._entry(done).exists() and sync._entry(other).exists()


def test_only_a_live_resenders_marker_makes_a_resume_wait(tmp_path):
    from runstream.sync import resending

    assert not resending(tmp_path)
    (tmp_path / "resending.999999999").write_text("")  # no such process: a resend that died
    assert not resending(tmp_path)
    (tmp_path / f"resending.{os.getpid()}").write_text("")
    assert resending(tmp_path)


# -- the pump: what it found survives a transient failure; a proxy's 4xx quarantines nothing -------------------


def _sender(tmp_path: Path, url: str) -> Sender:
    spool = Spool(tmp_path / "spool")
    _write(spool, range(3))
    identity = RunIdentity("t", "p", "r")
    files = tmp_path / "files"
    return Sender(identity, spool, HttpTransport(url), seq_start=0, stats=MetricStats(), files_dir=files)


def test_a_refusal_found_before_a_transient_failure_is_set_aside_once(tmp_path, answers):
    bad = {"error": {"code": "invalid_events", "message": "1 of 3 events are invalid",
                     "details": {"errors": [{"line": 2, "reason": "bad step"}], "invalid": 1, "total": 3}}}  # fmt: skip
    busy = {"error": {"code": "unavailable", "message": "busy"}}
    server = answers([(422, {}, bad), (503, {}, busy)])  # the rest of the batch then fails for a moment
    sender = _sender(tmp_path, server.url)
    sender.start()
    result = sender.finish(10, "run_finish", {"state": "finished", "exit_code": 0})
    assert result.quarantined_events == 1 and result.unacked_events == 0, result
    [(batch, _)] = quarantined(tmp_path / "quarantine")
    assert _ids(read_records(batch)) == [1]


def test_a_proxy_refusing_every_request_quarantines_nothing(tmp_path, answers, caplog):
    server = answers([], then=(400, {}, {"raw": "<html>400 Bad Request</html>"}))
    sender = _sender(tmp_path, server.url)
    sender.start()
    result = sender.finish(1, "run_finish", {"state": "finished", "exit_code": 0})
    assert result.quarantined_events == 0 and result.unacked_events >= 3 and not result.refused_key, result
    assert "answered HTTP 400" in result.refused and "check the URL" in caplog.text
    assert not (tmp_path / "quarantine").exists() and len(server.times) == 1  # retried slowly: once a minute


def test_finish_that_gives_up_waiting_stops_the_pump_before_the_spool_closes(tmp_path, monkeypatch):
    """A slow periodic call holds the sender past finish's bound: the pump is cancelled before the spool is
    let go, so it never reads or acknowledges a spool a `runstream sync` may hold next."""
    import runstream.sender as sender_module

    monkeypatch.setattr(sender_module, "CLOSE_GRACE", 0.2)

    class Hanging:
        async def send(self, records, key):
            await asyncio.Event().wait()  # a server that never answers

        async def close(self):
            return None

    spool = Spool(tmp_path / "spool")
    _write(spool, range(3))
    sender = Sender(RunIdentity("t", "p", "r"), spool, Hanging(), seq_start=0, stats=MetricStats(),
                    files_dir=tmp_path / "files")  # fmt: skip
    sender.every(0.01, lambda: time.sleep(2))  # a large file being copied, say
    sender.start()
    time.sleep(0.4)
    result = sender.finish(0.3, "run_finish", {"state": "finished", "exit_code": 0})
    assert sender._pump_stopped.is_set() and spool.closed and result.unacked_events >= 3
