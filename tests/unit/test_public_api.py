"""runstream.Api against a local stand-in server that answers with the read endpoints' shapes (docs/api.md)."""

from __future__ import annotations

import math
import re
import socket
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import pytest

import runstream
from runstream.public_api import ApiError
from runstream.streams.summaries import without_keys

API_KEY = "secret-key"


def run_attrs(run_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "team": "acme",
        "project": "mnist",
        "id": run_id,
        "name": f"name-{run_id}",
        "state": "finished",
        "config": {"lr": 0.1},
        "summary": {"loss": 0.5},
        "tags": ["baseline"],
        "group": "g1",
        "job_type": "train",
        "notes": "",
        "created_at": "2026-11-25T12:00:00Z",
        "updated_at": "2026-11-25T12:05:00Z",
        "heartbeat_at": "2026-11-25T12:05:00Z",
        "host": "gpu-1",
        "git": {"commit": "abc123"},
        **fields,
    }


PROJECTS = [
    {"team": "acme", "name": "mnist", "visibility": "private", "run_count": 7, "created_at": "2026-11-25T12:00:00Z"},
    {"team": "other", "name": "cifar", "visibility": "public", "run_count": 1, "created_at": None},
]
RUNS = [run_attrs(f"r{i}") for i in range(7)]
HISTORY = {
    "_step": [0, 1, 2, 3],
    "_timestamp": [1.5, 2.5, 3.5, 4.5],
    "loss": [1.0, "NaN", None, 0.25],
    "acc": [None, "Infinity", "-Infinity", 3],
}
# Scan pages by cursor: steps 0..4 over three pages; "acc" logged on some steps only.
SCAN_PAGES = {
    None: ({"_step": [0, 1], "_timestamp": [1.0, 2.0], "loss": [0.9, 0.8], "acc": [None, 0.1]}, "p2"),
    "p2": ({"_step": [2, 3], "_timestamp": [3.0, 4.0], "loss": [0.7, "NaN"], "acc": [None, None]}, "p3"),
    "p3": ({"_step": [4], "_timestamp": [5.0], "loss": [0.5], "acc": [0.4]}, None),
}


SYSTEM = [
    {"metric": "cpu", "bucket_seconds": 10, "time": [100.0, 110.0, 120.0], "mean": [5.0, None, 7.0]},
    {"metric": "gpu.0.util", "bucket_seconds": 10, "time": [100.0, 110.0], "mean": [50.0, 60.0]},
]
# Console pages from the newest back: the first answer is the newest lines, its cursor the older ones.
CONSOLE = {
    None: (
        [{"time": 3.0, "stream": "stdout", "line": "epoch 2"}, {"time": 4.0, "stream": "stderr", "line": "warn"}],
        "c1",
    ),
    "c1": (
        [{"time": 1.0, "stream": "stdout", "line": "start"}, {"time": 2.0, "stream": "stdout", "line": "epoch 1"}],
        None,
    ),
}
FILES = {
    "config.yaml": b"lr: 0.1\n",
    "media/images/samples_3_ab12.png": b"\x89PNG fake",
    "wandb-metadata.json": b'{"host": "gpu-1"}',
}


def _file_entry(name: str) -> dict[str, Any]:
    return {
        "path": name,
        "kind": "media" if name.startswith("media/") else "file",
        "media_type": "image/png" if name.endswith(".png") else None,
        "step": 3 if name.startswith("media/") else None,
        "size": len(FILES[name]),
        "sha256": "0" * 64,
        "store_key": name,
        "meta": {},
        "time": 1_764_072_000.0,
        "url": "/api/v1/files/acme/mnist/r1/" + name,
    }


EXPORT_CHUNKS = [b"PAR1" + bytes(range(256)) * 40, b"x" * 5000, b"PAR1"]


class Handler(BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"  # chunked answers

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle(None)

    def do_PATCH(self) -> None:
        self._handle(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def do_POST(self) -> None:
        self._handle(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def do_DELETE(self) -> None:
        self._handle(None)

    def _handle(self, body: Any) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append(
            {"method": self.command, "raw_path": url.path, "query": query, "body": body, "headers": dict(self.headers)}
        )
        if url.path.startswith("/web/"):
            return self._send_html(200)  # a web UI's page, not the API
        if not url.path.startswith("/api/v1/"):
            return self.send_error(404)  # an HTML page, like a proxy in front of the wrong path
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._send(401, {"error": {"code": "unauthorized", "message": "invalid API key", "details": None}})
        parts = [unquote(p) for p in url.path.split("/")[3:]]  # after /api/v1
        if parts[-1:] == ["export"]:
            return self._export(parts, query)
        if parts[:1] == ["files"]:
            return self._blob(parts)
        status, answer = self._route(parts, query, body)
        self._send(status, answer)

    def _route(self, parts: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        not_found = 404, {"error": {"code": "not_found", "message": "no such run", "details": None}}
        if parts == ["projects"]:
            team = query.get("team")
            return 200, {"projects": [p for p in PROJECTS if team in (None, p["team"])]}
        if parts == ["whoami"]:
            return 200, {"user": "alice", "team": "acme", "role": "admin"}
        if len(parts) == 2 and parts[0] == "projects" and self.command == "POST":
            if body["name"] == "mnist":
                return 409, {"error": {"code": "exists", "message": "project acme/mnist exists", "details": None}}
            return 201, {"team": parts[1], "visibility": "private", "run_count": 0, "created_at": 1.0, **body}
        if len(parts) == 3 and parts[0] == "projects":
            found = [p for p in PROJECTS if [p["team"], p["name"]] == parts[1:]]
            if not found:
                return not_found
            return (204, None) if self.command == "DELETE" else (200, found[0])
        if len(parts) == 5 and parts[0] == "projects" and parts[3:] == ["runs", "count"]:
            return 200, {"count": len(RUNS) if parts[1:3] == ["acme", "mnist"] else 0}
        if len(parts) == 4 and parts[0] == "projects" and parts[3] == "runs":
            if parts[1:3] != ["acme", "mnist"]:
                return not_found
            start, limit = int(query.get("cursor", 0)), int(query["limit"])
            page = RUNS[start : start + limit]
            more = start + limit < len(RUNS)
            return 200, {"runs": page, "next_cursor": str(start + limit) if more else None}
        if len(parts) >= 4 and parts[0] == "runs":
            attrs = self.server.runs.get(parts[3])
            if attrs is None:
                return not_found
            if parts[4:] == [] and self.command == "PATCH":
                attrs.update({k: v for k, v in body.items() if k not in ("config", "summary") and "_delete" not in k})
                for field in ("config", "summary"):
                    kept = without_keys(attrs[field], body.get(f"{field}_delete", []))
                    attrs[field] = {**kept, **body.get(field, {})}
                return 200, attrs
            if parts[4:] == [] and self.command == "DELETE":
                del self.server.runs[parts[3]]
                return 204, None
            if parts[4:] == ["move"] and self.command == "POST":
                return 200, {"team": parts[1], "project": body["project"], "run_id": parts[3]}
            if parts[4:] == ["statistics"]:
                return 200, {"last_step": 4, "last_seq": 9, "metrics": {"loss": {"count": 5}, "acc": {"count": 2}}}
            if parts[4:] == ["system"]:
                return 200, {"series": SYSTEM}
            if parts[4:] == ["console"]:
                page, cursor = CONSOLE[query.get("cursor")]
                return 200, {"lines": page[-int(query["tail"]) :], "next_cursor": cursor}
            if parts[4:] == ["files"]:
                return 200, {"files": [_file_entry(name) for name in FILES]}
            if parts[4:] == []:
                return 200, attrs
            if parts[4:] == ["history"]:
                keys = query["keys"].split(",") if "keys" in query else ["loss", "acc"]
                return 200, {"columns": {k: HISTORY[k] for k in ["_step", "_timestamp", *keys]}}
            if parts[4:] == ["history", "scan"]:
                columns, next_cursor = SCAN_PAGES[query.get("cursor")]
                return 200, {"columns": columns, "next_cursor": next_cursor}
        return not_found

    def _export(self, parts: list[str], query: dict[str, str]) -> None:
        """An export's bytes, chunked as the server streams them; ``cut`` breaks off after the first chunk."""
        if query.get("format") == "xlsx":
            return self._send(
                400, {"error": {"code": "bad_request", "message": "unknown export format", "details": None}}
            )
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.apache.parquet")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in EXPORT_CHUNKS:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if "cut" in query.get("filters", ""):
                self.wfile.flush()
                self.close_connection = True
                return
        self.wfile.write(b"0\r\n\r\n")

    def _blob(self, parts: list[str]) -> None:
        name = "/".join(parts[4:])
        if name not in FILES:
            return self._send(404, {"error": {"code": "not_found", "message": "no such file", "details": None}})
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(FILES[name])))
        self.end_headers()
        self.wfile.write(FILES[name])

    def _send_html(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"<html>")

    def _send(self, status: int, answer: Any) -> None:
        if status == 204:
            self.send_response(204)
            self.end_headers()
            return
        data = orjson.dumps(answer)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class StandIn(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, Any]] = []
        self.runs = {r["id"]: dict(r) for r in RUNS} | {"r 1#x": run_attrs("r 1#x")}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def sent(self, suffix: str) -> list[dict[str, Any]]:
        """The requests whose path ended with ``suffix``."""
        return [r for r in self.requests if r["raw_path"].endswith(suffix)]


@pytest.fixture
def server() -> Iterator[StandIn]:
    srv = StandIn()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def api(server: StandIn) -> runstream.Api:
    return runstream.Api(url=server.url, api_key=API_KEY, entity="acme")


def test_projects(api, server):
    projects = api.projects()
    assert [(p.entity, p.name, p.visibility, p.run_count) for p in projects] == [
        ("acme", "mnist", "private", 7),
        ("other", "cifar", "public", 1),
    ]
    assert projects[0].created_at == "2026-11-25T12:00:00Z" and projects[1].created_at is None
    assert [p.name for p in api.projects("other")] == ["cifar"]
    assert server.requests[-1]["query"] == {"team": "other"}


def test_runs_sends_filters_and_order(api, server):
    filters = {"config.lr": {"$gt": 0.01}, "state": "finished", "$or": [{"tags": {"$in": ["a+b"]}}, {"group": "g&1"}]}
    runs = api.runs("acme/mnist", filters=filters, order="+summary.loss", per_page=10)
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]
    query = server.sent("/projects/acme/mnist/runs")[0]["query"]
    assert orjson.loads(query["filters"]) == filters
    assert query["order"] == "+summary.loss" and query["limit"] == "10" and "cursor" not in query


def test_runs_defaults_and_entity_from_api(api, server):
    assert [r.id for r in api.runs("mnist")][:1] == ["r0"]  # "project" alone: the Api's entity
    query = server.sent("/runs")[0]["query"]
    # wandb's default order: oldest first.
    assert orjson.loads(query["filters"]) == {} and query["order"] == "+created_at" and query["limit"] == "50"


def test_runs_paginate_lazily_without_gaps_or_repeats(api, server):
    runs = api.runs("acme/mnist", per_page=3)
    assert server.requests == []  # nothing fetched before it is needed
    assert runs[0].id == "r0" and len(server.requests) == 1
    assert [r.id for r in runs[1:5]] == ["r1", "r2", "r3", "r4"] and len(server.requests) == 2
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]  # a second pass reuses the pages
    cursors = [r["query"].get("cursor") for r in server.sent("/runs")]
    assert cursors == [None, "3", "6"]


def test_runs_len_asks_for_the_count_and_negative_index_fetches_all(api, server):
    runs = api.runs("acme/mnist", filters={"state": "finished"}, per_page=3)
    assert len(runs) == 7 and [r["raw_path"] for r in server.requests] == ["/api/v1/projects/acme/mnist/runs/count"]
    assert orjson.loads(server.requests[0]["query"]["filters"]) == {"state": "finished"}
    assert runs[-1].id == "r6" and [r.id for r in runs[-2:]] == ["r5", "r6"]
    with pytest.raises(IndexError):
        runs[7]
    assert len(server.sent("/mnist/runs")) == 3
    assert len(runs) == 7 and len(server.requests) == 4  # every page is here: counted locally


def test_runs_unknown_project_is_not_found(api):
    with pytest.raises(ApiError) as info:
        list(api.runs("acme/nope"))
    assert info.value.status == 404 and "project acme/nope not found" in str(info.value)


def test_run_in_both_path_forms(api):
    for path in ("acme/mnist/r2", "acme/mnist/runs/r2", "/acme/mnist/r2/", "mnist/r2"):
        run = api.run(path)
        assert (run.id, run.entity, run.project, run.path) == ("r2", "acme", "mnist", ["acme", "mnist", "r2"])
    assert run.name == "name-r2" and run.state == "finished" and run.config == {"lr": 0.1}
    assert run.summary == {"loss": 0.5} and run.tags == ["baseline"] and run.group == "g1"
    assert run.job_type == "train" and run.notes == "" and run.created_at == "2026-11-25T12:00:00Z"
    assert run.heartbeat_at == "2026-11-25T12:05:00Z" and run.git == {"commit": "abc123"}


def test_run_in_wandb_short_forms(server):
    api = runstream.Api(url=server.url, api_key=API_KEY, entity="acme", project="mnist")
    for path in ("r2", "mnist:r2", "acme/mnist:r2"):
        assert api.run(path).path == ["acme", "mnist", "r2"]
    assert server.requests[-1]["raw_path"] == "/api/v1/runs/acme/mnist/r2"


def test_run_path_segments_are_quoted(api, server):
    assert api.run("acme/mnist/r 1#x").id == "r 1#x"
    assert server.requests[-1]["raw_path"] == "/api/v1/runs/acme/mnist/r%201%23x"


@pytest.mark.parametrize("path", ["acme//r1", "a/b/c/d", "a/b/notruns/c", "a/b/c/d/e", "", "p:"])
def test_bad_run_path(api, path):
    with pytest.raises(ValueError, match="team/project/run_id"):
        api.run(path)


def test_bad_project_path(api):
    with pytest.raises(ValueError, match="team/project"):
        api.runs("a/b/c")


def test_history_dataframe_decodes_special_floats_and_missing(api, server):
    df = api.run("acme/mnist/r1").history(keys=["loss", "acc"], samples=100)
    assert server.requests[-1]["query"] == {"keys": "loss,acc", "samples": "100"}
    assert list(df.columns) == ["_step", "_timestamp", "loss", "acc"]
    assert df["_step"].tolist() == [0, 1, 2, 3]
    loss, acc = df["loss"].tolist(), df["acc"].tolist()
    assert loss[0] == 1.0 and math.isnan(loss[1]) and math.isnan(loss[2]) and loss[3] == 0.25
    assert math.isnan(acc[0]) and acc[1:] == [math.inf, -math.inf, 3.0]
    assert df["loss"].dtype == "float64"


def test_history_without_keys_and_as_rows(api, server):
    server.runs["r1"]["created_at"] = 0.5  # the run's start, which wandb's _runtime counts from
    run = api.run("acme/mnist/r1")
    df = run.history()
    assert "keys" not in server.requests[-1]["query"] and server.requests[-1]["query"]["samples"] == "500"
    assert list(df.columns) == ["_step", "_timestamp", "_runtime", "loss", "acc"]
    assert df["_runtime"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert run.history(keys=["_step", "_runtime", "loss"], pandas=False)[0] == {
        "_step": 0,
        "_timestamp": 1.5,
        "_runtime": 1.0,
        "loss": 1.0,
    }
    assert server.requests[-1]["query"]["keys"] == "loss"  # _step and _runtime are no metrics
    rows = run.history(keys=["loss"], pandas=False)
    assert rows[0] == {"_step": 0, "_timestamp": 1.5, "loss": 1.0}
    assert math.isnan(rows[1]["loss"])  # logged as NaN: present
    assert rows[2] == {"_step": 2, "_timestamp": 3.5}  # not logged: absent


def test_history_fetches_a_custom_x_axis(api, server):
    df = api.run("acme/mnist/r1").history(keys=["loss"], x_axis="acc")
    assert server.requests[-1]["query"]["keys"] == "loss,acc"
    assert list(df.columns) == ["_step", "_timestamp", "loss", "acc"]


def test_scan_history_pages_lazily(api, server):
    server.runs["r1"]["created_at"] = 0.5
    rows = api.run("acme/mnist/r1").scan_history(page_size=2)
    assert server.sent("/scan") == []
    first = next(rows)
    assert first == {"_step": 0, "_timestamp": 1.0, "_runtime": 0.5, "loss": 0.9} and len(server.sent("/scan")) == 1
    rest = list(rows)
    assert [r["_step"] for r in rest] == [1, 2, 3, 4]
    assert rest[0]["acc"] == 0.1 and "acc" not in rest[1] and math.isnan(rest[2]["loss"]) and rest[3]["acc"] == 0.4
    queries = [r["query"] for r in server.sent("/scan")]
    assert [q.get("cursor") for q in queries] == [None, "p2", "p3"]
    assert queries[0] == {"page_size": "2"}


def test_scan_history_with_keys_keeps_the_rows_that_logged_all_of_them(api, server):
    """wandb's scan_history(keys=...) yields only rows holding every key, so row["acc"] never fails."""
    rows = list(api.run("acme/mnist/r1").scan_history(keys=["loss", "acc"], page_size=2))
    assert [(r["_step"], r["acc"]) for r in rows] == [(1, 0.1), (4, 0.4)]
    assert server.sent("/scan")[0]["query"] == {"keys": "loss,acc", "page_size": "2"}
    with pytest.raises(ValueError, match="list of strings"):
        api.run("acme/mnist/r1").scan_history(keys="loss")


def test_scan_history_step_range(api, server):
    rows = list(api.run("acme/mnist/r1").scan_history(min_step=1, max_step=3))
    assert [r["_step"] for r in rows] == [1, 2]
    assert server.sent("/scan")[0]["query"]["min_step"] == "1"
    assert len(server.sent("/scan")) == 2  # stops once past max_step


def test_update_patches_tags_and_notes(api, server):
    run = api.run("acme/mnist/r3")
    run.tags.append("best")
    run.notes = "lr sweep winner"
    run.update()
    patch = server.requests[-1]
    assert patch["method"] == "PATCH" and patch["raw_path"] == "/api/v1/runs/acme/mnist/r3"
    assert patch["body"] == {"tags": ["baseline", "best"], "notes": "lr sweep winner"}
    assert patch["headers"]["Content-Type"] == "application/json"
    assert run.load().tags == ["baseline", "best"] and run.notes == "lr sweep winner"


def test_load_drops_local_edits(api):
    run = api.run("acme/mnist/r4")
    run.tags = ["local"]
    assert run.load().tags == ["baseline"]


def test_not_found_is_api_error(api):
    with pytest.raises(ApiError) as info:
        api.run("acme/mnist/missing")
    error = info.value
    assert isinstance(error, runstream.Error)
    assert (error.status, error.code) == (404, "not_found")
    assert "run acme/mnist/missing not found, or not visible with this API key" in str(error)


def test_authorization_header_and_refusal(server):
    runstream.Api(url=server.url, api_key=API_KEY).projects()
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    with pytest.raises(ApiError) as info:
        runstream.Api(url=server.url, api_key="wrong").projects()
    assert info.value.status == 401 and "invalid API key" in str(info.value) and "RUNSTREAM_API_KEY" in str(info.value)
    with pytest.raises(ApiError):
        runstream.Api(url=server.url, api_key="").projects()
    assert "Authorization" not in server.requests[-1]["headers"]


def test_settings_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("RUNSTREAM_URL", server.url + "/")
    monkeypatch.setenv("RUNSTREAM_API_KEY", API_KEY)
    api = runstream.Api()
    assert api.url == server.url and api.entity == "default"
    assert api.projects()[0].name == "mnist"


def test_kafka_url_is_refused(monkeypatch):
    monkeypatch.setenv("RUNSTREAM_URL", "kafka://broker:9092")
    with pytest.raises(runstream.Error, match="HTTP server"):
        runstream.Api()


def test_connection_refused_is_api_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApiError) as info:
        runstream.Api(url=f"http://127.0.0.1:{port}", api_key=API_KEY).projects()
    assert info.value.status == 0 and info.value.code == "unreachable"
    assert f"127.0.0.1:{port}" in str(info.value) and "RUNSTREAM_URL" in str(info.value)


def test_error_body_that_is_not_json(server):
    api = runstream.Api(url=server.url + "/not-the-api", api_key=API_KEY)
    with pytest.raises(ApiError) as info:
        api.projects()
    assert (info.value.status, info.value.code) == (404, "http_error")
    assert "projects not found" in str(info.value)


def test_answer_that_is_not_json(server):
    with pytest.raises(ApiError, match="did not answer with JSON"):
        runstream.Api(url=server.url + "/web", api_key=API_KEY).projects()


def test_history_without_pandas_says_how_to_install(api, monkeypatch):
    run = api.run("acme/mnist/r1")
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(ImportError, match="pip install pandas"):
        run.history()
    assert run.history(pandas=False)[0]["_step"] == 0


def test_export_streams_to_the_file_and_sends_the_selection(api, server, tmp_path):
    target = api.export(
        "acme/mnist",
        tmp_path / "out.parquet",
        runs=["r1", api.run("acme/mnist/r2")],
        metrics=["loss", "acc"],
        progress=False,
    )
    assert target == tmp_path / "out.parquet" and target.read_bytes() == b"".join(EXPORT_CHUNKS)
    query = server.sent("/projects/acme/mnist/export")[0]["query"]
    assert query == {"format": "parquet", "table": "history", "run_ids": "r1,r2", "metrics": "loss,acc"}
    api.export("mnist", tmp_path / "f.csv", filters={"state": "finished"}, format="csv", progress=False)
    query = server.sent("/projects/acme/mnist/export")[-1]["query"]
    assert orjson.loads(query["filters"]) == {"state": "finished"} and query["format"] == "csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv", "out.parquet"]  # no temporary files left

    run_file = api.run("acme/mnist/r3").export(tmp_path / "r3.parquet", progress=True)
    assert run_file.read_bytes() == b"".join(EXPORT_CHUNKS)
    assert server.requests[-1]["raw_path"] == "/api/v1/runs/acme/mnist/r3/export"
    with pytest.raises(ValueError, match="not both"):
        api.export("acme/mnist", tmp_path / "x", runs=["r1"], filters={})


def test_export_that_fails_leaves_no_file(api, server, tmp_path):
    (tmp_path / "old.parquet").write_bytes(b"previous")
    with pytest.raises(ApiError) as refused:
        api.export("acme/mnist", tmp_path / "old.parquet", format="xlsx", progress=False)
    assert refused.value.status == 400
    with pytest.raises(ApiError) as cut:
        api.export("acme/mnist", tmp_path / "old.parquet", filters={"cut": 1}, progress=False)
    assert cut.value.code == "incomplete" and "old.parquet was not written" in str(cut.value)
    assert [p.name for p in tmp_path.iterdir()] == ["old.parquet"]
    assert (tmp_path / "old.parquet").read_bytes() == b"previous"  # untouched until a download completes


def test_times_in_seconds_read_as_iso_text(api, server):
    server.runs["r5"] = run_attrs("r5", created_at=1_764_072_000.5, finished_at=None)
    run = api.run("acme/mnist/r5")
    assert run.created_at == "2025-11-25T12:00:00.500Z" and run.finished_at is None


# -- wandb's public API, name by name (issue 17 §4) -------------------------------------------------------


def test_wandb_api_constructor_forms(server, monkeypatch):
    monkeypatch.setenv("RUNSTREAM_API_KEY", API_KEY)
    api = runstream.Api({"base_url": server.url, "entity": "acme", "project": "mnist"})  # wandb.Api(overrides)
    assert api.settings == {"base_url": server.url, "entity": "acme", "project": "mnist"}
    assert api.default_entity == "acme" and api.run("r2").path == ["acme", "mnist", "r2"]
    api = runstream.Api(overrides={"base_url": server.url + "/"}, timeout=7, api_key=API_KEY)
    assert (api.url, api.timeout, api.entity) == (server.url, 7, "default")
    monkeypatch.setenv("RUNSTREAM_URL", server.url)
    monkeypatch.setenv("RUNSTREAM_ENTITY", "acme")
    assert runstream.Api().entity == "acme"
    assert runstream.Api().viewer.username == "alice"
    runstream.Api().flush()  # no cache to drop, but wandb scripts call it


def test_projects_and_project(api, server):
    projects = api.projects("acme")
    assert projects.entity == "acme" and [p.path for p in projects] == [["acme", "mnist"]] and len(projects) == 1
    project = api.project("mnist", entity="acme")
    assert server.requests[-1]["raw_path"] == "/api/v1/projects/acme/mnist"
    assert (project.entity, project.name, project.run_count, project.visibility) == ("acme", "mnist", 7, "private")
    assert project.url == f"{server.url}/projects/acme/mnist" and repr(project) == "<Project acme/mnist>"
    assert api.project("mnist").path == api.project("acme/mnist").path == ["acme", "mnist"]  # the Api's entity
    assert [r.id for r in project.runs(per_page=5)][:2] == ["r0", "r1"]
    with pytest.raises(ApiError) as missing:
        api.project("nope", "acme")
    assert missing.value.status == 404 and "project acme/nope" in str(missing.value)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        project.nonsense  # noqa: B018


def test_create_and_delete_project(api, server):
    created = api.create_project("vision", "acme")
    assert server.requests[-1]["method"] == "POST" and server.requests[-1]["raw_path"] == "/api/v1/projects/acme"
    assert server.requests[-1]["body"] == {"name": "vision"} and created.path == ["acme", "vision"]
    with pytest.raises(ApiError) as exists:
        api.create_project("mnist", "acme")
    assert exists.value.status == 409
    api.project("mnist", "acme").delete()
    assert (server.requests[-1]["method"], server.requests[-1]["raw_path"]) == ("DELETE", "/api/v1/projects/acme/mnist")


def test_runs_as_wandb_paginator(api, server):
    runs = api.runs("acme/mnist", per_page=3)
    assert next(runs).id == "r0" and runs.next().id == "r1" and runs.objects[:2] == [runs[0], runs[1]]
    assert runs.more and runs.cursor == "3"
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]  # iteration starts over, as wandb's
    assert not runs.more and runs.length == 7
    assert api.runs("acme/mnist", per_page=5000)[0].id == "r0"
    assert server.requests[-1]["query"]["limit"] == "1000"  # the server's largest page


def test_runs_histories(api, server):
    runs = api.runs("acme/mnist", filters={"name": "x"}, per_page=50)
    rows = runs.histories(keys=["loss"], samples=10)
    assert len(rows) == 7 * 4 and rows[0] == {"_step": 0, "_timestamp": 1.5, "loss": 1.0, "run_id": "r0"}
    frame = runs.histories(keys=["loss"], format="pandas")
    assert list(frame.columns) == ["_step", "_timestamp", "loss", "run_id"] and frame["run_id"].iloc[-1] == "r6"
    with pytest.raises(ValueError, match="Invalid format"):
        runs.histories(format="xlsx")


def test_run_fields_as_wandb_names_them(api, server):
    server.runs["r1"].update(user="alice", program="train.py", args=["--lr", "0.1"], python="3.12.1")
    run = api.run("acme/mnist/r1")
    assert run.display_name == run.name == "name-r1" and run.storage_id == run.id == "r1"
    assert run.url == f"{server.url}/projects/acme/mnist/runs/r1" and run.path == ["acme", "mnist", "r1"]
    assert run.user == "alice" and run.user.username == "alice" and run.user.name == "alice"
    assert run.username == "acme" and run.commit == "abc123" and run.sweep is None and run.sweep_name is None
    assert run.program == "train.py" and run.args == ["--lr", "0.1"]  # run fields without an attribute
    assert run.metadata == {
        "host": "gpu-1",
        "program": "train.py",
        "args": ["--lr", "0.1"],
        "python": "3.12.1",
        "git": {"commit": "abc123"},
        "startedAt": "2026-11-25T12:00:00Z",
        "username": "alice",
    }
    assert orjson.loads(run.json_config) == {"lr": {"value": 0.1, "desc": None}}
    assert run.summary_metrics == {"loss": 0.5} and run.rawconfig == {"lr": 0.1} and not run.read_only
    assert run.lastHistoryStep == 4 and server.requests[-1]["raw_path"].endswith("/r1/statistics")
    assert run.history_keys == {
        "keys": {
            "loss": {"typeCounts": [{"type": "number", "count": 5}]},
            "acc": {"typeCounts": [{"type": "number", "count": 2}]},
        },
        "lastStep": 4,
    }
    assert "iframe" in run._repr_html_() and run.url in run.to_html()
    assert run.display() is False  # not in a notebook
    run.display_name = "renamed"
    assert run.name == "renamed"


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda run: run.stop(), "Run.stop"),
        (lambda run: run.update_state("pending"), "Run.update_state"),
        (lambda run: run.upload_file("x.txt"), "Run.upload_file"),
        (lambda run: run.use_artifact("data:v0"), "Run.use_artifact"),
        (lambda run: run.log_artifact("data:v0"), "Run.log_artifact"),
        (lambda run: run.history_line_count, "Run.history_line_count"),
        (lambda run: run.delete(delete_artifacts=True), "Run.delete(delete_artifacts=True)"),
        (lambda run: run._api.create_run(), "Api.create_run"),
        (lambda run: run.files()[0].delete(), "File.delete"),
    ],
)
def test_wandb_names_runstream_lacks_say_so(api, server, call, named):
    run = api.run("acme/mnist/r1")
    with pytest.raises(NotImplementedError, match=r"runstream\.Api: " + re.escape(named) + " is not supported"):
        call(run)
    assert all(r["method"] == "GET" for r in server.requests)  # nothing was changed on the way


def test_unknown_names_stay_attribute_errors(api):
    run = api.run("acme/mnist/r1")
    assert not hasattr(run, "no_such_field") and not hasattr(api, "no_such_method")
    # An unsupported wandb name is also an AttributeError, so probing code answers as for a missing one.
    assert not hasattr(run, "history_line_count") and getattr(api.project("mnist"), "id", "none") == "none"
    with pytest.raises(runstream.public_api.Unsupported):
        run.history_line_count  # noqa: B018
    assert getattr(run.summary, "no_such_key", None) is None


def test_summary_reads_as_wandbs(api):
    run = api.run("acme/mnist/r1")
    summary = run.summary
    assert summary._json_dict == {"loss": 0.5} and summary == {"loss": 0.5} and dict(summary) == {"loss": 0.5}
    assert list(summary.items()) == [("loss", 0.5)] and list(summary.keys()) == ["loss"] and len(summary) == 1
    assert summary["loss"] == summary.loss == summary.get("loss") == 0.5 and summary.get("acc", 1) == 1
    assert "loss" in summary and " loss " in summary and "acc" not in summary
    with pytest.raises(KeyError):
        summary["acc"]
    assert repr(summary) == "{'loss': 0.5}"


def test_summary_edits_are_saved_by_run_update(api, server):
    run = api.run("acme/mnist/r1")
    run.summary["best"] = 1
    run.summary.acc = {"max": 0.9}
    assert server.sent("/r1") == [server.requests[0]]  # nothing sent before update()
    run.update()
    patch = server.requests[-1]
    assert (patch["method"], patch["body"]) == ("PATCH", {"summary": {"best": 1, "acc": {"max": 0.9}}})
    assert run.summary == {"loss": 0.5, "best": 1, "acc": {"max": 0.9}}
    run.summary["acc"]["max"] = 0.95  # a nested change sends its top-level key
    run.update()
    assert server.requests[-1]["body"] == {"summary": {"acc": {"max": 0.95}}}
    assert api.run("acme/mnist/r1").summary["acc"] == {"max": 0.95}


def test_summary_update_saves_at_once_and_only_the_summary(api, server):
    run = api.run("acme/mnist/r1")
    held = run.summary
    run.notes = "not yet"
    run.summary.update({"best": 2, "loss": 0.1})
    assert server.requests[-1]["body"] == {"summary": {"best": 2, "loss": 0.1}}
    assert held == {"loss": 0.1, "best": 2} and run.notes == "not yet"  # the notes wait for run.update()
    run.summary.update({"loss": 9.0, "extra": 3}, overwrite=False)  # wandb: set keys stay
    assert server.requests[-1]["body"] == {"summary": {"extra": 3}}
    run.update()
    assert server.requests[-1]["body"] == {"notes": "not yet"}


def test_deleted_keys_group_and_job_type_are_sent_as_edits(api, server):
    run = api.run("acme/mnist/r1")
    del run.summary["loss"]
    run.summary.update()  # wandb's recipe: the deletion alone, at once
    assert server.requests[-1]["body"] == {"summary_delete": ["loss"]} and run.summary == {}
    run = api.run("acme/mnist/r3")
    run.config["opt"] = {"name": "adam", "beta": 0.9}
    run.update()
    del run.config["opt"]["beta"]
    run.config.pop("lr")
    run.group, run.job_type = "other", None
    run.save()
    body = server.requests[-1]["body"]
    assert body == {"group": "other", "job_type": None, "config_delete": ["lr", "opt.beta"]}
    assert (run.config, run.group, run.job_type) == ({"opt": {"name": "adam"}}, "other", None)
    run.update()  # nothing changed since: nothing sent
    assert server.requests[-1]["method"] == "PATCH" and server.requests[-1]["body"] == body


def test_config_and_name_edits(api, server):
    run = api.run("acme/mnist/r2")
    run.config["lr"] = 0.2
    run.config["opt"] = {"name": "adam"}
    run.name = "tuned"
    run.description = "lr doubled"
    run.update()
    body = server.requests[-1]["body"]
    assert body == {"name": "tuned", "notes": "lr doubled", "config": {"lr": 0.2, "opt": {"name": "adam"}}}
    assert run.config == {"lr": 0.2, "opt": {"name": "adam"}} and run.notes == "lr doubled"
    run.summary = {"loss": 0.5, "final": True}  # assigned whole, as a dict
    run.update()
    assert server.requests[-1]["body"] == {"summary": {"final": True}}


def test_files_and_download(api, server, tmp_path):
    run = api.run("acme/mnist/r1")
    files = run.files()
    assert [f.name for f in files] == list(FILES) and len(files) == 3 and "Files acme/mnist/r1" in repr(files)
    png = files[1]
    assert (png.size, png.mimetype, png.step, png.md5) == (len(FILES[png.name]), "image/png", 3, None)
    assert png.url == f"{server.url}/api/v1/files/acme/mnist/r1/{png.name}" and png.updated_at.endswith("Z")
    assert [f.name for f in run.files(pattern="%.json")] == ["wandb-metadata.json"]
    assert [f.name for f in run.files(pattern="media/%_ab__.png")] == [png.name]
    assert [f.name for f in run.files(names=["wandb-metadata.json", "nope", "config.yaml"])] == [
        "wandb-metadata.json",
        "config.yaml",
    ]
    with pytest.raises(ValueError, match="both names and pattern"):
        run.files(names=["a"], pattern="%")

    with run.file("config.yaml").download(root=tmp_path) as fh:
        assert fh.read() == "lr: 0.1\n"
    png.download(root=str(tmp_path))
    assert (tmp_path / png.name).read_bytes() == FILES[png.name]
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    (tmp_path / "config.yaml").write_text("changed")
    with pytest.raises(ValueError, match="File already exists"):
        run.file("config.yaml").download(root=tmp_path)
    with run.file("config.yaml").download(root=tmp_path, exist_ok=True) as fh:
        assert fh.read() == "changed"
    run.file("config.yaml").download(root=tmp_path, replace=True).close()
    assert (tmp_path / "config.yaml").read_text() == "lr: 0.1\n"
    with pytest.raises(ApiError) as missing:
        run.file("model.pt")
    assert missing.value.status == 404 and "'model.pt'" in str(missing.value)


def test_a_file_name_cannot_leave_the_download_root(api, server, tmp_path):
    bad = runstream.public_api.File(api.run("acme/mnist/r1"), {**_file_entry("config.yaml"), "path": "../evil"})
    with pytest.raises(ValueError, match="leaves the directory"):
        bad.download(root=tmp_path / "inside")
    assert not (tmp_path / "evil").exists()


def test_delete_and_move_send_their_requests(api, server):
    run = api.run("acme/mnist/r3")
    run.move("archive")
    assert (
        server.requests[-1]["method"] == "POST" and server.requests[-1]["raw_path"] == "/api/v1/runs/acme/mnist/r3/move"
    )
    assert server.requests[-1]["body"] == {"project": "archive"}
    assert run.path == ["acme", "archive", "r3"] and run.url.endswith("/projects/acme/archive/runs/r3")
    doomed = api.run("acme/mnist/r4")
    doomed.delete()
    assert (server.requests[-1]["method"], server.requests[-1]["raw_path"]) == ("DELETE", "/api/v1/runs/acme/mnist/r4")
    with pytest.raises(ApiError):
        api.run("acme/mnist/r4")


def test_wait_until_finished(api, server):
    run = api.run("acme/mnist/r1")
    run.notes = "local edit"
    server.runs["r1"]["exit_code"] = 0
    run.wait_until_finished(poll_s=0.01)
    assert (run.state, run.exit_code, run.notes) == ("finished", 0, "local edit")  # the edit is not dropped
    server.runs["r2"]["state"] = "running"
    with pytest.raises(TimeoutError, match="still running"):
        api.run("acme/mnist/r2").wait_until_finished(poll_s=0.01, timeout=0.05)


def test_history_takes_wandbs_argument_order(api, server):
    run = api.run("acme/mnist/r1")
    run.history(100, ["loss"], pandas=False)
    assert server.requests[-1]["query"] == {"keys": "loss", "samples": "100"}
    run.history(["loss"], 50, pandas=False)  # runstream's older order still reads the same
    assert server.requests[-1]["query"] == {"keys": "loss", "samples": "50"}


class FakeArtifacts(types.ModuleType):
    """Stands in for runstream.artifacts: records how the Api delegates."""

    def __init__(self) -> None:
        super().__init__("runstream.artifacts")
        self.calls: list[tuple[Any, ...]] = []

    def fetch_artifact(self, api: Any, name: str, type: str | None) -> Any:
        self.calls.append(("fetch_artifact", name, type))
        if "missing" in name:
            raise ApiError(404, "not_found", "no such artifact")
        return "artifact"

    def artifact_versions(self, api: Any, path: str) -> Any:
        self.calls.append(("artifact_versions", path))
        return []

    def artifact_collections(self, api: Any, project_path: str, type: str | None) -> Any:
        self.calls.append(("artifact_collections", project_path, type))
        return []

    def run_artifacts(self, api: Any, team: str, project: str, run_id: str, which: str) -> Any:
        self.calls.append(("run_artifacts", team, project, run_id, which))
        return []


def test_artifacts_are_delegated_to_runstream_artifacts(api, server, monkeypatch):
    fake = FakeArtifacts()
    monkeypatch.setitem(sys.modules, "runstream.artifacts", fake)
    api.default_project = "mnist"
    assert api.artifact("data:v1") == "artifact" and api.artifact("acme/other/data:latest", type="dataset")
    api.artifact_versions("dataset", "data")
    api.artifacts("dataset", "other/data")
    api.artifact_collections("mnist", "model")
    assert api.artifact_exists("data:v0") and not api.artifact_exists("missing:v0")
    run = api.run("acme/mnist/r1")
    run.logged_artifacts()
    run.used_artifacts()
    assert fake.calls == [
        ("fetch_artifact", "acme/mnist/data:v1", None),
        ("fetch_artifact", "acme/other/data:latest", "dataset"),
        ("artifact_versions", "acme/mnist/data"),
        ("artifact_versions", "acme/other/data"),
        ("artifact_collections", "acme/mnist", "model"),
        ("fetch_artifact", "acme/mnist/data:v0", None),
        ("fetch_artifact", "acme/mnist/missing:v0", None),
        ("run_artifacts", "acme", "mnist", "r1", "logged"),
        ("run_artifacts", "acme", "mnist", "r1", "used"),
    ]
    monkeypatch.setitem(sys.modules, "runstream.artifacts", None)  # not installed: import fails
    with pytest.raises(NotImplementedError, match=r"runstream\.artifacts"):
        api.artifact("data:v1")


def test_system_metrics_as_wandbs_events_stream(api, server):
    run = api.run("acme/mnist/r1")
    rows = run.history(stream="system", pandas=False)
    assert rows == [
        {"_timestamp": 100.0, "system.cpu": 5.0, "system.gpu.0.util": 50.0, "_runtime": 0.0},
        {"_timestamp": 110.0, "system.gpu.0.util": 60.0, "_runtime": 10.0},
        {"_timestamp": 120.0, "system.cpu": 7.0, "_runtime": 20.0},
    ]
    assert server.requests[-1]["query"] == {"points": "500"}
    assert list(run.history(samples=20, stream="events")["system.cpu"].dropna()) == [5.0, 7.0]
    assert run.system_metrics == {"system.cpu": 7.0, "system.gpu.0.util": 60.0}
    with pytest.raises(ValueError, match="stream must be"):
        run.history(stream="gpu")


def test_console_logs(api, server):
    run = api.run("acme/mnist/r1")
    lines = run.console_logs(per_page=2)
    assert [(line.number, line.content, line.level) for line in lines] == [
        (0, "start", ""),
        (1, "epoch 1", ""),
        (2, "epoch 2", ""),
        (3, "warn", "error"),
    ]
    assert lines[0].timestamp is not None and lines[0].timestamp.timestamp() == 1.0
    assert [q["query"].get("cursor") for q in server.sent("/console")] == [None, "c1"]
    assert [line.content for line in run.console_logs(last=1)] == ["warn"]
    assert server.sent("/console")[-1]["query"] == {"tail": "1"}
