"""Artifacts logged and used by the real SDK against the real embedded server (the API served by uvicorn,
the in-process pipeline, the chdb engine, the local blob store), read back as a user reads them.

W&B's behaviour pinned down: logging the same contents again is the same version; a changed file makes the
next version; ``use_artifact("name:alias")`` returns a downloadable artifact and records the run as a consumer.
Ours on top: only blobs the server lacks are sent, an upload cut off goes on where the server's copy stops,
a download is checked against the manifest's SHA-256s, and an offline run's artifact goes on ``runstream sync``.
"""

import hashlib
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from runstream.artifacts import ChecksumError, StagedFilesGone, Stager, blob_path, fetch_artifact, upload_artifact
from runstream.public_api import ApiError
from runstream.transport import HttpTransport, TransportError
from tests.helpers import RUNSTREAM, ServedApp, script_env, unique, wait_for

QUIET = {"console": False, "system_metrics": False, "git": False, "finish_timeout": 30}


@pytest.fixture
def served(api) -> Iterator[tuple[str, str]]:
    """The embedded API on a real port, and an admin key of team acme."""
    key = api.key("acme", "alice")["Authorization"].removeprefix("Bearer ")
    with ServedApp(api.app) as url:
        yield url, key


def _init(url: str, key: str, tmp_path: Path, project: str, **kw) -> runstream.Run:
    return runstream.init(
        entity="acme", project=project, dir=tmp_path, reinit="create_new",
        settings={**QUIET, "url": url, "api_key": key}, **kw,
    )  # fmt: skip


def _blobs(api) -> dict[str, int]:
    """The team's blob store: SHA-256 -> size."""
    root = Path(api.settings.data_dir) / "files" / "_blobs" / "acme"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file() and len(p.name) == 64}


def _dataset(root: Path, **files: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_versions_dedup_aliases_lineage_and_checked_downloads(api, served, tmp_path):
    url, key = served
    project = unique("art")
    big = bytes(range(256)) * 4096  # 1 MiB: unchanged across versions, so stored (and sent) once
    data = _dataset(tmp_path / "data", **{"weights.bin": big, "labels.txt": b"cat\ndog\n"})

    producer = _init(url, key, tmp_path, project, id="producer")
    first = producer.log_artifact(str(data), name="ds", type="dataset", aliases=["best"]).wait(60)
    assert (first.version, first.name, first.type) == ("v0", "ds:v0", "dataset")
    assert set(first.aliases) == {"latest", "best"}
    assert first.size == len(big) + 8 and first.file_count == 2
    stored_v0 = _blobs(api)
    assert len(stored_v0) == 3  # two files and the manifest

    again = runstream.Artifact("ds", "dataset")
    again.add_dir(data)
    assert producer.log_artifact(again).wait(60).version == "v0"  # the same contents: the same version

    (data / "labels.txt").write_bytes(b"cat\ndog\nbird\n")
    second = producer.log_artifact(str(data), name="ds", type="dataset").wait(60)
    assert second.version == "v1" and second.digest != first.digest
    added = {sha: size for sha, size in _blobs(api).items() if sha not in stored_v0}
    assert sorted(added.values()) == sorted([13, len(second.manifest.to_bytes())])  # the changed file + manifest
    assert producer.finish().unacked_events == 0
    assert not (Path(producer.dir) / "artifacts").exists()  # all delivered: the staged copies are removed

    consumer = _init(url, key, tmp_path, project, id="consumer")
    used = consumer.use_artifact("ds:best")  # the alias stayed on v0
    assert (used.version, used.digest, used.logged_by().id) == ("v0", first.digest, "producer")
    root = Path(used.download(tmp_path / "down"))
    assert (root / "weights.bin").read_bytes() == big and (root / "labels.txt").read_bytes() == b"cat\ndog\n"
    latest = consumer.use_artifact(f"acme/{project}/ds:latest", type="dataset")
    assert latest.version == "v1" and latest.get_entry("labels.txt").size == 13
    with pytest.raises(ValueError, match="not 'model'"):
        consumer.use_artifact("ds:v1", type="model")
    with pytest.raises(ApiError, match="not found"):
        consumer.use_artifact("ds:v7")
    assert consumer.finish().unacked_events == 0

    api_client = runstream.Api(url=url, api_key=key, entity="acme")
    v0 = fetch_artifact(api_client, f"{project}/ds:v0")
    # The same through runstream.Api, as a notebook reads it.
    assert api_client.artifact(f"acme/{project}/ds:latest").version == "v1"
    assert [a.version for a in api_client.artifact_versions("dataset", f"{project}/ds")] == ["v1", "v0"]
    assert [a.version for a in api_client.run(f"acme/{project}/consumer").used_artifacts()] == ["v0", "v1"]
    wait_for(lambda: [r.id for r in v0.used_by()] == ["consumer"], "the consumer in the lineage")
    v0.aliases = ["prod"]  # wandb's way to move aliases: set, then save()
    v0.save()
    assert sorted(v0.aliases) == ["prod"]
    assert fetch_artifact(api_client, f"{project}/ds:prod").version == "v0"
    with pytest.raises(ApiError, match="not found"):
        fetch_artifact(api_client, f"{project}/ds:best")

    # A blob changed on the server (a bad disk) is caught by the download, and nothing is written.
    store = Path(api.settings.data_dir) / "files" / "_blobs" / "acme"
    labels_v0 = hashlib.sha256(b"cat\ndog\n").hexdigest()
    (store / labels_v0[:2] / labels_v0).write_bytes(b"cat\ncow\n")
    with pytest.raises(ChecksumError, match=r"labels\.txt"):
        v0.download(tmp_path / "corrupt")
    assert not (tmp_path / "corrupt" / "labels.txt").exists()


def test_only_missing_blobs_are_sent_and_a_cut_upload_goes_on(api, served, tmp_path):
    url, key = served
    project = unique("up")
    staging = tmp_path / "staging"
    stager = Stager(staging, lambda etype, data: True)
    transport = HttpTransport(url, key)
    big = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB
    data = _dataset(tmp_path / "d", **{"a.bin": big, "b.txt": b"bee"})

    def staged(**changes: bytes) -> runstream.Artifact:
        _dataset(data, **changes)
        artifact = runstream.Artifact("up", "dataset")
        artifact.add_dir(data)
        artifact._final = True
        stager.submit(artifact, {})
        stager.join()
        return artifact

    v0 = staged()
    # An earlier upload of a.bin was cut off after 1 MB: the server keeps what arrived.
    sha_a = hashlib.sha256(big).hexdigest()
    cut = api.http.put(
        f"/api/v1/projects/acme/{project}/blobs/{sha_a}",
        params={"offset": 0, "size": len(big)},
        content=big[:1_000_000],
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
    )
    assert cut.status_code == 202 and cut.json()["received"] == 1_000_000
    manifest_v0 = len(v0.manifest.to_bytes())
    sent = upload_artifact(transport, "acme", project, staging, v0.digest)
    assert sent == len(big) - 1_000_000 + 3 + manifest_v0  # the rest of a.bin, b.txt, the manifest
    assert _blobs(api)[sha_a] == len(big)

    v1 = staged(**{"b.txt": b"changed"})
    assert upload_artifact(transport, "acme", project, staging, v1.digest) == 7 + len(v1.manifest.to_bytes())
    assert upload_artifact(transport, "acme", project, staging, v1.digest) == 0  # all there now

    # A client that goes on from another offset than the server holds is told where to (409), and does.
    other = hashlib.sha256(b"other").digest() * 50_000
    source = tmp_path / "other.bin"
    source.write_bytes(other)
    sha_o = hashlib.sha256(other).hexdigest()
    cut = api.http.put(
        f"/api/v1/projects/acme/{project}/blobs/{sha_o}",
        params={"offset": 0, "size": len(other)},
        content=other[:500_000],
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
    )
    assert cut.status_code == 202, cut.text
    assert transport.put_blob("acme", project, sha_o, source, len(other), offset=700_000) == len(other) - 500_000
    assert _blobs(api)[sha_o] == len(other)

    # A staged file damaged on this machine is refused by the server (400) and said to be damaged.
    v2 = staged(**{"b.txt": b"v2 bytes"})
    blob_path(staging, hashlib.sha256(b"v2 bytes").hexdigest()).write_bytes(b"v2 bytez")
    with pytest.raises(StagedFilesGone, match="damaged"):
        upload_artifact(transport, "acme", project, staging, v2.digest)


def test_log_model_and_use_model(served, tmp_path, monkeypatch):
    url, key = served
    monkeypatch.chdir(tmp_path)  # use_model downloads under ./artifacts, as wandb's does
    project = unique("model")
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"\x01" * 1000)
    run = _init(url, key, tmp_path, project, id="trainer")
    run.log_model(weights, name="net", aliases=["prod"]).wait(60)
    path = Path(run.use_model("net:prod"))
    assert path.resolve().is_relative_to(tmp_path.resolve() / "artifacts")
    assert (path / "model.pt").read_bytes() == b"\x01" * 1000
    run.log_artifact(str(weights), name="notmodel", type="dataset").wait(60)
    with pytest.raises(ValueError, match="model artifact"):
        run.use_model("notmodel:latest")
    assert run.finish().unacked_events == 0


def test_an_offline_artifact_appears_on_sync(served, tmp_path):
    url, key = served
    project = unique("offline")
    data = _dataset(tmp_path / "data", **{"x.txt": b"offline bytes"})
    run = runstream.init(entity="acme", project=project, id="away", dir=tmp_path, mode="offline", settings=QUIET)
    artifact = run.log_artifact(str(data), name="away-data", type="dataset")
    run.finish()
    assert (Path(run.dir) / "artifacts" / "blobs").is_dir()  # staged until sync sends it
    api_client = runstream.Api(url=url, api_key=key, entity="acme")
    with pytest.raises(ApiError, match="not found"):
        fetch_artifact(api_client, f"{project}/away-data:latest")
    env = script_env(url, tmp_path)
    synced = subprocess.run(
        [RUNSTREAM, "sync", "--quiet", "--url", url, "--api-key", key, run.dir],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert not (Path(run.dir) / "artifacts").exists()  # all delivered: the staged copies went
    found = fetch_artifact(api_client, f"{project}/away-data:latest")
    assert found.digest == artifact.digest and found.version == "v0"
    assert Path(found.download(tmp_path / "got"), "x.txt").read_bytes() == b"offline bytes"


def test_a_script_that_exits_without_finish_logs_its_artifact(served, tmp_path):
    url, key = served
    project = unique("exit")
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, runstream
        run = runstream.init(entity="acme", project={project!r}, id="quitter",
                             settings={{"console": False, "system_metrics": False, "git": False}})
        folder = pathlib.Path("ckpt")
        folder.mkdir()
        (folder / "step-1.bin").write_bytes(b"checkpoint" * 1000)
        runstream.log_artifact(str(folder), name="ckpt", type="model", aliases=["last"])  # wandb.log_artifact
        run.log({{"loss": 0.5}})
        """)
    )
    env = {**script_env(url, tmp_path), "RUNSTREAM_API_KEY": key}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    api_client = runstream.Api(url=url, api_key=key, entity="acme")
    found = fetch_artifact(api_client, f"{project}/ckpt:last")
    assert (found.version, found.type, found.file_count, found.size) == ("v0", "model", 1, 10_000)
    assert found.logged_by().id == "quitter"


def test_an_upload_cut_off_by_the_network_goes_on_where_the_server_stopped(api, served, tmp_path):
    from infra.tcp_proxy import TcpProxy

    url, key = served
    project = unique("cut")
    size = 64_000_000
    payload = hashlib.sha256(b"cut").digest() * (size // 32)
    data = _dataset(tmp_path / "data", **{"big.bin": payload})
    with TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        run = _init(proxy.url, key, tmp_path, project, id="cut")
        artifact = run.log_artifact(str(data), name="big", type="dataset")
        give_up = time.monotonic() + 120
        while proxy.bytes_up < size // 8:  # (a tight loop: the upload takes a fraction of a second)
            assert time.monotonic() < give_up, "the upload did not start"
        proxy.mode = "blackhole"  # the network stalls an eighth of the way in, then the connection is reset
        proxy.reset_all()
        assert proxy.resets >= 1 and not _blobs(api)  # cut off before the blob was stored
        proxy.mode = "forward"
        assert artifact.wait(120).version == "v0"
        assert run.finish().unacked_events == 0
        sent = proxy.bytes_up
    assert _blobs(api)[hashlib.sha256(payload).hexdigest()] == size
    assert size < sent < size * 1.5  # the rest was sent, not the whole file again


def test_an_artifact_logged_while_the_server_is_unreachable_goes_once_it_is_back(api, served, tmp_path):
    from infra.tcp_proxy import TcpProxy

    url, key = served
    project = unique("down")
    data = _dataset(tmp_path / "data", **{"a.txt": b"while down"})
    with TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        proxy.mode = "reset"  # every connection refused, as a server that is down
        run = _init(proxy.url, key, tmp_path, project, id="patient")
        artifact = run.log_artifact(str(data), name="later", type="dataset")
        with pytest.raises(TimeoutError, match="not stored"):
            artifact.wait(2)
        assert not _blobs(api)
        proxy.mode = "forward"
        assert artifact.wait(60).version == "v0"
        assert run.finish().unacked_events == 0
        assert Path(artifact.download(tmp_path / "got"), "a.txt").read_bytes() == b"while down"


def test_an_artifact_whose_staged_files_are_gone_is_set_aside_not_sent_half(served, tmp_path):
    url, key = served
    project = unique("gone")
    data = _dataset(tmp_path / "data", **{"x.txt": b"soon gone"})
    run = runstream.init(entity="acme", project=project, id="lost", dir=tmp_path, mode="offline", settings=QUIET)
    run.log_artifact(str(data), name="lost", type="dataset")
    run.log({"loss": 1.0})
    run.finish()
    shutil.rmtree(Path(run.dir) / "artifacts" / "blobs")  # someone cleaned up before the sync
    synced = subprocess.run(
        [RUNSTREAM, "sync", "--url", url, "--api-key", key, run.dir],
        capture_output=True, text=True, env=script_env(url, tmp_path), timeout=120,
    )  # fmt: skip
    assert synced.returncode == 0 and "quarantine" in synced.stdout, synced.stdout + synced.stderr
    (why,) = (Path(run.dir) / "quarantine").glob("batch-*.json")
    assert "is gone and the server lacks it" in why.read_text()  # the reason is kept beside the event
    api_client = runstream.Api(url=url, api_key=key, entity="acme")
    with pytest.raises(ApiError, match="not found"):
        fetch_artifact(api_client, f"{project}/lost:latest")
    assert [row["loss"] for row in api_client.run(f"acme/{project}/lost").scan_history()] == [1.0]  # the rest went


def test_a_stalled_network_does_not_hold_up_finish_and_sync_sends_the_artifact_later(api, served, tmp_path):
    import threading

    from infra.tcp_proxy import TcpProxy

    url, key = served
    project = unique("stall")
    data = _dataset(tmp_path / "data", **{"w.bin": b"\x07" * 3_000_000})
    with TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        run = runstream.init(
            entity="acme", project=project, id="stalled", dir=tmp_path, reinit="create_new",
            settings={**QUIET, "url": proxy.url, "api_key": key, "finish_timeout": 2},
        )  # fmt: skip
        proxy.mode = "blackhole"  # connections are taken and never answered: the upload hangs
        artifact = run.log_artifact(str(data), name="stalled", type="model")
        results: list = []
        finishing = threading.Thread(target=lambda: results.append(run.finish()))
        finishing.start()
        finishing.join(120)  # (a bound for a hang; finish itself waits about finish_timeout)
        assert results and results[0].unacked_events > 0  # the artifact's event waits in the spool
        proxy.mode = "forward"
    synced = subprocess.run(
        [RUNSTREAM, "sync", "--quiet", "--url", url, "--api-key", key, run.dir],
        capture_output=True, text=True, env=script_env(url, tmp_path), timeout=120,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    found = fetch_artifact(runstream.Api(url=url, api_key=key, entity="acme"), f"{project}/stalled:latest")
    assert found.digest == artifact.digest and found.size == 3_000_000


def test_a_file_over_the_servers_blob_limit_is_refused_and_the_run_goes_on(api, served, tmp_path, monkeypatch):
    """The server says its max_blob_bytes (blobs/missing): a larger file is refused before a byte of it is sent
    (a 413 would come only after the bytes, as a cut connection), its event is set aside with the reason, wait()
    raises it, and the run's other events flow on."""
    import dataclasses

    url, key = served
    backend = api.app.state.backend
    monkeypatch.setattr(backend, "settings", dataclasses.replace(backend.settings, max_blob_bytes=1 << 20))
    project = unique("big")
    data = _dataset(tmp_path / "ck", **{"w.bin": b"\x01" * (4 << 20), "small.txt": b"fine"})
    run = _init(url, key, tmp_path, project, id="big")
    run.log({"a": 1})
    artifact = run.log_artifact(str(data), name="ck", type="model")
    with pytest.raises(runstream.Error, match=r"max_blob_bytes.*w\.bin"):
        artifact.wait(60)
    for step in range(5):
        run.log({"b": step})
    started = time.monotonic()
    result = run.finish()
    assert time.monotonic() - started < 20
    assert result.unacked_events == 0 and result.quarantined_events == 1
    (why,) = (Path(run.dir) / "quarantine").glob("batch-*.json")
    assert "max_blob_bytes" in why.read_text()
    assert not _blobs(api)  # nothing of it was stored
    # The transport alone asks the limit before a first blob's bytes, and refuses (not a connection reset).
    big = tmp_path / "ck" / "w.bin"
    with pytest.raises(TransportError, match="max_blob_bytes") as refused:
        HttpTransport(url, key).put_blob("acme", project, "0" * 64, big, big.stat().st_size)
    assert refused.value.rejected and refused.value.status == 413
    api_client = runstream.Api(url=url, api_key=key, entity="acme")
    rows = list(api_client.run(f"acme/{project}/big").scan_history())
    assert [r.get("b") for r in rows if r.get("b") is not None] == [0, 1, 2, 3, 4]
