"""Sweeps end to end, as users run them (docs/sweeps.md): ``runstream sweep`` and ``runstream agent``
(or ``runstream.sweep()`` and ``runstream.agent(function=...)``) against a real ``runstream server``,
with a tiny training program (tests/scripts/sweep_train.py) as the sweep's runs. The runs are read
back through ``runstream.Api``, as a user would.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import runstream
from infra.net import free_port
from runstream.public_api import ApiError
from tests.helpers import RUNSTREAM, Server, as_in_a_terminal, script_env, unique, wait_for
from tests.scripts.sweep_train import expected_loss  # the program's own loss, to check runs against

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
#: Crash detection (and an agent's silence) in seconds, short so a killed agent's claim is given back soon.
CRASH_TIMEOUT = 3
#: The agents beat this often (s), so a stop reaches a run soon after hyperband decides it.
HEARTBEAT_S = "0.3"
#: Enough for any one wait here on a loaded machine; the tests end as soon as what they wait for holds.
PATIENCE = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("server")
    server = Server(data / "data", free_port(), RUNSTREAM_CRASH_TIMEOUT=str(CRASH_TIMEOUT)).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


@pytest.fixture
def work(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory the agents and their runs work in, holding the program; this process's
    ``runstream.sweep()`` talks to the test's server."""
    shutil.copy(SCRIPTS / "sweep_train.py", tmp_path / "sweep_train.py")
    for key, value in _env(server, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RUNSTREAM_API_KEY", raising=False)
    return tmp_path


def _env(server: Server, tmp_path: Path) -> dict[str, str]:
    return {**script_env(server.url, tmp_path), "RUNSTREAM_AGENT_HEARTBEAT_S": HEARTBEAT_S}


def _cli(work: Path, *args: str, timeout: float = PATIENCE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUNSTREAM), *args], cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def _agent(work: Path, sweep: str, *args: str) -> subprocess.Popen:
    """``runstream agent SWEEP`` in the background, in a session of its own (so it and its run can be killed
    together), its output (the runs' too) collected."""
    return subprocess.Popen(
        [str(RUNSTREAM), "agent", sweep, *args],
        cwd=work,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _function_agent(work: Path, sweep: str, *args: str) -> subprocess.Popen:
    """``runstream.agent(sweep, function=train)`` in a process of its own (tests/scripts/sweep_train.py)."""
    return subprocess.Popen(
        [sys.executable, "sweep_train.py", "--agent", sweep, *args],
        cwd=work,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finished(agent: subprocess.Popen) -> tuple[str, str]:
    out, err = agent.communicate(timeout=PATIENCE)
    assert agent.returncode == 0, f"the agent exited with {agent.returncode}:\n{out}\n{err}"
    return out, err


def _create(work: Path, config: dict, project: str) -> str:
    """``runstream sweep sweep.yaml --project P``: the sweep's path, from the agent command it prints."""
    (work / "sweep.yaml").write_text(yaml.safe_dump(config))
    result = _cli(work, "sweep", "sweep.yaml", "--project", project)
    assert result.returncode == 0, result.stderr
    command = next(line.strip() for line in result.stdout.splitlines() if line.strip().startswith("runstream agent "))
    path = command.split()[-1]
    assert path.startswith(f"default/{project}/") and len(path.rsplit("/", 1)[1]) == 8
    return path


def _runs(api: runstream.Api, project: str) -> list:
    return list(api.runs(f"default/{project}"))


def _settled(api: runstream.Api, project: str, count: int) -> list:
    """The project's runs once there are ``count`` of them and none is running any more."""
    found: list = []

    def done() -> bool:
        found[:] = _runs(api, project)
        return len(found) == count and all(r.state not in ("running", "pending", None) for r in found)

    wait_for(done, f"{count} ended runs in {project}", PATIENCE)
    return found


def _sweep(api: runstream.Api, path: str) -> dict:
    team, project, sweep_id = path.split("/")
    return api._request("GET", f"/projects/{team}/{project}/sweeps/{sweep_id}", what=f"sweep {path}")


# -- (1) grid, two agents ----------------------------------------------------------------------------


def test_a_grid_shared_by_two_agents_runs_each_point_exactly_once(api, work):
    project = unique("grid")
    grid = {"a": [1, 2, 3], "b": ["p", "q"]}
    config = {
        "program": "sweep_train.py",
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"a": {"values": grid["a"]}, "b": {"values": grid["b"]}, "pause": {"value": 0.2}},
    }
    path = _create(work, config, project)
    agents = [_agent(work, path), _agent(work, path)]
    outputs = [_finished(agent) for agent in agents]

    runs = _settled(api, project, 6)
    assert sorted((r.config["a"], r.config["b"]) for r in runs) == sorted(itertools.product(grid["a"], grid["b"]))
    assert {r.state for r in runs} == {"finished"}
    for run in runs:
        assert run.summary["loss"] == pytest.approx(expected_loss(run.config))
    # The runs' own output came through the agents', unprefixed; each agent said the sweep was done.
    started = [line for out, _ in outputs for line in out.splitlines() if line.startswith("RUN ")]
    assert sorted(json.loads(line[4:])["run_id"] for line in started) == sorted(r.id for r in runs)
    assert all("nothing more to run" in err for _, err in outputs)
    wait_for(lambda: api.sweep(path).state == "finished", f"sweep {path} to be finished", PATIENCE)
    # wandb's public API: the sweep, its runs and its best run, and each run's sweep.
    sweep = api.sweep(path)
    assert (sweep.method, sweep.config["method"], sweep.path) == ("grid", "grid", path.split("/"))
    assert sorted(r.id for r in sweep.runs) == sorted(r.id for r in runs)
    assert sweep.best_run().summary["loss"] == min(r.summary["loss"] for r in runs)
    assert sweep.best_run(order="-summary.loss").summary["loss"] == max(r.summary["loss"] for r in runs)
    assert runs[0].sweep_name == sweep.id and runs[0].sweep.id == sweep.id
    assert [s.id for s in api.project(project, "default").sweeps()] == [sweep.id]


# -- (2) random and bayes, function= in process ------------------------------------------------------


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_with_a_function_run_their_suggestions(method, api, work):
    project = unique(method)
    path = runstream.sweep(
        {
            "method": method,
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {
                "x": {"min": 0.0, "max": 1.0},
                "lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1},
                "opt": {"values": ["adam", "sgd"]},
            },
        },
        project=project,
    )
    team, _, sweep_id = path.split("/")
    assert team == "default"
    _, err = _finished(_function_agent(work, path, "--count", "3"))
    assert "ran 3 runs" in err

    runs = _settled(api, project, 3)
    for run in runs:
        assert run.state == "finished"
        assert 0.0 <= run.config["x"] <= 1.0 and 0.001 <= run.config["lr"] <= 0.1
        assert run.config["opt"] in ("adam", "sgd")
        assert run.summary["loss"] == pytest.approx(expected_loss(run.config))
        detail = api._request("GET", f"/runs/default/{project}/{run.id}", what="run")
        assert detail.get("sweep") == sweep_id
    assert len({(r.config["x"], r.config["lr"]) for r in runs}) == 3  # three suggestions, not one thrice
    # The agent put the process's environment back as it found it.
    assert "RUNSTREAM_RUN_ID" not in os.environ


# -- (3) hyperband -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["command", "function"])
def test_hyperband_stops_the_bad_runs_and_no_others(how, api, work):
    """A child process is stopped with SIGTERM, a ``function=`` run with a KeyboardInterrupt: either way
    the run ends ``stopped``."""
    project = unique("hyperband")
    config = {
        "program": "sweep_train.py",
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        # The two good runs come first (grid order); a bad one (loss0 1.0) would train 20 times longer.
        "parameters": {
            "loss0": {"values": [0.1, 1.0]},
            "seed": {"values": [1, 2]},
            "steps": {"value": 8},
            "pause": {"value": 0.1},
        },
    }
    path = _create(work, config, project)
    if how == "command":
        _, err = _finished(_agent(work, path))
    else:
        _, err = _finished(_function_agent(work, path))

    runs = _settled(api, project, 4)
    states = {(r.config["loss0"], r.config["seed"]): r.state for r in runs}
    assert states == {(0.1, 1): "finished", (0.1, 2): "finished", (1.0, 1): "stopped", (1.0, 2): "stopped"}
    for run in runs:
        logged = len(list(run.scan_history(keys=["loss"])))
        assert logged == 8 if run.config["loss0"] == 0.1 else 2 <= logged < 160
        if run.state == "stopped":
            assert f"stopping run {run.id}" in err


# -- (4) a killed agent ------------------------------------------------------------------------------


def test_a_killed_agents_suggestion_goes_to_another_agent(api, work):
    project = unique("killed")
    config = {
        "program": "sweep_train.py",
        "method": "grid",
        # The first point (loss0 1.0) trains long enough to be killed while it runs.
        "parameters": {"loss0": {"values": [1.0, 0.2]}, "steps": {"value": 3}, "pause": {"value": 0.1}},
    }
    path = _create(work, config, project)
    first = _agent(work, path)
    assert first.stdout is not None
    line = next((line for line in first.stdout if line.startswith("RUN ")), None)
    assert line is not None, f"the agent ended before its run started: {first.stderr.read()}"
    killed = json.loads(line[4:])
    assert killed["config"]["loss0"] == 1.0
    killed_path = f"default/{project}/{killed['run_id']}"
    wait_for(lambda: _state(api, killed_path) == "running", f"{killed_path} to be running", PATIENCE)
    os.killpg(first.pid, signal.SIGKILL)  # the agent and its run (a process group of its own), as a lost machine
    os.killpg(killed["pid"], signal.SIGKILL)
    first.wait(timeout=30)
    at = time.monotonic()
    wait_for(lambda: _state(api, killed_path) == "crashed", f"{killed_path} to be crashed", PATIENCE)
    wait_for(lambda: time.monotonic() - at > CRASH_TIMEOUT + 1, "the agent to be silent past the crash timeout")

    _finished(_agent(work, path))
    runs = _settled(api, project, 3)
    by_state = {r.id: r.state for r in runs}
    assert by_state.pop(killed["run_id"]) == "crashed"
    assert set(by_state.values()) == {"finished"}
    # Both points ran to the end, the killed one again under a new run id.
    assert sorted(r.config["loss0"] for r in runs if r.state == "finished") == [0.2, 1.0]


def _state(api: runstream.Api, path: str) -> str | None:
    try:
        return api.run(path).state
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` is there and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("who", ["ctrl-c in its terminal", "ctrl-c to the agent alone", "sigterm to the agent"])
def test_ctrl_c_or_sigterm_ends_the_agent_and_its_run(who, api, work):
    """Ctrl-C in a terminal reaches the agent (its process group; the run has a group of its own), and
    the agent ends the run (SIGTERM to the run's group: a launcher's workers too), then exits 130.
    SIGTERM to the agent does the same, and it exits 143."""
    project = unique("ctrlc")
    # A run of a minute (60 steps), interrupted once it is under way; it starts a worker process of its own.
    worker = work / "worker.pid"
    parameters = {"loss0": {"values": [1.0]}, "pause": {"value": 1.0}, "grandchild": {"value": str(worker)}}
    config = {"program": "sweep_train.py", "method": "grid", "parameters": parameters}
    path = _create(work, config, project)
    agent = subprocess.Popen(
        [str(RUNSTREAM), "agent", path],
        cwd=work,
        env={**os.environ, "RUNSTREAM_AGENT_HEARTBEAT_S": HEARTBEAT_S},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,
    )
    assert agent.stdout is not None
    line = next((line for line in agent.stdout if line.startswith("RUN ")), None)
    assert line is not None, f"the agent ended before its run started: {agent.stderr.read()}"
    run_path = f"default/{project}/{json.loads(line[4:])['run_id']}"
    wait_for(lambda: _state(api, run_path) == "running", f"{run_path} to be running", PATIENCE)
    worker_pid = int(worker.read_text())
    assert _alive(worker_pid)
    if who == "ctrl-c in its terminal":
        os.killpg(agent.pid, signal.SIGINT)
    elif who == "ctrl-c to the agent alone":
        agent.send_signal(signal.SIGINT)
    else:
        agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=PATIENCE)
    said = ("terminated (SIGTERM)", 143) if who == "sigterm to the agent" else ("interrupted", 130)
    assert agent.returncode == said[1], err
    assert said[0] in err and "sweeps.py" not in err  # the run's traceback, if any, not the agent's
    wait_for(lambda: _state(api, run_path) == "killed", f"{run_path} to be killed", PATIENCE)
    wait_for(lambda: not _alive(worker_pid), "the run's worker to be gone", PATIENCE)
    agents = _sweep(api, path)["agents"]
    assert [a["state"] for a in agents] == ["finished"]  # it said so as it ended


def test_sigterm_ends_a_function_agent_and_its_run(api, work):
    """SIGTERM to a process running ``runstream.agent(function=...)``: its run ends killed, then the
    process exits 143."""
    project = unique("term")
    config = {"method": "grid", "parameters": {"loss0": {"values": [1.0]}, "pause": {"value": 1.0}}}
    path = runstream.sweep(config, project=project)
    agent = _function_agent(work, path)
    assert agent.stdout is not None
    line = next((line for line in agent.stdout if line.startswith("RUN ")), None)
    assert line is not None, f"the agent ended before its run started: {agent.stderr.read()}"
    run_path = f"default/{project}/{json.loads(line[4:])['run_id']}"
    wait_for(lambda: _state(api, run_path) == "running", f"{run_path} to be running", PATIENCE)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=PATIENCE)
    assert agent.returncode == 143 and "terminated (SIGTERM)" in err, err
    wait_for(lambda: _state(api, run_path) == "killed", f"{run_path} to be killed", PATIENCE)
    assert [a["state"] for a in _sweep(api, path)["agents"]] == ["finished"]


def test_runs_that_fail_at_once_stop_the_agent_and_their_grid_cells_run_later(api, work):
    """A typo'd program fails before init(): the agent gives up after three such runs in a row; once the
    crash timeout has passed, their grid cells go out again, and a fixed program runs them all."""
    project = unique("typo")
    config = {
        "program": "sweep_trian.py",
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"a": {"values": [1, 2]}},
    }
    path = _create(work, config, project)
    _, err = _finished(_agent(work, path))
    assert err.count("the run's command exited with code 2") == 3, err
    assert "3 runs in a row failed within 60 s of their start: stopping this agent" in err
    assert [a["state"] for a in _sweep(api, path)["agents"]] == ["finished"]
    assert _runs(api, project) == []

    shutil.copy(work / "sweep_train.py", work / "sweep_trian.py")
    _finished(_agent(work, path))
    runs = _settled(api, project, 2)
    assert sorted(r.config["a"] for r in runs) == [1, 2] and {r.state for r in runs} == {"finished"}
    assert _sweep(api, path)["state"] == "finished"


# -- (5) a bad configuration, and steering a sweep -----------------------------------------------------


def test_a_bad_configuration_lists_every_problem_and_creates_nothing(api, work):
    project = unique("bad")
    (work / "bad.yaml").write_text(
        "method: gird\n"
        "metric: {name: loss, goal: sideways}\n"
        "parameters:\n"
        "  lr: {min: 0.1, max: 0.01}\n"
        "  layers: {values: []}\n"
        "bogus: 1\n"
    )
    result = _cli(work, "sweep", "bad.yaml", "--project", project)
    assert result.returncode == 2, result.stdout + result.stderr
    problems = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    for key in ("bogus", "method", "metric.goal", "parameters.lr", "parameters.layers.values"):
        assert sum(p.startswith(key) for p in problems) == 1, f"{key} not listed once in:\n{result.stderr}"
    assert "created" not in result.stdout
    try:
        listed = api._request("GET", f"/projects/default/{project}/sweeps", what="sweeps")
    except ApiError as exc:
        assert exc.status == 404  # not even the project
    else:
        assert listed["total"] == 0


def test_a_sweep_is_paused_resumed_and_cancelled_from_the_command_line(api, work):
    project = unique("steer")
    config = {"program": "sweep_train.py", "method": "random", "parameters": {"x": {"min": 0.0, "max": 1.0}}}
    path = _create(work, config, project)
    for flag, state in (("--pause", "paused"), ("--resume", "running"), ("--cancel", "canceled")):
        result = _cli(work, "sweep", flag, path)
        assert result.returncode == 0, result.stderr
        assert _sweep(api, path)["state"] == state
    # A cancelled sweep hands out nothing: an agent ends at once, having run nothing.
    out, err = _finished(_agent(work, path))
    assert "RUN " not in out and "nothing more to run" in err
    assert _runs(api, project) == []


# -- wandb's own example ----------------------------------------------------------------------------


def test_wandbs_sweep_quickstart_runs_unchanged(api, work):
    """W&B's sweep walkthrough (``wandb.sweep(sweep=...)``, ``wandb.agent(sweep_id, function=main, count=)``,
    ``wandb.config.lr``), with ``import runstream as wandb``, in a process of its own."""
    shutil.copy(SCRIPTS / "wandb_sweep_example.py", work / "example.py")
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=PATIENCE
    )
    assert done.returncode == 0, done.stderr
    runs = _settled(api, "my-first-sweep", 3)
    assert {r.state for r in runs} == {"finished"}
    for run in runs:
        assert run.config["batch_size"] in (16, 32, 64) and run.config["epochs"] in (5, 10, 15)
        assert 0.0001 <= run.config["lr"] <= 0.1
        assert run.summary["epoch"] == run.config["epochs"] - 1 and "val_acc" in run.summary
    (sweep,) = api.project("my-first-sweep", "default").sweeps()
    assert (sweep.name, sweep.method) == ("sweep", "random") and sorted(r.id for r in sweep.runs) == sorted(
        r.id for r in runs
    )
