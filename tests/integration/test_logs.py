"""System series, console lines, files and alerts against the real ClickHouse engine,
checked against ground truth computed with numpy and plain Python."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from runstream.events import Event
from runstream.storage.errors import QueryError
from runstream.storage.logs import console_search, console_tail, list_alerts, media_steps, run_files, system_series
from runstream.storage.writer import insert_alerts, insert_console_lines, insert_files, insert_system_points

TEAM, PROJECT = "acme", "mnist"
T0 = 1_700_000_000.0


# -- system metrics -------------------------------------------------------------------


@pytest.fixture
def system_samples(clickhouse):
    """Two runs sampling cpu and mem at irregular times; every batch inserted twice."""
    rng = np.random.default_rng(11)
    samples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    events = []
    for r, run_id in enumerate(["run1", "run2"]):
        times_ms = np.cumsum(rng.integers(500, 3000, size=1200)) + int(T0 * 1000) + r * 7_000_000
        values = {"cpu": rng.uniform(0, 100, 1200), "mem": rng.uniform(1e9, 2e9, 1200)}
        for metric, v in values.items():
            samples[(run_id, metric)] = (times_ms, v)
        for seq, b in enumerate(range(0, 1200, 100), start=1):
            events.append(
                Event(
                    "system",
                    TEAM,
                    PROJECT,
                    run_id,
                    seq,
                    T0,
                    {
                        "time": (times_ms[b : b + 100] / 1000).tolist(),
                        "values": {m: v[b : b + 100].tolist() for m, v in values.items()},
                    },
                )
            )
    insert_system_points(clickhouse, events)
    insert_system_points(clickhouse, events)
    return clickhouse, samples


def _expected_buckets(times_ms: np.ndarray, values: np.ndarray, max_points: int):
    t0 = int(times_ms.min())
    width = (int(times_ms.max()) - t0) // max_points + 1
    bucket = (times_ms - t0) // width
    keys = np.unique(bucket)
    return (
        [(t0 + b * width) / 1000 for b in keys],
        [values[bucket == b].mean() for b in keys],
        [values[bucket == b].min() for b in keys],
        [values[bucket == b].max() for b in keys],
    )


def test_system_series_buckets_match_numpy(system_samples):
    clickhouse, samples = system_samples
    result = system_series(clickhouse, TEAM, PROJECT, ["run2", "run1", "ghost"], None, max_points=50)
    assert [(s["run_id"], s["metric"]) for s in result["runs"]] == sorted(samples)
    for series in result["runs"]:
        times_ms, values = samples[(series["run_id"], series["metric"])]
        time, mean, lo, hi = _expected_buckets(times_ms, values, 50)
        assert len(series["time"]) <= 50
        assert series["time"] == pytest.approx(time)
        assert series["min"] == list(lo) and series["max"] == list(hi)  # exact: same floats
        assert series["mean"] == pytest.approx(mean, rel=1e-12)  # deduplicated: not skewed by the copies


def test_system_series_time_range_and_metrics(system_samples):
    clickhouse, samples = system_samples
    times_ms, values = samples[("run1", "cpu")]
    start, end = times_ms[300] / 1000, times_ms[700] / 1000
    result = system_series(
        clickhouse, TEAM, PROJECT, ["run1", "run2"], ["cpu"], max_points=10_000, start=start, end=end
    )
    (series,) = result["runs"]  # run2 has no sample in the range
    assert series["metric"] == "cpu"
    assert series["max"] == values[300:701].tolist()  # fewer samples than buckets: each sample as it is
    assert series["time"] == pytest.approx((times_ms[300:701] / 1000).tolist())

    assert system_series(clickhouse, TEAM, PROJECT, [], None) == {"runs": []}
    assert system_series(clickhouse, TEAM, PROJECT, ["run1"], []) == {"runs": []}
    for bad in ({"max_points": 0}, {"start": -1}, {"end": "soon"}):
        with pytest.raises(QueryError):
            system_series(clickhouse, TEAM, PROJECT, ["run1"], **bad)


# -- console ----------------------------------------------------------------------------


@pytest.fixture
def console(clickhouse):
    """2,500 lines of run1 in batches of 100, every batch inserted twice; a few lines of run2."""
    lines = []
    events = []
    for seq, b in enumerate(range(0, 2500, 100), start=1):
        batch = [
            f"step {i}: Epoch {i // 500} loss={1 / (i + 1):.4f}" if i % 10 else f"WARNING at line {i}"
            for i in range(b, b + 100)
        ]
        lines += batch
        events.append(
            Event(
                "console",
                TEAM,
                PROJECT,
                "run1",
                seq,
                T0,
                {
                    "time": [T0 + i for i in range(b, b + 100)],
                    "stream": ["stderr" if line.startswith("WARNING") else "stdout" for line in batch],
                    "line": batch,
                },
            )
        )
    events.append(
        Event("console", TEAM, PROJECT, "run2", 1, T0, {"time": [T0], "stream": ["stdout"], "line": ["other run"]})
    )
    insert_console_lines(clickhouse, events)
    insert_console_lines(clickhouse, events[::-1])
    return clickhouse, lines


def test_console_tail_pages_back_through_every_line_once(console):
    clickhouse, lines = console
    page = console_tail(clickhouse, TEAM, PROJECT, "run1", limit=1000)
    assert [line["line"] for line in page["lines"]] == lines[-1000:]
    assert page["lines"][-1]["time"] == T0 + 2499
    assert page["lines"][0]["stream"] == "stderr"  # line 1500

    seen = []
    before = None
    while True:
        page = console_tail(clickhouse, TEAM, PROJECT, "run1", limit=700, before=before)
        seen = [line["line"] for line in page["lines"]] + seen
        before = page["next_before"]
        if before is None:
            break
    assert seen == lines
    assert console_tail(clickhouse, TEAM, PROJECT, "ghost") == {"lines": [], "next_before": None}
    with pytest.raises(QueryError, match="cursor"):
        console_tail(clickhouse, TEAM, PROJECT, "run1", before="1; DROP TABLE console_lines")
    with pytest.raises(QueryError):
        console_tail(clickhouse, TEAM, PROJECT, "run1", limit=0)


def test_console_search(console):
    clickhouse, lines = console
    found = console_search(clickhouse, TEAM, PROJECT, "run1", "warning AT")
    assert [line["line"] for line in found["lines"]] == [line for line in lines if "WARNING at" in line]
    assert found["next_before"] is None

    newest = console_search(clickhouse, TEAM, PROJECT, "run1", "epoch 4", limit=100)
    matching = [line for line in lines if "Epoch 4" in line]
    assert [line["line"] for line in newest["lines"]] == matching[-100:]
    older = console_search(clickhouse, TEAM, PROJECT, "run1", "epoch 4", limit=1000, before=newest["next_before"])
    assert [line["line"] for line in older["lines"]] == matching[:-100]

    regex = console_search(clickhouse, TEAM, PROJECT, "run1", r"^step 1\d{3}: .*loss=0\.0007", regex=True)
    assert [line["line"] for line in regex["lines"]] == [
        line for line in lines if line.startswith("step 1") and len(line.split(":")[0]) == 9 and "loss=0.0007" in line
    ]
    assert regex["lines"]

    hostile = "'; DROP TABLE console_lines; --"
    for as_regex in (False, True):
        assert console_search(clickhouse, TEAM, PROJECT, "run1", hostile, regex=as_regex)["lines"] == []
    assert clickhouse.command("SELECT count() FROM console_lines FINAL") == 2501

    with pytest.raises(QueryError, match="regular expression"):
        console_search(clickhouse, TEAM, PROJECT, "run1", "(unclosed", regex=True)
    with pytest.raises(QueryError):
        console_search(clickhouse, TEAM, PROJECT, "run1", "")


# -- files and media ------------------------------------------------------------------------


def _file(seq: int, path: str, kind: str, size: int, **extra) -> Event:
    data = {
        "path": path,
        "kind": kind,
        "size": size,
        "sha256": hashlib.sha256(f"{path}{size}".encode()).hexdigest(),
        "store_key": f"blobs/{path}",
        **extra,
    }
    return Event("file", TEAM, PROJECT, "run1", seq, T0 + seq, data)


def test_run_files_current_entry_per_path(clickhouse):
    insert_files(
        clickhouse,
        [
            _file(1, "model.pt", "file", 10),
            _file(5, "model.pt", "file", 20),  # saved again: replaces the first entry
            _file(2, "code/train.py", "code", 3),
            _file(3, "media/images/sample_2_a.png", "media", 7, step=2, media_type="image/png", meta={"key": "sample"}),
            _file(4, "media/images/sample_1_b.png", "media", 8, step=1, media_type="image/png", meta={"key": "sample"}),
            _file(6, "media/images/other_1_c.png", "media", 9, step=1, media_type="image/png", meta={"key": "other"}),
        ],
    )
    insert_files(clickhouse, [_file(1, "model.pt", "file", 10)])  # a late redelivery of the old entry

    files = run_files(clickhouse, TEAM, PROJECT, "run1")
    assert [f["path"] for f in files] == sorted(
        [
            "model.pt",
            "code/train.py",
            "media/images/sample_2_a.png",
            "media/images/sample_1_b.png",
            "media/images/other_1_c.png",
        ]
    )
    model = next(f for f in files if f["path"] == "model.pt")
    assert model["size"] == 20 and model["time"] == T0 + 5 and model["step"] is None and model["media_type"] is None
    assert model["sha256"] == hashlib.sha256(b"model.pt20").hexdigest()

    assert [f["path"] for f in run_files(clickhouse, TEAM, PROJECT, "run1", kind="code")] == ["code/train.py"]
    assert [f["path"] for f in run_files(clickhouse, TEAM, PROJECT, "run1", prefix="media/images/s")] == [
        "media/images/sample_1_b.png",
        "media/images/sample_2_a.png",
    ]
    assert run_files(clickhouse, TEAM, PROJECT, "run1", prefix="%") == []
    with pytest.raises(QueryError, match="kind"):
        run_files(clickhouse, TEAM, PROJECT, "run1", kind="exe")

    media = media_steps(clickhouse, TEAM, PROJECT, "run1", "sample")
    assert [(m["step"], m["path"]) for m in media] == [
        (1, "media/images/sample_1_b.png"),
        (2, "media/images/sample_2_a.png"),
    ]
    assert media[0]["meta"] == {"key": "sample"} and media[0]["media_type"] == "image/png"


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_newest_first(clickhouse):
    def alert(i: int, run_id: str, t: float) -> dict:
        return {
            "team": TEAM,
            "project": PROJECT,
            "run_id": run_id,
            "alert_id": f"a{i}",
            "rule_id": None,
            "source": "sdk",
            "level": "WARN",
            "title": f"alert {i}",
            "text": "",
            "time": t,
        }

    alerts = [alert(i, "run1" if i % 2 else "run2", T0 + (i * 37) % 11) for i in range(11)]
    insert_alerts(clickhouse, alerts)
    insert_alerts(clickhouse, alerts[:3])  # a replay

    listed = list_alerts(clickhouse, TEAM, PROJECT)
    assert [a["alert_id"] for a in listed] == [a["alert_id"] for a in sorted(alerts, key=lambda a: -a["time"])]
    assert listed[0]["time"] == T0 + 10 and listed[0]["rule_id"] is None and listed[0]["level"] == "WARN"
    run1 = list_alerts(clickhouse, TEAM, PROJECT, run_id="run1", since=T0 + 5, limit=3)
    expected = sorted((a for a in alerts if a["run_id"] == "run1" and a["time"] >= T0 + 5), key=lambda a: -a["time"])
    assert [a["alert_id"] for a in run1] == [a["alert_id"] for a in expected[:3]]
    with pytest.raises(QueryError):
        list_alerts(clickhouse, TEAM, PROJECT, limit=0)
