"""The SDK's surface in offline mode: what a training script calls and what lands in the spool."""

import argparse
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import runstream
from runstream import events
from runstream.config import ConfigError
from tests.helpers import metric_points, spooled_events

QUIET = {"console": False, "system_metrics": False, "git": False}


@pytest.fixture
def run(tmp_path):
    r = runstream.init(project="proj", entity="team", mode="offline", dir=tmp_path, settings=QUIET)
    yield r
    r.finish()


def test_log_flattens_converts_and_keeps_every_step(run):
    run.log({"loss": 1.0, "acc": 0.5})
    run.log({"loss": 0.5, "acc": 0.6})
    run.log({"train": {"loss": 2, "ok": True}, "np": np.float32(0.25), "i": np.int64(3)}, step=10)
    run.log({"loss": 9.0}, step=1)  # out of order: kept (wandb drops it)
    run.log({"loss": 8.0}, step=1)  # repeated: kept
    run.log({"loss": float("nan"), "up": float("inf"), "down": -math.inf})
    run.finish()
    points = metric_points(spooled_events(run.dir))
    assert (0, "loss", 1.0) in points and (1, "acc", 0.6) in points
    assert {(10, "train/loss", 2.0), (10, "train/ok", 1.0), (10, "np", 0.25), (10, "i", 3.0)} <= set(points)
    assert [p for p in points if p[0] == 1 and p[1] == "loss"] == [(1, "loss", 0.5), (1, "loss", 9.0), (1, "loss", 8.0)]
    last = [p for p in points if p[0] == 11]
    assert math.isnan(next(v for s, k, v in last if k == "loss"))
    assert (11, "up", math.inf) in last and (11, "down", -math.inf) in last


def test_commit_false_merges_into_one_row(run):
    run.log({"a": 1.0}, commit=False)
    run.log({"b": 2.0}, commit=False)
    run.log({"c": 3.0})
    run.log({"a": 4.0})
    run.finish()
    assert sorted(metric_points(spooled_events(run.dir))) == [
        (0, "a", 1.0),
        (0, "b", 2.0),
        (0, "c", 3.0),
        (1, "a", 4.0),
    ]


@pytest.mark.parametrize(
    "args,error",
    [
        (([1, 2],), TypeError),
        (({"x": 1.0}, "3"), TypeError),
        (({"x": 1.0}, -1), ValueError),
        (({"x": object()},), TypeError),
        (({1: 2.0},), TypeError),
        (({"": 2.0},), ValueError),
    ],
)
def test_wrong_arguments_raise_clearly_in_the_caller(run, args, error):
    with pytest.raises(error):
        run.log(*args)
    run.log({"fine": 1.0})  # the run is unharmed


def test_numpy_step_is_accepted(run):
    run.log({"x": 1.0}, step=np.int64(7))
    assert run.step == 8


def test_config_rules(run):
    run.config.lr = 0.1
    run.config["batch"] = 32
    run.config.update({"optimizer": "adam", "betas": (0.9, 0.99)})
    assert run.config.lr == 0.1 and run.config["batch"] == 32 and run.config.betas == [0.9, 0.99]
    run.config.lr = 0.1  # same value: fine
    with pytest.raises(ConfigError, match="allow_val_change=True"):
        run.config.lr = 0.2
    run.config.update({"lr": 0.2}, allow_val_change=True)
    run.config.update(argparse.Namespace(seed=7))
    assert run.config.as_dict() == {"lr": 0.2, "batch": 32, "optimizer": "adam", "betas": [0.9, 0.99], "seed": 7}
    with pytest.raises(AttributeError):
        run.config.missing  # noqa: B018 - reading it is what raises
    run.finish()
    updates = [e.data["config"] for e in spooled_events(run.dir) if e.type == events.RUN_UPDATE and "config" in e.data]
    merged = {}
    for update in updates:
        merged.update(update)
    assert merged == run.config.as_dict()


def test_config_at_init_travels_in_run_start(tmp_path):
    r = runstream.init(
        project="p", mode="offline", dir=tmp_path, settings=QUIET, config={"lr": 0.01}, tags=["a"], group="g"
    )
    r.finish()
    start = [e for e in spooled_events(r.dir) if e.type == events.RUN_START]
    assert len(start) == 1
    assert start[0].data["config"] == {"lr": 0.01} and start[0].data["tags"] == ["a"] and start[0].data["group"] == "g"


def test_summary_last_by_default_and_define_metric(run):
    # wandb's shape: a define_metric summary choice makes the entry a dict of the chosen statistics
    # ({"loss": {"min": 1.0}}), "best" follows the goal, "none" leaves the metric out.
    run.define_metric("val/*", summary="max,best", goal="maximize")
    run.define_metric("loss", summary="min")
    run.define_metric("noise", summary="none")
    for i, (loss, acc, noise) in enumerate([(3.0, 0.1, 1), (1.0, 0.9, 2), (2.0, 0.5, 3)]):
        run.log({"loss": loss, "val/acc": acc, "noise": noise, "lr": 0.1 / (i + 1)})
    assert run.summary["loss"] == {"min": 1.0} and run.summary["val/acc"] == {"max": 0.9, "best": 0.9}
    assert run.summary["lr"] == pytest.approx(0.1 / 3)  # last
    assert "noise" not in run.summary
    run.summary["best_epoch"] = 1
    run.summary["loss"] = 0.123  # explicit wins
    assert run.summary["loss"] == 0.123 and run.summary["best_epoch"] == 1
    run.finish()
    evs = spooled_events(run.dir)
    defined = [
        (d["name"], d.get("summary"))
        for e in evs
        if e.type == events.RUN_UPDATE
        for d in e.data.get("define_metric", [])
    ]
    assert defined == [("val/*", "max,best"), ("loss", "min"), ("noise", "none")]
    # Only what the user set travels: the server computes the rest from every point (also across resumes).
    sent = {k: v for e in evs if e.type == events.RUN_UPDATE for k, v in e.data.get("summary", {}).items()}
    assert sent == {"best_epoch": 1, "loss": 0.123}


def test_define_metric_refuses_unknown_summary_choices(run):
    with pytest.raises(ValueError, match="min"):
        run.define_metric("loss", summary="median")
    with pytest.raises(ValueError):
        run.define_metric("loss", summary="min,oops")


def test_non_finite_config_and_summary_values_travel_as_the_contract_strings(run):
    run.config.update({"eps": math.inf})
    run.summary["best"] = -math.inf
    run.summary["ratio"] = math.nan
    run.finish()
    evs = spooled_events(run.dir)
    config = {
        k: v
        for e in evs
        if e.type in (events.RUN_START, events.RUN_UPDATE)
        for k, v in e.data.get("config", {}).items()
    }
    summary = {k: v for e in evs if e.type == events.RUN_UPDATE for k, v in e.data.get("summary", {}).items()}
    assert config["eps"] == "Infinity"
    assert summary["best"] == "-Infinity" and summary["ratio"] == "NaN"


def test_alert_and_wait_duration(run):
    run.alert("loss is nan", "at step 3", level=runstream.AlertLevel.WARN)
    run.alert("slow", "step took 10 s", wait_duration=300)
    run.alert("slow", "again", wait_duration=300)  # within the wait: dropped
    with pytest.raises(ValueError):
        run.alert("x", "y", level="PANIC")
    run.finish()
    alerts = [e.data for e in spooled_events(run.dir) if e.type == events.ALERT]
    assert [(a["title"], a["level"]) for a in alerts] == [("loss is nan", "WARN"), ("slow", "INFO")]


def test_save_copies_files_and_announces_them(run, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"weights")
    (ckpt / "notes.txt").write_text("hi")
    assert sorted(run.save(str(ckpt / "*"), base_path=str(tmp_path))) == ["ckpt/model.pt", "ckpt/notes.txt"]
    (ckpt / "model.pt").write_bytes(b"better weights")  # live: uploaded again at finish
    run.finish()
    files = [e.data for e in spooled_events(run.dir) if e.type == events.FILE and e.data["kind"] == "file"]
    assert [(f["path"], f["size"]) for f in files] == [
        ("ckpt/model.pt", 7),
        ("ckpt/notes.txt", 2),
        ("ckpt/model.pt", 14),
    ]
    assert (tmp_path.glob("runstream-runs/run-*/files/ckpt/model.pt").__next__()).read_bytes() == b"better weights"


def test_every_spooled_event_follows_the_contract_and_seq_increases(run):
    for i in range(3000):
        run.log({"a": i, "b": i / 2})
    run.alert("t", "x")
    run.finish()
    evs = spooled_events(run.dir)
    seqs = [e.seq for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert evs[0].type == events.RUN_START and evs[-1].type == events.RUN_FINISH
    assert {(e.team, e.project, e.run_id) for e in evs} == {("team", "proj", run.id)}
    assert evs[-1].data == {"state": "finished", "exit_code": 0}  # wandb: finish() without a code is exit code 0


def test_finish_result_and_idempotent_finish(run):
    run.log({"x": 1.0})
    result = run.finish()
    assert result["points"] == 1 and result.unacked_events > 0 and result.acked_events == 0  # offline
    assert run.finish() is result


def test_module_level_api_like_wandb(tmp_path):
    with pytest.raises(runstream.Error, match="init"):
        runstream.log({"x": 1})
    with pytest.raises(runstream.Error):
        runstream.config.lr  # noqa: B018 - reading it is what raises
    r = runstream.init(project="p", mode="offline", dir=tmp_path, settings=QUIET, config={"lr": 1})
    assert runstream.run is r and runstream.config is r.config and runstream.summary is r.summary
    runstream.log({"x": 2.0})
    runstream.define_metric("x", summary="max")
    runstream.finish()
    assert runstream.run is None
    assert (2, "x", 2.0) not in metric_points(spooled_events(r.dir)) and (0, "x", 2.0) in metric_points(
        spooled_events(r.dir)
    )


def test_context_manager_marks_failures(tmp_path):
    with (
        pytest.raises(ZeroDivisionError),
        runstream.init(project="p", mode="offline", dir=tmp_path, settings=QUIET) as r,
    ):
        r.log({"x": 1.0})
        1 / 0  # noqa: B018 - the failure under test
    finish = next(e for e in spooled_events(r.dir) if e.type == events.RUN_FINISH)
    assert finish.data["state"] == "failed" and "ZeroDivisionError" in finish.data["traceback"]


def test_disabled_mode_does_nothing(tmp_path):
    r = runstream.init(project="p", mode="disabled", dir=tmp_path)
    r.log({"x": 1.0})
    r.config.update({"a": 1})
    r.finish()
    assert list(tmp_path.iterdir()) == []


def test_resume_rules(tmp_path):
    r = runstream.init(project="p", id="fixed1", mode="offline", dir=tmp_path, settings=QUIET)
    r.log({"x": 1.0})
    r.finish()
    with pytest.raises(runstream.Error, match="resume='never'"):
        runstream.init(project="p", id="fixed1", resume="never", mode="offline", dir=tmp_path, settings=QUIET)
    with pytest.raises(runstream.Error, match="resume='must'"):
        runstream.init(project="p", id="other1", resume="must", mode="offline", dir=tmp_path, settings=QUIET)
    again = runstream.init(project="p", id="fixed1", resume="allow", mode="offline", dir=tmp_path, settings=QUIET)
    assert again.dir == r.dir and again.resumed
    again.log({"x": 2.0}, step=1)
    again.finish()
    evs = spooled_events(r.dir)
    seqs = [e.seq for e in evs]
    assert len(set(seqs)) == len(seqs), "a resumed run never reuses a sequence number"
    assert [e.data["resumed"] for e in evs if e.type == events.RUN_START] == [False, True]


def _script(tmp_path, then: str) -> list[str]:
    """A command running an offline run that logs one point, then does ``then``."""
    body = f"""
import runstream, time
run = runstream.init(project="p", mode="offline", dir={str(tmp_path)!r}, settings={QUIET!r})
run.log({{"x": 1.0}})
{textwrap.dedent(then)}
"""
    return [sys.executable, "-c", body]


def test_uncaught_exception_in_a_script_marks_the_run_failed(tmp_path):
    result = subprocess.run(_script(tmp_path, 'raise RuntimeError("boom")'), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr
    run_dir = next((tmp_path / "runstream-runs").glob("run-*"))
    finish = [e for e in spooled_events(run_dir) if e.type == events.RUN_FINISH]
    assert finish[0].data["state"] == "failed" and "boom" in finish[0].data["traceback"]


def test_sigterm_marks_the_run_killed(tmp_path):
    proc = subprocess.Popen(
        _script(tmp_path, 'print("ready", flush=True)\ntime.sleep(60)'), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(timeout=30) == -15
    run_dir = next((tmp_path / "runstream-runs").glob("run-*"))
    finish = [e for e in spooled_events(run_dir) if e.type == events.RUN_FINISH]
    assert finish[0].data["state"] == "killed"


def test_a_logged_table_keeps_the_rows_it_had_when_logged(run):
    table = runstream.Table(columns=["a"], data=[[1]])
    run.log({"t": table})
    table.add_data(2)  # after logging: belongs to the next log, not this one
    run.log({"t": table})
    run.finish()
    files = [e.data for e in spooled_events(run.dir) if e.type == events.FILE and e.data["kind"] == "media"]
    assert [f["meta"]["rows"] for f in files] == [1, 2]


def test_a_log_that_raises_stores_none_of_its_media_or_text(run):
    table = runstream.Table(columns=["a"], data=[[1]])
    with pytest.raises(TypeError, match="mixes Table with Html"):
        run.log({"t": table, "note": "hello", "bad": [table, runstream.Html("<p>")], "loss": 1.0})
    run.log({"after": runstream.Table(columns=["b"], data=[[2], [3]])})
    run.finish()
    files = [e.data for e in spooled_events(run.dir) if e.type == events.FILE and e.data["kind"] == "media"]
    assert [(f["meta"]["key"], f["meta"]["rows"]) for f in files] == [("after", 2)]  # not "t" of the failed call
    assert "note" not in run.summary


def test_edits_during_the_run_travel_as_run_updates_and_bad_ones_raise(run):
    run.name = "renamed"
    run.tags = ["a", "b", "a"]
    run.notes = "note"
    run.group = "g"
    run.job_type = "train"
    assert (run.name, run.tags, run.notes, run.group, run.job_type) == ("renamed", ("a", "b"), "note", "g", "train")
    for bad in ("", None, "x" * 300):
        with pytest.raises(ValueError, match=r"run.name"):
            run.name = bad
    with pytest.raises(TypeError, match=r"run.tags"):
        run.tags = "not-a-list"
    with pytest.raises(TypeError, match=r"run.notes"):
        run.notes = 3
    run.finish()
    updates = {k: v for e in spooled_events(run.dir) if e.type == events.RUN_UPDATE for k, v in e.data.items()}
    assert updates == {"name": "renamed", "tags": ["a", "b"], "notes": "note", "group": "g", "job_type": "train"}


def test_an_offline_run_resumed_on_this_machine_continues_its_steps_name_and_config(tmp_path):
    first = runstream.init(project="p", id="again1", mode="offline", dir=tmp_path, settings=QUIET, config={"lr": 0.1})
    for i in range(7):
        first.log({"x": float(i)})
    first.tags = ["t"]
    first.finish()
    again = runstream.init(project="p", id="again1", resume="must", mode="offline", dir=tmp_path, settings=QUIET)
    assert (again.resumed, again.step, again.name, dict(again.config), again.tags) == (
        True,
        7,
        first.name,
        {"lr": 0.1},
        ("t",),
    )
    again.log({"x": 7.0})
    again.finish()
    steps = [s for s, k, _ in metric_points(spooled_events(again.dir)) if k == "x"]
    assert steps == list(range(8))


def test_save_live_stores_files_that_match_later_and_changes(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "early.txt").write_text("1")
    assert run.save("*.txt") == ["early.txt"]
    (tmp_path / "late.txt").write_text("22")
    (tmp_path / "early.txt").write_text("333")
    run.save("*.end", policy="end")
    (tmp_path / "made_later.end").write_text("4444")
    run.finish()
    files = {}
    for e in spooled_events(run.dir):
        if e.type == events.FILE and e.data["kind"] == "file":
            files[e.data["path"]] = e.data["size"]  # the latest announcement of each path
    assert files == {"early.txt": 3, "late.txt": 2, "made_later.end": 4}


def _finish_of(tmp_path) -> dict:
    run_dir = next((tmp_path / "runstream-runs").glob("run-*"))
    evs = spooled_events(run_dir)
    assert evs[-1].type == events.RUN_FINISH, "nothing follows run_finish"
    return evs[-1].data


@pytest.mark.parametrize(
    "then,returncode,state,exit_code",
    [
        ("with run:\n    sys.exit(0)", 0, "finished", 0),  # a with-block's sys.exit(0) is a success
        ("with run:\n    sys.exit(4)", 4, "failed", 4),
        ("sys.exit(256)", 0, "finished", 0),  # the process exits with the low 8 bits, and so does the run
        ("import threading\nt = threading.Thread(target=sys.exit, args=(5,))\nt.start(); t.join()", 0, "finished", 0),
    ],
)
def test_exit_codes_are_the_ones_the_process_exits_with(tmp_path, then, returncode, state, exit_code):
    result = subprocess.run(_script(tmp_path, "import sys\n" + then), capture_output=True, text=True, timeout=60)
    assert result.returncode == returncode, result.stderr
    finish = _finish_of(tmp_path)
    assert (finish["state"], finish["exit_code"]) == (state, exit_code)


def test_sigterm_while_the_main_thread_holds_an_sdk_lock_still_ends_the_run(tmp_path):
    """The handler no longer finishes inside the signal: a slow save() on the main thread held a
    lock that finishing needed, and SIGTERM hung the process."""
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    then = f"""
import shutil
copy = shutil.copy2
def slow_copy(*a, **k):
    print("copying", flush=True)
    time.sleep(3)
    return copy(*a, **k)
shutil.copy2 = slow_copy
run.save({str(tmp_path / "big.bin")!r})
time.sleep(60)
"""
    proc = subprocess.Popen(_script(tmp_path, then), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "copying"
    proc.terminate()
    assert proc.wait(timeout=30) == -15
    assert _finish_of(tmp_path)["state"] == "killed"


def test_an_ignored_or_handled_sigterm_is_left_alone(tmp_path):
    then = """
import os, signal
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("still alive", flush=True)
"""
    before = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    body = before + _script(tmp_path, then)[2]
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "still alive" in result.stdout, result.stderr
    assert _finish_of(tmp_path)["state"] == "finished"


def test_save_never_copies_this_machines_runs_into_themselves(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.json").write_text("{}")
    saved = run.save("**/*.json")  # the runs folder (and its latest-run link) is below the working directory
    assert saved == ["params.json"]
    run.finish()
    files = {e.data["path"] for e in spooled_events(run.dir) if e.type == events.FILE and e.data["kind"] == "file"}
    assert files == {"params.json"}


def test_a_resume_continues_after_steps_that_logged_only_media_or_text(tmp_path):
    first = runstream.init(project="p", id="media1", mode="offline", dir=tmp_path, settings=QUIET)
    for i in range(3):
        first.log({"h": runstream.Histogram([1, 2, 3]), "note": f"step {i}"})
    first.finish()
    again = runstream.init(project="p", id="media1", resume="allow", mode="offline", dir=tmp_path, settings=QUIET)
    assert again.step == 3
    again.finish()


def test_after_finish_edits_warn_and_change_nothing(run, caplog):
    run.log({"x": 1.0})
    run.finish()
    progress = (Path(run.dir) / "spool" / "progress").read_text()
    with caplog.at_level("WARNING", logger="runstream"):
        run.summary["best"] = 1
        run.config.update({"late": 1})
    assert "its summary is not sent" in caplog.text and "its config is not sent" in caplog.text
    assert run.summary["best"] == 1  # the script's own view still answers
    assert (Path(run.dir) / "spool" / "progress").read_text() == progress
    assert spooled_events(run.dir)[-1].type == events.RUN_FINISH


def test_resume_auto_starts_a_new_run_when_the_remembered_one_is_still_running(tmp_path):
    script = f"""
import runstream, sys, time
run = runstream.init(project="p", mode="offline", resume="auto", dir={str(tmp_path)!r}, settings={QUIET!r})
print(run.id, run.resumed, flush=True)
time.sleep(float(sys.argv[1]))
"""
    first = subprocess.Popen([sys.executable, "-c", script, "20"], stdout=subprocess.PIPE, text=True)
    first_id = first.stdout.readline().split()[0]
    second = subprocess.run([sys.executable, "-c", script, "0"], capture_output=True, text=True, timeout=60)
    first.kill()
    first.wait()
    assert second.returncode == 0, second.stderr
    second_id, resumed = second.stdout.split()
    assert second_id != first_id and resumed == "False"


def test_disabled_run_finishes_like_any_other(tmp_path):
    r = runstream.init(project="p", mode="disabled", dir=tmp_path)
    r.alert("t", "x")
    r.name = "renamed"
    assert runstream.run is r
    assert r.finish() is None
    assert runstream.run is None


def test_config_and_summary_too_deep_for_storage_are_refused_in_the_caller(run):
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(ConfigError, match="nest at most 32"):
        run.config.update({"deep": deep})
    with pytest.raises(ConfigError, match="nest at most 32"):
        run.config.update({"a." * 40 + "b": 1})
    with pytest.raises(ValueError, match="nest at most 32"):
        run.summary["x"] = deep
    run.config.update({"fine": {"a": {"b": 1}}})
    assert run.config["fine"] == {"a": {"b": 1}}
