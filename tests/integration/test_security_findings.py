"""Issue 16, section 4: what one request or one event may cost, and what the file store may touch.

Filters are bounded (a 400 naming the bound) and a heavy query does not hold the embedded server; an
event nested past what storage takes, or with a seq from the far future, is refused at validation; an
event that passes validation but can never be stored goes to the dead letters while the rest of its
batch is stored, and a transient storage failure still loses nothing; the file store refuses to put a
file under a file and does not follow links.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import orjson
import pytest

from runstream import events
from runstream.events import Event
from runstream.settings import Settings
from runstream.storage.client import connect
from runstream.storage.filters import MAX_CONDITIONS, MAX_MAP_KEYS
from runstream.storage.migrations import migrate
from runstream.streams import app as worker
from runstream.streams import processor
from runstream.streams.pipeline import Pipeline
from tests.helpers import dead_letters_with, make_event, unique
from tests.integration.test_worker import _produce, _until

GROUPS = "/api/v1/projects/acme/mnist/runs/groups"


def _nested(levels: int) -> dict:
    value: dict | int = 1
    for _ in range(levels):
        value = {"a": value}
    assert isinstance(value, dict)
    return value


def _runs(api, headers: dict[str, str], count: int = 20) -> None:
    started = [
        make_event(events.RUN_START, {"name": f"r{i}", "config": {f"k{j}": j for j in range(10)}}, 1, f"r{i}")
        for i in range(count)
    ]
    assert api.ingest(started, headers).status_code == 200


def maximal_filter() -> dict:
    """As costly a filter as the bounds allow: every distinct key, every condition, long $in lists."""
    half = MAX_MAP_KEYS // 2
    per_key = (MAX_CONDITIONS - 4) // MAX_MAP_KEYS
    ops = ["$gt", "$ne", "$lt", "$exists"][: max(per_key, 1)]
    config = {f"config.k{i}.value": {op: (True if op == "$exists" else i) for op in ops} for i in range(half)}
    summary = {f"summary.s{i}": {op: (True if op == "$exists" else i) for op in ops} for i in range(half)}
    return {"$or": [config, summary]}


# -- 1. filters are bounded; a heavy query holds nothing else -----------------------------------------------


def test_a_filter_past_its_bounds_is_a_400_that_names_the_bound(api):
    headers = api.key("acme", "ann")
    _runs(api, headers, 3)
    too_many_keys = {f"config.k{i}": i for i in range(1000)}
    refused = api.http.post(GROUPS, json={"by": ["state"], "filters": too_many_keys}, headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["details"]["bound"] == "map_keys"
    assert f"at most {MAX_MAP_KEYS}" in refused.json()["error"]["message"]

    too_many = {"$and": [{"state": {"$ne": str(i)}} for i in range(MAX_CONDITIONS + 1)]}
    refused = api.http.post(GROUPS, json={"by": ["state"], "filters": too_many}, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["details"]["bound"] == "conditions"

    # The most a filter may be still answers, and in what any client waits for.
    answered = api.http.post(GROUPS, json={"by": ["state"], "filters": maximal_filter()}, headers=headers)
    assert answered.status_code == 200, answered.text


def test_health_and_ingest_answer_while_heavy_queries_run(api):
    headers = api.key("acme", "ann")
    _runs(api, headers, 20)
    body = {"by": ["state"], "filters": maximal_filter()}
    stop = threading.Event()
    heavy: list[int] = []

    def query_forever() -> None:
        while not stop.is_set():
            heavy.append(api.http.post(GROUPS, json=body, headers=headers).status_code)

    threads = [threading.Thread(target=query_forever) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        for i in range(3):
            assert api.http.get("/api/v1/health").status_code == 200
            beat = make_event(events.HEARTBEAT, {}, 2 + i, "r0")
            assert api.ingest([beat], headers).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert heavy and set(heavy) == {200}


def test_health_answers_while_a_slow_query_holds_its_connection(api):
    """A chdb connection runs one call at a time: a query in flight on the only connection made every other
    request wait (health answered 503). Each thread now has its own: health answers while it still runs."""
    backend = api.app.state.backend
    slow_sql = "SELECT sleepEachRow(0.5) FROM numbers(16) SETTINGS max_block_size = 1"  # about 8 s

    def slow() -> None:
        asyncio.run(backend.run(lambda client: client.query(slow_sql)))

    holder = threading.Thread(target=slow)
    holder.start()
    try:
        time.sleep(1.0)
        assert api.http.get("/api/v1/health").status_code == 200
        assert (
            api.ingest([make_event(events.RUN_START, {"name": "h"}, 1, "h")], api.key("acme", "ann")).status_code == 200
        )
        assert holder.is_alive()  # answered while the slow query was still running
    finally:
        holder.join(timeout=60)


# -- 2. events nested past what storage takes -------------------------------------------------------------


def test_an_event_nested_too_deep_is_refused_at_ingest(api):
    headers = api.key("acme", "ann")
    deep = make_event(events.RUN_START, {"name": "deep", "git": _nested(250)}, 1, "deep")
    refused = api.ingest([deep], headers)
    assert refused.status_code == 422, refused.text
    assert "nests more than" in refused.text
    with pytest.raises(events.InvalidEvent, match="nests more than"):
        events.decode(orjson.dumps(deep))


def test_an_event_storage_cannot_take_is_dead_lettered_and_the_rest_stored(clickhouse_dsn):
    """Past validation (as a bug or a new limit would let it), one unstorable event costs its batch a few
    splits: it goes to the dead letters with why, the other events are stored."""
    client = connect(clickhouse_dsn)
    migrate(client)
    now = time.time()
    good = [Event(events.RUN_START, "acme", "p", f"r{i}", 1, now, {"name": f"r{i}"}) for i in range(7)]
    bad = Event(events.RUN_START, "acme", "p", "bad", 1, now, {"name": "bad", "git": _nested(300)})
    pipeline = Pipeline(lambda: client)
    pipeline.handle([*good[:3], bad, *good[3:]])
    stored = client.query("SELECT run_id FROM runs FINAL WHERE project = 'p' ORDER BY run_id").result_rows
    assert [r[0] for r in stored] == [f"r{i}" for i in range(7)]
    assert [(topic, reason.split(":")[0]) for _, topic, reason in pipeline.dead_letters] == [
        (events.TOPIC_RUNS.name, "cannot be stored")
    ]
    assert orjson.loads(pipeline.dead_letters[0][0])["run_id"] == "bad"


def test_an_alert_storage_cannot_take_is_dead_lettered_and_the_others_stored(clickhouse_dsn, monkeypatch):
    client = connect(clickhouse_dsn)
    migrate(client)
    insert_alerts = processor.insert_alerts

    def refuses_poison(client, rows):
        if any(row["title"] == "poison" for row in rows):
            raise ValueError("a value storage cannot take")
        return insert_alerts(client, rows)

    monkeypatch.setattr(processor, "insert_alerts", refuses_poison)
    pipeline = Pipeline(lambda: client)
    now = time.time()
    alerts = [
        Event(events.ALERT, "acme", "p", "a", i, now, {"title": title, "text": "", "level": "INFO", "source": "sdk"})
        for i, title in enumerate(["one", "poison", "two", "three"], start=2)
    ]
    pipeline.handle([Event(events.RUN_START, "acme", "p", "a", 1, now, {"name": "a"}), *alerts])
    titles = client.query("SELECT title FROM alerts FINAL WHERE project = 'p' ORDER BY title").result_rows
    assert [r[0] for r in titles] == ["one", "three", "two"]
    assert [orjson.loads(raw)["data"]["title"] for raw, _, _ in pipeline.dead_letters] == ["poison"]


def test_a_transient_storage_failure_dead_letters_nothing(clickhouse_dsn, monkeypatch):
    client = connect(clickhouse_dsn)
    migrate(client)
    pipeline = Pipeline(lambda: client)
    process = pipeline.processor.process
    failures: list[int] = []

    def down_once(batch, *args):
        if not failures:
            failures.append(len(batch))
            raise ConnectionError("ClickHouse went away")
        return process(batch, *args)

    monkeypatch.setattr(pipeline.processor, "process", down_once)
    batch = [Event(events.RUN_START, "acme", "p", f"t{i}", 1, time.time(), {"name": f"t{i}"}) for i in range(4)]
    with pytest.raises(ConnectionError):
        pipeline.handle(batch)  # the server answers 503; the SDK sends the batch again
    assert not pipeline.dead_letters
    pipeline.handle(batch)
    assert len(client.query("SELECT run_id FROM runs FINAL WHERE project = 'p'").result_rows) == 4


# -- 3. a seq from the far future ---------------------------------------------------------------------------


def test_a_seq_from_the_far_future_is_refused_and_the_run_goes_on(api):
    headers = api.key("acme", "ann")
    start = make_event(events.RUN_START, {"name": "s"}, 1, "s")
    assert api.ingest([start], headers).status_code == 200
    frozen = make_event(events.HEARTBEAT, {}, 2**64 - 1, "s")
    refused = api.ingest([frozen], headers)
    assert refused.status_code == 422 and "seq" in refused.text
    finish = make_event(events.RUN_FINISH, {"state": "finished"}, 2, "s")
    assert api.ingest([finish], headers).status_code == 200
    run = api.http.get("/api/v1/runs/acme/mnist/s", headers=headers).json()
    assert run["state"] == "finished"
    # The SDK's own seqs (the session's start time << 32, plus a counter) pass.
    assert events.validate(make_event(events.HEARTBEAT, {}, (int(time.time()) << 32) + 7, "s")).seq


# -- 4. the file store ----------------------------------------------------------------------------------------


def _put(api, headers, path: str, blob: bytes):
    digest = hashlib.sha256(blob).hexdigest()
    return api.http.put(f"/api/v1/files/acme/mnist/run1/{path}?sha256={digest}", content=blob, headers=headers)


def test_a_file_under_a_file_is_a_409(api):
    headers = api.key("acme", "ann")
    assert _put(api, headers, "out/model.bin", b"weights").status_code == 200
    refused = _put(api, headers, "out/model.bin/extra.txt", b"more")
    assert refused.status_code == 409, refused.text
    assert "model.bin is a file" in refused.json()["error"]["message"]
    refused = _put(api, headers, "out", b"a folder is there")
    assert refused.status_code == 409 and "is a folder" in refused.json()["error"]["message"]


def test_the_file_store_does_not_follow_links(api, tmp_path):
    headers = api.key("acme", "ann")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    assert _put(api, headers, "a.txt", b"mine").status_code == 200
    run_dir = api.app.state.backend.files.root / "acme" / "mnist" / "run1"
    (run_dir / "linked").symlink_to(outside)
    (run_dir / "secret.txt").symlink_to(outside / "secret.txt")

    url = "/api/v1/files/acme/mnist/run1"
    assert api.http.get(f"{url}/linked/secret.txt", headers=headers).status_code == 404
    assert api.http.get(f"{url}/secret.txt", headers=headers).status_code == 404
    refused = _put(api, headers, "linked/new.txt", b"escape")
    assert refused.status_code == 409 and "symbolic link" in refused.json()["error"]["message"]
    assert not (outside / "new.txt").exists()
    refused = _put(api, headers, "secret.txt", b"overwrite")
    assert refused.status_code == 409
    assert (outside / "secret.txt").read_text() == "not yours"
    assert api.http.get(f"{url}/a.txt", headers=headers).content == b"mine"


# -- the Faust worker: unstorable events to the dead letters, on a real broker ---------------------------------


def test_unstorable_and_too_deep_events_go_to_the_dead_letters_and_the_partition_moves_on(
    kafka_bootstrap, clickhouse_dsn, tmp_path, monkeypatch
):
    """A run_start nested too deep is a dead letter at decode; one that storage refuses (a storage bug,
    simulated for one run) is found by splitting its batch and dead-lettered; every other event is stored."""
    upsert_runs = processor.upsert_runs

    def refuses_poison(client, rows):
        if any(row.get("name") == "poison" for row in rows):
            raise ValueError("a value storage cannot take")
        return upsert_runs(client, rows)

    monkeypatch.setattr(processor, "upsert_runs", refuses_poison)
    project = unique("proj")
    client = connect(clickhouse_dsn)
    migrate(client)

    def start(run_id: str, data: dict) -> tuple[str, bytes, bytes]:
        event = make_event(events.RUN_START, data, 1, run_id, project=project)
        return events.TOPIC_RUNS.name, f"acme/{project}/{run_id}".encode(), orjson.dumps(event)

    messages = [start(f"g{i}", {"name": f"g{i}"}) for i in range(6)]
    messages.insert(2, start("poison", {"name": "poison"}))
    messages.insert(4, start("deep", {"name": "deep", "git": _nested(100)}))

    async def scenario() -> list:
        settings = Settings(
            kafka=kafka_bootstrap, clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path), app_id=unique("worker")
        )
        app = worker.create_app(settings)
        await app.start()
        try:
            await _produce(kafka_bootstrap, messages)

            def stored() -> list[str]:
                rows = client.query(
                    "SELECT run_id FROM runs FINAL WHERE project = {p:String} ORDER BY run_id",
                    parameters={"p": project},
                ).result_rows
                return [r[0] for r in rows]

            assert await _until(lambda: stored() == [f"g{i}" for i in range(6)], timeout=90), stored()
            dead = await dead_letters_with(kafka_bootstrap, project.encode(), want=2, timeout=60)
        finally:
            await app.stop()
        return dead

    dead = asyncio.run(scenario())
    reasons = {
        orjson.loads(m.value)["run_id"]: dict(m.headers)[events.DEAD_LETTER_REASON_HEADER].decode() for m in dead
    }
    assert set(reasons) == {"poison", "deep"}
    assert reasons["poison"].startswith("cannot be stored: ValueError: a value storage cannot take")
    assert "nests more than" in reasons["deep"]


def test_what_counts_as_transient():
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    from runstream.streams.batch import is_transient

    assert is_transient(ConnectionError("refused")) and is_transient(TimeoutError())
    assert is_transient(OperationalError("HTTP driver error")) and is_transient(DatabaseError("x", code=241))
    assert not is_transient(DatabaseError("cannot parse", code=27)) and not is_transient(RecursionError())
    assert not is_transient(DataError("value out of range for UInt64"))
    assert not is_transient(TypeError("Recursion limit reached")) and not is_transient(ValueError("bad"))
    # A full disk, and anything nobody classified, is waited out: it must cost time, never events.
    assert is_transient(DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space", code=243))
    assert is_transient(RuntimeError("Code: 243. DB::Exception: not enough space"))  # the embedded engine's
    assert is_transient(DatabaseError("no code")) and is_transient(RuntimeError("something new"))
    assert not is_transient(RuntimeError("Code: 306. DB::Exception: Maximum recursion depth exceeded"))


def test_a_query_past_the_engine_limits_is_a_query_error_naming_the_limit(clickhouse, monkeypatch):
    from runstream.storage import runs
    from runstream.storage.errors import QueryError

    monkeypatch.setitem(runs.QUERY_SETTINGS, "max_execution_time", 1)
    with pytest.raises(QueryError) as refused:
        runs.filtered_query(clickhouse, "SELECT sum(sipHash64(number)) FROM numbers(100000000000)", {})
    assert refused.value.details["bound"] == "execution_time"
    with pytest.raises(QueryError) as refused:
        runs.filtered_query(clickhouse, "SELECT 1 WHERE " + " AND ".join(["1"] * 600_000), {})
    assert refused.value.details["bound"] == "query_size"
