"""The chaos scenarios that fit in CI (``bench/chaos``), with short fault windows: nothing logged is lost
or counted twice, ``log()`` never blocks, ``finish()`` keeps its bound, and each fault heals by itself.

Each test runs a scenario of ``bench.chaos.scenarios`` as it is (real services, real training
processes through the SDK) and asserts its functional targets, never its timings beyond the bounds the
SDK promises. ``python -m bench.chaos`` runs them all with the issue's windows and prints the figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import scenarios
from bench.chaos.harness import Result

#: A generous bound for one ``log()`` call on a loaded CI machine (the bench's target is 50 ms).
LOG_BOUND_MS = 1000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")


def _explain(result: Result) -> str:
    return f"{result.name}: {result.check()} notes={result.notes} details={result.extra}"


def _assert_healthy(result: Result) -> None:
    assert result.lost == 0, _explain(result)
    assert result.duplicated == 0, _explain(result)
    assert result.recovered, _explain(result)
    assert result.log_blocked_max_ms < LOG_BOUND_MS, _explain(result)
    if result.finish_bound_s:
        assert result.finish_max_s <= result.finish_bound_s + 2, _explain(result)  # + the process's own start-up


def test_a_network_stall_and_resets_lose_nothing_and_finish_keeps_its_bound(tmp_path: Path) -> None:
    result = scenarios.network(tmp_path, stall_s=5, reset_s=1)
    _assert_healthy(result)
    assert result.stored == result.sent > 0
    # The run that finished inside the stall returned within its bound and left the rest to `runstream sync`.
    assert result.extra["finish_in_stall_s"] <= result.finish_bound_s


def test_clickhouse_down_under_the_embedded_pipeline_is_refused_then_caught_up(tmp_path: Path) -> None:
    result = scenarios.clickhouse_embedded(tmp_path, outage_s=5)
    _assert_healthy(result)
    assert result.stored == result.sent > 0
    answers = result.extra["ingest_answers_while_down"]
    assert answers and "200" not in answers, answers  # refused while ClickHouse is down, never acknowledged


@pytest.mark.parametrize("tear", scenarios.TEARS)
def test_a_torn_spool_segment_delivers_every_whole_record(tmp_path: Path, tear: str) -> None:
    result = scenarios.torn_segment(tmp_path, steps=60, tears=(tear,))
    _assert_healthy(result)
    assert result.dropped > 0  # the torn record itself
    assert result.stored == result.sent - result.dropped


def test_a_client_clock_a_day_off_changes_neither_order_resume_nor_crash_detection(tmp_path: Path) -> None:
    result = scenarios.clock_skew(tmp_path, crash_timeout=5, steps=30)
    _assert_healthy(result)
    assert set(result.extra["crashed_after_s"]) == {"killed-ahead", "killed-behind"}


@needs_root
def test_a_full_server_disk_is_refused_and_everything_arrives_once_there_is_room(tmp_path: Path) -> None:
    result = scenarios.server_disk_full(tmp_path, outage_s=5)
    _assert_healthy(result)
    assert result.stored == result.sent > 0


@needs_root
def test_a_full_sdk_disk_keeps_training_and_counts_what_it_could_not_keep(tmp_path: Path) -> None:
    result = scenarios.sdk_disk_full(tmp_path, full_s=2, size="256k")
    _assert_healthy(result)
    assert result.extra["spool_damaged_records"] == 0
    assert any("could not be kept" in line or "No space" in line for line in result.extra["sdk_reports"])
