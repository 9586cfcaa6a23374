"""Artifacts without a server: refs resolved among versions, aliases the server keeps for itself, the event
check, and the file store's resumable, content-addressed blobs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runstream import events
from runstream.api import artifacts as api_artifacts
from runstream.api import filestore
from runstream.api.artifacts import ManifestError, parse_manifest
from runstream.api.filestore import BlobError, LocalFileStore, UploadOffset, blob_key
from runstream.storage import artifacts
from runstream.storage.errors import QueryError
from tests.helpers import make_event

D0, D1, D2 = "0" * 64, "1" * 64, "2" * 64


def _versions() -> list[dict[str, Any]]:
    return [
        {"index": 0, "version": "v0", "digest": D0, "aliases": ["best"]},
        {"index": 1, "version": "v1", "digest": D1, "aliases": []},
        {"index": 2, "version": "v2", "digest": D2, "aliases": ["latest", "prod"]},
    ]


@pytest.mark.parametrize(
    ("ref", "digest"),
    [("v0", D0), ("v2", D2), ("latest", D2), ("best", D0), ("prod", D2), (D1, D1), ("v3", None), ("gone", None)],
)
def test_a_ref_names_a_version(ref: str, digest: str | None) -> None:
    found = artifacts.resolve(_versions(), ref)
    assert (found["digest"] if found else None) == digest
    assert artifacts.resolve([], ref) is None


@pytest.mark.parametrize("ref", ["v0", "latest", "best", "a.b-c_1", D0])
def test_good_refs(ref: str) -> None:
    assert artifacts.check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "has space", "x" * 65, "a/b", "versions"])
def test_bad_refs_say_what_names_a_version(ref: str) -> None:
    with pytest.raises(QueryError, match="does not name a version"):
        artifacts.check_ref(ref)


@pytest.mark.parametrize("alias", ["best", "prod", "v1.2", "v", "version", "LATEST", "g" * 64])
def test_user_aliases(alias: str) -> None:
    assert events.is_alias(alias)
    assert artifacts.check_alias(alias) == alias


@pytest.mark.parametrize(
    "alias", ["latest", "v0", "v12", "versions", "aliases", "", "a" * 65, "a b", "a/b", 3, "a" * 64, D1]
)
def test_the_servers_aliases_and_bad_ones_are_refused(alias: Any) -> None:
    assert not events.is_alias(alias)
    if isinstance(alias, str):
        with pytest.raises(QueryError, match="cannot be set"):
            artifacts.check_alias(alias)


def _artifact(data: dict[str, Any]) -> events.Event:
    return events.validate(make_event(events.ARTIFACT, data, seq=1))


LOG = {"action": "log", "name": "mnist", "type": "dataset", "digest": D0, "size": 10, "file_count": 2}


def test_artifact_events_ride_the_files_topic() -> None:
    assert _artifact(LOG).topic == events.TOPIC_FILES
    full = {**LOG, "description": "d", "metadata": {"a": {"b": 1}}, "aliases": ["latest", "best"]}
    assert _artifact(full).data == full
    assert _artifact({"action": "use", "project": "other", "name": "mnist", "digest": D0}).data["project"] == "other"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"action": "drop"}, "action"),
        ({"digest": "z" * 64}, "digest"),
        ({"name": ""}, "name"),
        ({"type": "a b"}, "type"),
        ({"size": -1}, "size"),
        ({"file_count": 1.5}, "file_count"),
        ({"aliases": ["v3"]}, "aliases"),
        ({"aliases": "best"}, "aliases"),
        ({"metadata": []}, "metadata"),
        ({"description": 3}, "description"),
    ],
)
def test_bad_artifact_events_say_why(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(events.InvalidEvent, match=f"artifact: .*{reason}"):
        _artifact({**LOG, **change})


def test_a_use_names_the_artifacts_project() -> None:
    with pytest.raises(events.InvalidEvent, match="project"):
        _artifact({"action": "use", "name": "mnist", "digest": D0})


# -- the file store's resumable blobs ---------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _put(store: LocalFileStore, data: bytes, offset: int, body: bytes, size: int | None = None) -> tuple[bool, int]:
    digest = hashlib.sha256(data).hexdigest()
    return asyncio.run(
        store.put_blob("acme", digest, offset, len(data) if size is None else size, lambda: _chunks(body), 1 << 20)
    )


def test_a_blob_upload_resumes_and_is_checked(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"0123456789" * 10
    digest = hashlib.sha256(data).hexdigest()
    assert _put(store, data, 0, data[:30]) == (False, 30)
    assert store.blob_state("acme", digest) == (None, 30)
    with pytest.raises(UploadOffset) as wrong:
        _put(store, data, 10, data[10:])
    assert wrong.value.received == 30 and wrong.value.status == 409
    assert _put(store, data, 30, data[30:60]) == (False, 60)
    assert _put(store, data, 60, data[60:]) == (True, 100)
    assert store.blob_state("acme", digest) == (100, 0)
    assert (tmp_path / blob_key("acme", digest)).read_bytes() == data
    assert _put(store, data, 0, b"not read") == (True, 100)  # stored: the body is not read
    assert sorted(p.name for p in (tmp_path / "_blobs" / "acme" / digest[:2]).iterdir()) == [".partials", digest]
    assert list((tmp_path / "_blobs" / "acme" / digest[:2] / ".partials").iterdir()) == []


def test_a_wrong_offset_on_nothing_and_an_overlong_body_leave_no_partial(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"abc"
    with pytest.raises(UploadOffset):
        _put(store, data, 2, b"c")
    with pytest.raises(BlobError, match="more than"):
        _put(store, data, 0, b"abcd")
    folder = tmp_path / "_blobs" / "acme" / hashlib.sha256(data).hexdigest()[:2] / ".partials"
    assert list(folder.iterdir()) == []


def test_one_upload_of_a_blob_at_a_time(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()

    async def both() -> list[Any]:
        gate = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield data[:100]
            await gate.wait()  # the first upload holds the partial while the second one comes

        first = asyncio.create_task(store.put_blob("acme", digest, 0, len(data), slow, 1 << 20))
        await asyncio.sleep(0.05)
        try:
            await store.put_blob("acme", digest, 0, len(data), lambda: _chunks(data), 1 << 20)
            second: Any = None
        except UploadOffset as exc:
            second = exc
        gate.set()
        return [await first, second]

    first, second = asyncio.run(both())
    assert first == (False, 100)
    assert isinstance(second, UploadOffset) and "under way" in second.message


def test_links_in_the_blob_store_are_not_followed(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path / "store")
    data = b"payload"
    digest = hashlib.sha256(data).hexdigest()
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    folder = tmp_path / "store" / "_blobs" / "acme" / digest[:2]
    folder.mkdir(parents=True)
    (folder / digest).symlink_to(outside)
    assert store.blob_state("acme", digest) == (None, 0)  # a link is no blob
    (folder / ".partials").mkdir()
    (folder / ".partials" / f"{digest}-{len(data)}").symlink_to(outside)
    with pytest.raises(BlobError) as refused:
        _put(store, data, 0, data)
    assert refused.value.status == 409
    (folder / ".partials" / f"{digest}-{len(data)}").unlink()
    assert _put(store, data, 0, data) == (True, len(data))
    assert outside.read_bytes() == b"secret" and not (folder / digest).is_symlink()


def test_a_partial_of_another_declared_size_does_not_block_the_blob(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"the real blob" * 10
    digest = hashlib.sha256(data).hexdigest()
    assert _put(store, data, 0, data[:40], size=1000) == (False, 40)  # a bad upload, cut: it said 1000 bytes
    assert store.blob_state("acme", digest) == (None, 40)
    assert _put(store, data, 0, data) == (True, len(data))  # the real size: it starts again
    assert store.blob_state("acme", digest) == (len(data), 0)
    assert list((tmp_path / blob_key("acme", digest)).parent.joinpath(".partials").iterdir()) == []


def test_offset_0_starts_a_partial_again(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"0123456789" * 10
    assert _put(store, data, 0, b"garbage from a broken client") == (False, 28)
    assert _put(store, data, 0, data[:50]) == (False, 50)
    assert _put(store, data, 50, data[50:]) == (True, 100)


def test_stale_partials_go_when_an_upload_starts_in_their_folder(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    data = b"fresh"
    digest = hashlib.sha256(data).hexdigest()
    partials = (tmp_path / blob_key("acme", digest)).parent / ".partials"
    partials.mkdir(parents=True)
    old, recent = partials / f"{digest[:2]}{'0' * 62}-10", partials / f"{digest[:2]}{'1' * 62}-10"
    old.write_bytes(b"abandoned")
    recent.write_bytes(b"resumable")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert _put(store, data, 0, data) == (True, len(data))
    assert sorted(p.name for p in partials.iterdir()) == [recent.name]


def test_a_resumed_upload_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = filestore._hash_prefix

    def counted(fd: int, size: int) -> Any:
        hashed.append(size)
        return real(fd, size)

    monkeypatch.setattr(filestore, "_hash_prefix", counted)
    store = LocalFileStore(tmp_path)
    data = os.urandom(10_000)
    for start in range(0, 10_000, 1000):
        assert _put(store, data, start, data[start : start + 1000])[1] == start + 1000
    assert hashed == []  # the running digest went on from part to part
    assert store.blob_state("acme", hashlib.sha256(data).hexdigest()) == (10_000, 0)

    # Another process (another store) holds no running digest: it hashes the whole blob once, when complete.
    other = b"another blob" * 100
    assert _put(store, other, 0, other[:500]) == (False, 500)
    elsewhere = LocalFileStore(tmp_path)
    assert _put(elsewhere, other, 500, other[500:700]) == (False, 700)
    assert hashed == []
    assert _put(elsewhere, other, 700, other[700:]) == (True, len(other))
    assert hashed == [len(other)]


def test_the_disk_work_of_an_upload_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    for name in ("write", "fsync"):
        real = getattr(os, name)

        def spy(fd: int, *args: Any, _real: Any = real) -> Any:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's (not a pipe's, a terminal's)
                threads.append(threading.current_thread().name)
            return _real(fd, *args)

        monkeypatch.setattr(os, name, spy)
    assert _put(LocalFileStore(tmp_path), b"x" * 3000, 0, b"x" * 3000) == (True, 3000)
    assert threads and threading.main_thread().name not in threads


def test_the_body_is_not_opened_when_the_offset_is_wrong(tmp_path: Path) -> None:
    """The API meters a body (charges the ingest quota) as it opens it: a 409 charges nothing."""
    store = LocalFileStore(tmp_path)
    data = b"0123456789"
    digest = hashlib.sha256(data).hexdigest()
    assert _put(store, data, 0, data[:4]) == (False, 4)
    opened: list[bool] = []

    def body() -> AsyncIterator[bytes]:
        opened.append(True)
        return _chunks(data[7:])

    with pytest.raises(UploadOffset):
        asyncio.run(store.put_blob("acme", digest, 7, len(data), body, 1 << 20))
    assert opened == []


# -- manifests ------------------------------------------------------------------------------------------


def _manifest(entries: Any) -> bytes:
    return orjson.dumps({"version": 1, "entries": entries})


def test_a_good_manifest_parses() -> None:
    entries = {"a/b.txt": {"digest": D0, "size": 3}, "big.bin": {"ref": "s3://b/big", "digest": "", "size": 2**62}}
    assert parse_manifest(_manifest(entries)) == entries


@pytest.mark.parametrize(
    ("path", "entry", "why"),
    [
        ("a", {"digest": D0, "size": "12"}, "size"),
        ("a", {"digest": D0, "size": -1}, "size"),
        ("a", {"digest": D0, "size": 2**63}, "size"),
        ("a", {"digest": D0, "size": True}, "size"),
        ("a", {"digest": D0}, "size"),
        ("a", {"digest": "xyz", "size": 1}, "digest"),
        ("a", {"digest": "", "size": 1}, "digest"),
        ("a", {"digest": 3, "size": 1}, "digest"),
        ("a", {"ref": 3, "digest": "", "size": 1}, "ref"),
        ("../etc/passwd", {"digest": D0, "size": 1}, "relative"),
        ("/abs", {"digest": D0, "size": 1}, "relative"),
        ("a/../../b", {"digest": D0, "size": 1}, "relative"),
        ("a", [1, 2], "object"),
    ],
)
def test_a_bad_manifest_entry_is_named(path: str, entry: Any, why: str) -> None:
    with pytest.raises(ManifestError, match=f"entry '{re.escape(path)}'.*{why}"):
        parse_manifest(_manifest({"ok": {"digest": D0, "size": 1}, path: entry}))


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"entries": []}', b"{}"])
def test_a_manifest_that_is_no_manifest_says_so(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)


def test_a_manifest_has_at_most_so_many_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_artifacts, "MAX_MANIFEST_ENTRIES", 2)
    with pytest.raises(ManifestError, match="3 entries, more than the 2"):
        parse_manifest(_manifest({p: {"digest": D0, "size": 1} for p in "abc"}))
