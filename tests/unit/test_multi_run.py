"""Several runs at once in one process (wandb's ``init(reinit=...)``), offline: what each run keeps,
what ``runstream.run`` is, and the one sender thread they share.

The same runs, ended every way a script ends and read back from a server, are in
tests/integration/test_multi_run.py.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from runstream import events, lifecycle
from runstream.sender import THREAD_NAME, Sender, SharedIngest
from runstream.transport import HttpTransport, Records, TransportError
from tests.helpers import metric_points, spooled_events

QUIET = {"console": False, "system_metrics": False, "git": False}


@pytest.fixture(autouse=True)
def no_run_left(tmp_path: Path) -> Iterator[None]:
    """Every test starts and ends with no active run in this process."""
    assert lifecycle.active_runs() == []
    yield
    for run in lifecycle.active_runs():
        run.finish()


def _init(tmp_path: Path, reinit: str | bool | None = "create_new", **kw) -> runstream.Run:
    return runstream.init(project="p", mode="offline", dir=tmp_path, settings=QUIET, reinit=reinit, **kw)


def _senders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def _finish_of(run: runstream.Run) -> dict:
    return _finish_of_dir(run.dir)


def _finish_of_dir(run_dir: str) -> dict:
    evs = spooled_events(run_dir)
    assert evs[-1].type == events.RUN_FINISH, "nothing follows run_finish"
    return evs[-1].data


def test_create_new_runs_are_independent_and_runstream_run_is_the_last_started(tmp_path):
    runs = [_init(tmp_path, config={"index": i}) for i in range(3)]
    assert lifecycle.active_runs() == runs and runstream.run is runs[2]
    assert runstream.config is runs[2].config and runstream.summary is runs[2].summary
    for step in range(4):
        for index, run in enumerate(runs):
            run.log({"loss": index * 10 + step})
    runs[0].log({"late": 1.0}, step=20)  # only this run's step counter moves
    runstream.log({"global": 1.0})  # the module-level functions act on the last run started
    runs[1].summary["best"] = "one"
    assert [r.step for r in runs] == [21, 4, 5]
    assert [dict(r.config) for r in runs] == [{"index": 0}, {"index": 1}, {"index": 2}]

    runs[1].finish()
    assert lifecycle.active_runs() == [runs[0], runs[2]] and runstream.run is runs[2]
    runs[0].log({"loss": 99.0}, step=21)  # the others log on
    runstream.finish()  # finishes runstream.run only
    assert runstream.run is None and lifecycle.active_runs() == [runs[0]]
    with pytest.raises(runstream.Error, match="init"):
        runstream.log({"x": 1.0})
    runs[0].finish()

    assert len({r.dir for r in runs}) == 3, "a spool each"
    points = [sorted(metric_points(spooled_events(r.dir))) for r in runs]
    assert points[0] == [*((s, "loss", float(s)) for s in range(4)), (20, "late", 1.0), (21, "loss", 99.0)]
    assert points[1] == [(s, "loss", 10.0 + s) for s in range(4)]
    assert points[2] == [*((s, "loss", 20.0 + s) for s in range(4)), (4, "global", 1.0)]
    updates = [e.data for e in spooled_events(runs[1].dir) if e.type == events.RUN_UPDATE]
    assert {"summary": {"best": "one"}} in updates
    assert all(_finish_of(r) == {"state": "finished", "exit_code": 0} for r in runs)


def test_one_sender_thread_serves_every_run_and_ends_after_the_last(tmp_path):
    for leftover in _senders():  # an earlier test's last run has finished: its thread is on its way out
        leftover.join(timeout=30)
    before = len(_senders())
    runs = [_init(tmp_path) for _ in range(5)]
    assert len(_senders()) == 1 and before == 0
    thread = _senders()[0]
    for run in runs[:4]:
        run.finish()
    assert _senders() == [thread], "the thread stays while a run needs it"
    runs[4].finish()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the last run to finish stops the thread"
    again = _init(tmp_path)  # a run started later gets a thread again
    again.log({"x": 1.0})
    assert len(_senders()) == 1
    again.finish()
    assert (0, "x", 1.0) in metric_points(spooled_events(again.dir))


@pytest.mark.parametrize("reinit", ["default", "finish_previous", True, None])
def test_default_and_finish_previous_finish_every_active_run(tmp_path, reinit):
    first = _init(tmp_path, reinit="create_new")
    second = _init(tmp_path, reinit="create_new")
    first.log({"x": 1.0})
    third = _init(tmp_path, reinit=reinit)
    assert lifecycle.active_runs() == [third] and runstream.run is third
    assert _finish_of(first) == _finish_of(second) == {"state": "finished", "exit_code": 0}
    assert (0, "x", 1.0) in metric_points(spooled_events(first.dir))


@pytest.mark.parametrize("reinit", ["return_previous", False])
def test_return_previous_gives_back_the_most_recent_active_run(tmp_path, reinit):
    first = _init(tmp_path, reinit=None)
    second = _init(tmp_path)
    assert _init(tmp_path, reinit=reinit, config={"ignored": 1}) is second
    assert lifecycle.active_runs() == [first, second] and dict(second.config) == {}
    assert len(list((tmp_path / "runstream-runs").glob("run-*"))) == 2, "no run was started"
    with pytest.raises(runstream.Error, match="while a run is active"):
        _init(tmp_path, reinit=reinit, id="other", resume="must")
    second.finish()
    first.finish()
    assert _init(tmp_path, reinit=reinit) not in (first, second), "with no active run, a new one"


def test_reinit_from_settings_and_bad_values(tmp_path):
    first = _init(tmp_path, reinit=None)
    second = runstream.init(project="p", mode="offline", dir=tmp_path, settings={**QUIET, "reinit": "create_new"})
    assert lifecycle.active_runs() == [first, second]
    with pytest.raises(ValueError, match="reinit"):
        _init(tmp_path, reinit="finish")
    assert lifecycle.active_runs() == [first, second], "a bad value changes nothing"


def test_a_run_id_that_is_active_in_this_process_is_a_clear_error(tmp_path):
    run = _init(tmp_path, id="same1")
    with pytest.raises(runstream.Error, match="already active in this process"):
        _init(tmp_path, id="same1")
    assert lifecycle.active_runs() == [run]
    assert _init(tmp_path, reinit="finish_previous", id="same1", resume="allow").resumed


def test_a_with_block_finishes_its_own_run_only(tmp_path):
    outer = _init(tmp_path)
    with pytest.raises(ZeroDivisionError), _init(tmp_path) as inner:
        inner.log({"x": 1.0})
        1 / 0  # noqa: B018 - the failure under test
    assert lifecycle.active_runs() == [outer] and not outer._finished
    assert _finish_of(inner)["state"] == "failed" and "ZeroDivisionError" in _finish_of(inner)["traceback"]
    outer.log({"y": 2.0})
    outer.finish()
    assert (0, "y", 2.0) in metric_points(spooled_events(outer.dir))


def test_disabled_runs_take_part_like_any_other(tmp_path):
    live = _init(tmp_path)
    disabled = runstream.init(project="p", mode="disabled", reinit="create_new")
    assert lifecycle.active_runs() == [live, disabled] and runstream.run is disabled
    disabled.log({"x": 1.0})
    assert disabled.finish() is None
    assert lifecycle.active_runs() == [live] and runstream.run is None


def test_the_exit_hook_starts_finishing_every_run_before_it_waits_for_any(tmp_path, monkeypatch):
    """So N runs share one finish_timeout at exit instead of waiting N of them one after another."""
    runs = [_init(tmp_path) for _ in range(4)]
    runs[2].finish()
    calls: list[tuple[str, str]] = []
    begin, end = Sender.begin_finish, Sender.end_finish

    def record_begin(self: Sender, *args, **kwargs) -> None:
        calls.append(("begin", self.identity.run_id))
        begin(self, *args, **kwargs)

    def record_end(self: Sender):
        calls.append(("end", self.identity.run_id))
        return end(self)

    monkeypatch.setattr(Sender, "begin_finish", record_begin)
    monkeypatch.setattr(Sender, "end_finish", record_end)
    monkeypatch.setattr(lifecycle, "_exit_code", 3)  # as after sys.exit(3)
    lifecycle._at_exit()
    unfinished = [runs[i].id for i in (0, 1, 3)]
    assert calls == [("begin", i) for i in unfinished] + [("end", i) for i in unfinished]
    assert lifecycle.active_runs() == []
    assert [_finish_of(r) for r in runs] == [{"state": "failed", "exit_code": 3}] * 2 + [
        {"state": "finished", "exit_code": 0},
        {"state": "failed", "exit_code": 3},
    ]


def test_runs_started_and_logged_from_many_threads(tmp_path):
    """50 runs, started and logged from 5 threads at once: each keeps exactly its own points."""
    runs: dict[int, runstream.Run] = {}
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            mine = [_init(tmp_path, config={"index": i}) for i in range(first, first + 10)]
            runs.update(zip(range(first, first + 10), mine))
            for step in range(30):
                for run in mine:
                    run.log({"v": run.config["index"] * 1000 + step})
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 10,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(runs) == 50 and len(lifecycle.active_runs()) == 50
    assert len(_senders()) == 1
    lifecycle._finish_together(lifecycle.active_runs())
    for index, run in runs.items():
        assert sorted(metric_points(spooled_events(run.dir))) == [(s, "v", float(index * 1000 + s)) for s in range(30)]


class _HeldServer(HttpTransport):
    """An HTTP transport whose requests wait for ``answer`` and fail when they carry a refused event
    (what a server does with a batch for a project the key may not write to)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9")
        self.requests: list[list[bytes]] = []
        self.answer = asyncio.Event()

    async def send(self, records: Records, key: bytes) -> None:
        self.requests.append([raw for _, raw in records])
        await self.answer.wait()
        if any(b"refused" in raw for _, raw in records):
            raise TransportError("HTTP 403: may not write", permanent=True)


def test_http_sends_of_many_runs_share_requests_and_a_refused_batch_fails_only_its_run():
    async def scenario() -> tuple[list[list[bytes]], list[BaseException | None]]:
        server = _HeldServer()
        ingest = SharedIngest(server)
        first = asyncio.ensure_future(ingest.send([("t", b"a1"), ("t", b"a2")], b"a"))
        while not server.requests:  # the first batch goes out alone, at once
            await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(ingest.send([("t", raw)], b"")) for raw in (b"b", b"refused", b"gone", b"c")]
        await asyncio.sleep(0)
        waiting[2].cancel()  # its run stopped waiting (a finish bound ran out): not sent
        server.answer.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        return server.requests, results

    requests, results = asyncio.run(scenario())
    assert requests[:2] == [[b"a1", b"a2"], [b"b", b"refused", b"c"]], "what waited went together"
    assert sorted(requests[2:]) == [[b"b"], [b"c"], [b"refused"]], "the failed request, again run by run"
    assert results[0] is None and results[1] is None and isinstance(results[2], TransportError)
    assert isinstance(results[3], asyncio.CancelledError) and results[4] is None


def test_sigterm_while_one_run_finishes_ends_the_others_killed_then_the_process(tmp_path):
    """The handler does not unwind a finish() in progress: that run ends as asked, the other
    unfinished run is then finished killed, and the process dies of SIGTERM."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # takes connections, never answers: finishing waits out its bound
    body = textwrap.dedent(f"""\
        import runstream
        quiet = {QUIET!r}
        slow = runstream.init(project="p", dir={str(tmp_path)!r}, reinit="create_new",
                              settings={{**quiet, "url": "http://127.0.0.1:{silent.getsockname()[1]}", "finish_timeout": 4}})
        other = runstream.init(project="p", mode="offline", dir={str(tmp_path)!r}, reinit="create_new", settings=quiet)
        slow.log({{"x": 1.0}})
        other.log({{"x": 2.0}})
        print(slow.dir, other.dir, flush=True)
        slow.finish()
        print("still alive", flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", body], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        slow_dir, other_dir = proc.stdout.readline().split()
        time.sleep(0.5)  # inside slow.finish(), waiting for the server
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "still alive" not in stdout
    assert _finish_of_dir(slow_dir) == {"state": "finished", "exit_code": 0}
    assert _finish_of_dir(other_dir) == {"state": "killed", "exit_code": 143}
    assert (0, "x", 2.0) in metric_points(spooled_events(other_dir))


def test_a_heartbeat_before_the_first_log_is_a_valid_event(tmp_path):
    """Found by bench/fleet.py: a run that had not logged yet sent {"step": -1}, which workers dead-letter."""
    run = runstream.init(
        project="p",
        mode="offline",
        dir=tmp_path,
        settings={**QUIET, "heartbeat_interval": 0.05, "flush_interval": 0.05},
    )
    time.sleep(0.5)
    run.finish()
    beats = [e for e in spooled_events(run.dir) if e.type == events.HEARTBEAT]  # spooled_events validates them
    assert beats and all("step" not in e.data for e in beats)
