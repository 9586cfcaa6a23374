"""The SDK as users run it: real W&B-style scripts, run as subprocesses from their own directory,
against a real ``runstream server`` (embedded ClickHouse), ending every way a script can end, run
twice, resumed, edited. Everything is read back through ``runstream.Api``, as a user would.

Where W&B's behaviour is the reference, the test says which behaviour it pins down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from infra.net import free_port
from runstream.public_api import ApiError
from tests.helpers import Server, as_in_a_terminal, scanned_history, script_env, unique, wait_for

STEPS = 5
#: Crash detection in seconds, short so a SIGKILLed run is marked crashed within the test.
CRASH_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("server")
    server = Server(data / "data", free_port(), RUNSTREAM_CRASH_TIMEOUT=str(CRASH_TIMEOUT)).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


CONFIG = '{"lr": 0.01, "layers": 3}'


def _script(
    project: str, run_id: str | None, then: str, before: str = "", init_args: str = "", config: str = CONFIG
) -> str:
    """A W&B-style training script: init with a config, log STEPS steps (with a pause, so the rows
    leave in more than one batch), then ``then`` — the way it ends."""
    run_id_arg = f"id={run_id!r}, " if run_id else ""
    return textwrap.dedent(f"""\
        import json, os, sys, time
        import runstream as wandb
        {before}
        run = wandb.init(project={project!r}, {run_id_arg}config={config},
                         settings={{"system_metrics": False, "git": False}}{init_args})
        print("START " + json.dumps({{"step": run.step, "name": run.name, "config": dict(run.config),
                                      "resumed": run.resumed, "dir": run.dir}}), flush=True)
        first = run.step
        for i in range({STEPS}):
            wandb.log({{"loss": 1.0 / (first + i + 1), "epoch": first + i}})
            if i == 2:
                time.sleep(0.6)
        print("training done", flush=True)
        """) + textwrap.dedent(then)


def _run(directory: Path, body: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(body)
    return subprocess.run(
        [sys.executable, "train.py"], cwd=directory, env=env, capture_output=True, text=True, timeout=timeout
    )


def _start(directory: Path, body: str, env: dict[str, str]) -> subprocess.Popen:
    """The script in the background, once it has logged everything (it printed 'training done')."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(body)
    proc = subprocess.Popen(
        [sys.executable, "train.py"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_in_a_terminal,
    )
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.strip() == "training done":
            return proc
    raise AssertionError(f"the script ended early: {proc.stderr.read()}")  # type: ignore[union-attr]


def _state(api: runstream.Api, path: str) -> str | None:
    """The run's state, None while the server does not know the run yet."""
    try:
        return api.run(path).state
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None


def _started(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("START "))[6:])


# -- every way a script ends ------------------------------------------------------------------------

ENDINGS = {
    # name: (the script's end, signal sent once it has logged, state, exit code)
    "falls off the end": ("", None, "finished", 0),
    "finish()": ("wandb.finish()\n", None, "finished", 0),
    "sys.exit(0)": ("sys.exit(0)\n", None, "finished", 0),
    # W&B: a non-zero sys.exit code marks the run failed with that exit code.
    "sys.exit(3)": ("sys.exit(3)\n", None, "failed", 3),
    "sys.exit(message)": ("sys.exit('bad data')\n", None, "failed", 1),
    # W&B: an uncaught exception fails the run with exit code 1.
    "uncaught exception": ("raise ValueError('boom at the end')\n", None, "failed", 1),
    # Ctrl-C and SIGTERM: runstream says killed (W&B records failed, exit code 255, for Ctrl-C).
    "KeyboardInterrupt": ("time.sleep(60)\n", signal.SIGINT, "killed", 130),
    "SIGTERM": ("time.sleep(60)\n", signal.SIGTERM, "killed", 143),
    # Nothing runs on SIGKILL: the server marks the run crashed once it has been silent too long (as W&B).
    "SIGKILL": ("time.sleep(60)\n", signal.SIGKILL, "crashed", None),
}


def _end_as(ending: str, directory: Path, body: str, env: dict[str, str]) -> None:
    """Run ``body`` to its end, or send it the ending's signal once it has logged everything."""
    _, sig, _, exit_code = ENDINGS[ending]
    if sig is None:
        result = _run(directory, body, env)
        assert result.returncode == exit_code, result.stderr
        stderr = result.stderr
    else:
        proc = _start(directory, body, env)
        time.sleep(0.5)  # the rows are in the sender's hands, maybe not yet sent
        proc.send_signal(sig)
        proc.wait(timeout=60)
        stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert "not acknowledged" not in stderr, stderr


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_way_a_script_ends_keeps_every_point_and_says_how_it_ended(ending, server, api, tmp_path):
    then, _, state, exit_code = ENDINGS[ending]
    project, run_id = unique("exits"), unique("r")
    env = script_env(server.url, tmp_path)
    _end_as(ending, tmp_path / "work", _script(project, run_id, then), env)

    path = f"default/{project}/{run_id}"
    timeout = CRASH_TIMEOUT + 15 if state == "crashed" else 10
    # Asked right after a kill, the server may not know the run yet (its events are still on their way): 404.
    wait_for(lambda: _state(api, path) == state, f"{path} to be {state}", timeout)
    run = api.run(path)
    assert run.exit_code == exit_code
    assert run.config == {"lr": 0.01, "layers": 3}
    rows = scanned_history(api, path)
    assert [r["_step"] for r in rows] == list(range(STEPS))
    assert [r["loss"] for r in rows] == [1.0 / (i + 1) for i in range(STEPS)]
    assert run.summary["loss"] == 1.0 / STEPS and run.summary["epoch"] == STEPS - 1
    if ending == "uncaught exception":
        # The traceback is on the run and in its console, where W&B users look for it.
        assert "ValueError: boom at the end" in (run._attrs.get("error") or "")
        console = api._request("GET", f"/runs/{path}/console", params={"tail": 100}, what="console")
        assert "ValueError: boom at the end" in json.dumps(console)


def test_a_script_run_twice_from_its_own_directory(server, api, tmp_path):
    """The second run used to die: the runs folder left beside the script shadowed the package."""
    project = unique("twice")
    env = script_env(server.url, tmp_path)
    work = tmp_path / "project"
    first = _run(work, _script(project, None, ""), env)
    second = _run(work, _script(project, None, ""), env)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    ids = {Path(_started(r.stdout)["dir"]).name.rsplit("-", 1)[1] for r in (first, second)}
    assert len(ids) == 2
    for run_id in ids:
        run = api.run(f"default/{project}/{run_id}")
        assert run.state == "finished" and len(scanned_history(api, f"default/{project}/{run_id}")) == STEPS
    plain = subprocess.run(
        [sys.executable, "-c", "import runstream; print(runstream.init.__module__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.stdout.strip() == "runstream.lifecycle", plain.stderr
    assert Path(_started(second.stdout)["dir"]).is_absolute()  # run.dir is absolute, as in W&B


# -- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same directory", "another directory (another node)"])
def test_resume_continues_the_run(where, server, api, tmp_path):
    project, run_id = unique("resume"), unique("r")
    env = script_env(server.url, tmp_path)
    # A preempted job: it logs, then dies with a failure code.
    first = _run(
        tmp_path / "node1",
        _script(project, run_id, "wandb.define_metric('loss', summary='min,max,mean')\nsys.exit(1)\n"),
        env,
    )
    assert first.returncode == 1, first.stderr
    name = api.run(f"default/{project}/{run_id}").name
    second_dir = tmp_path / ("node1" if where == "same directory" else "node2")
    # The resumed script passes no config: the run's own comes back (it was empty locally before).
    second = _run(
        second_dir,
        _script(
            project,
            run_id,
            "wandb.define_metric('loss', summary='min,max,mean')\n",
            init_args=", resume='allow'",
            config="None",
        ),
        env,
    )
    assert second.returncode == 0, second.stderr
    started = _started(second.stdout)
    # W&B: a resumed run continues after its last step, with its name and config.
    assert started == {**started, "step": STEPS, "name": name, "resumed": True, "config": {"lr": 0.01, "layers": 3}}
    path = f"default/{project}/{run_id}"
    run = api.run(path)
    assert run.state == "finished" and run.exit_code == 0 and run.name == name
    rows = scanned_history(api, path)
    assert [r["_step"] for r in rows] == list(range(2 * STEPS))
    assert [r["loss"] for r in rows] == [1.0 / (i + 1) for i in range(2 * STEPS)]
    # Statistics over the whole run, both processes (W&B's define_metric summary shape).
    losses = [1.0 / (i + 1) for i in range(2 * STEPS)]
    assert run.summary["loss"] == {
        "min": min(losses),
        "max": max(losses),
        "mean": pytest.approx(sum(losses) / len(losses)),
    }


def test_a_resume_on_a_node_whose_clock_is_a_day_behind_is_not_taken_for_a_replay(server, api, tmp_path):
    """Sequence numbers start from the clock; the resumed run numbers its events above the server's last."""
    project, run_id = unique("skew"), unique("r")
    env = script_env(server.url, tmp_path)
    assert _run(tmp_path / "node1", _script(project, run_id, "sys.exit(1)\n"), env).returncode == 1
    behind = "real_time = time.time; time.time = lambda: real_time() - 86400"
    second = _run(tmp_path / "node2", _script(project, run_id, "", before=behind, init_args=", resume='must'"), env)
    assert second.returncode == 0, second.stderr
    path = f"default/{project}/{run_id}"
    run = api.run(path)
    assert (run.state, run.exit_code) == ("finished", 0)
    assert [r["_step"] for r in scanned_history(api, path)] == list(range(2 * STEPS))


def test_resume_must_and_never_are_clear_errors(server, api, tmp_path):
    project, run_id = unique("rules"), unique("r")
    env = script_env(server.url, tmp_path)
    must = _run(tmp_path / "a", _script(project, run_id, "", init_args=", resume='must'"), env)
    assert must.returncode == 1 and "resume='must'" in must.stderr and "was not found" in must.stderr
    assert _run(tmp_path / "a", _script(project, run_id, ""), env).returncode == 0
    never = _run(tmp_path / "b", _script(project, run_id, "", init_args=", resume='never'"), env)
    assert never.returncode == 1 and "resume='never'" in never.stderr and "already exists" in never.stderr


def test_resume_auto_continues_the_crashed_run_of_this_directory(server, api, tmp_path):
    """W&B's resume='auto': the previous run from this directory is continued if it did not end well."""
    project = unique("auto")
    env = script_env(server.url, tmp_path)
    work = tmp_path / "job"
    # Killed hard a second after its last log(): its rows are in the spool, maybe not sent.
    crashed = _run(work, _script(project, None, "time.sleep(1)\nos._exit(9)\n", init_args=", resume='auto'"), env)
    assert crashed.returncode == 9
    run_id = Path(_started(crashed.stdout)["dir"]).name.rsplit("-", 1)[1]
    again = _run(work, _script(project, None, "", init_args=", resume='auto'"), env)
    assert again.returncode == 0, again.stderr
    assert _started(again.stdout)["resumed"] and _started(again.stdout)["step"] == STEPS
    assert [r["_step"] for r in scanned_history(api, f"default/{project}/{run_id}")] == list(range(2 * STEPS))
    fresh = _run(work, _script(project, None, "", init_args=", resume='auto'"), env)
    assert not _started(fresh.stdout)["resumed"]  # the last one ended well: a new run


# -- edits -----------------------------------------------------------------------------------------


def test_edits_during_the_run_stick(server, api, tmp_path):
    project, run_id = unique("edits"), unique("r")
    then = """
run.name = "renamed-during"
run.tags = ["baseline", "v2"]
run.notes = "tried a smaller lr"
run.config.update({"dropout": 0.1})
run.summary["best_epoch"] = 3
"""
    result = _run(tmp_path / "w", _script(project, run_id, then), script_env(server.url, tmp_path))
    assert result.returncode == 0, result.stderr
    run = api.run(f"default/{project}/{run_id}")
    assert (run.name, run.tags, run.notes) == ("renamed-during", ["baseline", "v2"], "tried a smaller lr")
    assert run.config == {"lr": 0.01, "layers": 3, "dropout": 0.1}
    assert run.summary["best_epoch"] == 3 and run.summary["loss"] == 1.0 / STEPS


def test_edits_after_the_run_through_the_public_api_stick(server, api, tmp_path):
    """W&B's Run.update(): change the attributes, call update(); a later read shows them."""
    project, run_id = unique("after"), unique("r")
    assert _run(tmp_path / "w", _script(project, run_id, ""), script_env(server.url, tmp_path)).returncode == 0
    run = api.run(f"default/{project}/{run_id}")
    run.name = "renamed-after"
    run.tags.append("reviewed")
    run.notes = "good one"
    run.config["lr"] = 0.02
    run.summary["verdict"] = "keep"
    run.update()
    again = api.run(f"default/{project}/{run_id}")
    assert (again.name, again.tags, again.notes) == ("renamed-after", ["reviewed"], "good one")
    assert again.config["lr"] == 0.02 and again.config["layers"] == 3
    assert again.summary["verdict"] == "keep" and again.summary["loss"] == 1.0 / STEPS
    # A resume elsewhere keeps the edits: the run's name, tags and config come from the server.
    resumed = _run(
        tmp_path / "elsewhere",
        _script(project, run_id, "", init_args=", resume='must'", config="None"),
        script_env(server.url, tmp_path),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _started(resumed.stdout)["name"] == "renamed-after"
    after = api.run(f"default/{project}/{run_id}")
    assert (after.name, after.tags, after.config["lr"], after.summary["verdict"]) == (
        "renamed-after",
        ["reviewed"],
        0.02,
        "keep",
    )


# -- other things a W&B script does -----------------------------------------------------------------


def test_disabled_mode_leaves_nothing_behind(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    body = textwrap.dedent("""\
        import os, runstream as wandb
        run = wandb.init(project="p", mode="disabled", config={"a": 1})
        wandb.log({"x": 1})
        run.summary["y"] = 2
        assert os.path.isdir(run.dir)
        wandb.finish()
        """)
    env = {**os.environ, "TMPDIR": str(tmp)}
    result = _run(tmp_path / "w", body, env)
    assert result.returncode == 0, result.stderr
    assert list(tmp.iterdir()) == [] and sorted(p.name for p in (tmp_path / "w").iterdir()) == ["train.py"]


def test_save_live_keeps_files_created_after_the_call(server, api, tmp_path):
    """W&B's wandb.save("*.txt"): files matching the glob later are saved too, and changes are kept."""
    project, run_id = unique("save"), unique("r")
    then = """
wandb.save("*.txt")
open("late.txt", "w").write("written after save()")
time.sleep(2.5)
open("late.txt", "w").write("changed again")
"""
    before = 'open("early.txt", "w").write("early")'
    result = _run(tmp_path / "w", _script(project, run_id, then, before=before), script_env(server.url, tmp_path))
    assert result.returncode == 0, result.stderr
    files = api._request("GET", f"/runs/default/{project}/{run_id}/files", params={}, what="files")["files"]
    by_path = {f["path"]: f for f in files}
    assert {"early.txt", "late.txt"} <= set(by_path)
    assert by_path["late.txt"]["size"] == len("changed again")


# -- the same exits through Kafka (a cluster's transport) -------------------------------------------

KAFKA_ENDINGS = ["falls off the end", "sys.exit(3)", "uncaught exception", "KeyboardInterrupt", "SIGTERM"]


@pytest.mark.kafka
@pytest.mark.parametrize("ending", KAFKA_ENDINGS)
def test_every_way_a_script_ends_through_kafka_delivers_everything(ending, kafka_bootstrap, tmp_path):
    import asyncio

    from runstream import events
    from tests.helpers import consume_events, metric_points

    then, _, state, exit_code = ENDINGS[ending]
    project, run_id = unique("kexits"), unique("r")
    env = script_env(f"kafka://{kafka_bootstrap}", tmp_path)
    _end_as(ending, tmp_path / "work", _script(project, run_id, then), env)

    def finished(found: list) -> bool:
        return any(e.type == events.RUN_FINISH for e in found)

    topics = [events.TOPIC_RUNS.name, events.TOPIC_METRICS.name]
    found = asyncio.run(consume_events(kafka_bootstrap, topics, project, finished, timeout=60))
    distinct = {(e.run_id, e.seq): e for e in found}.values()
    finish = [e for e in distinct if e.type == events.RUN_FINISH]
    assert [(f.data["state"], f.data["exit_code"]) for f in finish] == [(state, exit_code)]
    points = sorted(p for p in metric_points(list(distinct)) if p[1] == "loss")
    assert points == [(i, "loss", 1.0 / (i + 1)) for i in range(STEPS)]
    if ending == "uncaught exception":
        assert "ValueError: boom at the end" in finish[0].data["traceback"]
