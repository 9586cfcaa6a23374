"""The SDK's HTTP transport against a small local receiver that speaks the ingest endpoint's shape."""

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import runstream
from runstream import events
from runstream.transport import INGEST_PATH
from tests.helpers import metric_points

QUIET = {"console": False, "system_metrics": False, "git": False}


class Receiver:
    """POST /api/v1/events: NDJSON events; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.events: list[events.Event] = []
        self.files: dict[str, bytes] = {}
        self.auth: set[str] = set()
        self.uploaded_before_event: bool  # set by the first upload
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path, _, query = self.path.partition("?")
                assert query == "sha256=" + hashlib.sha256(body).hexdigest()
                receiver.files[urllib.parse.unquote(path)] = body
                receiver.uploaded_before_event = not any(e.type == events.FILE for e in receiver.events)
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.auth.add(self.headers.get("Authorization", ""))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if self.path == INGEST_PATH and status == 200:
                    receiver.events += [events.decode(line) for line in body.splitlines() if line]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(
                    b'{"accepted": true}' if status == 200 else b'{"error": {"code": "x", "message": "no"}}'
                )

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(statuses=None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def test_events_reach_the_server_with_the_api_key(receiver_factory, tmp_path):
    receiver = receiver_factory()
    run = runstream.init(project="p", dir=tmp_path, settings={**QUIET, "url": receiver.url, "api_key": "rs_secret"})
    for step in range(2000):
        run.log({"loss": 1 / (step + 1)})
    result = run.finish()
    assert result.unacked_events == 0 and result.acked_events == len(receiver.events)
    assert receiver.auth == {"Bearer rs_secret"}
    assert sorted(s for s, _, _ in metric_points(receiver.events)) == list(range(2000))
    assert receiver.events[-1].type == events.RUN_FINISH


def test_server_errors_are_retried(receiver_factory, tmp_path):
    receiver = receiver_factory([503, 503, 500])
    run = runstream.init(project="p", dir=tmp_path, settings={**QUIET, "url": receiver.url, "finish_timeout": 20})
    run.log({"x": 1.0})
    result = run.finish()
    assert result.unacked_events == 0
    assert [s for s, _, _ in metric_points(receiver.events)] == [0]


def test_a_batch_refused_for_good_is_set_aside_and_does_not_block_the_run(receiver_factory, tmp_path):
    """A 422 is final: the refused events go to the run's quarantine (sync --quarantined retries them)."""
    receiver = receiver_factory([422] * 1000)
    run = runstream.init(project="p", dir=tmp_path, settings={**QUIET, "url": receiver.url, "finish_timeout": 5})
    run.log({"x": 1.0})
    result = run.finish()
    assert result.acked_events == 0 and result.unacked_events == 0
    assert result.quarantined_events >= 3  # run_start, metrics, run_finish
    assert receiver.events == []
    assert len(list((tmp_path / "runstream-runs").glob("run-*/quarantine/batch-*.json"))) >= 1


def test_saved_files_are_uploaded_before_their_event(receiver_factory, tmp_path):
    receiver = receiver_factory()
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights\xff")
    run = runstream.init(project="p", entity="acme", id="up1", dir=tmp_path, settings={**QUIET, "url": receiver.url})
    run.save(str(model), base_path=str(tmp_path), policy="now")
    assert run.finish().unacked_events == 0
    assert receiver.files["/api/v1/files/acme/p/up1/model.bin"] == b"\x00weights\xff"
    assert b"orjson==" in receiver.files["/api/v1/files/acme/p/up1/requirements.txt"]
    assert receiver.uploaded_before_event
    announced = {e.data["path"]: e.data for e in receiver.events if e.type == events.FILE}
    assert announced["model.bin"]["size"] == 9 and announced["requirements.txt"]["kind"] == "requirements"


def test_a_kafka_run_uploads_blobs_to_its_files_url(receiver_factory, kafka_bootstrap, tmp_path):
    import asyncio

    from tests.helpers import consume_events, unique

    receiver = receiver_factory()
    project = unique("blobs")
    settings = {**QUIET, "url": f"kafka://{kafka_bootstrap}", "files_url": receiver.url}
    run = runstream.init(project=project, entity="acme", id="kb1", dir=tmp_path, settings=settings)
    run.log({"img": runstream.Histogram([1, 2, 2, 3])})
    assert run.finish().unacked_events == 0
    stored = [path for path in receiver.files if path.startswith(f"/api/v1/files/acme/{project}/kb1/media/")]
    assert len(stored) == 1 and receiver.events == []  # blobs over HTTP, events through Kafka
    announced = asyncio.run(
        consume_events(
            kafka_bootstrap, [events.TOPIC_FILES.name], project, lambda e: any(x.data["kind"] == "media" for x in e)
        )
    )
    media = [e.data for e in announced if e.data["kind"] == "media"]
    assert stored[0].endswith(media[0]["store_key"])
