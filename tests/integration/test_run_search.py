"""Run search on the real engine, checked against ground truth computed in plain Python.

A few hundred generated runs (random configs with missing keys, mixed types,
nested dicts, unicode and hostile keys; summaries with NaN and inf; states,
tags, groups, tied creation times) are written through the writer, some twice
with a higher version, and every query is compared with the same question
answered over the records in Python.
"""

from __future__ import annotations

import base64
import functools
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from runstream.storage.errors import QueryError
from runstream.storage.runs import count_runs, get_run, group_runs, key_catalog, search_runs, unflatten
from runstream.storage.writer import flatten, json_type, upsert_run_summaries, upsert_runs

TEAM, PROJECT = "acme", "search"
T0 = 1_750_000_000
HOSTILE = "a'; DROP TABLE runs; --"
MISSING = object()


# -- the generated project ------------------------------------------------------------


def _config(rng: random.Random, i: int) -> dict[str, Any]:
    config: dict[str, Any] = {"batch_size": rng.choice([16, 32, 64]), "use_amp": rng.random() < 0.5, "seed": i}
    if rng.random() < 0.9:
        config["lr"] = rng.choice([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1])
    if rng.random() < 0.85:
        config["optimizer"] = rng.choice(["adam", "sgd", "adamw", "Adam"])
    config["model"] = {"depth": rng.randint(1, 12), "act": rng.choice(["relu", "gelu", "silu"])}
    if rng.random() < 0.3:
        config["model"]["dropout"] = rng.choice([0.0, 0.1, 0.5])
    if rng.random() < 0.6:
        config["mixed"] = rng.choice([1, 2.5, -3, "two", "1", True, False, None])
    if rng.random() < 0.7:
        config[HOSTILE] = rng.randint(0, 5)
    config["ключ"] = rng.choice(["значение", "🙂", 'quote"d', "it's", "a\\b"])
    if i % 97 == 0:
        config["weird"] = [math.nan, math.inf, -math.inf][i % 3]
    return config


def _summary(rng: random.Random, i: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"acc": round(rng.random(), 3), "epoch": rng.randint(1, 20)}
    summary["loss"] = math.nan if i % 23 == 0 else (math.inf if i % 101 == 0 else round(rng.uniform(0, 3), 3))
    if rng.random() < 0.5:
        summary["best"] = {"val_acc": round(rng.random(), 3)}
    return summary


def _generate(n: int = 300, seed: int = 7):
    """(truth, writes): the current record of each run, and every (run, summary) row written in order."""
    rng = random.Random(seed)
    truth, run_writes, summary_writes, stale = [], [], [], []
    for i in range(n):
        state = rng.choice(["finished", "finished", "running", "failed", "crashed"])
        created = T0 + rng.randint(0, 40) * 60  # many runs share a creation time
        updated = created + rng.randint(0, 4000) / 4
        run: dict[str, Any] = {
            "team": TEAM,
            "project": PROJECT,
            "run_id": f"{rng.getrandbits(48):012x}",
            "name": f"exp-{rng.randint(0, 60)}",
            "state": state,
            "created_at": created,
            "updated_at": updated,
            "heartbeat_at": updated,
            "finished_at": None if state == "running" else updated,
            "exit_code": {"finished": 0, "running": None}.get(state, 1),
            "group": rng.choice(["sweep-1", "sweep-2", ""]),
            "job_type": rng.choice(["train", "eval"]),
            "tags": rng.sample(["baseline", "ablation", "gpu", "it's"], rng.randint(0, 2)),
            "user": rng.choice(["alice", "bob"]),
            "host": f"node-{rng.randint(1, 4)}",
            "notes": "",
            "git": {"commit": f"{i:040x}"},
            "args": ["--lr", "x"],
            "config": _config(rng, i) | {"stage": "v1"},
            "version": 1,
        }
        summary = {"team": TEAM, "project": PROJECT, "run_id": run["run_id"], "summary": _summary(rng, i), "version": 1}
        if rng.random() < 0.25:  # a later write: the run moved on
            newer = {
                **run,
                "state": "finished",
                "exit_code": 0,
                "finished_at": updated + 10,
                "version": 2,
                "config": _config(rng, i) | {"stage": "v2"},
                "tags": [*run["tags"], "rerun"] if "rerun" not in run["tags"] else run["tags"],
            }
            newer_summary = {**summary, "summary": _summary(rng, i), "version": 2}
            if rng.random() < 0.3:  # written out of order: the older row arrives last and must lose
                stale.append((run, summary))
                run_writes.append(newer)
                summary_writes.append(newer_summary)
            else:
                run_writes += [run, newer]
                summary_writes += [summary, newer_summary]
            run, summary = newer, newer_summary
        else:
            run_writes.append(run)
            if rng.random() < 0.85:  # some runs have no summary at all
                summary_writes.append(summary)
            else:
                summary = {**summary, "summary": {}}
        truth.append({**run, "summary": summary["summary"]})
    for run, summary in stale:
        run_writes.append(run)
        summary_writes.append(summary)
    return truth, run_writes, summary_writes


TRUTH, RUN_WRITES, SUMMARY_WRITES = _generate()
BY_ID = {r["run_id"]: r for r in TRUTH}


@pytest.fixture
def db(clickhouse):
    half = len(RUN_WRITES) // 2  # two inserts, so rows of one run can sit in different parts
    upsert_runs(clickhouse, RUN_WRITES[:half])
    upsert_runs(clickhouse, RUN_WRITES[half:])
    upsert_run_summaries(clickhouse, SUMMARY_WRITES)
    # Another project's runs must never show up.
    upsert_runs(clickhouse, [{**r, "project": "other", "version": 1} for r in RUN_WRITES[:20]])
    return clickhouse


# -- ground truth helpers ----------------------------------------------------------------


def value(run: dict, field: str) -> Any:
    prefix, key = field.split(".", 1)
    return flatten(run[prefix]).get(key, MISSING)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(run: dict, field: str) -> float | None:
    v = value(run, field)
    return float(v) if is_number(v) else None


def string(run: dict, field: str) -> str | None:
    v = value(run, field)
    return v if isinstance(v, str) else None


def json_text(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        v = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return orjson.dumps(v).decode()


def ids_where(predicate: Callable[[dict], bool]) -> set[str]:
    return {r["run_id"] for r in TRUTH if predicate(r)}


def all_ids(client, filters=None, order="-created_at", limit=1000) -> list[str]:
    """Every matching run id, walking every page."""
    out, cursor = [], None
    while True:
        page = search_runs(client, TEAM, PROJECT, filters, order=order, limit=limit, cursor=cursor)
        out += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def gt(x, y):
    return x is not None and x > y


def lt(x, y):
    return x is not None and x < y


def le(x, y):
    return x is not None and x <= y


MS = 1000
FILTER_CASES: list[tuple[dict, Callable[[dict], bool]]] = [
    ({"state": "finished"}, lambda r: r["state"] == "finished"),
    ({"state": {"$ne": "running"}}, lambda r: r["state"] != "running"),
    ({"state": {"$in": ["failed", "crashed"]}}, lambda r: r["state"] in ("failed", "crashed")),
    ({"state": {"$nin": ["failed", "crashed"]}}, lambda r: r["state"] not in ("failed", "crashed")),
    ({"name": {"$regex": "^exp-1"}}, lambda r: r["name"].startswith("exp-1")),
    ({"display_name": {"$gt": "exp-3", "$lte": "exp-5"}}, lambda r: "exp-3" < r["name"] <= "exp-5"),
    ({"group": "sweep-1"}, lambda r: r["group"] == "sweep-1"),
    ({"group": None}, lambda r: r["group"] == ""),
    ({"group": {"$exists": True}}, lambda r: r["group"] != ""),
    ({"job_type": {"$in": ["eval"]}}, lambda r: r["job_type"] == "eval"),
    ({"id": TRUTH[5]["run_id"]}, lambda r: r is TRUTH[5]),
    ({"run_id": {"$in": [TRUTH[1]["run_id"], TRUTH[2]["run_id"], "nope"]}}, lambda r: r is TRUTH[1] or r is TRUTH[2]),
    ({"user": "alice", "host": {"$ne": "node-1"}}, lambda r: r["user"] == "alice" and r["host"] != "node-1"),
    ({"tags": "baseline"}, lambda r: "baseline" in r["tags"]),
    ({"tags": {"$eq": "it's"}}, lambda r: "it's" in r["tags"]),
    ({"tags": {"$ne": "gpu"}}, lambda r: "gpu" not in r["tags"]),
    ({"tags": {"$in": ["gpu", "it's"]}}, lambda r: bool({"gpu", "it's"} & set(r["tags"]))),
    ({"tags": {"$nin": ["gpu", "it's"]}}, lambda r: not {"gpu", "it's"} & set(r["tags"])),
    ({"tags": {"$regex": "^ab"}}, lambda r: any(t.startswith("ab") for t in r["tags"])),
    ({"tags": {"$exists": False}}, lambda r: not r["tags"]),
    ({"tags": {"$exists": True}}, lambda r: bool(r["tags"])),
    ({"created_at": {"$gte": T0 + 20 * 60}}, lambda r: r["created_at"] >= T0 + 20 * 60),
    ({"created_at": {"$lt": "2025-06-15T15:30:00Z"}}, lambda r: r["created_at"] < 1749999600 + 1800),
    ({"createdAt": T0 + 600}, lambda r: r["created_at"] == T0 + 600),
    ({"updated_at": {"$gt": T0 + 1500.25}}, lambda r: r["updated_at"] > T0 + 1500.25),
    ({"finished_at": None}, lambda r: r["finished_at"] is None),
    ({"finished_at": {"$ne": None}}, lambda r: r["finished_at"] is not None),
    ({"finished_at": {"$gt": T0 + 1000}}, lambda r: gt(r["finished_at"], T0 + 1000)),
    ({"finished_at": {"$not": {"$gt": T0 + 1000}}}, lambda r: not gt(r["finished_at"], T0 + 1000)),
    ({"exit_code": 0}, lambda r: r["exit_code"] == 0),
    ({"exit_code": {"$ne": 0}}, lambda r: r["exit_code"] != 0),
    ({"exit_code": {"$in": [1, None]}}, lambda r: r["exit_code"] in (1, None)),
    ({"config.lr": {"$gt": 1e-3}}, lambda r: gt(number(r, "config.lr"), 1e-3)),
    ({"config.lr": {"$lte": 1e-3}}, lambda r: le(number(r, "config.lr"), 1e-3)),
    ({"config.lr": 0.01}, lambda r: number(r, "config.lr") == 0.01),
    ({"config.lr": {"$ne": 0.01}}, lambda r: number(r, "config.lr") != 0.01),
    ({"config.lr": {"$in": [1e-4, 0.1]}}, lambda r: number(r, "config.lr") in (1e-4, 0.1)),
    ({"config.lr": {"$nin": [1e-4, 0.1]}}, lambda r: number(r, "config.lr") not in (1e-4, 0.1)),
    ({"config.lr": {"$exists": False}}, lambda r: value(r, "config.lr") is MISSING),
    ({"config.lr": {"$not": {"$gt": 1e-3}}}, lambda r: not gt(number(r, "config.lr"), 1e-3)),
    ({"config.batch_size": 32}, lambda r: value(r, "config.batch_size") == 32),
    ({"config.batch_size": 32.0}, lambda r: value(r, "config.batch_size") == 32),
    ({"config.batch_size": {"$gte": 32, "$lt": 64}}, lambda r: value(r, "config.batch_size") == 32),
    ({"config.optimizer": "adam"}, lambda r: value(r, "config.optimizer") == "adam"),
    ({"config.optimizer": {"$ne": "adam"}}, lambda r: value(r, "config.optimizer") != "adam"),
    ({"config.optimizer": {"$regex": "(?i)^adam$"}}, lambda r: string(r, "config.optimizer") in ("adam", "Adam")),
    ({"config.optimizer": {"$gt": "adam"}}, lambda r: gt(string(r, "config.optimizer"), "adam")),
    ({"config.optimizer": {"$in": ["sgd", "Adam"]}}, lambda r: value(r, "config.optimizer") in ("sgd", "Adam")),
    ({"config.optimizer": {"$exists": False}}, lambda r: value(r, "config.optimizer") is MISSING),
    ({"config.use_amp": True}, lambda r: value(r, "config.use_amp") is True),
    ({"config.use_amp": False}, lambda r: value(r, "config.use_amp") is False),
    ({"config.use_amp": 1}, lambda r: False),  # a bool is not a number
    ({"config.mixed": 1}, lambda r: is_number(value(r, "config.mixed")) and value(r, "config.mixed") == 1),
    ({"config.mixed": "1"}, lambda r: value(r, "config.mixed") == "1"),
    ({"config.mixed": True}, lambda r: value(r, "config.mixed") is True),
    ({"config.mixed": None}, lambda r: value(r, "config.mixed") in (None, MISSING)),
    ({"config.mixed": {"$ne": None}}, lambda r: value(r, "config.mixed") not in (None, MISSING)),
    ({"config.mixed": {"$gt": 1}}, lambda r: gt(number(r, "config.mixed"), 1)),
    ({"config.mixed": {"$gte": "a"}}, lambda r: gt(string(r, "config.mixed"), "a")),
    (
        {"config.mixed": {"$in": [1, "two", None]}},
        lambda r: number(r, "config.mixed") == 1 or value(r, "config.mixed") in ("two", None, MISSING),
    ),
    (
        {"config.mixed": {"$nin": [1, "two", None]}},
        lambda r: not (number(r, "config.mixed") == 1 or value(r, "config.mixed") in ("two", None, MISSING)),
    ),
    ({"config.mixed": {"$exists": True}}, lambda r: value(r, "config.mixed") is not MISSING),
    ({"config.model.depth": {"$gte": 6}}, lambda r: value(r, "config.model.depth") >= 6),
    ({"config.model.act": "gelu"}, lambda r: r["config"]["model"]["act"] == "gelu"),
    ({"config.model.dropout": {"$exists": True}}, lambda r: "dropout" in r["config"]["model"]),
    ({"config.model.dropout": 0}, lambda r: r["config"]["model"].get("dropout") == 0),
    ({"config.stage": "v1"}, lambda r: r["config"]["stage"] == "v1"),
    ({"config.ключ": "🙂"}, lambda r: r["config"]["ключ"] == "🙂"),
    ({"config.ключ": 'quote"d'}, lambda r: r["config"]["ключ"] == 'quote"d'),
    ({"config.ключ": {"$in": ["it's", "a\\b"]}}, lambda r: r["config"]["ключ"] in ("it's", "a\\b")),
    ({"config.ключ": {"$regex": "^a\\\\b$"}}, lambda r: r["config"]["ключ"] == "a\\b"),
    ({f"config.{HOSTILE}": {"$gte": 3}}, lambda r: gt(number(r, f"config.{HOSTILE}"), 2)),
    ({f"config.{HOSTILE}": {"$exists": False}}, lambda r: value(r, f"config.{HOSTILE}") is MISSING),
    ({"config.weird": {"$gt": 0}}, lambda r: gt(number(r, "config.weird"), 0)),  # inf only; NaN never compares
    ({"config.nope": {"$exists": False}}, lambda r: True),
    ({"config.nope": {"$gt": -1e300}}, lambda r: False),
    ({"summary.acc": {"$gte": 0.5}}, lambda r: gt(number(r, "summary.acc"), 0.4999)),
    (
        {"summary_metrics.acc": {"$lt": 0.5}},
        lambda r: lt(number(r, "summary.acc"), 0.5),
    ),
    ({"summary.acc": {"$exists": False}}, lambda r: "acc" not in r["summary"]),
    ({"summary.loss": {"$gt": 1}}, lambda r: gt(number(r, "summary.loss"), 1)),
    ({"summary.loss": {"$lte": 1}}, lambda r: le(number(r, "summary.loss"), 1)),
    ({"summary.best.val_acc": {"$gt": 0.5}}, lambda r: gt(number(r, "summary.best.val_acc"), 0.5)),
    (
        {"$and": [{"state": "finished"}, {"config.lr": {"$lt": 0.01}}, {"summary.acc": {"$gt": 0.2}}]},
        lambda r: (
            r["state"] == "finished"
            and gt(0.01, number(r, "config.lr") if number(r, "config.lr") is not None else 1)
            and gt(number(r, "summary.acc"), 0.2)
        ),
    ),
    (
        {"$or": [{"tags": "gpu"}, {"config.optimizer": "sgd"}, {"summary.loss": {"$gt": 2.5}}]},
        lambda r: "gpu" in r["tags"] or value(r, "config.optimizer") == "sgd" or gt(number(r, "summary.loss"), 2.5),
    ),
    (
        {"$nor": [{"state": "running"}, {"group": "sweep-2"}]},
        lambda r: r["state"] != "running" and r["group"] != "sweep-2",
    ),
    (
        {
            "$or": [
                {"$and": [{"config.batch_size": 16}, {"config.use_amp": True}]},
                {"$and": [{"config.batch_size": 64}, {"state": "failed"}]},
            ],
            "job_type": "train",
        },
        lambda r: (
            r["job_type"] == "train"
            and (
                (value(r, "config.batch_size") == 16 and value(r, "config.use_amp") is True)
                or (value(r, "config.batch_size") == 64 and r["state"] == "failed")
            )
        ),
    ),
]


def test_every_operator_matches_python(db):
    for filters, predicate in FILTER_CASES:
        expected = ids_where(predicate)
        got = all_ids(db, filters)
        assert len(got) == len(set(got)), filters
        assert set(got) == expected, filters
        assert count_runs(db, TEAM, PROJECT, filters) == len(expected), filters
    assert sum(bool(ids_where(p)) for _, p in FILTER_CASES) > len(FILTER_CASES) * 0.8  # the cases are not vacuous


def test_current_rows_only(db):
    """A run written twice is found by its newest record only, even when the older row arrived last."""
    assert count_runs(db, TEAM, PROJECT) == len(TRUTH)
    assert sorted(all_ids(db)) == sorted(BY_ID)
    rewritten = [r for r in TRUTH if r["version"] == 2]
    assert rewritten and set(all_ids(db, {"config.stage": "v2"})) == {r["run_id"] for r in rewritten}
    for run in rewritten[:10]:
        got = get_run(db, TEAM, PROJECT, run["run_id"])
        assert got["state"] == "finished" and got["config"]["stage"] == "v2" and got["tags"] == run["tags"]
        assert got["summary"].get("acc") == run["summary"].get("acc")


def test_get_run_returns_the_whole_record(db):
    run = next(
        r for r in TRUTH if r["summary"].get("best") and r["finished_at"] is not None and "weird" not in r["config"]
    )
    got = get_run(db, TEAM, PROJECT, run["run_id"])
    for field in (
        "run_id",
        "name",
        "state",
        "created_at",
        "updated_at",
        "heartbeat_at",
        "finished_at",
        "exit_code",
        "tags",
        "user",
        "host",
        "notes",
        "args",
        "git",
    ):
        assert got[field] == run[field], field
    assert got["group"] == (run["group"] or None) and got["job_type"] == run["job_type"]
    assert got["config"] == run["config"]  # nested again, with the original types
    assert got["summary"]["best"] == run["summary"]["best"] and got["summary"]["epoch"] == run["summary"]["epoch"]
    assert isinstance(got["config"]["batch_size"], int) and isinstance(got["config"]["use_amp"], bool)
    assert get_run(db, TEAM, PROJECT, "no-such-run") is None
    other = RUN_WRITES[0]["run_id"]  # the other project has its own copy of this run
    assert get_run(db, TEAM, "other", other)["run_id"] == other
    assert count_runs(db, TEAM, "other") == len({r["run_id"] for r in RUN_WRITES[:20]})


def test_non_finite_values_come_back_as_floats(db):
    checked = 0
    for run in TRUTH:
        for prefix, key in (("config", "weird"), ("summary", "loss")):
            want = run[prefix].get(key)
            if isinstance(want, float) and not math.isfinite(want):
                have = get_run(db, TEAM, PROJECT, run["run_id"])[prefix][key]
                assert isinstance(have, float) and (math.isnan(have) if math.isnan(want) else have == want)
                checked += 1
    assert checked >= 5


# -- sorting and pages ------------------------------------------------------------------


@functools.cache
def _catalog_types(kind: str, key: str) -> frozenset[str]:
    """The types a key was ever written with (older rows count: the catalog only grows)."""
    rows = RUN_WRITES if kind == "config" else SUMMARY_WRITES
    field = "config" if kind == "config" else "summary"
    return frozenset(json_type(v) for r in rows for k, v in flatten(r[field]).items() if k == key)


def sort_key(run: dict, field: str) -> tuple[bool, Any]:
    """(missing, value) as the search orders them."""
    if field in ("created_at", "updated_at", "finished_at", "exit_code"):
        return run[field] is None, run[field] or 0
    if field in ("name", "group", "state"):
        return run[field] == "", run[field]
    field = field.replace("summary_metrics.", "summary.", 1)
    kind, key = field.split(".", 1)
    v = value(run, field)
    if _catalog_types(kind, key) & {"number", "bool"}:  # numeric sort: other values count as missing
        ok = isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
        return not ok, float(v) if ok else 0.0
    return v is MISSING, "" if v is MISSING else json_text(v)


def expected_order(order: str, runs=TRUTH) -> list[str]:
    descending, field = order.startswith("-"), order.lstrip("+-")
    present = [r for r in runs if not sort_key(r, field)[0]]
    absent = [r for r in runs if sort_key(r, field)[0]]
    present.sort(key=lambda r: (sort_key(r, field)[1], r["run_id"]), reverse=descending)
    absent.sort(key=lambda r: r["run_id"], reverse=descending)
    return [r["run_id"] for r in present + absent]


ORDERS = [
    "-created_at",
    "created_at",
    "+updated_at",
    "-finished_at",
    "finished_at",
    "exit_code",
    "name",
    "-group",
    "-state",
    "config.lr",
    "-config.lr",
    "config.batch_size",
    "-config.batch_size",
    "config.optimizer",
    "-config.optimizer",
    "config.mixed",
    "-config.mixed",
    "config.ключ",
    "-config.model.act",
    f"config.{HOSTILE}",
    "config.nope",
    "summary.acc",
    "-summary.acc",
    "summary.loss",
    "-summary.loss",
    "-summary_metrics.best.val_acc",
    "summary.epoch",
    "-config.model.depth",
]


def test_sorting_matches_python(db):
    for order in ORDERS:
        assert all_ids(db, order=order) == expected_order(order), order


@pytest.mark.parametrize(
    "order", ["-created_at", "config.batch_size", "-config.mixed", "summary.loss", "-config.optimizer"]
)
def test_walking_pages_of_seven_gives_every_run_once_in_order(db, order):
    walked = all_ids(db, order=order, limit=7)
    assert walked == expected_order(order)
    assert len(walked) == len(set(walked)) == len(TRUTH)


def test_pages_with_a_filter(db):
    filters = {"$or": [{"config.optimizer": {"$in": ["adam", "Adam"]}}, {"summary.acc": {"$gt": 0.7}}]}
    matching = [
        r for r in TRUTH if value(r, "config.optimizer") in ("adam", "Adam") or gt(number(r, "summary.acc"), 0.7)
    ]
    assert all_ids(db, filters, order="-summary.acc", limit=7) == expected_order("-summary.acc", matching)
    first = search_runs(db, TEAM, PROJECT, filters, order="-summary.acc", limit=7)
    assert len(first["runs"]) == 7 and first["next_cursor"]
    exact = search_runs(db, TEAM, PROJECT, {"id": TRUTH[0]["run_id"]}, limit=1)
    assert len(exact["runs"]) == 1 and exact["next_cursor"] is None  # a full last page says there is no more


def test_a_search_without_maps_keeps_filters_orders_and_pages(db):
    filters = {"$or": [{"config.optimizer": {"$in": ["adam", "Adam"]}}, {"summary.acc": {"$gt": 0.7}}]}
    for order in ("-summary.acc", "config.batch_size", "name"):
        full = search_runs(db, TEAM, PROJECT, filters, order=order, limit=7)
        for maps in ((), ("config",), ("summary",)):
            light = search_runs(db, TEAM, PROJECT, filters, order=order, limit=7, maps=maps)
            assert light["next_cursor"] == full["next_cursor"]
            assert light["runs"] == [
                {k: v for k, v in r.items() if k not in ("config", "summary") or k in maps} for r in full["runs"]
            ]
    with pytest.raises(QueryError, match="maps"):
        search_runs(db, TEAM, PROJECT, maps=("git",))


def test_runs_written_between_pages_neither_repeat_nor_vanish(db):
    first = search_runs(db, TEAM, PROJECT, order="created_at", limit=50)
    seen = [r["run_id"] for r in first["runs"]]
    early = {**RUN_WRITES[0], "run_id": "zz-early", "created_at": T0 - 100, "version": 1}  # sorts before the cursor
    late = {**RUN_WRITES[0], "run_id": "zz-late", "created_at": T0 + 10**6, "version": 1}
    upsert_runs(db, [early, late])
    cursor = first["next_cursor"]
    while cursor:
        page = search_runs(db, TEAM, PROJECT, order="created_at", limit=50, cursor=cursor)
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == len(TRUTH) + 1
    assert seen[-1] == "zz-late" and "zz-early" not in seen


def test_a_walk_keeps_its_sort_when_a_key_gets_a_new_type(db):
    """A key seen only as text sorts as text; a number for it arriving mid-walk does not change the walk."""
    first = search_runs(db, TEAM, PROJECT, order="config.ключ", limit=50)
    upsert_runs(db, [{**RUN_WRITES[0], "run_id": "zz-number", "config": {"ключ": 5}, "version": 1}])
    seen, cursor = [r["run_id"] for r in first["runs"]], first["next_cursor"]
    while cursor:
        page = search_runs(db, TEAM, PROJECT, order="config.ключ", limit=50, cursor=cursor)
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == len(TRUTH) + 1
    assert seen[-1] == "zz-number"  # JSON text 5 sorts after every quoted string
    assert all_ids(db, order="config.ключ")[0] == "zz-number"  # a new walk sorts numerically: the number first


def test_cursor_and_limit_errors(db):
    page = search_runs(db, TEAM, PROJECT, order="-summary.acc", limit=5)
    with pytest.raises(QueryError, match=r"ordered by '-summary.acc'"):
        search_runs(db, TEAM, PROJECT, order="summary.acc", limit=5, cursor=page["next_cursor"])
    with pytest.raises(QueryError, match="ordered by"):
        search_runs(db, TEAM, PROJECT, order="-created_at", limit=5, cursor=page["next_cursor"])
    forged = base64.urlsafe_b64encode(orjson.dumps([1, "-summary.acc", 1, 7, "0.5", "", "r"])).decode()
    unparsable = base64.urlsafe_b64encode(orjson.dumps([1, "-summary.acc", 1, 0, "half", "", "r"])).decode()
    for bad in ("", "abc", "!!!", "a" * 10, forged, unparsable, base64.urlsafe_b64encode(b"[1,2]").decode(), 42):
        with pytest.raises(QueryError, match="malformed cursor"):
            search_runs(db, TEAM, PROJECT, order="-summary.acc", cursor=bad)
    for limit in (0, 1001, -1, True, 2.5, "10"):
        with pytest.raises(QueryError, match="limit"):
            search_runs(db, TEAM, PROJECT, limit=limit)
    for order in ("tags", "nope", "-", "", "config.", "summary.a\x00"):
        with pytest.raises(QueryError):
            search_runs(db, TEAM, PROJECT, order=order)
    assert len(search_runs(db, TEAM, PROJECT, limit=1000)["runs"]) == len(TRUTH)


def test_bad_regex_is_a_query_error(db):
    with pytest.raises(QueryError, match="invalid regular expression"):
        search_runs(db, TEAM, PROJECT, {"name": {"$regex": "(unclosed"}})
    with pytest.raises(QueryError, match="RE2"):
        count_runs(db, TEAM, PROJECT, {"config.optimizer": {"$regex": "(a)\\1"}})  # no backreferences in RE2
    with pytest.raises(QueryError):
        group_runs(db, TEAM, PROJECT, ["state"], {"tags": {"$regex": "["}})


# -- grouping -------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "min": None, "max": None, "count": 0}
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "count": len(values)}


def _close(got: dict, want: dict) -> bool:
    if got["count"] != want["count"] or (want["count"] == 0 and got != want):
        return False
    return all(
        got[k] == want[k] or math.isclose(got[k], want[k], rel_tol=1e-9)
        for k in ("mean", "min", "max")
        if want["count"]
    )


def _group_value(run: dict, field: str) -> Any:
    if field.startswith(("config.", "summary.")):
        v = value(run, field)
        return MISSING if v is MISSING else v
    return run[field] or MISSING


def _group_order(v: Any) -> tuple:
    """Numbers (and bools) first by value, then other values by JSON text, then missing."""
    if v is MISSING:
        return (1, 0.0, 1, "")
    num = float(v) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None
    return (num is None, num or 0.0, 0, json_text(v))


def expected_groups(by: list[str], aggregates: list[str], runs=TRUTH) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = tuple(json_text(v) if (v := _group_value(run, f)) is not MISSING else None for f in by)
        groups.setdefault(key, []).append(run)
    out: list[dict[str, Any]] = []
    for key, members in groups.items():
        decoded = [MISSING if k is None else orjson.loads(k) for k in key]
        summary = {}
        for name in aggregates:
            field = name if name.startswith(("summary.", "config.")) else f"summary.{name}"
            values = [v for r in members if (v := number(r, field)) is not None and not math.isnan(v)]
            summary[name] = _stats(values)
        out.append(
            {
                "group": {f: None if v is MISSING else v for f, v in zip(by, decoded)},
                "count": len(members),
                "summary": summary,
                "run_ids": sorted(r["run_id"] for r in members),
                "_order": [_group_order(v) for v in decoded],
            }
        )
    out.sort(key=lambda g: g.pop("_order"))
    return out


def _check_groups(got: list[dict], want: list[dict]) -> None:
    assert [g["group"] for g in got] == [g["group"] for g in want]
    for g, w in zip(got, want):
        assert g["count"] == w["count"] and g["run_ids"] == w["run_ids"], g["group"]
        for name in w["summary"]:
            assert _close(g["summary"][name], w["summary"][name]), (
                g["group"],
                name,
                g["summary"][name],
                w["summary"][name],
            )


@pytest.mark.parametrize(
    "by, aggregates",
    [
        (["config.optimizer"], ["acc", "summary.loss", "config.lr"]),
        (["config.batch_size", "group"], ["summary.acc", "best.val_acc"]),
        (["config.mixed"], ["epoch"]),
        (["state", "job_type"], ["acc"]),
        ([f"config.{HOSTILE}"], ["summary.loss"]),
        (["config.ключ", "config.use_amp"], []),
    ],
)
def test_grouping_matches_python(db, by, aggregates):
    got = group_runs(db, TEAM, PROJECT, by, aggregates=aggregates, run_ids=True)
    _check_groups(got, expected_groups(by, aggregates))
    assert sum(g["count"] for g in got) == len(TRUTH)


def test_grouping_with_a_filter_and_without_run_ids(db):
    filters = {"state": {"$in": ["finished", "failed"]}, "config.lr": {"$exists": True}}
    runs = [r for r in TRUTH if r["state"] in ("finished", "failed") and "lr" in r["config"]]
    got = group_runs(db, TEAM, PROJECT, ["config.lr"], filters, ["acc"])
    want = expected_groups(["config.lr"], ["acc"], runs)
    assert [g["group"] for g in got] == [g["group"] for g in want]
    assert [g["count"] for g in got] == [g["count"] for g in want]
    assert all("run_ids" not in g for g in got)
    assert [g["group"]["config.lr"] for g in got] == sorted(g["group"]["config.lr"] for g in got)  # numeric order


def test_grouping_by_tags_counts_a_run_under_each_tag(db):
    got = {g["group"]["tags"]: g["count"] for g in group_runs(db, TEAM, PROJECT, ["tags"])}
    tags = {t for r in TRUTH for t in r["tags"]}
    assert got == {**{t: sum(t in r["tags"] for r in TRUTH) for t in tags}, None: sum(not r["tags"] for r in TRUTH)}
    assert list(got)[-1] is None


def test_grouping_errors(db):
    for by in (
        [],
        "state",
        ["state", "state"],
        ["created_at"],
        ["nope"],
        ["config." + "k" * 300],
        [f"c{i}" for i in range(9)],
    ):
        with pytest.raises(QueryError):
            group_runs(db, TEAM, PROJECT, by)
    for aggregates in ("acc", [3], ["summary."], ["config.a\x00"], ["x" * 300]):
        with pytest.raises(QueryError):
            group_runs(db, TEAM, PROJECT, ["state"], aggregates=aggregates)


# -- the key catalog -------------------------------------------------------------------------


def test_key_catalog_lists_every_key_with_its_types(db):
    catalog = key_catalog(db, TEAM, PROJECT)
    assert set(catalog) == {"config", "summary", "metric", "system"} and catalog["metric"] == catalog["system"] == []
    for kind, rows in (("config", RUN_WRITES), ("summary", SUMMARY_WRITES)):
        want: dict[str, set[str]] = {}
        for row in rows:
            for k, v in flatten(row[kind]).items():
                want.setdefault(k, set()).add(json_type(v))
        assert catalog[kind] == [{"key": k, "types": sorted(want[k])} for k in sorted(want)]
    types = {e["key"]: e["types"] for e in catalog["config"]}
    assert types["mixed"] == ["bool", "null", "number", "string"] and types[HOSTILE] == ["number"]
    assert key_catalog(db, TEAM, "empty") == {"config": [], "summary": [], "metric": [], "system": []}


# -- hostile input ---------------------------------------------------------------------------


def test_hostile_keys_and_values_round_trip_and_harm_nothing(clickhouse):
    keys = [
        HOSTILE,
        "x') OR 1=1 --",
        'dq"key',
        "`tick`",
        "semi;colon",
        "{team:String}",
        "ключ 🙂",
        "back\\slash",
        "ü" * 200,
    ]
    values = [HOSTILE, "'); DROP TABLE run_summaries; --", 'say "hi"', "`rm -rf`", "\x00nul", "ok"]
    runs = []
    for _i, key in enumerate(keys):
        for j, v in enumerate(values):
            runs.append(
                {
                    **RUN_WRITES[0],
                    "run_id": f"{key}|{j}",
                    "name": v,
                    "tags": [v, key],
                    "version": 1,
                    "config": {key: v, "n": {key: j}},
                }
            )
    upsert_runs(clickhouse, runs)
    upsert_run_summaries(
        clickhouse,
        [
            {
                "team": TEAM,
                "project": PROJECT,
                "run_id": r["run_id"],
                "version": 1,
                "summary": {keys[i % len(keys)]: float(i)},
            }
            for i, r in enumerate(runs)
        ],
    )
    for key in keys:
        for j, v in enumerate(values):
            assert set(all_ids(clickhouse, {f"config.{key}": v})) == {f"{key}|{j}"}
            assert set(all_ids(clickhouse, {f"config.n.{key}": {"$gte": j, "$lt": j + 1}})) == {f"{key}|{j}"}
        assert set(all_ids(clickhouse, {f"config.{key}": {"$in": values}})) == {
            f"{key}|{j}" for j in range(len(values))
        }
        assert all_ids(clickhouse, order=f"-config.n.{key}", limit=4)[: len(values)] == [
            f"{key}|{j}" for j in reversed(range(len(values)))
        ]
        got = group_runs(clickhouse, TEAM, PROJECT, [f"config.{key}"], aggregates=[key])
        assert [g["group"][f"config.{key}"] for g in got] == [*sorted(values, key=json_text), None]
    for v in values:
        assert len(all_ids(clickhouse, {"name": v, "tags": v})) == len(keys)
    run = get_run(clickhouse, TEAM, PROJECT, f"{HOSTILE}|0")
    assert run["config"][HOSTILE] == HOSTILE and run["name"] == HOSTILE
    assert run["summary"] == {HOSTILE: 0.0}
    assert clickhouse.command("EXISTS TABLE runs") == 1 and clickhouse.command("EXISTS TABLE run_summaries") == 1
    assert count_runs(clickhouse, TEAM, PROJECT) == len(runs)
    with pytest.raises(QueryError, match="control character"):
        search_runs(clickhouse, TEAM, PROJECT, {"config.a\x00b": 1})


# -- pure helpers ---------------------------------------------------------------------------


def test_unflatten_rebuilds_nesting_and_keeps_colliding_keys_dotted():
    assert unflatten({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert unflatten({"a": 1, "a.b": 2}) == {"a": 1, "a.b": 2}
    assert unflatten({"x.y": 1, "x.y.z": 2}) == {"x": {"y": 1, "y.z": 2}}
    assert unflatten({}) == {}
    config = {"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "empty": {}, "n": None}
    assert unflatten(flatten(config)) == config


def test_matching_run_ids_selects_runs_by_filter_and_refuses_too_many(clickhouse):
    from runstream.storage.runs import matching_run_ids
    from runstream.storage.writer import upsert_runs

    runs = [
        {
            "team": "acme",
            "project": "ids",
            "run_id": f"r{i}",
            "name": f"r{i}",
            "created_at": 1000.0 + i,
            "updated_at": 1000.0 + i,
            "heartbeat_at": 1000.0 + i,
            "config": {"lr": i / 10},
            "version": 1,
        }
        for i in range(10)
    ]
    upsert_runs(clickhouse, runs)
    assert matching_run_ids(clickhouse, "acme", "ids", {"config.lr": {"$gte": 0.5}}) == [f"r{i}" for i in range(5, 10)]
    with pytest.raises(QueryError, match="more than 3"):
        matching_run_ids(clickhouse, "acme", "ids", None, limit=3)
