"""Run edits that stick (name, config, summary through PATCH and ``runstream.Api().run().update()``), W&B-style
``config.<x>.value`` fields, a failed run's traceback, define_metric specs on the run, and the statistics a
resumed run reads: on the real engine, through the ingest endpoint and the embedded pipeline."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from runstream import events
from tests.conftest import ApiHarness
from tests.helpers import ServedApp, make_event, script_env

TEAM = "acme"
T0 = time.time() - 600


class Run:
    """Event dicts of one run, seq counting up."""

    def __init__(self, project: str, run_id: str) -> None:
        self.project, self.run_id, self.seq = project, run_id, 0
        self.path = f"/api/v1/runs/{TEAM}/{project}/{run_id}"

    def __call__(self, type: str, data: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
        self.seq += 1
        return make_event(
            type,
            data,
            seq=self.seq,
            run_id=self.run_id,
            team=TEAM,
            project=self.project,
            ts=T0 + self.seq if ts is None else ts,
        )

    def metrics(self, steps: list[int], values: dict[str, list[Any]]) -> dict[str, Any]:
        return self(events.METRICS, {"step": steps, "time": [T0 + s for s in steps], "values": values})


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def get(http: Any, path: str, headers: dict[str, str], **params: Any) -> Any:
    """A GET through a test client that must answer 200."""
    return ok(http.get(path, params=params, headers=headers))


# -- PATCH: name, config, summary ---------------------------------------------------------------------


def test_edits_of_name_config_and_summary_stick_while_the_run_goes_on(api):
    member = api.key(TEAM, "alice")
    run = Run("edits", "r0")
    sent = [
        run(events.RUN_START, {"name": "first", "config": {"lr": 0.1, "opt": {"name": "adam", "beta": 0.9}}}),
        run.metrics([0, 1, 2], {"loss": [3.0, 2.0, 1.0]}),
        run(events.RUN_UPDATE, {"summary": {"best": 1}}),
    ]
    assert api.ingest(sent, member).status_code == 200

    edit = {
        "name": "renamed",
        "config": {"opt": {"beta": 0.95}, "extra": [1, 2]},
        "summary": {"loss": 0.5, "note": "checked"},
    }
    edited = ok(api.http.patch(run.path, json=edit, headers=member))
    config = {"lr": 0.1, "opt": {"name": "adam", "beta": 0.95}, "extra": [1, 2]}
    assert (edited["name"], edited["config"]) == ("renamed", config)
    assert edited["summary"] == {"loss": 0.5, "best": 1, "note": "checked"}
    stored = get(api.http, run.path, member)
    assert (stored["name"], stored["config"], stored["summary"]) == ("renamed", config, edited["summary"])
    # The summary edit reached the summaries table that filters and sorts read.
    listed = get(api.http, f"/api/v1/projects/{TEAM}/edits/runs", member, filters='{"summary.note": "checked"}')
    assert [r["id"] for r in listed["runs"]] == ["r0"]

    # The run goes on: new metrics leave the edited summary value alone (explicit values win); the SDK's
    # own later values win field by field and leave the rest of the edit alone.
    later = [
        run.metrics([3, 4], {"loss": [0.9, 0.8]}),
        run(events.RUN_UPDATE, {"config": {"lr": 0.2}, "summary": {"note": "from the script"}}),
        run(events.RUN_FINISH, {"state": "finished", "exit_code": 0}),
    ]
    assert api.ingest(later, member).status_code == 200
    after = get(api.http, run.path, member)
    assert after["name"] == "renamed" and after["state"] == "finished"
    assert after["config"] == {**config, "lr": 0.2}
    assert after["summary"] == {"loss": 0.5, "best": 1, "note": "from the script"}

    # A later edit wins over the SDK's values too.
    again = ok(api.http.patch(run.path, json={"name": "final", "config": {"lr": 0.3}}, headers=member))
    assert (again["name"], again["config"]["lr"], again["config"]["opt"]) == ("final", 0.3, config["opt"])
    assert get(api.http, run.path, member)["config"]["lr"] == 0.3

    deep: dict = {}
    node = deep
    for _ in range(300):
        node["k"] = {}
        node = node["k"]
    # Too deep for storage, which nests dotted keys again when it reads them (and JSON encoders stop at a
    # few hundred levels): refused, never stored where it would break every read of the project.
    for body in (
        {},
        {"name": ""},
        {"name": "x" * 257},
        {"name": 3},
        {"config": [1]},
        {"summary": "x"},
        {"config": None},
        {"colour": "red"},
        {"config": {"a." * 300 + "a": 1}},
        {"summary": deep},
        {"config": {"": 1}},
    ):
        response = api.http.patch(run.path, json=body, headers=member)
        assert response.status_code == 400, (str(body)[:80], response.text)
    # An edit that would be larger than one event may be is refused too, not lost by a worker.
    response = api.http.patch(run.path, json={"config": {f"k{i}": "v" * 1000 for i in range(1000)}}, headers=member)
    assert response.status_code == 413, response.text
    assert get(api.http, run.path, member)["name"] == "final"
    assert get(api.http, f"/api/v1/projects/{TEAM}/edits/runs", member)["runs"]


def test_an_edit_of_a_run_that_does_not_exist_is_404_and_viewers_cannot_edit(api):
    member, viewer = api.key(TEAM, "alice"), api.key(TEAM, "val", "viewer")
    run = Run("edits", "r1")
    assert api.ingest([run(events.RUN_START, {"name": "n"})], member).status_code == 200
    assert api.http.patch(run.path + "x", json={"name": "a"}, headers=member).status_code == 404
    assert api.http.patch(run.path, json={"config": {"a": 1}}, headers=viewer).status_code == 403
    assert get(api.http, run.path, member)["config"] == {}


# -- runstream.Api().run(...).update() ------------------------------------------------------------------


@pytest.fixture
def server(api: ApiHarness) -> Iterator[str]:
    """The harness's app served by uvicorn on a free port, in a thread."""
    with ServedApp(api.app, lifespan="off") as url:
        yield url


def test_public_client_update_saves_name_config_and_only_the_summary_keys_changed(api, server):
    import runstream

    member = api.key(TEAM, "alice")
    run = Run("client", "c1")
    sent = [
        run(events.RUN_START, {"name": "before", "config": {"lr": 0.1, "opt": {"name": "adam", "beta": 0.9}}}),
        run.metrics([0, 1], {"loss": [2.0, 1.0], "gap": [1.0, "NaN"]}),
    ]
    assert api.ingest(sent, member).status_code == 200

    client = runstream.Api(server, member["Authorization"].removeprefix("Bearer "))
    loaded = client.run(f"{TEAM}/client/c1")
    assert loaded.summary == {"loss": 1.0, "gap": "NaN"} and loaded.error is None
    loaded.name = "after"
    loaded.config["opt"]["beta"] = 0.8
    loaded.config["epochs"] = 10
    loaded.summary["best_loss"] = 0.25
    loaded.summary["bad"] = float("inf")
    loaded.tags = ["tuned"]
    loaded.update()
    expected_config = {"lr": 0.1, "opt": {"name": "adam", "beta": 0.8}, "epochs": 10}
    assert (loaded.name, loaded.config, loaded.tags) == ("after", expected_config, ["tuned"])

    fresh = client.run(f"{TEAM}/client/c1")
    assert (fresh.name, fresh.config, fresh.tags) == ("after", expected_config, ["tuned"])
    assert fresh.summary == {"loss": 1.0, "gap": "NaN", "best_loss": 0.25, "bad": "Infinity"}
    # loss and gap were not sent: they still follow the run's metrics.
    assert api.ingest([run.metrics([2], {"loss": [0.5], "gap": [0.1]})], member).status_code == 200
    assert client.run(f"{TEAM}/client/c1").summary == {"loss": 0.5, "gap": 0.1, "best_loss": 0.25, "bad": "Infinity"}

    # Nothing changed: update() sends tags and notes only, and changes nothing else.
    same = client.run(f"{TEAM}/client/c1")
    same.update()
    assert (same.name, same.config, same.summary["loss"]) == ("after", expected_config, 0.5)


# -- group, job_type and deleted keys -------------------------------------------------------------------


def test_edits_set_group_and_job_type_and_delete_config_and_summary_keys(api):
    member = api.key(TEAM, "alice")
    run = Run("deletes", "d0")
    other = Run("deletes", "d1")
    config = {"lr": 0.1, "opt": {"name": "adam", "beta": 0.9}, "old": 1}
    sent = [
        run(events.RUN_START, {"name": "d0", "group": "sweep", "job_type": "train", "config": config}),
        run.metrics([0, 1], {"loss": [2.0, 1.0], "acc": [0.5, 0.6]}),
        run(events.RUN_UPDATE, {"summary": {"stale": 1, "keep": 2}}),
        other(events.RUN_START, {"name": "d1", "group": "sweep", "config": {"old": 1}}),
    ]
    assert api.ingest(sent, member).status_code == 200
    edit = {
        "group": "finals",
        "job_type": "eval",
        "config_delete": ["opt.beta", "old", "old"],
        "summary_delete": ["stale", "loss"],
    }
    answer = ok(api.http.patch(run.path, json=edit, headers=member))
    stored = get(api.http, run.path, member)
    for found in (answer, stored):
        assert (found["group"], found["job_type"]) == ("finals", "eval")
        assert found["config"] == {"lr": 0.1, "opt": {"name": "adam"}}
        assert found["summary"] == {"acc": 0.6, "keep": 2}  # loss, computed from its metric, is hidden
    # Every read of the runs table sees it: filters, order, groups.
    runs_path = f"/api/v1/projects/{TEAM}/deletes/runs"
    for filters, ids in (
        ({"config.old": 1}, ["d1"]),
        ({"summary.stale": 1}, []),
        ({"summary.loss": {"$exists": True}}, []),
        ({"config.opt.beta": {"$exists": True}}, []),
        ({"group": "finals", "job_type": "eval"}, ["d0"]),
    ):
        listed = get(api.http, runs_path, member, filters=orjson.dumps(filters).decode())
        assert [r["id"] for r in listed["runs"]] == ids, filters
    groups = ok(api.http.post(runs_path + "/groups", json={"by": ["group"]}, headers=member))["groups"]
    assert sorted((g["group"]["group"], g["count"]) for g in groups) == [("finals", 1), ("sweep", 1)]

    # The run goes on: loss logged again shows again, and so does a config key its SDK sets again.
    later = [run.metrics([2], {"loss": [0.5]}), run(events.RUN_UPDATE, {"config": {"old": 2}, "job_type": "sdk"})]
    assert api.ingest(later, member).status_code == 200
    after = get(api.http, run.path, member)
    assert after["summary"] == {"acc": 0.6, "keep": 2, "loss": 0.5}
    assert (after["config"]["old"], after["job_type"], after["group"]) == (2, "sdk", "finals")
    # null clears group and job_type, as at init; deleting a key the run does not have changes nothing else.
    cleared = ok(
        api.http.patch(run.path, json={"group": None, "job_type": None, "config_delete": ["nope"]}, headers=member)
    )
    assert (cleared["group"], cleared["job_type"], cleared["config"]) == (None, None, after["config"])
    assert get(api.http, run.path, member)["group"] is None

    for body in (
        {"config_delete": []},
        {"config_delete": "old"},
        {"config_delete": [""]},
        {"config_delete": [1]},
        {"summary_delete": [f"k{i}" for i in range(1001)]},
        {"config_delete": ["opt"], "config": {"opt": {"lr": 1}}},
        {"summary_delete": ["keep"], "summary": {"keep": 3}},
        {"group": 3},
        {"job_type": ["eval"]},
        {"group": "g" * 64_001},
    ):
        response = api.http.patch(run.path, json=body, headers=member)
        assert response.status_code == 400, (str(body)[:80], response.text)
        assert response.json()["error"]["message"], response.text
    assert get(api.http, run.path, member)["summary"]["keep"] == 2


def test_wandb_users_recipes_delete_keys_and_set_group_and_job_type(api, server, tmp_path):
    """wandb's docs recipes as users write them: rename a summary key (set the new one, ``del`` the old one,
    ``summary.update()``), delete a config key, regroup a run; run unchanged with ``import runstream as wandb``."""
    member = api.key(TEAM, "alice")
    run = Run("recipes", "w1")
    sent = [
        run(events.RUN_START, {"name": "w1", "group": "sweep", "config": {"lr": 0.1, "opt": {"beta": 0.9, "m": 1}}}),
        run.metrics([0, 1], {"loss": [2.0, 1.0], "acc": [0.5, 0.6]}),
        run(events.RUN_UPDATE, {"summary": {"val_acc": 0.7}}),
    ]
    assert api.ingest(sent, member).status_code == 200
    script = f"""\
        import runstream as wandb

        api = wandb.Api()
        run = api.run("{TEAM}/recipes/w1")
        run.summary["best_val_acc"] = run.summary["val_acc"]
        del run.summary["val_acc"]
        run.summary.update()

        run = api.run("{TEAM}/recipes/w1")
        del run.config["lr"]
        del run.config["opt"]["beta"]
        run.config["epochs"] = 3
        del run.summary["loss"]
        run.group = "finals"
        run.job_type = "eval"
        run.update()
        print(sorted(run.summary.keys()), run.group, run.job_type)
        """
    (tmp_path / "edit.py").write_text(textwrap.dedent(script))
    env = {**script_env(server, tmp_path), "RUNSTREAM_API_KEY": member["Authorization"].removeprefix("Bearer ")}
    done = subprocess.run(
        [sys.executable, "edit.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['acc',", "'best_val_acc']", "finals", "eval"]

    import runstream

    fresh = runstream.Api(server, member["Authorization"].removeprefix("Bearer ")).run(f"{TEAM}/recipes/w1")
    assert (fresh.group, fresh.job_type) == ("finals", "eval")
    assert fresh.config == {"opt": {"m": 1}, "epochs": 3}
    assert fresh.summary == {"acc": 0.6, "best_val_acc": 0.7}
    # The deleted loss was computed from its metric: logged again, it is back.
    assert api.ingest([run.metrics([2], {"loss": [0.5]})], member).status_code == 200
    assert fresh.load().summary == {"acc": 0.6, "best_val_acc": 0.7, "loss": 0.5}


# -- config.<x>.value ----------------------------------------------------------------------------------


def test_wandb_style_config_value_fields_filter_order_and_group(api):
    member = api.key(TEAM, "alice")
    configs = {
        "w0": {"lr": 0.1},
        "w1": {"lr": 0.001},
        "w2": {"lr": {"value": 0.05, "desc": "as W&B stores it"}},
        "w3": {"momentum": 0.9},
    }
    sent = []
    for i, (run_id, config) in enumerate(configs.items()):
        run = Run("wb", run_id)
        sent.append(run(events.RUN_START, {"name": run_id, "config": config}, ts=T0 + i))
    assert api.ingest(sent, member).status_code == 200
    base = f"/api/v1/projects/{TEAM}/wb"

    def ids(filters: dict[str, Any], order: str = "+name") -> list[str]:
        return [
            r["id"]
            for r in get(api.http, base + "/runs", member, filters=orjson.dumps(filters).decode(), order=order)["runs"]
        ]

    assert ids({"config.lr.value": {"$lt": 0.01}}) == ["w1"]
    assert ids({"config.lr.value": {"$lt": 0.07}}) == ["w1", "w2"]
    assert ids({"config.lr.value": 0.1}) == ["w0"]
    assert ids({"config.lr.value": {"$exists": False}}) == ["w3"]
    assert ids({"config.lr": {"$lt": 0.07}}) == ["w1"]  # config.lr is not W&B-shaped in w2: no fallback there
    assert ids({}, order="+config.lr.value") == ["w1", "w2", "w0", "w3"]  # numeric, the missing last
    assert ids({}, order="-config.lr.value") == ["w0", "w2", "w1", "w3"]
    assert ids({"config.momentum.value": 0.9}) == ["w3"]

    groups = ok(
        api.http.post(
            base + "/runs/groups", json={"by": ["config.lr.value"], "aggregates": ["config.lr.value"]}, headers=member
        )
    )["groups"]
    assert [(g["group"]["config.lr.value"], g["count"]) for g in groups] == [(0.001, 1), (0.05, 1), (0.1, 1), (None, 1)]
    assert groups[1]["summary"]["config.lr.value"]["mean"] == 0.05


# -- a failed run's traceback, define_metric specs ------------------------------------------------------


def test_a_failed_runs_traceback_and_metric_definitions_are_on_the_run(api):
    member = api.key(TEAM, "alice")
    run = Run("fail", "f1")
    traceback = 'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\nValueError: boom\n'
    sent = [
        run(events.RUN_START, {"name": "f1"}),
        run(
            events.RUN_UPDATE,
            {"define_metric": [{"name": "epoch"}, {"name": "val/*", "step_metric": "epoch", "summary": "max"}]},
        ),
        run(events.RUN_UPDATE, {"define_metric": [{"name": "val/*", "goal": "maximize"}]}),
        run(events.RUN_UPDATE, {"define_metric": [{"name": "val/acc", "step_metric": "batch"}]}),
        run.metrics([0, 1], {"val/acc": [0.5, 0.4]}),
        run(events.RUN_FINISH, {"state": "failed", "exit_code": 1, "traceback": traceback}),
    ]
    assert api.ingest(sent, member).status_code == 200
    failed = get(api.http, run.path, member)
    assert (failed["state"], failed["error"]) == ("failed", traceback)
    assert failed["metrics"] == [
        {"name": "val/*", "step_metric": "epoch", "goal": None, "summary": "max"},
        {"name": "val/*", "step_metric": None, "goal": "maximize", "summary": None},
        {"name": "val/acc", "step_metric": "batch", "goal": None, "summary": None},
    ]
    listed = get(api.http, f"/api/v1/projects/{TEAM}/fail/runs", member, fields="error,metrics")["runs"]
    assert listed == [{"team": TEAM, "project": "fail", "id": "f1", "error": traceback, "metrics": failed["metrics"]}]

    # Redefining a name keeps the older spec's other attributes; resuming clears the error.
    again = [
        run(events.RUN_UPDATE, {"define_metric": [{"name": "val/*", "step_metric": "step"}]}),
        run(events.RUN_START, {"name": "f1", "resumed": True}),
    ]
    assert api.ingest(again, member).status_code == 200
    resumed = get(api.http, run.path, member)
    assert (resumed["state"], resumed["error"]) == ("running", None)
    assert resumed["metrics"] == [
        {"name": "val/*", "step_metric": None, "goal": None, "summary": "max"},
        {"name": "val/*", "step_metric": None, "goal": "maximize", "summary": None},
        {"name": "val/acc", "step_metric": "batch", "goal": None, "summary": None},
        {"name": "val/*", "step_metric": "step", "goal": None, "summary": None},
    ]
    assert api.ingest([run(events.RUN_FINISH, {"state": "finished", "exit_code": 0})], member).status_code == 200
    assert get(api.http, run.path, member)["error"] is None


# -- statistics --------------------------------------------------------------------------------------------


def test_statistics_of_a_run_for_its_resume(api):
    member, rival = api.key(TEAM, "alice"), api.key("rival", "rex")
    run = Run("stats", "s1")
    sent = [
        run(events.RUN_START, {"name": "s1"}),
        run.metrics(
            [0, 1, 2, 3], {"loss": [3.0, "NaN", 1.0, "Infinity"], "acc": [0.5, 0.7, None, None], "epoch": [0, 0, 1, 1]}
        ),
        run.metrics([7], {"only_nan": ["NaN"]}),
        run.metrics([2, 3], {"acc": [0.6, "-Infinity"]}),
    ]
    empty = Run("stats", "s2")
    sent.append(empty(events.RUN_START, {"name": "s2"}))
    assert api.ingest(sent, member).status_code == 200

    stats = get(api.http, run.path + "/statistics", member)
    # last_seq: the largest seq folded, which a resume elsewhere numbers its events above
    assert stats == {
        "last_step": 7,
        "last_seq": 4,
        "metrics": {
            "acc": {
                "count": 3,
                "min": 0.5,
                "max": 0.7,
                "mean": pytest.approx(0.6),
                "last": "-Infinity",
                "first_step": 0,
                "last_step": 3,
            },
            "epoch": {"count": 4, "min": 0, "max": 1, "mean": 0.5, "last": 1, "first_step": 0, "last_step": 3},
            "loss": {
                "count": 2,
                "min": 1.0,
                "max": 3.0,
                "mean": 2.0,
                "last": "Infinity",
                "first_step": 0,
                "last_step": 3,
            },
            "only_nan": {
                "count": 0,
                "min": None,
                "max": None,
                "mean": None,
                "last": "NaN",
                "first_step": 7,
                "last_step": 7,
            },
        },
    }
    assert math.isclose(stats["metrics"]["acc"]["mean"], 0.6)
    epoch = stats["metrics"]["epoch"]
    assert [type(epoch[k]) for k in ("last", "min", "max")] == [int, int, int]  # logged as ints, read as ints
    assert get(api.http, empty.path + "/statistics", member) == {"last_step": None, "last_seq": 1, "metrics": {}}
    assert api.http.get(run.path + "x/statistics", headers=member).status_code == 404
    assert api.http.get(run.path + "/statistics", headers=rival).status_code == 404
    assert api.http.get(run.path + "/statistics").status_code == 404


def test_in_cluster_mode_the_answer_shows_the_edit_a_worker_then_applies(kafka_bootstrap, clickhouse_dsn, tmp_path):
    """With Kafka the API answers before a worker applied the edit: the answer is what the worker will store."""
    import asyncio

    from starlette.testclient import TestClient

    from runstream.api.app import create_app
    from runstream.settings import Settings
    from runstream.storage import accounts
    from runstream.streams.processor import Processor
    from tests.helpers import consume_events, unique

    app = create_app(Settings(kafka=kafka_bootstrap, clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path)))
    project = unique("p")
    run = Run(project, "k1")
    with TestClient(app) as http:
        client = app.state.backend.client
        accounts.ensure_team(client, TEAM)
        accounts.set_member(client, TEAM, "alice", "member")
        member = {"Authorization": f"Bearer {accounts.create_key(client, TEAM, 'alice')[1]}"}
        worker = Processor(lambda: client)
        start = events.validate(run(events.RUN_START, {"name": "k1", "config": {"opt": {"name": "adam", "lr": 0.1}}}))
        worker.commit(worker.process([start, events.validate(run.metrics([0, 1], {"loss": [2.0, 1.0]}))]))

        edit = {
            "name": "edited",
            "group": "g",
            "config": {"opt": {"lr": 0.2}},
            "config_delete": ["opt.name"],
            "summary": {"best": 0.5},
            "summary_delete": ["loss"],
        }
        answer = ok(http.patch(run.path, json=edit, headers=member))
        expected = ("edited", "g", {"opt": {"lr": 0.2}}, {"best": 0.5})
        assert (answer["name"], answer["group"], answer["config"], answer["summary"]) == expected
        assert get(http, run.path, member)["name"] == "k1"  # not applied yet

        found = asyncio.run(
            consume_events(
                kafka_bootstrap,
                [events.TOPIC_RUNS.name],
                project,
                lambda got: any(e.type == events.RUN_EDIT for e in got),
            )
        )
        edits = [e for e in found if e.type == events.RUN_EDIT]
        assert [e.data for e in edits] == [edit]
        worker.commit(worker.process(edits))  # what the worker that owns the run does with it
        stored = get(http, run.path, member)
        assert (stored["name"], stored["group"], stored["config"], stored["summary"]) == expected
