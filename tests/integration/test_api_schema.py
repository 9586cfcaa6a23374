"""The API against its own OpenAPI document: schemathesis fuzzes every operation of the served app.

A real uvicorn server (``ServedApp``) serves the app on a fresh database holding
real data: team acme with an admin key, a private project with runs ingested
through ``/api/v1/events`` (metrics, system samples, console lines, files, an
alert, a blob), a public project, a report with a share link and an alert rule.
Two of three generated paths are made to name those (the private project's or
the public one's), so requests reach existing resources as well as missing ones.
Every operation is fuzzed with positive and negative data (examples, coverage and
fuzzing phases), anonymously and then with the admin key; the admin's writes may
delete the seeded report or rule, and later requests then get 404, which is
still a declared answer. The alert stream is always bounded (``timeout_s``).

The document itself is checked too: summaries, declared 401/404/413, and no stray keys or nulls
where a declaration went wrong.
Which caller gets which status is ``test_api_authz.py``'s.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from runstream import events
from runstream.api.app import create_app
from runstream.settings import Settings
from runstream.storage import accounts
from tests.helpers import ServedApp, fresh_chdb_dsn, make_event

TEAM, PRIVATE, PUBLIC = "acme", "mnist", "open"
OPENAPI = "/api/v1/openapi.json"
STREAM = "/api/v1/projects/{team}/{project}/alerts/stream"
BLOB = b"model weights\n"
ARTIFACT, ARTIFACT_FILE = "data", "w.bin"  # an artifact of one version whose one file is BLOB
MANIFEST = orjson.dumps(
    {"version": 1, "entries": {ARTIFACT_FILE: {"digest": hashlib.sha256(BLOB).hexdigest(), "size": len(BLOB)}}},
    option=orjson.OPT_SORT_KEYS,
)

# Declared statuses, bodies and content types, no 5xx, invalid data refused with a 4xx, and an undeclared
# method refused with 405 naming the allowed ones.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    unsupported_method,
    allow_header_conformance,
]
# Left out: positive_data_acceptance, since the schema cannot say everything a request must be (a filter
# document's fields, an order key, a cursor, a rule's metric), so schema-valid data may rightly be a 400.
SETTINGS = hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=False,
)


@dataclass
class World:
    url: str
    admin: dict[str, str]
    ids: dict[str, str]  # path parameter -> an existing value


def _events(project: str, run_id: str, t0: float) -> list[dict[str, Any]]:
    seq = iter(range(1, 1000))

    def event(type: str, data: dict[str, Any], ts: float) -> dict[str, Any]:
        return make_event(type, data, seq=next(seq), run_id=run_id, team=TEAM, project=project, ts=ts)

    steps = list(range(20))
    return [
        event(
            events.RUN_START,
            {"name": run_id, "config": {"lr": 0.01, "opt": "adam"}, "tags": ["base"], "group": "g1"},
            t0,
        ),
        event(
            events.METRICS,
            {
                "step": steps,
                "time": [t0 + s for s in steps],
                "values": {"loss": [1 / (s + 1) for s in steps], "acc": [s / 20 for s in steps]},
            },
            t0 + 20,
        ),
        event(events.SYSTEM, {"time": [t0 + s for s in range(5)], "values": {"cpu": [10.0, 20, 30, 40, 50]}}, t0 + 5),
        event(
            events.CONSOLE, {"time": [t0, t0 + 1], "stream": ["stdout", "stderr"], "line": ["epoch 1", "oops"]}, t0 + 1
        ),
        event(
            events.FILE,
            {
                "path": "model.pt",
                "kind": "file",
                "size": len(BLOB),
                "sha256": hashlib.sha256(BLOB).hexdigest(),
                "store_key": "model.pt",
            },
            t0,
        ),
        event(
            events.FILE,
            {
                "path": "media/images/samples_1.png",
                "kind": "media",
                "size": 3,
                "sha256": "ab" * 32,
                "store_key": "media/images/samples_1.png",
                "step": 1,
                "media_type": "image/png",
                "meta": {"key": "samples"},
            },
            t0,
        ),
        event(events.ALERT, {"title": "loss spiked", "text": "at step 3", "level": "WARN", "source": "sdk"}, t0 + 3),
        event(events.RUN_UPDATE, {"summary": {"best": 0.9}}, t0 + 21),
        event(events.RUN_FINISH, {"state": "finished", "exit_code": 0}, t0 + 22),
    ]


def _ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def seed(url: str, client: Any) -> World:
    """Team acme's admin key, a sacrificial viewer key, runs in a private and a public project, a report, a rule."""
    accounts.ensure_team(client, TEAM)
    accounts.set_member(client, TEAM, "alice", "admin")
    _, key = accounts.create_key(client, TEAM, "alice", "fuzz")
    admin = {"Authorization": f"Bearer {key}"}
    accounts.set_member(client, TEAM, "bob", "viewer")
    bob_key_id, _ = accounts.create_key(client, TEAM, "bob", "revocable")
    t0 = time.time() - 600
    batch = _events(PRIVATE, "r1", t0) + _events(PRIVATE, "r2", t0 + 30) + _events(PUBLIC, "p1", t0)
    batch += _events(SCRATCH, "s1", t0)  # what deleting and moving may destroy (``DESTRUCTIVE``)
    body = b"\n".join(orjson.dumps(e) for e in batch)
    _ok(requests.post(f"{url}/api/v1/events", data=body, headers={**admin, "Content-Type": "application/x-ndjson"}))
    sha = hashlib.sha256(BLOB).hexdigest()
    _ok(
        requests.put(
            f"{url}/api/v1/files/{TEAM}/{PRIVATE}/r1/model.pt", params={"sha256": sha}, data=BLOB, headers=admin
        )
    )
    for blob in (BLOB, MANIFEST):  # an artifact (docs/artifacts.md): its blobs, then its log event
        digest = hashlib.sha256(blob).hexdigest()
        _ok(
            requests.put(
                f"{url}/api/v1/projects/{TEAM}/{PRIVATE}/blobs/{digest}",
                params={"size": len(blob)},
                data=blob,
                headers=admin,
            )
        )
    logged = {
        "action": "log",
        "name": ARTIFACT,
        "type": "dataset",
        "digest": hashlib.sha256(MANIFEST).hexdigest(),
        "aliases": ["best"],
        "size": len(BLOB),
        "file_count": 1,
    }
    event = make_event(events.ARTIFACT, logged, seq=900, run_id="r1", team=TEAM, project=PRIVATE)
    _ok(
        requests.post(
            f"{url}/api/v1/events", data=orjson.dumps(event), headers={**admin, "Content-Type": "application/x-ndjson"}
        )
    )
    _ok(requests.patch(f"{url}/api/v1/projects/{TEAM}/{PUBLIC}", json={"visibility": "public"}, headers=admin))
    report = _ok(
        requests.post(
            f"{url}/api/v1/projects/{TEAM}/{PRIVATE}/reports",
            headers=admin,
            json={"title": "Week 1", "body": "# loss", "panels": [{"type": "line"}]},
        ),
        201,
    )
    share = _ok(
        requests.post(f"{url}/api/v1/projects/{TEAM}/{PRIVATE}/reports/{report['id']}/share", json={}, headers=admin),
        201,
    )
    rule = _ok(
        requests.post(
            f"{url}/api/v1/projects/{TEAM}/{PRIVATE}/alert-rules",
            headers=admin,
            json={"name": "loss high", "kind": "threshold", "spec": {"metric": "loss", "op": ">", "value": 10}},
        ),
        201,
    )
    ids = {
        "team": TEAM,
        "project": PRIVATE,
        "run_id": "r1",
        "store_key": "model.pt",
        "report_id": report["id"],
        "rule_id": rule["id"],
        "key_id": bob_key_id,
        "user": "bob",
        "token": share["token"],
        "name": ARTIFACT,
        "ref": "latest",
        "alias": "best",
        "sha256": sha,
        "path": ARTIFACT_FILE,
    }
    return World(url, admin, ids)


def openapi_document() -> dict[str, Any]:
    """The document as the app serves it, read before any database exists (building it needs none)."""
    from starlette.testclient import TestClient

    app = create_app(Settings(clickhouse_dsn="chdb://unused", data_dir="unused"))
    return TestClient(app).get(OPENAPI).json()  # no lifespan: nothing starts


DOCUMENT = openapi_document()


@schemathesis.serializer("application/x-ndjson")
def _ndjson(context: Any, value: Any) -> bytes:
    """The ingest body: generated text as it is, anything else as one JSON line."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


REAL: dict[str, str] = {}  # path parameter -> an existing value, filled by the ``world`` fixture
#: Operations that delete or move what their path names: given a scratch project and run of their own, so the
#: seeded ones stay for the rest of the fuzzing.
SCRATCH = "scratch"
DESTRUCTIVE = {
    ("DELETE", "/api/v1/projects/{team}/{project}"),
    ("DELETE", "/api/v1/runs/{team}/{project}/{run_id}"),
    ("POST", "/api/v1/runs/{team}/{project}/{run_id}/move"),
}
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "with-security-parameters": False},
        }
    ),
)


def _real_paths(case: schemathesis.Case) -> list[dict[str, Any] | None]:
    """Paths to put into a case: its own (None), the seeded resources, the public project and its run.

    A path schemathesis made invalid on purpose stays as it is: it would still count as invalid data.
    """
    params = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    known = {name: REAL[name] for name in params if name in REAL}
    path = case.meta.components.get(ParameterLocation.PATH) if case.meta else None
    if not known or (path is not None and path.mode.is_negative):
        return [None]
    if (case.method.upper(), case.operation.path) in DESTRUCTIVE:
        return [None, {**params, **known, "project": SCRATCH, **({"run_id": "s1"} if "run_id" in known else {})}]
    choices: list[dict[str, Any] | None] = [None, {**params, **known}]
    if "project" in known:
        choices.append({**params, **known, "project": PUBLIC, **({"run_id": "p1"} if "run_id" in known else {})})
    return choices


def _with_path(case: schemathesis.Case, path: dict[str, Any] | None) -> schemathesis.Case:
    if path is not None:
        case.path_parameters = path  # assigned, so schemathesis checks the case's validity again
    return case


@schema.hook
def flatmap_case(context: Any, case: schemathesis.Case) -> Any:
    """Fuzzed cases: some of the time the path names resources that exist."""
    return st.sampled_from(_real_paths(case)).map(lambda path: _with_path(case, path))


_TURN = itertools.count()


def prepared(case: schemathesis.Case) -> schemathesis.Case:
    """The case as it is sent: coverage cases with real paths too, and the alert stream always bounded.

    Coverage cases are made when the test is collected, before the data exists, so their paths are put
    in here, in turn (fuzzed ones got theirs from ``flatmap_case``). The alert stream lasts until the
    client leaves unless ``timeout_s`` or ``max_events`` ends it.
    """
    if case.meta is not None and case.meta.phase.name != TestPhase.FUZZING:
        choices = _real_paths(case)
        case = _with_path(case, choices[next(_TURN) % len(choices)])
    if case.operation.path == STREAM:  # from the seeded alerts on, unless it says otherwise: it ends at once
        case.query = {"since": 0, **(case.query or {}), "timeout_s": 1, "max_events": 1}
    return case


@pytest.fixture(scope="module")
def world(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(clickhouse_dsn=fresh_chdb_dsn(chdb_dir), data_dir=str(tmp_path_factory.mktemp("schema")))
    app = create_app(settings)
    with ServedApp(app) as url:
        served = seed(url, app.state.backend.client)
        REAL.update(served.ids)
        try:
            yield served
        finally:
            REAL.clear()


def test_the_fuzzed_document_is_the_served_one(world: World) -> None:
    assert requests.get(world.url + OPENAPI).json() == DOCUMENT


# -- the document itself ---------------------------------------------------------------------------

OPERATIONS = [
    (method.upper(), path, operation)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
]
_RESPONSE_KEYS = {"description", "content", "headers"}
_PARAMETER_KEYS = {"name", "in", "required", "schema", "content", "description", "style", "explode"}


def _nulls(value: Any, where: str = "") -> list[str]:
    """Where a mapping holds null: in these docstrings that is an unquoted comma splitting a flow mapping."""
    if isinstance(value, dict):
        return [f"{where}/{k}" for k, v in value.items() if v is None] + [
            hit for k, v in value.items() for hit in _nulls(v, f"{where}/{k}")
        ]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in _nulls(v, f"{where}/{i}")]
    return []


def test_the_document_has_no_stray_keys_or_nulls() -> None:
    assert _nulls(DOCUMENT) == []
    for method, path, operation in OPERATIONS:
        for status, response in operation["responses"].items():
            stray = set(response) - _RESPONSE_KEYS
            assert not stray, f"{method} {path} {status}: stray keys {stray}"
            assert isinstance(response.get("description"), str) and response["description"], f"{method} {path} {status}"
        for parameter in operation.get("parameters", []):
            assert set(parameter) <= _PARAMETER_KEYS, f"{method} {path}: stray keys in {parameter}"


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_every_operation_is_described_with_its_refusals(method: str, path: str, operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    assert operation.get("summary"), "a summary names the operation in docs and tools"
    assert any(status.startswith("2") for status in responses), "a success answer"
    if operation.get("security") != []:  # it authorizes: a key or share link that does not work is a 401
        assert "401" in responses
    if "{team}" in path:  # a team or project outside the caller's reach is 404, never 403
        assert "404" in responses
    if "requestBody" in operation:
        assert "413" in responses and ({"400", "422"} & set(responses)), "too large, and malformed, bodies"


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_every_operation_declares_its_key_scope(method: str, path: str, operation: dict[str, Any]) -> None:
    """``x-runstream-scope`` (what a key's scope must be: api/auth.py), also said in the description."""
    from runstream.api.auth import SCOPE_DESCRIPTIONS

    scope = operation.get("x-runstream-scope")
    assert scope in SCOPE_DESCRIPTIONS, f"{method} {path} declares no key scope"
    assert f"Key scope: {scope} ({SCOPE_DESCRIPTIONS[scope]})." in operation.get("description", "")
    if scope in ("read", "ingest", "admin"):  # a key of another scope is refused
        assert "403" in operation["responses"], f"{method} {path}: a key of too narrow a scope gets 403"
    if operation.get("security") == []:
        assert scope == "none", f"{method} {path} needs no credential, so no scope"


@schema.parametrize()
@SETTINGS
def test_anonymous_requests_conform(case: schemathesis.Case, world: World) -> None:
    prepared(case).call_and_validate(base_url=world.url, checks=CHECKS, timeout=30)


@schema.parametrize()
@SETTINGS
def test_admin_requests_conform(case: schemathesis.Case, world: World) -> None:
    prepared(case).call_and_validate(base_url=world.url, headers=world.admin, checks=CHECKS, timeout=30)
