"""Artifacts through the API on the real engine (docs/artifacts.md): resumable blob uploads, `artifact`
events through POST /api/v1/events and the embedded pipeline, versions, aliases, files, lineage, a run's
artifacts, who may do what, and bad input."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runstream import events
from runstream.storage import accounts
from tests.conftest import ApiHarness
from tests.helpers import fresh_chdb_dsn, make_event, unique

TEAM = "acme"
API = "/api/v1"


@pytest.fixture(scope="module")
def api(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    """One embedded app for the module (each test works in its own project)."""
    harness = ApiHarness(fresh_chdb_dsn(chdb_dir), tmp_path_factory.mktemp("artifacts"))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="module")
def admin(api: ApiHarness) -> dict[str, str]:
    return api.key(TEAM, "alice", "admin")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_url(project: str, digest: str) -> str:
    return f"{API}/projects/{TEAM}/{project}/blobs/{digest}"


def upload(api: ApiHarness, headers: dict[str, str], project: str, data: bytes) -> str:
    digest = sha(data)
    response = api.http.put(blob_url(project, digest), params={"size": len(data)}, content=data, headers=headers)
    assert response.status_code == 200, response.text
    return digest


def manifest(files: dict[str, bytes], refs: dict[str, str] | None = None) -> bytes:
    entries: dict[str, Any] = {path: {"digest": sha(data), "size": len(data)} for path, data in files.items()}
    for path, uri in (refs or {}).items():
        entries[path] = {"ref": uri, "digest": "", "size": 0}
    return orjson.dumps({"version": 1, "entries": entries}, option=orjson.OPT_SORT_KEYS)


class Runs:
    """Events of runs in one project, with increasing seqs."""

    def __init__(self, api: ApiHarness, headers: dict[str, str], project: str) -> None:
        self.api, self.headers, self.project = api, headers, project
        self.seq = 0
        self.sent: list[dict[str, Any]] = []

    def send(self, run_id: str, type: str, data: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        event = make_event(type, data, seq=self.seq, run_id=run_id, team=TEAM, project=self.project)
        response = self.api.ingest([event], self.headers)
        assert response.status_code == 200, response.text
        self.sent.append(event)
        return event

    def start(self, run_id: str) -> None:
        self.send(run_id, events.RUN_START, {"name": f"name-{run_id}"})

    def log(
        self,
        run_id: str,
        name: str,
        files: dict[str, bytes],
        type: str = "dataset",
        aliases: list[str] | None = None,
        refs: dict[str, str] | None = None,
    ) -> str:
        """Upload the files and the manifest, then send the log event: the version's digest."""
        for content in files.values():
            upload(self.api, self.headers, self.project, content)
        digest = upload(self.api, self.headers, self.project, manifest(files, refs))
        data = {
            "action": "log",
            "name": name,
            "type": type,
            "digest": digest,
            "description": f"{name} from {run_id}",
            "metadata": {"rows": len(files)},
            "aliases": aliases or [],
            "size": sum(len(d) for d in files.values()),
            "file_count": len(files) + len(refs or {}),
        }
        self.send(run_id, events.ARTIFACT, data)
        return digest

    def use(self, run_id: str, name: str, digest: str, project: str | None = None) -> None:
        self.send(
            run_id,
            events.ARTIFACT,
            {"action": "use", "project": project or self.project, "name": name, "digest": digest},
        )


def artifact_url(project: str, *parts: str) -> str:
    return "/".join([f"{API}/projects/{TEAM}/{project}/artifacts", *parts])


def get(api: ApiHarness, headers: dict[str, str], url: str, status: int = 200, **params: Any) -> Any:
    response = api.http.get(url, headers=headers, params=params)
    assert response.status_code == status, response.text
    return response.json()


# -- blobs -------------------------------------------------------------------------------------------


def test_an_interrupted_upload_resumes_at_the_offset_the_server_holds(api, admin):
    project = unique("p")
    data = bytes(range(256)) * 40  # 10,240 bytes
    digest = sha(data)
    missing = api.http.post(
        f"{API}/projects/{TEAM}/{project}/blobs/missing", json={"sha256": [digest, digest]}, headers=admin
    )
    assert missing.status_code == 200, missing.text
    assert missing.json() == {"missing": [digest], "partial": {}, "max_blob_bytes": 64 << 30}  # the default

    first = api.http.put(
        blob_url(project, digest), params={"size": len(data), "offset": 0}, content=data[:4000], headers=admin
    )
    assert first.status_code == 202, first.text
    assert first.json() == {"sha256": digest, "received": 4000, "stored": False}
    partial = api.http.post(f"{API}/projects/{TEAM}/{project}/blobs/missing", json={"sha256": [digest]}, headers=admin)
    assert partial.json() == {"missing": [digest], "partial": {digest: 4000}, "max_blob_bytes": 64 << 30}

    # From the wrong offset: 409 with what the server holds, and nothing changes.
    wrong = api.http.put(
        blob_url(project, digest), params={"size": len(data), "offset": 3000}, content=data[3000:], headers=admin
    )
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["error"]["code"] == "upload_offset"
    assert wrong.json()["error"]["received"] == 4000
    assert wrong.json()["error"]["details"] == {"received": 4000}

    rest = api.http.put(
        blob_url(project, digest), params={"size": len(data), "offset": 4000}, content=data[4000:], headers=admin
    )
    assert rest.status_code == 200, rest.text
    assert rest.json() == {"sha256": digest, "size": len(data), "stored": True}
    assert api.http.post(
        f"{API}/projects/{TEAM}/{project}/blobs/missing", json={"sha256": [digest]}, headers=admin
    ).json() == {"missing": [], "partial": {}, "max_blob_bytes": 64 << 30}
    stored = api.app.state.backend.files.path(f"_blobs/{TEAM}/{digest[:2]}/{digest}")
    assert stored is not None and stored.read_bytes() == data

    # Stored: answered at once, whatever the body, and blobs are the team's (another project finds it too).
    again = api.http.put(blob_url(unique("q"), digest), params={"size": len(data)}, content=b"ignored", headers=admin)
    assert again.status_code == 200 and again.json()["stored"] is True
    other_size = api.http.put(blob_url(project, digest), params={"size": 5}, content=b"12345", headers=admin)
    assert other_size.status_code == 400 and "not the size" in other_size.json()["error"]["message"]


def test_a_blob_whose_sha256_differs_is_discarded(api, admin):
    project = unique("p")
    data = b"the real bytes" * 100
    digest = sha(data)
    bad = api.http.put(blob_url(project, digest), params={"size": len(data)}, content=data[:-1] + b"X", headers=admin)
    assert bad.status_code == 400, bad.text
    assert "SHA-256" in bad.json()["error"]["message"]
    assert api.app.state.backend.files.blob_state(TEAM, digest) == (None, 0)  # neither stored nor partial

    # Cut in two, the second part corrupt: the whole partial goes, the next upload starts at 0.
    assert (
        api.http.put(
            blob_url(project, digest), params={"size": len(data)}, content=data[:500], headers=admin
        ).status_code
        == 202
    )
    bad = api.http.put(
        blob_url(project, digest),
        params={"size": len(data), "offset": 500},
        content=b"Y" * (len(data) - 500),
        headers=admin,
    )
    assert bad.status_code == 400
    assert api.app.state.backend.files.blob_state(TEAM, digest) == (None, 0)
    assert upload(api, admin, project, data) == digest


@pytest.mark.parametrize(
    ("path", "params", "body", "status"),
    [
        ("0" * 63, {"size": 1}, b"x", 400),  # not a SHA-256
        ("A" * 64, {"size": 1}, b"x", 400),  # upper case
        (sha(b"x"), {}, b"x", 400),  # no size
        (sha(b"x"), {"size": -1}, b"x", 400),
        (sha(b"x"), {"size": 1, "offset": 2}, b"", 400),  # offset past size
        (sha(b"x"), {"size": 1}, b"xy", 400),  # more than size
        (sha(b"x"), {"size": 1}, b"", 400),  # nothing toward it
        (sha(b"x"), {"size": 1 << 40}, b"x", 413),  # past max_blob_bytes (64 GiB by default)
    ],
)
def test_bad_blob_uploads_are_refused_with_a_message(api, admin, path, params, body, status):
    response = api.http.put(blob_url(unique("p"), path), params=params, content=body, headers=admin)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    assert api.app.state.backend.files.blob_state(TEAM, sha(b"x")) == (None, 0)


# -- versions, aliases, files --------------------------------------------------------------------------


def test_versions_aliases_latest_and_dedup(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.start("r1")
    d0 = runs.log("r1", "mnist", {"train.csv": b"a,b\n1,2\n"}, aliases=["latest", "best"])
    d0_again = runs.log("r1", "mnist", {"train.csv": b"a,b\n1,2\n"})  # the same contents: the same version
    assert d0_again == d0
    d1 = runs.log("r1", "mnist", {"train.csv": b"a,b\n1,2\n3,4\n", "test.csv": b"a,b\n"}, aliases=["prod"])
    runs.log("r1", "other", {"x": b"x"}, type="model")

    versions = get(api, admin, artifact_url(project, "mnist", "versions"))["versions"]
    assert [(v["version"], v["index"], v["digest"]) for v in versions] == [("v1", 1, d1), ("v0", 0, d0)]
    assert versions[0]["aliases"] == ["latest", "prod"]
    assert versions[1]["aliases"] == ["best"]
    v0 = versions[1]
    assert v0["team"] == TEAM and v0["project"] == project and v0["name"] == "mnist" and v0["type"] == "dataset"
    assert v0["size"] == 8 and v0["file_count"] == 1 and v0["run_id"] == "r1"
    assert v0["metadata"] == {"rows": 1} and v0["description"] == "mnist from r1" and v0["created_at"] > 0

    for ref, digest in [("v0", d0), ("v1", d1), ("latest", d1), ("best", d0), ("prod", d1), (d0, d0)]:
        found = get(api, admin, artifact_url(project, "mnist", ref))
        assert found["digest"] == digest, ref
    latest = get(api, admin, artifact_url(project, "mnist", "latest"))
    assert latest["files"] == [
        {"path": "test.csv", "digest": sha(b"a,b\n"), "size": 4},
        {"path": "train.csv", "digest": sha(b"a,b\n1,2\n3,4\n"), "size": 12},
    ]

    listed = get(api, admin, artifact_url(project))["artifacts"]
    assert [(a["name"], a["type"], a["versions"], a["latest"]["digest"]) for a in listed] == [
        ("mnist", "dataset", 2, d1),
        ("other", "model", 1, listed[1]["latest"]["digest"]),
    ]
    assert listed[0]["aliases"] == ["best", "latest", "prod"]
    assert [a["name"] for a in get(api, admin, artifact_url(project), type="model")["artifacts"]] == ["other"]
    assert get(api, admin, artifact_url(project), type="nothing")["artifacts"] == []


def test_a_replayed_log_changes_nothing(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.start("r1")
    d0 = runs.log("r1", "data", {"a": b"first"}, aliases=["best"])
    log_event = runs.sent[-1]
    d1 = runs.log("r1", "data", {"a": b"second"})
    moved = api.http.put(artifact_url(project, "data", "aliases", "best"), json={"version": "v1"}, headers=admin)
    assert moved.status_code == 200, moved.text
    before = get(api, admin, artifact_url(project, "data", "versions"))

    assert api.ingest([log_event], admin).status_code == 200  # redelivered: same run, same seq
    assert get(api, admin, artifact_url(project, "data", "versions")) == before
    assert get(api, admin, artifact_url(project, "data", "best"))["digest"] == d1
    assert get(api, admin, artifact_url(project, "data", "v0"))["digest"] == d0


def test_an_alias_names_one_version_and_moves(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.start("r1")
    d0 = runs.log("r1", "model", {"w": b"0"}, aliases=["best"])
    d1 = runs.log("r1", "model", {"w": b"1"}, aliases=["best"])  # a later log moves it
    assert get(api, admin, artifact_url(project, "model", "best"))["digest"] == d1

    url = artifact_url(project, "model", "aliases", "best")
    answer = api.http.put(url, json={"version": "v0"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["digest"] == d0 and answer.json()["aliases"] == ["best"]
    assert (
        api.http.put(artifact_url(project, "model", "aliases", "prod"), json={"version": d1}, headers=admin).status_code
        == 200
    )
    versions = get(api, admin, artifact_url(project, "model", "versions"))["versions"]
    assert [v["aliases"] for v in versions] == [["latest", "prod"], ["best"]]

    assert api.http.delete(url, headers=admin).status_code == 204
    assert get(api, admin, artifact_url(project, "model", "best"), status=404)["error"]["code"] == "not_found"
    assert api.http.delete(url, headers=admin).status_code == 404  # not set any more

    entries = get(api, admin, f"{API}/teams/{TEAM}/audit", action="artifact.alias")["entries"]
    assert any(e["target"] == f"{project}/model" and e["details"]["alias"] == "best" for e in entries)
    removed = get(api, admin, f"{API}/teams/{TEAM}/audit", action="artifact.unalias")["entries"]
    assert any(e["target"] == f"{project}/model" for e in removed)


@pytest.mark.parametrize("alias", ["latest", "v3", "versions", "has space", "x" * 65])
def test_reserved_and_bad_aliases_are_refused(api, admin, alias):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.log("r1", "model", {"w": b"0"})
    response = api.http.put(artifact_url(project, "model", "aliases", alias), json={"version": "v0"}, headers=admin)
    assert response.status_code in (400, 404, 405), response.text  # a path a route cannot take is not an alias
    if response.status_code == 400:
        assert "alias" in response.json()["error"]["message"]


def test_files_download_by_path(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    digest = runs.log(
        "r1", "images", {"a/1.png": b"\x89PNG one", "index.html": b"<script>"}, refs={"big.bin": "s3://bucket/big.bin"}
    )
    response = api.http.get(artifact_url(project, "images", "v0", "files", "a/1.png"), headers=admin)
    assert response.status_code == 200, response.text
    assert response.content == b"\x89PNG one"
    assert response.headers["x-runstream-sha256"] == sha(b"\x89PNG one")
    assert response.headers["content-type"] == "application/octet-stream"
    page = api.http.get(artifact_url(project, "images", digest, "files", "index.html"), headers=admin)
    assert page.content == b"<script>" and page.headers["content-type"] == "application/octet-stream"

    assert (
        "not found"
        in get(api, admin, artifact_url(project, "images", "v0", "files", "a/2.png"), 404)["error"]["message"]
    )
    assert (
        "reference"
        in get(api, admin, artifact_url(project, "images", "v0", "files", "big.bin"), 404)["error"]["message"]
    )
    files = get(api, admin, artifact_url(project, "images", "v0"))["files"]
    assert {"path": "big.bin", "digest": "", "size": 0, "ref": "s3://bucket/big.bin"} in files


# -- lineage and runs -----------------------------------------------------------------------------------


def test_lineage_and_a_runs_artifacts(api, admin):
    project, other = unique("p"), unique("q")
    runs = Runs(api, admin, project)
    runs.start("prep")
    raw = runs.log("prep", "raw", {"r": b"raw"})
    runs.start("train")
    runs.use("train", "raw", raw)
    model = runs.log("train", "model", {"w": b"weights"}, type="model")
    elsewhere = Runs(api, admin, other)
    elsewhere.seq = runs.seq
    elsewhere.start("eval")
    elsewhere.use("eval", "model", model, project=project)  # a run of another project uses it

    one = get(api, admin, artifact_url(project, "model", "v0", "lineage"), hops=1)
    assert not one["truncated"]
    ids = {n["id"] for n in one["nodes"]}
    model_id, train_id = f"artifact:{project}/model@{model}", f"run:{project}/train"
    eval_id, raw_id, prep_id = f"run:{other}/eval", f"artifact:{project}/raw@{raw}", f"run:{project}/prep"
    assert ids == {model_id, train_id, eval_id}
    assert sorted((e["from"], e["to"], e["action"]) for e in one["edges"]) == sorted(
        [(train_id, model_id, "log"), (model_id, eval_id, "use")]
    )
    train = next(n for n in one["nodes"] if n["id"] == train_id)
    assert train["kind"] == "run" and train["name"] == "name-train" and train["state"] == "running"
    node = next(n for n in one["nodes"] if n["id"] == model_id)
    assert node["kind"] == "artifact" and node["version"] == "v0" and node["aliases"] == ["latest"]

    two = get(api, admin, artifact_url(project, "model", "latest", "lineage"))  # hops=2 by default
    assert {n["id"] for n in two["nodes"]} == ids | {raw_id}
    three = get(api, admin, artifact_url(project, "model", "latest", "lineage"), hops=3)
    assert {n["id"] for n in three["nodes"]} == ids | {raw_id, prep_id}
    assert (prep_id, raw_id, "log") in {(e["from"], e["to"], e["action"]) for e in three["edges"]}
    for hops in (0, 4, "x"):
        assert get(api, admin, artifact_url(project, "model", "latest", "lineage"), 400, hops=hops)["error"]["message"]

    train_artifacts = get(api, admin, f"{API}/runs/{TEAM}/{project}/train/artifacts")
    assert [v["digest"] for v in train_artifacts["logged"]] == [model]
    assert [(v["name"], v["version"]) for v in train_artifacts["used"]] == [("raw", "v0")]
    used = get(api, admin, f"{API}/runs/{TEAM}/{other}/eval/artifacts")
    assert used["logged"] == [] and [(v["project"], v["name"]) for v in used["used"]] == [(project, "model")]
    get(api, admin, f"{API}/runs/{TEAM}/{project}/nope/artifacts", 404)


# -- who may do what, bad input ---------------------------------------------------------------------------


def test_readers_ingest_keys_and_strangers(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.log("r1", "model", {"w": b"w"})
    reader = api.key(TEAM, "victor", "viewer")
    _, ingest_key = accounts.create_key(api.storage, TEAM, "alice", "job", scope="ingest")
    ingest = {"Authorization": f"Bearer {ingest_key}"}
    stranger = api.key(unique("t"), "mallory", "admin")

    assert get(api, reader, artifact_url(project, "model", "v0"))["version"] == "v0"
    refused = api.http.put(artifact_url(project, "model", "aliases", "best"), json={"version": "v0"}, headers=reader)
    assert refused.status_code == 403, refused.text
    assert api.http.delete(artifact_url(project, "model", "aliases", "best"), headers=reader).status_code == 403
    assert (
        api.http.put(blob_url(project, sha(b"r")), params={"size": 1}, content=b"r", headers=reader).status_code == 403
    )

    assert upload(api, ingest, project, b"from a training job") == sha(b"from a training job")
    assert (
        api.http.post(f"{API}/projects/{TEAM}/{project}/blobs/missing", json={"sha256": []}, headers=ingest).status_code
        == 200
    )
    for url in (
        artifact_url(project),
        artifact_url(project, "model", "v0"),
        artifact_url(project, "model", "versions"),
    ):
        assert api.http.get(url, headers=ingest).status_code == 403, url

    assert api.http.get(artifact_url(project, "model", "v0"), headers=stranger).status_code == 404
    assert (
        api.http.put(blob_url(project, sha(b"s")), params={"size": 1}, content=b"s", headers=stranger).status_code
        == 404
    )


def test_bad_input_gets_a_message(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.log("r1", "model", {"w": b"w"})
    for ref, status in [("v9", 404), ("nope", 404), ("0" * 64, 404), ("bad ref!", 400), ("v", 404)]:
        body = get(api, admin, artifact_url(project, "model", ref), status)
        assert body["error"]["message"], ref
    assert "nothing" in get(api, admin, artifact_url(project, "nothing", "versions"), 404)["error"]["message"]
    assert get(api, admin, artifact_url(project, "-bad", "versions"), 400)["error"]["details"] == {"field": "name"}
    unknown = api.http.put(artifact_url(project, "model", "aliases", "best"), json={"version": "v7"}, headers=admin)
    assert unknown.status_code == 404
    assert api.http.put(artifact_url(project, "model", "aliases", "best"), json={}, headers=admin).status_code == 400
    missing = api.http.post(f"{API}/projects/{TEAM}/{project}/blobs/missing", json={"sha256": ["xyz"]}, headers=admin)
    assert missing.status_code == 400


@pytest.mark.parametrize(
    "data",
    [
        {"action": "log", "name": "m", "type": "model", "digest": "0" * 64, "size": 1},  # no file_count
        {"action": "log", "name": "m", "type": "model", "digest": "0" * 63, "size": 1, "file_count": 1},
        {"action": "log", "name": "-m", "type": "model", "digest": "0" * 64, "size": 1, "file_count": 1},
        {
            "action": "log",
            "name": "m",
            "type": "model",
            "digest": "0" * 64,
            "size": 1,
            "file_count": 1,
            "aliases": ["v1"],
        },
        {"action": "use", "name": "m", "digest": "0" * 64},  # no project
        {"action": "delete", "name": "m", "digest": "0" * 64},
    ],
)
def test_bad_artifact_events_are_refused(api, admin, data):
    response = api.ingest([make_event(events.ARTIFACT, data, seq=1, team=TEAM, project=unique("p"))], admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["errors"][0]["reason"].startswith("artifact: ")


def test_lineage_read_through_a_public_project_shows_that_project_only(api, admin):
    project, other = unique("p"), unique("q")
    runs = Runs(api, admin, project)
    model = runs.log("train", "model", {"w": b"public weights"})
    elsewhere = Runs(api, admin, other)
    elsewhere.use("eval", "model", model, project=project)
    visible = api.http.patch(f"{API}/projects/{TEAM}/{project}", json={"visibility": "public"}, headers=admin)
    assert visible.status_code == 200, visible.text

    member_view = {n["id"] for n in get(api, admin, artifact_url(project, "model", "v0", "lineage"))["nodes"]}
    assert f"run:{other}/eval" in member_view
    graph = get(api, {}, artifact_url(project, "model", "v0", "lineage"))  # anonymous
    assert {n["id"] for n in graph["nodes"]} == {f"artifact:{project}/model@{model}", f"run:{project}/train"}
    assert [e["action"] for e in graph["edges"]] == ["log"]
    assert get(api, {}, f"{API}/runs/{TEAM}/{project}/train/artifacts")["logged"][0]["digest"] == model
    assert api.http.put(artifact_url(project, "model", "aliases", "x"), json={"version": "v0"}).status_code == 401


def test_logs_stored_in_one_batch_keep_their_runs_order_and_a_replay_keeps_the_first_producer(api):
    from runstream.storage import artifacts

    project = unique("p")
    later_digest, earlier_digest = "f" * 64, "0" * 64  # by digest they would sort the other way round

    def log(run_id: str, seq: int, ts: float, digest: str, aliases: list[str]) -> events.Event:
        data = {"action": "log", "name": "m", "type": "model", "digest": digest, "size": 1, "file_count": 1}
        return events.validate(
            make_event(events.ARTIFACT, {**data, "aliases": aliases}, seq=seq, run_id=run_id, project=project, ts=ts)
        )

    batch = [log("r1", 1, 100.0, later_digest, ["best"]), log("r1", 2, 101.0, earlier_digest, [])]
    assert artifacts.insert_artifact_events(api.storage, batch, now=1000.0) == 2
    assert artifacts.insert_artifact_events(api.storage, batch, now=1001.0) == 2  # redelivered after a crash
    # Another run logs the same contents later, with an alias: it is a producer too, not the first one.
    assert artifacts.insert_artifact_events(api.storage, [log("r2", 1, 200.0, later_digest, ["prod"])], now=1002.0)
    found = artifacts.versions(api.storage, TEAM, project, "m")
    assert [(v["version"], v["digest"], v["run_id"], v["created_at"]) for v in found] == [
        ("v1", earlier_digest, "r1", 1000.0),
        ("v0", later_digest, "r1", 1000.0),
    ]
    assert found[1]["aliases"] == ["best", "prod"]
    producers = artifacts.lineage(api.storage, TEAM, project, "m", later_digest, hops=1)
    assert sorted(e["from"] for e in producers["edges"]) == [f"run:{project}/r1", f"run:{project}/r2"]


# -- bounds, pages and what a reader sees (review fixes) -----------------------------------------------------


def test_a_runs_used_list_shows_only_projects_the_caller_reads(api, admin):
    project, other = unique("p"), unique("q")
    elsewhere = Runs(api, admin, other)
    secret = elsewhere.log("maker", "secret", {"s": b"private data"})
    runs = Runs(api, admin, project)
    runs.seq = elsewhere.seq
    runs.start("train")
    runs.use("train", "secret", secret, project=other)  # a private project's artifact
    own = runs.log("train", "model", {"w": b"w"})
    runs.use("train", "model", own)
    assert api.http.patch(f"{API}/projects/{TEAM}/{project}", json={"visibility": "public"}, headers=admin).is_success

    member = get(api, admin, f"{API}/runs/{TEAM}/{project}/train/artifacts")
    assert sorted((v["project"], v["name"]) for v in member["used"]) == [(project, "model"), (other, "secret")]
    anonymous = get(api, {}, f"{API}/runs/{TEAM}/{project}/train/artifacts")
    assert [(v["project"], v["name"]) for v in anonymous["used"]] == [(project, "model")]
    assert [v["digest"] for v in anonymous["logged"]] == [own]
    stranger = api.key(unique("t"), "mallory", "admin")  # another team's admin: a reader of the public project
    assert [v["project"] for v in get(api, stranger, f"{API}/runs/{TEAM}/{project}/train/artifacts")["used"]] == [
        project
    ]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"digest": "0" * 64, "size": "12"}, "size"),
        ({"digest": "0" * 64, "size": 2**63}, "size"),
        ({"digest": "0" * 64, "size": 1.5}, "size"),
        ({"digest": "nope", "size": 1}, "digest"),
        ({"ref": ["x"], "digest": "", "size": 1}, "ref"),
    ],
)
def test_a_bad_manifest_is_a_422_naming_the_entry(api, admin, entry, why):
    project = unique("p")
    runs = Runs(api, admin, project)
    raw = orjson.dumps({"version": 1, "entries": {"ok.txt": {"digest": "1" * 64, "size": 1}, "bad.bin": entry}})
    digest = upload(api, admin, project, raw)
    data = {"action": "log", "name": "broken", "type": "dataset", "digest": digest, "size": 1, "file_count": 2}
    runs.send("r1", events.ARTIFACT, data)
    for url in (artifact_url(project, "broken", "v0"), artifact_url(project, "broken", "v0", "files", "ok.txt")):
        message = get(api, admin, url, 422)["error"]["message"]
        assert "'bad.bin'" in message and why in message, message


def test_versions_artifacts_and_files_are_paged(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    digests = [runs.log("r1", "data", {"a.txt": b"a%d" % i, "b.txt": b"b", "c.txt": b"c"}) for i in range(3)]
    runs.log("r1", "other", {"x": b"x"})
    runs.log("r1", "third", {"y": b"y"})

    page = get(api, admin, artifact_url(project, "data", "versions"), limit=2)
    assert page["total"] == 3 and [v["version"] for v in page["versions"]] == ["v2", "v1"]
    rest = get(api, admin, artifact_url(project, "data", "versions"), limit=2, offset=2)
    assert rest["total"] == 3 and [(v["version"], v["digest"]) for v in rest["versions"]] == [("v0", digests[0])]
    assert get(api, admin, artifact_url(project, "data", "versions"), offset=9)["versions"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert get(api, admin, artifact_url(project, "data", "versions"), 400, **bad)["error"]["message"]

    listed = get(api, admin, artifact_url(project), limit=2)
    assert listed["total"] == 3 and [a["name"] for a in listed["artifacts"]] == ["data", "other"]
    assert listed["artifacts"][0]["versions"] == 3 and listed["artifacts"][0]["latest"]["version"] == "v2"
    assert [a["name"] for a in get(api, admin, artifact_url(project), limit=2, offset=2)["artifacts"]] == ["third"]
    assert get(api, admin, artifact_url(project), offset=5) == {"artifacts": [], "total": 3}

    whole = get(api, admin, artifact_url(project, "data", "v1"))
    assert whole["files_total"] == 3 and [f["path"] for f in whole["files"]] == ["a.txt", "b.txt", "c.txt"]
    part = get(api, admin, artifact_url(project, "data", "v1"), files_limit=1, files_offset=1)
    assert part["files_total"] == 3 and [f["path"] for f in part["files"]] == ["b.txt"]
    assert get(api, admin, artifact_url(project, "data", "v1"), 400, files_limit=10_001)["error"]["message"]


def test_deleting_a_run_keeps_the_numbers_of_the_other_versions(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    for run_id in ("a", "b", "c"):
        runs.start(run_id)
    d0 = runs.log("a", "m", {"w": b"0"})
    d1 = runs.log("b", "m", {"w": b"1"}, aliases=["best"])
    d2 = runs.log("c", "m", {"w": b"2"})
    assert api.http.delete(f"{API}/runs/{TEAM}/{project}/b", headers=admin).status_code in (200, 202, 204)

    versions = get(api, admin, artifact_url(project, "m", "versions"))
    assert [(v["version"], v["digest"]) for v in versions["versions"]] == [("v2", d2), ("v0", d0)]
    assert versions["total"] == 2
    get(api, admin, artifact_url(project, "m", "v1"), 404)
    get(api, admin, artifact_url(project, "m", d1), 404)
    get(api, admin, artifact_url(project, "m", "best"), 404)
    assert get(api, admin, artifact_url(project, "m", "latest"))["digest"] == d2
    assert get(api, admin, artifact_url(project))["artifacts"][0]["versions"] == 2

    # A later version is v3, never v2; the same contents logged again by another run come back as v1.
    runs.start("d")
    d3 = runs.log("d", "m", {"w": b"3"})
    assert get(api, admin, artifact_url(project, "m", "v3"))["digest"] == d3
    assert runs.log("d", "m", {"w": b"1"}) == d1
    back = get(api, admin, artifact_url(project, "m", "v1"))
    assert back["digest"] == d1 and back["run_id"] == "d"
    assert [v["version"] for v in get(api, admin, artifact_url(project, "m", "versions"))["versions"]] == [
        "v3",
        "v2",
        "v1",
        "v0",
    ]


def test_lineage_reads_a_bounded_number_of_rows(api, admin, monkeypatch):
    from runstream.storage import artifacts

    project = unique("p")
    runs = Runs(api, admin, project)
    model = runs.log("train", "model", {"w": b"bounded"})
    for i in range(4):
        runs.use(f"eval{i}", "model", model)
    whole = artifacts.lineage(api.storage, TEAM, project, "model", model, hops=1)
    assert len(whole["nodes"]) == 6 and not whole["truncated"]
    monkeypatch.setattr(artifacts, "MAX_LINEAGE_EDGES", 3)
    cut = artifacts.lineage(api.storage, TEAM, project, "model", model, hops=1)
    assert cut["truncated"] and len(cut["edges"]) == 3 and len(cut["nodes"]) == 4
    assert artifacts.lineage(api.storage, TEAM, project, "model", model, hops=1, max_nodes=3)["truncated"]


def test_a_digest_cannot_be_an_alias(api, admin):
    project = unique("p")
    runs = Runs(api, admin, project)
    runs.log("r1", "model", {"w": b"0"})
    refused = api.http.put(artifact_url(project, "model", "aliases", "a" * 64), json={"version": "v0"}, headers=admin)
    assert refused.status_code == 400 and "64 hex" in refused.json()["error"]["message"]
