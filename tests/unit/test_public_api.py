"""runstream.Api against a local stand-in server that answers with the read endpoints' shapes (docs/api.md)."""

from __future__ import annotations

import math
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import pytest

import runstream
from runstream.public_api import ApiError

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
        status, answer = self._route(parts, query, body)
        self._send(status, answer)

    def _route(self, parts: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        not_found = 404, {"error": {"code": "not_found", "message": "no such run", "details": None}}
        if parts == ["projects"]:
            team = query.get("team")
            return 200, {"projects": [p for p in PROJECTS if team in (None, p["team"])]}
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
                attrs.update(body)
                return 200, attrs
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

    def _send_html(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"<html>")

    def _send(self, status: int, answer: Any) -> None:
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
    assert orjson.loads(query["filters"]) == {} and query["order"] == "-created_at" and query["limit"] == "50"


def test_runs_paginate_lazily_without_gaps_or_repeats(api, server):
    runs = api.runs("acme/mnist", per_page=3)
    assert server.requests == []  # nothing fetched before it is needed
    assert runs[0].id == "r0" and len(server.requests) == 1
    assert [r.id for r in runs[1:5]] == ["r1", "r2", "r3", "r4"] and len(server.requests) == 2
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]
    assert [r.id for r in runs] == [f"r{i}" for i in range(7)]  # a second pass reuses the pages
    cursors = [r["query"].get("cursor") for r in server.sent("/runs")]
    assert cursors == [None, "3", "6"]


def test_runs_len_and_negative_index_fetch_all(api, server):
    runs = api.runs("acme/mnist", per_page=3)
    assert len(runs) == 7 and len(server.requests) == 3
    assert runs[-1].id == "r6" and [r.id for r in runs[-2:]] == ["r5", "r6"]
    with pytest.raises(IndexError):
        runs[7]
    assert len(server.requests) == 3


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


def test_run_path_segments_are_quoted(api, server):
    assert api.run("acme/mnist/r 1#x").id == "r 1#x"
    assert server.requests[-1]["raw_path"] == "/api/v1/runs/acme/mnist/r%201%23x"


@pytest.mark.parametrize("path", ["acme", "acme//r1", "a/b/c/d", "a/b/notruns/c", "a/b/c/d/e", ""])
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
    run = api.run("acme/mnist/r1")
    df = run.history()
    assert "keys" not in server.requests[-1]["query"] and server.requests[-1]["query"]["samples"] == "500"
    assert list(df.columns) == ["_step", "_timestamp", "loss", "acc"]
    rows = run.history(keys=["loss"], pandas=False)
    assert rows[0] == {"_step": 0, "_timestamp": 1.5, "loss": 1.0}
    assert math.isnan(rows[1]["loss"])  # logged as NaN: present
    assert rows[2] == {"_step": 2, "_timestamp": 3.5}  # not logged: absent


def test_history_fetches_a_custom_x_axis(api, server):
    df = api.run("acme/mnist/r1").history(keys=["loss"], x_axis="acc")
    assert server.requests[-1]["query"]["keys"] == "loss,acc"
    assert list(df.columns) == ["_step", "_timestamp", "loss", "acc"]


def test_scan_history_pages_lazily(api, server):
    rows = api.run("acme/mnist/r1").scan_history(keys=["loss", "acc"], page_size=2)
    assert server.sent("/scan") == []
    first = next(rows)
    assert first == {"_step": 0, "_timestamp": 1.0, "loss": 0.9} and len(server.sent("/scan")) == 1
    rest = list(rows)
    assert [r["_step"] for r in rest] == [1, 2, 3, 4]
    assert rest[0]["acc"] == 0.1 and "acc" not in rest[1] and math.isnan(rest[2]["loss"]) and rest[3]["acc"] == 0.4
    queries = [r["query"] for r in server.sent("/scan")]
    assert [q.get("cursor") for q in queries] == [None, "p2", "p3"]
    assert queries[0] == {"keys": "loss,acc", "page_size": "2"}


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
