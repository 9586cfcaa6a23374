"""The SDK never stalls behind one bad batch, and what it says is true: real scripts
(tests/scripts/delivery.py) as subprocesses against a real ``runstream server``, ending
every way a script ends; a tiny real HTTP server only for answers the embedded server does
not give on demand (429 with Retry-After, an answer that comes late).

Read back through ``runstream.Api``, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

import runstream
from infra.net import free_port
from runstream.public_api import ApiError
from runstream.spool import Spool, inspect
from tests.helpers import RUNSTREAM, Server, scanned_history, script_env, unique, wait_for

SCRIPTS = Path(__file__).parents[1] / "scripts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _train(
    cwd: Path, env: dict[str, str], project: str, run_id: str, steps: int, timeout: float = 120, **options
) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "delivery.py"), project, run_id, str(steps), json.dumps(options)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _line(stdout: str, tag: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(tag + " "))[len(tag) + 1 :])


def _cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([RUNSTREAM, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _steps(api: runstream.Api, path: str) -> list[int]:
    try:
        return [row["_step"] for row in scanned_history(api, path)]
    except ApiError as exc:
        if exc.status != 404:
            raise
        return []


def _run_dir(result: subprocess.CompletedProcess) -> Path:
    return Path(_line(result.stdout, "START")["dir"])


# -- a batch the server refuses for good ---------------------------------------------------------------


def test_an_event_refused_for_good_is_set_aside_and_the_rest_of_the_run_arrives(server, api, tmp_path):
    project, run_id = unique("quarantine"), unique("r")
    env = script_env(server.url, tmp_path)
    result = _train(tmp_path / "work", env, project, run_id, 12, bad_at=3, pause=0.05)
    assert result.returncode == 0, result.stderr
    finished = _line(result.stdout, "RESULT")
    assert finished["quarantined_events"] == 1 and finished["unacked_events"] == 0, finished
    # Said once, with the server's reason, where the event is and how to retry it.
    assert result.stderr.count("for good (") == 1, result.stderr
    assert "every step must be an integer" in result.stderr and "runstream sync --quarantined" in result.stderr
    path = f"default/{project}/{run_id}"
    wait_for(lambda: api.run(path).state == "finished", f"{path} to finish")
    assert _steps(api, path) == list(range(12))  # everything after the refused event arrived

    run_dir = _run_dir(result)
    [batch] = list((run_dir / "quarantine").glob("batch-*.log"))
    meta = json.loads(batch.with_suffix(".json").read_text())
    assert meta["status"] == 422 and meta["events"] == 1 and "step" in meta["reason"]

    # `runstream status` lists it; retrying as it is: still refused, still kept.
    status = _cli("status", env=env)
    assert str(run_dir) in status.stdout and "1 quarantined batches" in status.stdout, status.stdout
    again = _cli("sync", "--quarantined", "--quiet", str(run_dir), env=env)
    assert again.returncode == 0 and "still refused" in again.stdout, again.stdout + again.stderr
    [batch] = list((run_dir / "quarantine").glob("batch-*.log"))

    # Once the server takes it (here: the event fixed by hand), sync --quarantined delivers it and empties the quarantine.
    topic, _, raw = batch.read_bytes().rstrip(b"\n").partition(b"\t")
    event = orjson.loads(raw)
    event["data"]["step"] = [12]
    batch.write_bytes(topic + b"\t" + orjson.dumps(event) + b"\n")
    fixed = _cli("sync", "--quarantined", "--quiet", str(run_dir), env=env)
    assert fixed.returncode == 0 and "1 quarantined events sent" in fixed.stdout, fixed.stdout + fixed.stderr
    assert not list((run_dir / "quarantine").glob("batch-*"))
    wait_for(lambda: 12 in _steps(api, path), "the fixed event to arrive")
    assert "nothing (every run" in _cli("status", env=env).stdout


# -- a wrong key -----------------------------------------------------------------------------------------


def _make_key(server: Server, team: str, user: str) -> str:
    """A real key of ``user`` in ``team``, made through the API as the embedded server's local admin."""

    def call(method: str, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            server.url + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 409:  # the team exists
                return {}
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None

    call("POST", "/api/v1/teams", {"team": team})
    call("PUT", f"/api/v1/teams/{team}/members/{user}", {"role": "member"})
    return call("POST", f"/api/v1/teams/{team}/keys", {"user": user})["key"]


def test_a_wrong_key_is_said_once_kept_and_sync_with_the_right_key_delivers(server, api, tmp_path):
    project, run_id = unique("wrongkey"), unique("r")
    wrong = "rs_0123456789ab_" + "WRONGSECRET" * 3
    env = {**script_env(server.url, tmp_path), "RUNSTREAM_API_KEY": wrong}
    result = _train(tmp_path / "work", env, project, run_id, 6, end="none", finish_timeout=3)  # no finish()
    assert result.returncode == 0, result.stderr
    assert "WRONGSECRET" not in result.stderr
    assert result.stderr.count("retried every minute") == 1, result.stderr  # said once
    assert f"{server.url} refused key rs_0123456789ab…" in result.stderr
    assert "runstream sync --api-key KEY" in result.stderr
    path = f"default/{project}/{run_id}"
    assert _steps(api, path) == []
    run_dir = _run_dir(result)
    assert not (run_dir / "quarantine").exists()  # nothing is wrong with the events
    assert inspect(run_dir / "spool").events >= 3

    key = _make_key(server, "default", "trainer")
    bad = _cli("sync", "--quiet", str(run_dir), env=env)
    assert bad.returncode == 1 and "refused key rs_0123456789ab…" in bad.stderr and "WRONGSECRET" not in bad.stderr
    synced = _cli("sync", "--quiet", "--api-key", key, str(run_dir), env=env)
    assert synced.returncode == 0 and "sent" in synced.stdout, synced.stdout + synced.stderr
    wait_for(lambda: _steps(api, path) == list(range(6)), f"{path}'s steps")
    assert api.run(path).state == "finished"
    assert inspect(run_dir / "spool").events == 0


# -- 429 with Retry-After, and an answer that comes too late --------------------------------------------


class Ingest:
    """A tiny real ingest endpoint: ``answer(body)`` says (status, headers, delay) for each POST."""

    def __init__(self, answer) -> None:
        self.times: list[float] = []
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.times.append(time.monotonic())
                status, headers, delay = answer(body)
                time.sleep(delay)
                if status == 200:
                    outer.bodies.append(body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(
                    b'{"accepted": 1}' if status == 200 else b'{"error": {"code": "x", "message": "wait"}}'
                )

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:  # a resume asks for the run: not known here
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": {"code": "not_found", "message": "not found"}}')

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [orjson.loads(line) for body in self.bodies for line in body.splitlines() if line]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_429_retry_after_is_waited_out_and_nothing_is_lost(tmp_path):
    answers = iter([(429, {"Retry-After": "2"}, 0.0)])
    ingest = Ingest(lambda body: next(answers, (200, {}, 0.0)))
    try:
        env = script_env(ingest.url, tmp_path)
        result = _train(tmp_path / "work", env, "p", "r429", 20, finish_timeout=15)
        assert result.returncode == 0, result.stderr
        assert _line(result.stdout, "RESULT")["unacked_events"] == 0
        assert ingest.times[1] - ingest.times[0] >= 1.9  # nothing went before the 2 s the server asked for
        assert result.stderr.count("asked to wait 2 s") == 1, result.stderr
        steps = sorted(s for e in ingest.events() if e["type"] == "metrics" for s in e["data"]["step"])
        assert steps == list(range(20))
    finally:
        ingest.close()


def test_finish_says_sent_but_unanswered_when_the_answer_comes_late(tmp_path):
    """The embedded server once took longer than finish's bound to answer eight runs at once; the events
    arrived, and finish() must not say they were lost nor ask the user to send them."""
    ingest = Ingest(lambda body: (200, {}, 4.0 if b'"run_finish"' in body else 0.0))
    try:
        env = script_env(ingest.url, tmp_path)
        result = _train(tmp_path / "work", env, "p", "rlate", 10, finish_timeout=1.5, pause=0.05)
        assert result.returncode == 0, result.stderr
        finished = _line(result.stdout, "RESULT")
        assert finished["in_flight_events"] >= 1 and finished["unsent_events"] == 0, finished
        assert "but its answer had not come within 1.5 s; they have most likely arrived" in result.stderr
        assert "not acknowledged" not in result.stderr and "send them with" not in result.stderr
    finally:
        ingest.close()


# -- never sent: said so, and sent by the next run on this machine (or sync --all) ---------------------------


def test_leftovers_are_sent_by_the_next_run_and_by_sync_all(tmp_path):
    down_a, down_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{down_a}", f"http://127.0.0.1:{down_b}"
    project = unique("leftovers")
    env_a, env_b = script_env(url_a, tmp_path), script_env(url_b, tmp_path)  # one machine: one config dir
    first = _train(tmp_path / "a", env_a, project, "first", 7, end="exit3", finish_timeout=1)
    assert first.returncode == 3, first.stderr
    assert f"events were not sent to {url_a} within 1 s" in first.stderr, first.stderr
    assert "Connection refused" in first.stderr and "next run on this machine" in first.stderr
    other = _train(tmp_path / "b", env_b, project, "other", 4, finish_timeout=1)
    assert _line(other.stdout, "RESULT")["unsent_events"] >= 3

    status = _cli("status", env=env_a, cwd=tmp_path)
    assert str(_run_dir(first)) in status.stdout and str(_run_dir(other)) in status.stdout, status.stdout

    server = Server(tmp_path / "data", down_a).start()
    try:
        api = runstream.Api(url=server.url, api_key="")
        # The next run, in another directory, logging to the same server: the first run's events go by themselves.
        second = _train(tmp_path / "c", env_a, project, "second", 3)
        assert second.returncode == 0, second.stderr
        path = f"default/{project}/first"
        wait_for(lambda: _steps(api, path) == list(range(7)), f"{path}'s leftovers", timeout=60)
        assert api.run(path).state == "failed" and api.run(path).exit_code == 3
        wait_for(lambda: inspect(_run_dir(first) / "spool").events == 0, "the first run's spool to be acknowledged")

        # The other run logged elsewhere: `runstream sync --all` (from anywhere) finds it in the registry.
        synced = _cli("sync", "--all", "--quiet", "--url", server.url, env=env_b, cwd=tmp_path)
        assert synced.returncode == 0 and str(_run_dir(other)) in synced.stdout, synced.stdout + synced.stderr
        wait_for(lambda: _steps(api, f"default/{project}/other") == list(range(4)), "the other run's steps")
        assert "nothing (every run" in _cli("status", env=env_a, cwd=tmp_path).stdout
    finally:
        server.stop()


# -- a full disk, and a spool a power loss cut short --------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_never_stops_training_and_what_was_kept_is_whole(server, api, small_disk, tmp_path):
    project, run_id = unique("fulldisk"), unique("r")
    env = script_env(server.url, tmp_path)
    result = _train(small_disk, env, project, run_id, 400, pad=1500, mode="offline", pause=0.004)
    assert result.returncode == 0, result.stderr
    finished = _line(result.stdout, "RESULT")
    assert finished["dropped_events"] > 0, finished
    assert result.stderr.count("cannot write the spool") == 1, result.stderr
    assert f"{finished['dropped_events']} events could not be kept (the disk was full)" in result.stderr

    run_dir = _run_dir(result)
    spool = Spool(run_dir / "spool", writer=False)
    spool.read(spool.acked_cursor(), max_bytes=1 << 30)
    assert spool.damaged_bytes == 0  # every record on disk is whole
    spool.close()
    synced = _cli("sync", "--quiet", "--url", server.url, str(run_dir), env=env)
    assert synced.returncode == 0 and "damaged" not in synced.stdout, synced.stdout + synced.stderr
    path = f"default/{project}/{run_id}"
    wait_for(lambda: len(_steps(api, path)) > 0, f"{path}'s steps")
    steps = _steps(api, path)
    assert steps == list(range(len(steps)))  # what was kept is the run's beginning, without holes


def test_sync_delivers_every_whole_record_around_a_power_loss(server, api, tmp_path):
    project, run_id = unique("powerloss"), unique("r")
    env = script_env(server.url, tmp_path)
    work = tmp_path / "work"
    first = _train(work, env, project, run_id, 30, mode="offline", pause=0.02)
    assert first.returncode == 0, first.stderr
    run_dir = _run_dir(first)
    segment = run_dir / "spool" / "seg-00000001.log"
    data = segment.read_bytes()
    cut = data.index(b'"type":"metrics"', len(data) // 2) + 40  # inside a metrics record in the second half
    kept = [orjson.loads(line.partition(b"\t")[2]) for line in data[:cut].split(b"\n")[:-1]]
    expected = sorted(s for e in kept if e["type"] == "metrics" for s in e["data"]["step"])
    segment.write_bytes(data[:cut])  # the power went: the segment ends mid-record
    # The resumed run (same id, same directory) writes a new segment after the damaged one.
    second = _train(work, env, project, run_id, 5, mode="offline")
    assert second.returncode == 0, second.stderr
    synced = _cli("sync", "--quiet", "--url", server.url, str(run_dir), env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    torn = cut - data.rfind(b"\n", 0, cut) - 1  # the part of the record the power loss left
    assert f"{torn} damaged bytes" in synced.stdout, synced.stdout
    path = f"default/{project}/{run_id}"
    wait_for(lambda: _steps(api, path) == expected + list(range(30, 35)), f"{path}'s steps around the damage")


RESEND = """
import asyncio, json, sys
from pathlib import Path
from runstream.sync import sync_run
result = asyncio.run(sync_run(Path(sys.argv[1]), sys.argv[2], progress=False, yielding=True))
print(json.dumps({"sent": result.sent, "skipped": result.skipped, "busy": result.busy}))
"""


def test_resuming_a_run_another_process_is_resending_takes_the_spool_from_it(tmp_path):
    """Another run's init() (here: another process) resends this run's leftovers in the background; resuming
    this run meanwhile (a preempted job restarted) must neither fail as "being logged by another process" nor
    wait for the whole resend: the resend gives way after the request it is in."""
    ingest = Ingest(lambda body: (200, {}, 1.5))  # each request takes a while
    try:
        settings = {"url": ingest.url, "system_metrics": False, "console": False, "git": False, "finish_timeout": 0.2}
        crashed = runstream.init(project="p", id="preempted", dir=tmp_path, settings=settings)
        crashed.log({"x": 1.0})
        crashed.finish()  # gave up at once: as after a SIGKILL, the spool is unsent
        run_dir = Path(crashed.dir)
        spool = Spool(run_dir / "spool")  # three requests' worth more (4 MiB each)
        for i in range(12_000):
            spool.append("runstream.console", b'{"i":%d,"pad":"%s"}' % (i, b"p" * 1024))
        spool.flush()
        spool.close()
        before = len(ingest.times)
        resender = subprocess.Popen(
            [sys.executable, "-c", RESEND, str(run_dir), ingest.url],
            env=script_env(ingest.url, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(ingest.times) > before, "the background resend to send")
            assert [p.name for p in (run_dir / "spool").glob("resending.*")] == [f"resending.{resender.pid}"]
            started = time.monotonic()
            resumed = runstream.init(project="p", id="preempted", dir=tmp_path, resume="allow", settings=settings)
            waited = time.monotonic() - started
            out, err = resender.communicate(timeout=30)
        finally:
            resender.kill()
        assert resumed.resumed and waited < 5, waited  # one request (1.5 s), not the whole resend
        said = json.loads(out.strip().splitlines()[-1])
        assert said["busy"] and "wants the spool" in said["skipped"], out + err
        assert not list((run_dir / "spool").glob("resending.*")) and not (run_dir / "spool" / "wanted").exists()
        resumed.log({"x": 2.0})
        resumed.finish()
    finally:
        ingest.close()
