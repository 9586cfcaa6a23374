"""The SDK's artifacts without a server: the manifest's canonical form and digest, how files, directories,
references and new files are named, what is refused, and what an offline run stages and spools."""

import asyncio
import contextlib
import hashlib
import io
import os
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

import runstream
from runstream import artifacts, events
from runstream.artifacts import Artifact, Stager, blob_path, manifest_path
from runstream.sender import RunIdentity, _upload_artifact
from runstream.transport import TransportError
from tests.helpers import spooled_events, wait_for

QUIET = {"console": False, "system_metrics": False, "git": False}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stage(artifact: Artifact, staging: Path, aliases: list[str] | None = None) -> dict:
    """Stage ``artifact`` as log_artifact would, and return the event it queues."""
    put: list[tuple[str, dict]] = []

    def queue(etype: str, data: dict) -> bool:
        put.append((etype, data))
        return True

    stager = Stager(staging, queue)
    artifact._final = True
    stager.submit(artifact, {"action": "log", "name": artifact._name, "aliases": aliases or []})
    stager.join()
    artifact._raise_error()
    ((etype, data),) = put
    assert etype == events.ARTIFACT
    return data


def test_the_manifest_is_canonical_json_and_its_sha256_is_the_digest(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"bee")
    (tmp_path / "a.txt").write_bytes(b"a")
    artifact = Artifact("data", "dataset", description="two files", metadata={"rows": 2})
    artifact.add_file(tmp_path / "b.txt")
    artifact.add_file(tmp_path / "a.txt", name="sub/a.txt")
    artifact.add_reference("s3://bucket/raw/c.bin")
    draft_digest = artifact.digest  # a draft's files are read for it

    event = _stage(artifact, tmp_path / "staging")

    expected = (
        b'{"entries":{"b.txt":{"digest":"%s","size":3},"c.bin":{"digest":"","ref":"s3://bucket/raw/c.bin","size":0},'
        b'"sub/a.txt":{"digest":"%s","size":1}},"version":1}' % (_sha(b"bee").encode(), _sha(b"a").encode())
    )
    digest = _sha(expected)
    assert manifest_path(tmp_path / "staging", digest).read_bytes() == expected
    assert event == {"action": "log", "name": "data", "aliases": [], "digest": digest, "size": 4, "file_count": 3}
    assert artifact.digest == digest == draft_digest == artifact.manifest.digest() and artifact.size == 4
    # Each file is staged once under its SHA-256, a copy the user's later changes cannot reach.
    assert blob_path(tmp_path / "staging", _sha(b"bee")).read_bytes() == b"bee"
    (tmp_path / "b.txt").write_bytes(b"changed")
    assert blob_path(tmp_path / "staging", _sha(b"bee")).read_bytes() == b"bee"


def test_equal_contents_are_one_digest_whatever_the_sources(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for folder in ("one", "two"):
        (tmp_path / folder / "w.bin").write_bytes(b"\0" * 1000)
    first, second = Artifact("m", "model"), Artifact("m", "model", metadata={"other": True})
    first.add_file(tmp_path / "one" / "w.bin")
    second.add_file(tmp_path / "two" / "w.bin")
    assert _stage(first, tmp_path / "s")["digest"] == _stage(second, tmp_path / "s")["digest"]
    assert len(list((tmp_path / "s" / "blobs").rglob("*"))) == 2  # one folder, one blob


def test_add_dir_names_files_by_their_path_under_it(tmp_path):
    root = tmp_path / "ds"
    (root / "train" / "deep").mkdir(parents=True)
    (root / "top.csv").write_text("x")
    (root / "train" / "0.png").write_bytes(b"png")
    (root / "train" / "deep" / "z.txt").write_text("z")
    artifact = Artifact("ds", "dataset")
    artifact.add_dir(root)
    assert sorted(artifact.manifest.entries) == ["top.csv", "train/0.png", "train/deep/z.txt"]
    prefixed = Artifact("ds", "dataset")
    prefixed.add_dir(root / "train", name="images")
    assert sorted(prefixed.manifest.entries) == ["images/0.png", "images/deep/z.txt"]
    assert prefixed.get_entry("images/0.png").local_path == str((root / "train" / "0.png").absolute())


def test_references_keep_local_files_digest_and_other_uris_as_they_are(tmp_path):
    local = tmp_path / "big.bin"
    local.write_bytes(b"12345")
    artifact = Artifact("refs", "dataset")
    artifact.add_reference(local.as_uri())
    artifact.add_reference("https://example.com/data/file.csv", name="remote.csv")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_text("x")
    artifact.add_reference((tmp_path / "folder").as_uri(), name="folder")
    _stage(artifact, tmp_path / "s")
    entries = artifact.manifest.entries
    assert (entries["big.bin"].ref, entries["big.bin"].digest, entries["big.bin"].size) == (
        local.as_uri(),
        _sha(b"12345"),
        5,
    )
    assert (entries["remote.csv"].ref, entries["remote.csv"].digest, entries["remote.csv"].size) == (
        "https://example.com/data/file.csv",
        "",
        0,
    )
    assert entries["folder/x"].digest == _sha(b"x")
    assert not (tmp_path / "s" / "blobs" / _sha(b"12345")[:2]).exists()  # a reference's bytes are not staged


def test_new_file_writes_into_the_artifact(tmp_path):
    artifact = Artifact("notes", "text")
    with artifact.new_file("docs/readme.md") as f:
        f.write("hello")
    with artifact.new_file("raw.bin", mode="wb") as f:
        f.write(b"\x00\x01")
    _stage(artifact, tmp_path / "s")
    assert artifact.get_entry("docs/readme.md").digest == _sha(b"hello")
    assert artifact.get_path("raw.bin").size == 2
    with pytest.raises(KeyError):
        artifact.get_entry("missing.txt")


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="artifact name"):
        Artifact("bad name!", "dataset")
    with pytest.raises(ValueError, match="artifact type"):
        Artifact("ok", "")
    with pytest.raises(TypeError, match="metadata must be a dict"):
        Artifact("ok", "t", metadata=[1, 2])
    artifact = Artifact("ok", "t")
    with pytest.raises(ValueError, match="not one"):
        artifact.add_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="not one"):
        artifact.add_dir(tmp_path / "f")
    for bad in ("../escape", "/abs", "a//b", "./x", ""):
        with pytest.raises(ValueError, match=r"relative path|non-empty"):
            artifact.add_file(tmp_path / "f", name=bad)
    with pytest.raises(ValueError, match="URI"):
        artifact.add_reference("not a uri")
    with pytest.raises(ValueError, match="names no file"):
        artifact.add_reference((tmp_path / "nope").as_uri())
    artifact.add_file(tmp_path / "f", name="same")
    artifact.add_file(tmp_path / "f", name="same")  # the same source again: fine
    (tmp_path / "g").write_text("y")
    with pytest.raises(ValueError, match="already in artifact"):
        artifact.add_file(tmp_path / "g", name="same")
    for alias in ("v3", "has space", "x" * 65):
        with pytest.raises(ValueError, match="alias"):
            artifacts.check_aliases([alias])
    assert artifacts.check_aliases("best") == ["best"] and artifacts.check_aliases(["latest"]) == ["latest"]


def test_an_offline_run_stages_the_files_and_spools_the_event(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha")
    run = runstream.init(project="proj", entity="team", mode="offline", dir=tmp_path, settings=QUIET)
    artifact = run.log_artifact(str(data), name="inputs", type="dataset", aliases=["best"])
    with pytest.raises(runstream.Error, match="logged and cannot change"):
        artifact.add_file(data / "a.txt", name="again")
    run.log_model(data / "a.txt", name="tiny")
    run.finish()
    with pytest.raises(runstream.Error, match="offline"):
        artifact.wait()
    logged = [e.data for e in spooled_events(run.dir) if e.type == events.ARTIFACT]
    assert [(d["name"], d["type"], d["aliases"], d["file_count"]) for d in logged] == [
        ("inputs", "dataset", ["best"], 1),
        ("tiny", "model", [], 1),
    ]
    staging = Path(run.dir) / artifacts.STAGING_DIR
    assert blob_path(staging, _sha(b"alpha")).read_bytes() == b"alpha"
    manifest = orjson.loads(manifest_path(staging, logged[0]["digest"]).read_bytes())
    assert manifest == {"version": 1, "entries": {"a.txt": {"digest": _sha(b"alpha"), "size": 5}}}
    with pytest.raises(runstream.Error, match="has finished"):
        run.log_artifact(Artifact("late", "dataset"))
    with pytest.raises(runstream.Error, match="offline"):
        other = runstream.init(project="proj", entity="team", mode="offline", dir=tmp_path, settings=QUIET)
        try:
            other.use_artifact("inputs:latest")
        finally:
            other.finish()


def test_a_disabled_run_takes_an_artifact_and_sends_nothing(tmp_path):
    run = runstream.init(project="p", mode="disabled")
    (tmp_path / "f").write_text("x")
    artifact = run.log_artifact(str(tmp_path / "f"))
    assert artifact.name == f"run-{run.id}-f" and artifact.type == "unspecified" and not artifact.is_draft()
    run.finish()


def test_each_runs_everything_on_threads_and_raises_the_first_failure():
    assert sorted(artifacts.each(lambda n: n * n, list(range(20)), 4)) == [n * n for n in range(20)]

    def fails_on_3(n: int) -> int:
        if n == 3:
            raise OSError("disk gone")
        return n

    with pytest.raises(OSError, match="disk gone"):
        artifacts.each(fails_on_3, list(range(20)), 4)


# -- what a review found: downloads, caps, the stager's uploads -----------------------------------------------


class _FakeApi:
    """Answers GET of a version a page of ``files`` at a time (as the API does), and its files' bytes."""

    def __init__(self, files: list[dict], blobs: dict[str, bytes], page: int = 2, file_count: int | None = None):
        self.files, self.blobs, self.page = files, blobs, page
        self.file_count = len(files) if file_count is None else file_count
        self.entity = "team"

    def version(self, offset: int = 0, limit: int | None = None) -> dict:
        limit = self.page if limit is None else min(limit, self.page)
        return {
            "team": "team", "project": "p", "name": "ds", "type": "dataset", "version": "v0",
            "digest": "d" * 64, "aliases": ["latest"], "size": 1, "file_count": self.file_count,
            "files": self.files[offset : offset + limit], "files_total": len(self.files),
        }  # fmt: skip

    def _request(self, method, path, params=None, body=None, what=""):
        params = params or {}
        return self.version(int(params.get("files_offset", 0)), params.get("files_limit"))

    @contextlib.contextmanager
    def _open(self, method, path, params=None, body=None, what=""):
        yield io.BytesIO(self.blobs[urllib.parse.unquote(path.rsplit("/files/", 1)[1])])


def _served(files: dict[str, bytes], **kw) -> Artifact:
    listed = [{"path": p, "digest": _sha(b), "size": len(b)} for p, b in files.items()]
    api = _FakeApi(listed, files, **kw)
    return Artifact._from_version(api, api.version())  # type: ignore[arg-type]


def test_a_download_reads_every_page_of_files_and_checks_the_count(tmp_path):
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(5)}
    artifact = _served(files)  # the first answer lists 2 of the 5
    root = Path(artifact.download(tmp_path / "all"))
    assert sorted(p.name for p in root.iterdir()) == sorted(files)
    assert (root / "f4.txt").read_bytes() == b"file 4"
    short = _served(files, file_count=6)  # the listing disagrees with the version's file_count
    with pytest.raises(runstream.Error, match="6 files, but 5 were listed"):
        short.download(tmp_path / "short")
    assert not (tmp_path / "short").exists()


def test_a_download_writes_nothing_outside_its_root(tmp_path):
    (tmp_path / "out").mkdir()
    for bad in ("../escaped.txt", "a/../../escaped.txt", "/abs.txt", "a\\..\\x", "C:evil.txt", "./x"):
        with pytest.raises(runstream.Error, match="not a safe relative path"):
            _served({"ok.txt": b"ok", bad: b"evil"}).download(tmp_path / "root")
        assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "root" / "ok.txt").exists()
    if os.name != "nt":  # a ':' is a file name's own character here (on Windows, a stream: refused)
        assert (Path(_served({"at 12:30.txt": b"t"}).download(tmp_path / "colon")) / "at 12:30.txt").is_file()
    # A link inside the root that points out of it is not written through.
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "sub").symlink_to(tmp_path / "out")
    with pytest.raises(runstream.Error, match="outside"):
        _served({"sub/x.txt": b"evil"}).download(tmp_path / "root2")
    assert not (tmp_path / "out" / "x.txt").exists()
    # The server refuses such a path in a manifest too.
    from runstream.api.artifacts import ManifestError, parse_manifest

    entry = {"digest": _sha(b"x"), "size": 1}
    with pytest.raises(ManifestError, match="relative"):
        parse_manifest(orjson.dumps({"version": 1, "entries": {"a\\..\\..\\x": entry}}))


def test_downloaded_files_get_the_umask_mode_and_references_stop_at_their_size(tmp_path):
    artifact = _served({"a.txt": b"alpha"})
    root = Path(artifact.download(tmp_path / "dl"))
    assert (root / "a.txt").stat().st_mode & 0o777 == artifacts._FILE_MODE
    source = tmp_path / "ref.txt"
    source.write_bytes(b"recorded")
    api = _FakeApi([{"path": "r.txt", "digest": _sha(b"recorded"), "size": 8, "ref": source.as_uri()}], {})
    referenced = Artifact._from_version(api, api.version())
    source.write_bytes(b"recorded, and more written since")  # read up to the recorded size, then checked
    assert (Path(referenced.download(tmp_path / "r")) / "r.txt").read_bytes() == b"recorded"
    api = _FakeApi([{"path": "n.txt", "digest": "", "size": 0, "ref": source.as_uri()}], {})
    unhashed = Artifact._from_version(api, api.version())
    assert not (Path(unhashed.download(tmp_path / "n")) / "n.txt").exists()  # no SHA-256: not copied


def test_an_artifact_larger_than_a_server_reads_is_refused_before_anything_uploads(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_ENTRIES", 3)
    data = tmp_path / "d"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.txt").write_text(str(i))
    with pytest.raises(ValueError, match="more than 3 files"):
        Artifact("many", "dataset").add_dir(data)
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_ENTRIES", 100)
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_BYTES", 200)
    artifact = Artifact("long", "dataset")
    artifact.add_dir(data)
    with pytest.raises(runstream.Error, match=r"manifest is .* bytes, more than the 200"):
        _stage(artifact, tmp_path / "s")
    assert not (tmp_path / "s" / "manifests").exists()


class _FakeUploader:
    """``missing_blobs`` answers from ``fail`` first (one exception per call), then as the server that holds
    ``held``; ``put_blob`` stores."""

    base = "http://old-server"

    def __init__(self, fail: list[BaseException] | None = None, max_blob_bytes: int | None = None) -> None:
        self.fail, self.max_blob_bytes = list(fail or []), max_blob_bytes
        self.held: set[str] = set()
        self.calls = 0
        self.gate: dict[str, threading.Event] = {}  # a manifest digest -> released when set

    def missing_blobs(self, team, project, shas):
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return {s for s in shas if s not in self.held}, {}

    def put_blob(self, team, project, sha, source, size, offset=0, stop=None):
        if sha in self.gate:
            self.gate[sha].wait(10)
        self.held.add(sha)
        return size


def _stager(tmp_path: Path, uploader: _FakeUploader) -> tuple[Stager, list[dict]]:
    put: list[dict] = []

    def queue(etype: str, data: dict) -> bool:
        put.append(data)
        return True

    return Stager(tmp_path / "s", queue, cast(Any, uploader)), put


def _logged(stager: Stager, **files: bytes) -> Artifact:
    stager.staging.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=stager.staging.parent))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    artifact = Artifact("a", "dataset")
    artifact.add_dir(folder)
    artifact._final = True
    stager.submit(artifact, {"action": "log"})
    return artifact


def test_the_stager_retries_an_upload_and_queues_the_event_only_once_it_is_up(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "UPLOAD_BACKOFF", (0.01, 0.05))
    busy = TransportError("HTTP 503", status=503, retry_after=0.3)
    uploader = _FakeUploader(fail=[TransportError("connection reset"), busy])
    stager, put = _stager(tmp_path, uploader)
    started = time.monotonic()
    artifact = _logged(stager, **{"x.bin": b"x" * 10})
    wait_for(lambda: put, "the event", timeout=10)
    assert uploader.calls == 3 and time.monotonic() - started >= 0.3  # tried again, after the Retry-After
    assert put[0]["digest"] == artifact.digest and len(uploader.held) == 2  # the file and the manifest
    assert artifact._error is None


def test_a_file_over_the_servers_limit_or_a_server_without_artifacts_is_refused_not_retried(tmp_path):
    uploader = _FakeUploader(max_blob_bytes=5)
    stager, put = _stager(tmp_path, uploader)
    artifact = _logged(stager, **{"big.bin": b"b" * 6, "small.txt": b"s"})
    wait_for(lambda: put, "the event (to be set aside)", timeout=10)
    assert uploader.calls == 1 and not uploader.held  # nothing was sent
    with pytest.raises(runstream.Error, match=r"big\.bin.*max_blob_bytes|max_blob_bytes.*big\.bin"):
        artifact._raise_error()
    assert artifacts._refused[artifact.digest]  # (the run's sender sets the event aside with the reason)

    old = _FakeUploader(fail=[TransportError("HTTP 404", status=404)])
    stager, put = _stager(tmp_path / "old", old)
    artifact = _logged(stager, **{"f.txt": b"f"})
    wait_for(lambda: put, "the event (to be set aside)", timeout=10)
    with pytest.raises(runstream.Error, match="does not take artifacts; upgrade it"):
        artifact._raise_error()
    # The sender refuses the event for good (it is quarantined) rather than retrying it forever.
    old.fail = [TransportError("HTTP 405", status=405)]
    identity = RunIdentity("team", "p", "r")
    with pytest.raises(TransportError) as refused:
        asyncio.run(_upload_artifact(old, identity, tmp_path / "old" / "run", 1, artifact.digest))
    assert refused.value.rejected and "upgrade it" in refused.value.bad_lines[1]


def test_an_uploaded_versions_staged_copies_go_but_those_a_pending_one_shares_stay(tmp_path):
    uploader = _FakeUploader()
    first_up, second_up = threading.Event(), threading.Event()
    uploader.gate = {_sha(b"one"): first_up, _sha(b"three"): second_up}
    stager, put = _stager(tmp_path, uploader)
    staging = tmp_path / "s"
    first = _logged(stager, **{"only1.txt": b"one", "shared.txt": b"both"})
    second = _logged(stager, **{"shared.txt": b"both", "only3.txt": b"three"})
    wait_for(second._staged.is_set, "the second staged", timeout=10)
    first_up.set()
    wait_for(lambda: len(put) == 1, "the first event", timeout=10)
    assert put[0]["digest"] == first.digest
    assert not blob_path(staging, _sha(b"one")).exists()  # up: its copy went
    assert blob_path(staging, _sha(b"both")).exists()  # the second, still uploading, needs it
    second_up.set()
    wait_for(lambda: len(put) == 2, "the second event", timeout=10)
    assert not any(p.is_file() for p in (staging / "blobs").rglob("*"))


def test_version_and_artifact_lists_are_read_to_their_end(monkeypatch):
    monkeypatch.setattr(artifacts, "LIST_PAGE", 2)
    versions = [
        {"team": "team", "project": "p", "name": "ds", "version": f"v{i}", "digest": f"{i:064x}"} for i in range(5)
    ]
    asked: list[dict] = []

    class Lists:
        entity = "team"

        def _request(self, method, path, params=None, body=None, what=""):
            asked.append(params)
            key, items = ("versions", versions) if path.endswith("/versions") else ("artifacts", versions[:3])
            page = items[params["offset"] : params["offset"] + params["limit"]]
            return {key: page, "total": len(items)}

    assert [a.version for a in artifacts.artifact_versions(Lists(), "team/p/ds")] == [v["version"] for v in versions]
    assert len(artifacts.artifact_collections(Lists(), "team/p")) == 3
    assert [p["offset"] for p in asked] == [0, 2, 4, 0, 2]


def test_add_dir_follows_no_link_out_of_the_folder(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the artifact")
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "inner.txt").symlink_to(folder / "a.txt")  # a link inside the folder: kept
    (folder / "out.txt").symlink_to(outside / "secret.txt")
    (folder / "sub").symlink_to(outside)
    artifact = Artifact("links", "dataset")
    artifact.add_dir(folder)
    assert sorted(artifact.manifest.entries) == ["a.txt", "inner.txt"]
    assert "2 symbolic link(s)" in caplog.text
