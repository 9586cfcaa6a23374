"""The spool: segments, torn writes, acknowledgements, the single-writer lock."""

import pytest

from runstream.sender import MAX_POINTS_PER_EVENT, metric_batches
from runstream.spool import Cursor, Spool, SpoolLocked
from runstream.summary import MetricStats


def _write(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        spool.append("runstream.metrics", b'{"i":%d}' % i)
        spool.flush()  # one write per record: segments roll over at their size limit


def test_read_ack_and_resume_from_the_acked_cursor(tmp_path):
    spool = Spool(tmp_path, segment_bytes=200)  # tiny segments: many files
    _write(spool, 50)
    assert len(spool.segments()) > 3
    records, cursor = spool.read(spool.acked_cursor(), max_bytes=300)
    assert 0 < len(records) < 50 and records[0] == ("runstream.metrics", b'{"i":0}')
    spool.ack(cursor)
    rest, end = spool.read(cursor, max_bytes=1 << 20)
    assert [r[1] for r in records + rest] == [b'{"i":%d}' % i for i in range(50)]
    assert spool.count() == len(rest)
    spool.ack(end)
    assert spool.count() == 0
    assert len(spool.segments()) <= 2, "acknowledged segments are deleted"
    spool.close()

    reopened = Spool(tmp_path, writer=False)
    assert reopened.acked_cursor() == end
    assert reopened.read(end)[0] == []
    reopened.close()


def test_a_torn_last_line_is_ignored_and_a_new_writer_starts_a_new_segment(tmp_path):
    spool = Spool(tmp_path)
    _write(spool, 3)
    spool.close()
    segment = tmp_path / "seg-00000001.log"
    segment.write_bytes(segment.read_bytes() + b'runstream.metrics\t{"i":99')  # a crash mid-write
    writer = Spool(tmp_path)  # a resumed run
    _write(writer, 2, start=3)
    records, _ = writer.read(Cursor(1, 0))
    assert [r[1] for r in records] == [b'{"i":%d}' % i for i in range(5)]
    writer.close()


def test_one_process_holds_a_spool(tmp_path):
    first = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, writer=False)
    first.close()
    Spool(tmp_path, writer=False).close()


def test_a_record_longer_than_the_read_budget_is_still_read(tmp_path):
    spool = Spool(tmp_path)
    big = b'{"x":"' + b"a" * 5000 + b'"}'
    spool.append("runstream.console", big)
    spool.flush()
    records, _ = spool.read(Cursor(1, 0), max_bytes=100)
    assert records == [("runstream.console", big)]
    spool.close()


def test_metric_batches_are_bounded_columnar_and_feed_stats():
    rows = [(i, 1000.0 + i, {"a": float(i), "b": i * 2}) for i in range(30_000)]
    rows.append((30_000, 1.0, {"c": float("nan")}))
    stats = MetricStats()
    batches = list(metric_batches(rows, stats))
    assert all(points <= MAX_POINTS_PER_EVENT for _, points in batches)
    assert sum(points for _, points in batches) == 60_001
    steps = [s for payload, _ in batches for s in payload["step"]]
    assert steps == list(range(30_001))
    last = batches[-1][0]
    assert last["values"] == {"c": ["NaN"]}  # 30,000 two-point rows fill three batches exactly
    assert stats.value("a", "max") == 29_999 and stats.value("b", "min") == 0
    assert stats.value("a", "mean") == pytest.approx(14_999.5)
    assert stats.value("c", "last") != stats.value("c", "last")  # NaN is the last value
    assert stats.value("c", "min") is None  # no finite value
