"""``runstream demo``: a realistic sweep logged through the real SDK to a running server.

A grid sweep (docs/sweeps.md) of 24 runs of a small simulated training loop over
learning rate, batch size and optimizer, run by ``runstream.agent()`` in this
process, with diverse curves, system metrics, a git commit with an uncommitted
diff, media (images when Pillow is installed, histograms, a table), and three
runs that show the tracker's alerting:

- one whose loss diverges, which fires the project's divergence rule;
- one that fails with a traceback (state ``failed``);
- one whose process is killed mid-training, which the server marks ``crashed``
  once it has been silent for ``RUNSTREAM_CRASH_TIMEOUT`` seconds (90 by default),
  firing the run-state rule; the sweep is finished from then on (the agent leaves once it ran
  every cell: nobody waits for that).

It needs only the SDK and the server's API (the rules are created through it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import orjson

import runstream
from runstream.public_api import Api, ApiError
from runstream.sweeps import create as create_sweep
from runstream.sweeps import environment

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
BATCH_SIZES = (32, 64, 128)
OPTIMIZERS = ("adam", "sgd")
DIVERGING = (3e-3, 32, "sgd")
FAILING = (1e-4, 128, "adam")
CRASHING = (3e-4, 128, "sgd")
#: The demo's sweep: every combination once, judged by the validation loss.
SWEEP = {
    "name": "lr x batch size x optimizer",
    "method": "grid",
    "metric": {"name": "val/loss", "goal": "minimize"},
    "parameters": {
        "lr": {"values": list(LEARNING_RATES)},
        "batch_size": {"values": list(BATCH_SIZES)},
        "optimizer": {"values": list(OPTIMIZERS)},
    },
}
#: How the agent's progress lines begin (sdk/sweeps.py): the demo's progress bar says as much.
AGENT_PREFIX = "runstream agent: "


@dataclass
class DemoResult:
    url: str
    team: str
    project: str
    runs: int
    seconds: float
    sweep: str  # team/project/sweep_id

    @property
    def project_url(self) -> str:
        return f"{self.url}/projects/{quote(self.team, safe='')}/{quote(self.project, safe='')}"

    @property
    def sweep_url(self) -> str:
        return f"{self.project_url}/sweeps/{quote(self.sweep.rsplit('/', 1)[-1], safe='')}"


def run_demo(
    url: str, api_key: str = "", team: str = "default", project: str = "demo", steps: int = 400, progress: bool = True
) -> DemoResult:
    """Log the sweep to the server at ``url``; the crashing run's process is left killed."""
    started = time.monotonic()
    api = Api(url=url, api_key=api_key)
    _create_rules(api, team, project)
    workdir = Path(tempfile.mkdtemp(prefix="runstream-demo-"))
    repo = _git_repo(workdir / "mnist-sweep")
    runs = len(LEARNING_RATES) * len(BATCH_SIZES) * len(OPTIMIZERS)
    bar = _progress(runs, progress)
    previous = os.getcwd()
    os.chdir(repo)  # the runs record this repository's commit and uncommitted diff
    try:
        # runstream.sweeps reads the server from the environment, as a user's sweep and agent do.
        with environment({"RUNSTREAM_URL": url, "RUNSTREAM_API_KEY": api_key}):
            sweep = create_sweep(SWEEP, project=project, entity=team)
            with contextlib.redirect_stderr(_WithoutAgentLines(sys.stderr)):
                # count: the agent leaves once it ran every cell; the sweep finishes once the killed run is
                # marked crashed (after RUNSTREAM_CRASH_TIMEOUT), which nobody need wait for.
                runstream.agent(sweep, function=_trainer(url, api_key, workdir, steps, bar), count=runs)
    finally:
        os.chdir(previous)
        bar.close()
    return DemoResult(url, team, project, runs, time.monotonic() - started, sweep)


def _trainer(url: str, api_key: str, workdir: Path, steps: int, bar: Any) -> Callable[[], None]:
    """The agent's ``function``: one run of the suggestion it was handed."""

    def train() -> None:
        # The suggestion names the run and picks its story before init(), which takes it into run.config.
        suggestion = json.loads(Path(os.environ["RUNSTREAM_SWEEP_PARAM_PATH"]).read_text())
        cell = (suggestion["lr"], suggestion["batch_size"], suggestion["optimizer"])
        config = {
            "epochs": 10,
            "model": {"layers": 3 if suggestion["batch_size"] < 128 else 4, "dropout": 0.1},
        }
        name = f"{suggestion['optimizer']}-lr{suggestion['lr']:g}-bs{suggestion['batch_size']}"
        if cell == CRASHING:
            _crashing_run(url, api_key, name, {**config, **suggestion}, workdir, steps)
        else:
            meta = {"group": suggestion["optimizer"], "tags": ["demo", f"bs{suggestion['batch_size']}"]}
            _training_run(url, api_key, name, config, meta, workdir, steps, failing=cell == FAILING)
        bar.update(1)

    return train


class _WithoutAgentLines:
    """``sys.stderr`` without the agent's progress lines (the bar shows the progress); all else passes, and
    everything but writing is the original's (``isatty``, ``fileno``, ``encoding``), as the console tee's."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.pending = ""  # a line not yet ended

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if not line.startswith(AGENT_PREFIX):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not AGENT_PREFIX.startswith(self.pending[: len(AGENT_PREFIX)]):
            self.target.write(self.pending)  # not the agent's: pass it on now, as a flush asks
            self.pending = ""
        self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def _create_rules(api: Api, team: str, project: str) -> None:
    """The project's alert rules, through the API (kept when they exist already)."""
    rules = [
        {
            "name": "loss diverged",
            "kind": "divergence",
            "cooldown_s": 600,
            "spec": {"metric": "train/loss", "percent": 100, "within_steps": 50, "level": "ERROR"},
        },
        {
            "name": "run crashed or failed",
            "kind": "run_state",
            "cooldown_s": 0,
            "spec": {"states": ["crashed", "failed"], "level": "WARN"},
        },
    ]
    path = f"/projects/{quote(team, safe='')}/{quote(project, safe='')}/alert-rules"
    try:
        existing = {r["name"] for r in api._request("GET", path, what=f"project {team}/{project}")["rules"]}
    except ApiError as exc:
        if exc.status != 404:  # a project that has no runs yet is 404
            raise
        existing = set()
    for rule in rules:
        if rule["name"] not in existing:
            api._request("POST", path, body=rule, what=f"project {team}/{project}")


def _settings(url: str, api_key: str) -> dict[str, Any]:
    return {"url": url, "api_key": api_key, "console": True, "system_interval": 1.0, "finish_timeout": 60}


def _curve(config: dict[str, Any], step: int, steps: int, rng: random.Random) -> tuple[float, float]:
    """A plausible loss and accuracy: faster with a larger learning rate and adam, noisier with small batches."""
    speed = config["lr"] * 1000 * (2.0 if config["optimizer"] == "adam" else 1.0) * (64 / config["batch_size"]) ** 0.3
    floor = 0.05 + 0.1 / (1 + config["batch_size"] / 64)
    noise = 1 + rng.gauss(0, 0.03 * (64 / config["batch_size"]) ** 0.5)  # relative: it never looks like divergence
    loss = (floor + 2.3 * math.exp(-speed * step / steps * 4)) * noise
    if (config["lr"], config["batch_size"], config["optimizer"]) == DIVERGING and step > steps // 2:
        loss *= math.exp((step - steps // 2) / 25)  # blows up halfway
    accuracy = max(0.0, min(1.0, 1 - loss / 2.5 + rng.gauss(0, 0.01)))
    return loss, accuracy


def _training_run(
    url: str,
    api_key: str,
    name: str,
    config: dict[str, Any],
    meta: dict[str, Any],
    workdir: Path,
    steps: int,
    failing: bool,
) -> None:
    """One run in this process: its team, project, id and the sweep's parameters come from the agent."""
    run = runstream.init(
        name=name, config=config, dir=workdir, job_type="train", settings=_settings(url, api_key), **meta
    )
    config = run.config.as_dict()  # the sweep's suggestion is in it now
    rng = random.Random(zlib.crc32(repr(sorted(config.items())).encode()))  # the same curves on every machine
    run.define_metric("val/accuracy", summary="max")
    try:
        with run:  # an exception marks the run failed, with its traceback
            _train(run, config, steps, rng, failing)
    except FloatingPointError:
        pass


def _train(run: Any, config: dict[str, Any], steps: int, rng: random.Random, failing: bool) -> None:
    for step in range(steps):
        loss, accuracy = _curve(config, step, steps, rng)
        row: dict[str, Any] = {"train/loss": loss, "train/accuracy": accuracy, "lr": config["lr"]}
        if step % 20 == 19:
            row["val/loss"] = loss * 1.1 + 0.02
            row["val/accuracy"] = accuracy * 0.97
        if step % 100 == 99:
            print(f"step {step}: loss {loss:.4f}, val accuracy {row['val/accuracy']:.3f}")
        if step % 100 == 99:
            row["weights"] = runstream.Histogram([rng.gauss(0, 1 / (1 + step / 100)) for _ in range(500)])
            image = _sample_image(step, rng)
            if image is not None:
                row["samples"] = image
        if failing and step == steps // 3:
            raise FloatingPointError(f"loss became NaN at step {step} (simulated)")
        run.log(row, step=step)
        if step % 50 == 0:
            time.sleep(0.01)  # some wall time between steps, for time-axis charts
    confusion = [[c, p, rng.randint(0, 50) if c != p else rng.randint(200, 300)] for c in range(3) for p in range(3)]
    run.log({"confusion": runstream.Table(columns=["class", "predicted", "count"], data=confusion)})


def _sample_image(step: int, rng: random.Random) -> Any:
    try:
        import numpy as np

        pixels = np.clip(np.add.outer(np.arange(32), np.arange(32)) * 4 + rng.randint(0, 60), 0, 255).astype("uint8")
        return runstream.Image(pixels, caption=f"step {step}")
    except (ImportError, ModuleNotFoundError):
        return None  # Pillow (or numpy) not installed: no images


def _crashing_run(url: str, api_key: str, name: str, config: dict[str, Any], workdir: Path, steps: int) -> None:
    """A run in its own process that is SIGKILLed mid-training: it never says goodbye. It inherits the agent's
    environment, so it is the sweep's run of this suggestion; the agent goes on when the process is gone."""
    script = textwrap.dedent(f"""
        import os, signal, time, runstream
        run = runstream.init(name={name!r}, dir={str(workdir)!r},
                             config={config!r}, group={config["optimizer"]!r}, job_type="train",
                             tags=["demo", "bs{config["batch_size"]}"],
                             settings={{"url": {url!r}, "console": False,
                                        "system_interval": 1.0, "heartbeat_interval": 1.0}})
        for step in range({steps // 4}):
            run.log({{"train/loss": 2.3 / (1 + step / 50), "train/accuracy": step / {steps}}}, step=step)
        deadline = time.monotonic() + 30
        while run.summary.get("train/loss") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the sender delivers what was logged
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "RUNSTREAM_API_KEY": api_key} if api_key else dict(os.environ)  # not in argv, which ps shows
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, env=env)


def _git_repo(path: Path) -> Path:
    """A small repository with one commit and an uncommitted change, as a researcher's checkout looks."""
    import git

    path.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path)
    (path / "train.py").write_text("import torch\n\nLR = 1e-3\nEPOCHS = 10\n\n\ndef train(model):\n    ...\n")
    repo.index.add(["train.py"])
    actor = git.Actor("runstream demo", "demo@runstream.invalid")
    repo.index.commit("Baseline training script", author=actor, committer=actor)
    (path / "train.py").write_text(
        "import torch\n\nLR = 3e-4  # sweep\nEPOCHS = 10\nWARMUP = 100\n\n\ndef train(model):\n    ...\n"
    )
    return path


class _NoBar:
    def update(self, n: int) -> None: ...

    def set_postfix_str(self, text: str) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="demo runs", unit="run")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from runstream.settings import Settings

    parser = argparse.ArgumentParser(prog="runstream demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--team", default="default")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    url = args.url or settings.url
    result = run_demo(url, settings.key_for(url), args.team, args.project, progress=not args.quiet)
    summary = {"runs": result.runs, "seconds": round(result.seconds, 1), "url": result.project_url}
    print(orjson.dumps(summary | {"sweep": result.sweep, "sweep_url": result.sweep_url}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
