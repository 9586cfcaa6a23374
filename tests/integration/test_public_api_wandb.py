"""wandb public-API scripts, run unchanged with ``import runstream as wandb`` (issue 17 §4): runs logged
through the SDK into a real ``runstream server`` (embedded ClickHouse), then read, edited, paged,
downloaded, moved and deleted the way wandb's docs and users' notebooks do it.

Where wandb's behaviour is the reference, the test says which behaviour it pins down.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from infra.net import free_port
from runstream.public_api import ApiError
from tests.helpers import Server, script_env, unique, wait_for

STEPS = 20
LRS = (0.1, 0.01, 0.001)
TRAIN = """\
import time

import runstream as wandb

project, lrs, steps = {project!r}, {lrs!r}, {steps}
for i, lr in enumerate(lrs):
    run = wandb.init(
        project=project, id=f"run{{i}}", name=f"lr-{{lr}}", config={{"lr": lr, "batch_size": 32, "_seed": i}},
        tags=["baseline"], group="sweep-a", job_type="train", notes="first try",
        settings={{"system_metrics": i == 2, "system_interval": 0.2, "git": False}},
    )
    print(f"training run {{i}}", flush=True)
    for step in range(steps):
        row = {{"loss": (i + 1) / (step + 1), "acc": step / steps}}
        if step % 5 == 4:
            row["val_loss"] = (i + 1) / (step + 2)
        wandb.log(row)
    run.summary["best_acc"] = (steps - 1) / steps
    with open("model.txt", "w") as f:
        f.write(f"weights of run {{i}}\\n")
    run.save("model.txt", policy="now")
    if i == 2:
        time.sleep(1.0)  # a few system samples
    run.finish()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def logged(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A project of three finished runs logged by a wandb-style script; its path "default/<project>"."""
    work = tmp_path_factory.mktemp("train")
    project = unique("wb")
    (work / "train.py").write_text(TRAIN.format(project=project, lrs=LRS, steps=STEPS))
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=work,
        env=script_env(server.url, work),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    api = runstream.Api(url=server.url, api_key="")

    def whole(path: str) -> bool:
        run = api.run(path)
        return (
            run.state == "finished"
            and len(list(run.scan_history())) == STEPS
            and any(f.name == "model.txt" for f in run.files())
            and bool(run.console_logs())
        )

    for i in range(len(LRS)):
        path = f"default/{project}/run{i}"
        wait_for(functools.partial(whole, path), f"{path} to arrive whole")
    return f"default/{project}"


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _finished(api: runstream.Api, path: str) -> bool:
    return api.run(path).state == "finished"


def _script(directory: Path, body: str, server: Server) -> subprocess.CompletedProcess:
    """A user's script, as written for wandb, run from ``directory`` against the server."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "read.py").write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "read.py"],
        cwd=directory,
        env=script_env(server.url, directory),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wandb_docs_export_runs_to_a_dataframe_runs_unchanged(server, logged, tmp_path):
    """wandb's docs recipe ("Export data: querying multiple runs"), with only the import changed."""
    entity, project = logged.split("/")
    result = _script(
        tmp_path,
        f"""\
        import pandas as pd
        import runstream as wandb

        api = wandb.Api()
        entity, project = {entity!r}, {project!r}
        runs = api.runs(entity + "/" + project)

        summary_list, config_list, name_list = [], [], []
        for run in runs:
            # .summary contains output keys/values for metrics such as accuracy.
            summary_list.append(run.summary._json_dict)
            # .config contains the hyperparameters; we remove special values that start with _.
            config_list.append({{k: v for k, v in run.config.items() if not k.startswith("_")}})
            # .name is the human-readable name of the run.
            name_list.append(run.name)

        runs_df = pd.DataFrame({{"summary": summary_list, "config": config_list, "name": name_list}})
        runs_df.to_json("project.json", orient="records")
        """,
        server,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "project.json").read_text())
    # wandb's default order: oldest first.
    assert [r["name"] for r in rows] == [f"lr-{lr}" for lr in LRS]
    assert [r["config"] for r in rows] == [{"lr": lr, "batch_size": 32} for lr in LRS]
    for i, row in enumerate(rows):
        assert row["summary"]["loss"] == pytest.approx((i + 1) / STEPS)
        assert row["summary"]["best_acc"] == pytest.approx((STEPS - 1) / STEPS)
        assert row["summary"]["val_loss"] == pytest.approx((i + 1) / (STEPS + 1))


def test_run_fields_as_wandb_names_them(api, logged, server):
    run = api.run(f"{logged}/run1")
    entity, project = logged.split("/")
    assert (run.id, run.entity, run.project, run.path) == ("run1", entity, project, [entity, project, "run1"])
    assert run.url == f"{server.url}/projects/{entity}/{project}/runs/run1"
    assert api.run(f"{logged}/runs/run1").id == "run1"  # the URL form, as wandb takes it
    assert (run.name, run.display_name, run.state) == ("lr-0.01", "lr-0.01", "finished")
    assert (run.group, run.job_type, run.notes, run.tags) == ("sweep-a", "train", "first try", ["baseline"])
    assert run.created_at.endswith("Z") and run.heartbeat_at.endswith("Z") and run.created_at <= run.heartbeat_at
    assert run.sweep is None and run.user and run.user.username == str(run.user)
    assert run.metadata["host"] and run.metadata["program"].endswith("train.py") and run.metadata["python"]
    assert run.lastHistoryStep == STEPS - 1
    keys = run.history_keys
    assert keys["lastStep"] == STEPS - 1 and {"loss", "acc", "val_loss"} <= keys["keys"].keys()
    assert keys["keys"]["val_loss"]["typeCounts"][0]["count"] == STEPS // 5
    assert run.config == {"lr": 0.01, "batch_size": 32, "_seed": 1}
    with pytest.raises(NotImplementedError, match=r"Run\.stop is not supported"):
        run.stop()


def test_history_and_scan_history(api, logged):
    run = api.run(f"{logged}/run0")
    frame = run.history()
    assert len(frame) == STEPS and {"_step", "loss", "acc", "val_loss"} <= set(frame.columns)
    assert frame["loss"].tolist() == pytest.approx([1 / (s + 1) for s in range(STEPS)])
    runtime = frame["_runtime"].tolist()  # wandb's seconds since the run started
    assert 0 <= runtime[0] <= runtime[-1] < 60
    sampled = run.history(samples=6, keys=["loss"], x_axis="acc")
    assert len(sampled) <= 6 and {"loss", "acc"} <= set(sampled.columns) and sampled["_step"].iloc[0] == 0
    rows = run.history(keys=["val_loss"], pandas=False)
    assert [r["_step"] for r in rows] == [4, 9, 14, 19]

    # wandb's scan: every row, by step; with keys only the rows holding all of them.
    assert [r["_step"] for r in run.scan_history(page_size=7)] == list(range(STEPS))
    both = list(run.scan_history(keys=["loss", "val_loss"], page_size=3))
    assert [r["_step"] for r in both] == [4, 9, 14, 19]
    assert all(r["val_loss"] == pytest.approx(1 / (r["_step"] + 2)) for r in both)
    window = [r["_step"] for r in run.scan_history(keys=["acc"], min_step=5, max_step=12)]
    assert window == list(range(5, 12))  # min inclusive, max exclusive


def test_filters_order_and_paging(api, logged):
    runs = api.runs(logged, filters={"config.lr": {"$lt": 0.05}}, order="+summary_metrics.loss", per_page=1)
    assert len(runs) == 2 and [r.id for r in runs] == ["run1", "run2"] == [runs[0].id, runs[-1].id]
    newest = api.runs(logged, order="-created_at", per_page=2)
    assert [r.name for r in newest[:3]] == ["lr-0.001", "lr-0.01", "lr-0.1"]
    assert next(newest).id == "run2" and newest.next().id == "run1"
    by_wandb_names = api.runs(
        logged, filters={"$and": [{"display_name": {"$regex": "^lr-0\\.0"}}, {"jobType": "train"}]}
    )
    assert sorted(r.id for r in by_wandb_names) == ["run1", "run2"]
    frame = api.runs(logged, filters={"config.lr": 0.1}).histories(keys=["loss"], format="pandas")
    assert set(frame["run_id"]) == {"run0"} and len(frame) == STEPS


def test_projects(api, logged, server):
    entity, name = logged.split("/")
    project = api.project(name, entity)
    assert (project.entity, project.name, project.run_count, project.path) == (entity, name, 3, [entity, name])
    assert project.url == f"{server.url}/projects/{entity}/{name}"
    listed = api.projects(entity)
    assert name in [p.name for p in listed] and all(p.entity == entity for p in listed)
    with pytest.raises(ApiError) as missing:
        api.project(unique("none"), entity)
    assert missing.value.status == 404


def test_files_download(api, logged, tmp_path):
    run = api.run(f"{logged}/run2")
    names = [f.name for f in run.files()]
    assert "model.txt" in names
    model = run.file("model.txt")
    assert model.size == len("weights of run 2\n") and model.url.startswith(api.url)
    with model.download(root=tmp_path) as fh:
        assert fh.read() == "weights of run 2\n"
    (tmp_path / "model.txt").write_text("stale")
    with pytest.raises(ValueError, match="File already exists"):
        model.download(root=tmp_path)
    model.download(root=tmp_path, replace=True).close()
    assert (tmp_path / "model.txt").read_text() == "weights of run 2\n"
    assert [f.name for f in run.files(pattern="%.txt")] == [n for n in names if n.endswith(".txt")]


def test_edits_as_wandb_users_write_them(server, logged, tmp_path):
    """wandb's: edit summary, config, tags, notes, name; run.update() / summary.update() persist them."""
    result = _script(
        tmp_path,
        f"""\
        import runstream as wandb

        api = wandb.Api()
        run = api.run("{logged}/run0")
        run.summary["best"] = 1
        run.summary.update()
        run = api.run("{logged}/run0")
        run.config["lr"] = 0.2
        run.tags.append("reviewed")
        run.notes = "kept"
        run.display_name = "the-best"
        run.summary.update({{"verdict": "keep"}})
        run.update()
        """,
        server,
    )
    assert result.returncode == 0, result.stderr
    fresh = runstream.Api(url=server.url, api_key="").run(f"{logged}/run0")
    assert (fresh.name, fresh.tags, fresh.notes) == ("the-best", ["baseline", "reviewed"], "kept")
    assert fresh.config == {"lr": 0.2, "batch_size": 32, "_seed": 0}
    assert (fresh.summary["best"], fresh.summary["verdict"]) == (1, "keep")
    assert fresh.summary["loss"] == pytest.approx(1 / STEPS)  # untouched: still computed from the metrics
    # group is saved as wandb's is (deleting keys and regrouping: tests/integration/test_run_edits.py).
    fresh.group = "other"
    fresh.update()
    assert runstream.Api(url=server.url, api_key="").run(f"{logged}/run0").group == "other"


def test_move_and_delete(api, server, tmp_path):
    """Runs and a project of their own, so the other tests' project stays whole."""
    project = unique("gone")
    (tmp_path / "t.py").write_text(
        textwrap.dedent(f"""\
        import runstream as wandb
        for run_id in ("keep", "bin"):
            with wandb.init(project={project!r}, id=run_id, settings={{"system_metrics": False, "git": False}}):
                wandb.log({{"loss": 1.0}})
        """)
    )
    done = subprocess.run(
        [sys.executable, "t.py"], cwd=tmp_path, env=script_env(server.url, tmp_path), capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for run_id in ("keep", "bin"):
        wait_for(functools.partial(_finished, api, f"default/{project}/{run_id}"), f"{run_id} to finish")

    kept = api.run(f"default/{project}/keep").move(project + "-archive")
    assert kept.path == ["default", project + "-archive", "keep"]
    assert api.run(f"default/{project}-archive/keep").summary["loss"] == 1.0
    with pytest.raises(ApiError):
        api.run(f"default/{project}/keep")

    api.run(f"default/{project}/bin").delete()
    with pytest.raises(ApiError) as gone:
        api.run(f"default/{project}/bin")
    assert gone.value.status == 404

    api.project(project + "-archive", "default").delete()
    with pytest.raises(ApiError):
        api.project(project + "-archive", "default")
    assert len(api.runs(f"default/{project}")) == 0  # one run moved out, the other deleted


def test_console_and_system_metrics(api, logged):
    run = api.run(f"{logged}/run2")
    assert "training run 2" in [line.content for line in run.console_logs()]
    assert run.console_logs(last=1)[-1].timestamp is not None
    system = run.history(stream="system", pandas=False)
    assert system and all(row["_runtime"] >= 0 and "_timestamp" in row for row in system)
    latest = run.system_metrics
    assert {"system.cpu.percent", "system.memory.used_mb"} <= latest.keys(), latest
    memory = [row["system.memory.used_mb"] for row in system if "system.memory.used_mb" in row]
    assert latest["system.memory.used_mb"] == memory[-1]  # the latest sample
    assert api.run(f"{logged}/run0").system_metrics == {}  # logged without system metrics


def test_filters_on_time_as_wandb_users_write_them(api, logged):
    """wandb's docs filter by createdAt with ISO text."""
    assert len(api.runs(logged, filters={"createdAt": {"$gt": "2020-01-01T00:00:00"}})) == len(LRS)
    assert len(api.runs(logged, filters={"created_at": {"$lt": "2020-01-01T00:00:00Z"}})) == 0
