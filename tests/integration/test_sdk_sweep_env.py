"""A run started by a sweep's agent (docs/sweeps.md, "The run's side"): a real script, as a subprocess with the
agent's environment, against a real ``runstream server``. Its id, entity and project are the agent's (what
``init()`` names is ignored, with a warning), the sweep's parameters win over the script's config (and keep
winning, with one warning), and the server keeps the run's sweep."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.net import free_port
from runstream import sweeps
from tests.helpers import Server, script_env, unique, wait_for

SWEEP = "ab12cd34"

SCRIPT = """\
import json
import runstream

# The script's own project, entity and id: ignored in a sweep (as W&B does), one warning each.
run = runstream.init(project="elsewhere", entity="someone", id="myown", config={{"lr": 0.5, "epochs": 2, "optimizer": {{"name": "sgd", "momentum": 0.9}}}},
                     settings={{"system_metrics": False, "git": False, "console": False}})
run.config.update({{"lr": 0.9}})  # a sweep's key: ignored, with a warning
run.config.lr = 0.8  # ignored again, without a second warning
run.config.update({{"batch": 64}}, allow_val_change=True)  # a sweep's key, changed on purpose
run.config.update({{"epochs": 3}}, allow_val_change=True)  # the script's own key
print("RUN " + json.dumps({{"id": run.id, "config": dict(run.config)}}), flush=True)
for i in range(3):
    run.log({{"val/loss": 1.0 / (i + 1)}})
run.finish()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("server")
    server = Server(data / "data", free_port()).start()
    yield server
    server.stop()


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_a_sweep_run_takes_its_id_parameters_and_sweep_from_the_agents_environment(server, tmp_path: Path):
    project, run_id = unique("sweep"), unique("claim")
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lr": 0.01, "batch": 32, "optimizer": {"name": "adam"}}))
    env = {
        **script_env(server.url, tmp_path),
        "RUNSTREAM_SWEEP_ID": SWEEP,
        "RUNSTREAM_RUN_ID": run_id,
        "RUNSTREAM_SWEEP_PARAM_PATH": str(params),
    }
    env |= {"RUNSTREAM_ENTITY": "default", "RUNSTREAM_PROJECT": project}  # the agent's sweep's
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT.format()))
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    started = json.loads(next(line[4:] for line in done.stdout.splitlines() if line.startswith("RUN ")))
    config = {"lr": 0.01, "epochs": 3, "batch": 64, "optimizer": {"name": "adam", "momentum": 0.9}}
    assert started == {"id": run_id, "config": config}
    assert done.stderr.count("was set by the sweep") == 1, done.stderr
    for given in ("entity='someone'", "project='elsewhere'", "id='myown'"):
        assert done.stderr.count(f"init({given}) is ignored in a sweep") == 1, done.stderr

    url = f"{server.url}/api/v1/runs/default/{project}/{run_id}"
    wait_for(lambda: (_get(url) or {}).get("state") == "finished", "the run to be stored finished", timeout=60)
    run = _get(url)
    assert run is not None
    assert run["sweep"] == SWEEP and run["config"] == config
    found = _get(
        f"{server.url}/api/v1/projects/default/{project}/runs?filters="
        + urllib.parse.quote(json.dumps({"sweep": SWEEP}))
    )
    assert found is not None and [r["id"] for r in found["runs"]] == [run_id]


def test_a_sweep_id_that_is_not_one_and_unreadable_parameters_are_clear_errors(server, tmp_path: Path):
    env = {**script_env(server.url, tmp_path), "RUNSTREAM_SWEEP_ID": "Not-A-Sweep"}
    script = "import runstream\nrunstream.init(project='p', mode='offline')\n"
    (tmp_path / "train.py").write_text(script)
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "RUNSTREAM_SWEEP_ID='Not-A-Sweep' must be a sweep id" in done.stderr
    env = {**env, "RUNSTREAM_SWEEP_ID": SWEEP, "RUNSTREAM_SWEEP_PARAM_PATH": str(tmp_path / "missing.json")}
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "the sweep's parameters cannot be read" in done.stderr


def test_a_stop_that_lands_after_the_function_returned_is_not_taken_for_ctrl_c(tmp_path: Path):
    """The sweep's stop interrupts ``function()`` with ``interrupt_main()``, which lands on the main thread a
    little later: after the function returned it is dropped, while Ctrl-C still interrupts."""
    agent = sweeps._Agent("default", "p", SWEEP, lambda: None)
    shutil.rmtree(agent.param_dir)
    agent.interrupting, agent.in_function = True, False  # the function returned meanwhile
    agent._on_sigint(signal.SIGINT, None)
    assert not agent.interrupting
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C
        agent._on_sigint(signal.SIGINT, None)
    agent.interrupting, agent.in_function = True, True  # while it runs: the stop interrupts it
    with pytest.raises(KeyboardInterrupt):
        agent._on_sigint(signal.SIGINT, None)
