"""Several runs at once in one process (wandb's ``init(reinit="create_new")``), as users run them:
real scripts (tests/scripts/multi_run.py, many_runs.py) as subprocesses against a real
``runstream server`` (embedded ClickHouse), ended every way a script ends, read back through
``runstream.Api``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from infra.net import free_port
from runstream import events
from runstream.public_api import ApiError
from tests.helpers import (
    Server,
    as_in_a_terminal,
    consume_events,
    metric_points,
    scanned_history,
    script_env,
    spooled_events,
    unique,
    wait_for,
)

SCRIPTS = Path(__file__).parents[1] / "scripts"
STEPS = 6  # multi_run.py's


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _state(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("STATE "))[6:])


def _stored_steps(api: runstream.Api, path: str) -> int:
    """How many steps of the run the server has (0 while it does not know the run)."""
    try:
        return len(scanned_history(api, path))
    except ApiError as exc:
        if exc.status != 404:
            raise
        return 0


ENDINGS = {
    # name: (multi_run.py's ENDING, the signal sent once it has logged, state, exit code)
    "no finish()": ("end", None, "finished", 0),
    "sys.exit(3)": ("sys.exit(3)", None, "failed", 3),
    "uncaught exception": ("exception", None, "failed", 1),
    "KeyboardInterrupt": ("wait", signal.SIGINT, "killed", 130),
    "SIGTERM": ("wait", signal.SIGTERM, "killed", 143),
}


def _run_multi(project: str, ending: str, work: Path, env: dict[str, str]) -> tuple[dict, str]:
    """multi_run.py from ``work``, ended as ``ending`` says; its STATE and its stderr."""
    argv, sig, _, exit_code = ENDINGS[ending]
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPTS / "multi_run.py"), project, argv]
    if sig is None:
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == exit_code, result.stderr
        return _state(result.stdout), result.stderr
    proc = subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("STATE "), proc.communicate(timeout=60)
    time.sleep(0.5)  # the rows are in the sender's hands, maybe not yet sent
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -sig, stderr  # the process dies of the signal, as it would without the SDK
    return _state(line), stderr


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_three_runs_in_one_script_each_end_as_the_script_did(ending, server, api, tmp_path):
    _, _, state, exit_code = ENDINGS[ending]
    project = unique("multi")
    seen, stderr = _run_multi(project, ending, tmp_path / "work", script_env(server.url, tmp_path))
    assert "not acknowledged" not in stderr, stderr
    assert seen["senders"] == ["runstream-sender"], "one sender thread serves the three runs"
    ids = seen["ids"]
    assert seen["current"] == ids[2], "runstream.run is the last run started"

    expected = [(state, exit_code), ("finished", 0), (state, exit_code)]  # the second was finished by the script
    for index, run_id in enumerate(ids):
        path = f"default/{project}/{run_id}"
        want = expected[index][0]
        wait_for(lambda path=path, want=want: api.run(path).state == want, f"{path} to be {want}", 10)
        run = api.run(path)
        assert (run.state, run.exit_code) == expected[index]
        assert (run.name, run.config) == (f"multi-{index}", {"index": index})
        rows = scanned_history(api, path)
        assert [r["_step"] for r in rows] == list(range(STEPS))
        assert [(r["loss"], r["index"]) for r in rows] == [(index + 1 / (s + 1), index) for s in range(STEPS)]
        if ending == "uncaught exception" and index != 1:
            assert "ValueError: boom with three runs" in (run._attrs.get("error") or "")
    assert len(api.runs(f"default/{project}")) == 3


def test_the_script_run_twice_from_its_own_directory_makes_three_runs_each_time(server, api, tmp_path):
    project = unique("twice")
    env = script_env(server.url, tmp_path)
    first, _ = _run_multi(project, "sys.exit(3)", tmp_path / "work", env)
    second, _ = _run_multi(project, "no finish()", tmp_path / "work", env)
    assert not set(first["ids"]) & set(second["ids"])
    states = {r.id: (r.state, r.exit_code) for r in api.runs(f"default/{project}")}
    assert states == {
        **{run_id: ("failed", 3) for run_id in first["ids"]},
        **{run_id: ("finished", 0) for run_id in second["ids"]},
        first["ids"][1]: ("finished", 0),
    }


def test_by_default_a_second_init_still_finishes_the_first(server, api, tmp_path):
    project = unique("default")
    body = textwrap.dedent(f"""\
        import json, sys, threading, runstream
        quiet = {{"system_metrics": False, "git": False}}
        first = runstream.init(project={project!r}, settings=quiet)
        first.log({{"x": 1.0}})
        second = runstream.init(project={project!r}, settings=quiet)
        second.log({{"x": 2.0}})
        print("STATE " + json.dumps({{"ids": [first.id, second.id], "current": runstream.run.id}}), flush=True)
        sys.exit(3)
        """)
    (tmp_path / "train.py").write_text(body)
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=script_env(server.url, tmp_path), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    seen = _state(result.stdout)
    first, second = (f"default/{project}/{run_id}" for run_id in seen["ids"])
    assert seen["current"] == seen["ids"][1]
    assert (api.run(first).state, api.run(first).exit_code) == ("finished", 0)
    assert (api.run(second).state, api.run(second).exit_code) == ("failed", 3)
    assert [r["x"] for r in scanned_history(api, first)] == [1.0] and [
        r["x"] for r in scanned_history(api, second)
    ] == [2.0]


def test_fifty_runs_logged_from_five_threads_share_one_sender_and_all_arrive(server, api, tmp_path):
    project, count, steps = unique("many"), 50, 40
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "many_runs.py"), project, str(count), "5", str(steps)],
        cwd=tmp_path, env=script_env(server.url, tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not acknowledged" not in result.stderr, result.stderr
    seen = _state(result.stdout)
    assert seen["senders"] == ["runstream-sender"] and len(set(seen["ids"])) == count
    stored = {r.id: r for r in api.runs(f"default/{project}", per_page=100)}
    assert set(stored) == set(seen["ids"])
    for index, run_id in enumerate(seen["ids"]):
        run = stored[run_id]
        assert (run.state, run.exit_code, run.config) == ("finished", 0, {"index": index})
        rows = scanned_history(api, f"default/{project}/{run_id}")
        assert [(r["_step"], r["v"]) for r in rows] == [(s, index * 1000 + s) for s in range(steps)]


def test_a_run_whose_server_never_answers_holds_up_none_of_the_others(server, api, tmp_path):
    """One run sends to an address that takes connections and never answers: the other run's
    events still arrive while it waits, and at exit the silent one's stay in its spool."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; no request is ever read
    project = unique("stall")
    body = textwrap.dedent(f"""\
        import json, sys, runstream
        quiet = {{"system_metrics": False, "git": False, "finish_timeout": 1}}
        stuck = runstream.init(project={project!r}, reinit="create_new",
                               settings={{**quiet, "url": "http://127.0.0.1:{silent.getsockname()[1]}"}})
        good = runstream.init(project={project!r}, reinit="create_new", settings=quiet)
        for step in range(20):
            stuck.log({{"x": step}})
            good.log({{"x": step}})
        print("STATE " + json.dumps({{"ids": [stuck.id, good.id], "dir": stuck.dir}}), flush=True)
        sys.stdin.readline()  # until the test has seen the good run's points on the server
        good.log({{"x": 20}})
        """)
    (tmp_path / "train.py").write_text(body)
    proc = subprocess.Popen(
        [sys.executable, "train.py"], cwd=tmp_path, env=script_env(server.url, tmp_path), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = _state(proc.stdout.readline())
        good = f"default/{project}/{seen['ids'][1]}"
        wait_for(lambda: _stored_steps(api, good) == 20, "the good run's points while the other's send hangs")
        _, stderr = proc.communicate("go\n", timeout=120)
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == 0, stderr
    assert (api.run(good).state, len(scanned_history(api, good))) == ("finished", 21)
    assert f"kept in {seen['dir']}" in stderr and stderr.count("were not sent") == 1, stderr
    kept = spooled_events(seen["dir"])  # what `runstream sync` would send: everything, finished
    assert sorted(p[0] for p in metric_points(kept)) == list(range(20))
    assert kept[-1].type == events.RUN_FINISH and kept[-1].data["state"] == "finished"


@pytest.mark.kafka
def test_three_runs_through_kafka_each_deliver_everything_and_their_end(kafka_bootstrap, tmp_path):
    """The runs share the sender thread's loop and one Kafka producer."""
    project = unique("kmulti")
    seen, stderr = _run_multi(
        project, "sys.exit(3)", tmp_path / "work", script_env(f"kafka://{kafka_bootstrap}", tmp_path)
    )
    assert "not acknowledged" not in stderr, stderr
    assert seen["senders"] == ["runstream-sender"] and seen["kafka_producers"] == 1

    def all_finished(found: list[events.Event]) -> bool:
        return len({e.run_id for e in found if e.type == events.RUN_FINISH}) == 3

    topics = [events.TOPIC_RUNS.name, events.TOPIC_METRICS.name]
    found = asyncio.run(consume_events(kafka_bootstrap, topics, project, all_finished, timeout=60))
    distinct = list({(e.run_id, e.seq): e for e in found}.values())
    for index, run_id in enumerate(seen["ids"]):
        mine = [e for e in distinct if e.run_id == run_id]
        finish = [(e.data["state"], e.data["exit_code"]) for e in mine if e.type == events.RUN_FINISH]
        assert finish == [("finished", 0) if index == 1 else ("failed", 3)]
        losses = sorted(p for p in metric_points(mine) if p[1] == "loss")
        assert losses == [(s, "loss", index + 1 / (s + 1)) for s in range(STEPS)]
