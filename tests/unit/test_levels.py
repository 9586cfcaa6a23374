"""Choosing the downsampling level and source for a step range (pure logic)."""

from runstream.storage.buckets import FANOUT, TOP_LEVEL, WIDTHS, level_for
from runstream.storage.series import Source


def test_widths_grow_by_the_fanout():
    assert WIDTHS[0] == 1 and WIDTHS[1] == 16
    assert all(WIDTHS[level + 1] == FANOUT * WIDTHS[level] for level in range(1, TOP_LEVEL))


def test_level_is_the_finest_with_at_most_the_asked_points():
    for first, last, points in [(0, 9_999, 500), (0, 99_999, 500), (123, 45_678, 300), (0, 10**9, 1000), (5, 20, 500)]:
        level = level_for(first, last, points)
        width = WIDTHS[level]
        assert last // width - first // width + 1 <= points or level == TOP_LEVEL
        if level > 1:
            finer = WIDTHS[level - 1]
            assert last // finer - first // finer + 1 > points


def test_source_reads_raw_points_for_short_ranges_and_buckets_them_a_little_for_medium_ones():
    assert Source.for_range(0, 499, 500) == Source(0, 1)
    assert Source.for_range(0, 1_000, 500) == Source(0, 3)
    assert Source.for_range(1, 1_000, 500) == Source(0, 3)  # 1000 steps, aligned buckets: at most 500 points
    assert Source.for_range(0, 1_999, 500) == Source(0, 5)
    medium = Source.for_range(0, 5_000, 500)
    assert medium.level == 1 and 500 / 4 < 5_001 / medium.width <= 500
    assert Source.for_range(0, 9_999, 500) == Source(2, 64)
