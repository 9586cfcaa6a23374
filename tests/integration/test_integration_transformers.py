"""``runstream.integration.transformers.WandbCallback``: a tiny BERT (built from a config, no downloads) trained
by the real ``transformers.Trainer`` against a real ``runstream server``, read back through ``runstream.Api``
(history, config, summary, model artifacts, the run's state), and a script written for transformers' own
``WandbCallback`` switched by its import line.

transformers' ``WandbCallback`` (transformers/integrations/integration_utils.py) is the reference.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import runstream
from infra.net import free_port
from runstream.artifacts import Stager
from runstream.integration.transformers import RunstreamCallback, WandbCallback
from runstream.public_api import ApiError
from tests.helpers import Server, metric_points, scanned_history, script_env, spooled_events, unique, wait_for

QUIET = {"console": False, "system_metrics": False, "git": False}
SAMPLES, BATCH, EPOCHS = 16, 4, 2
STEPS = SAMPLES // BATCH * EPOCHS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


class Sentences(torch.utils.data.Dataset):
    """Random token ids; the label is whether the first token is even (learnable, and no download)."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(count)
        self.ids = torch.randint(0, 100, (count, 8), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[0] % 2}


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16,
    )  # fmt: skip
    assert config.num_labels == 2  # the default: two classes
    return BertForSequenceClassification(config)


def _args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    given = {
        "output_dir": str(tmp_path / "out"), "num_train_epochs": EPOCHS, "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": BATCH, "learning_rate": 1e-3, "logging_steps": 1, "eval_strategy": "epoch",
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True,
    }  # fmt: skip
    return TrainingArguments(**{**given, **kw})


def _slow_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the artifact thread read the first checkpoint's folder late, so it is deleted (save_total_limit, at
    the next save) before a background copy could read it: only a callback that waits for the copy keeps it."""
    original = Stager.stage_file

    def late(self: Stager, source: Path, job: Any = None) -> tuple[str, int]:
        if source.parent.name == "checkpoint-4" and source.name == "config.json":  # the first file read
            time.sleep(4)
        return original(self, source, job)

    monkeypatch.setattr(Stager, "stage_file", late)


def _state(api: runstream.Api, path: str) -> str | None:
    try:
        return api.run(path).state
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None


def test_train_logs_config_metrics_summary_and_checkpoints_as_model_versions(server, api, tmp_path, monkeypatch):
    _slow_copies(monkeypatch)
    monkeypatch.setenv("RUNSTREAM_LOG_MODEL", "checkpoint")
    project = unique("hf")
    callback = WandbCallback(project=project, dir=tmp_path, settings={**QUIET, "url": server.url})
    # save_total_limit=1: each save deletes the checkpoint before it; the logged copy must not depend on it.
    args = _args(tmp_path, run_name="tiny bert", save_strategy="epoch", save_total_limit=1)
    model = _model()
    trainer = Trainer(model=model, args=args, train_dataset=Sentences(SAMPLES), eval_dataset=Sentences(8),
                      callbacks=[callback])  # fmt: skip
    trainer.train()
    trainer.evaluate()  # after train(): the same run (the callback does not finish it, as transformers')
    trainer.predict(Sentences(4), metric_key_prefix="test")
    run = callback.run
    assert run is not None and runstream.run is run and run.name == "tiny bert"
    runstream.finish()

    path = f"default/{project}/{run.id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    stored = api.run(path)
    # The model's config, then the TrainingArguments over it, and the parameter count.
    assert stored.config["hidden_size"] == 32 and stored.config["num_hidden_layers"] == 2
    assert stored.config["learning_rate"] == 1e-3 and stored.config["num_train_epochs"] == EPOCHS
    assert stored.config["run_name"] == "tiny bert" and stored.config["report_to"] == []
    assert stored.config["model/num_parameters"] == model.num_parameters() > 0

    rows = scanned_history(api, path)
    train = [r for r in rows if r.get("train/loss") is not None]
    assert [r["train/global_step"] for r in train] == list(range(1, STEPS + 1))  # logging_steps=1
    assert all(r["train/learning_rate"] > 0 and r["train/grad_norm"] >= 0 for r in train)
    evals = [r for r in rows if r.get("eval/loss") is not None]
    assert [r["train/global_step"] for r in evals] == [STEPS // 2, STEPS, STEPS]  # each epoch, then evaluate()
    assert [r["train/epoch"] for r in evals] == [1.0, 2.0, 2.0]
    (test,) = [r for r in rows if r.get("test/loss") is not None]  # predict(): test_* as test/*, no step
    assert test.get("train/global_step") is None and test["test/runtime"] > 0
    # End-of-training figures are summary only; the history's last values are there too.
    assert all(r.get("train/train_runtime") is None and r.get("train_runtime") is None for r in rows)
    assert stored.summary["train_runtime"] > 0 and stored.summary["train_loss"] > 0
    assert stored.summary["eval/loss"] == pytest.approx(evals[-1]["eval/loss"])
    assert stored.summary["train/global_step"] == STEPS

    # LOG_MODEL=checkpoint: the architecture at the start, each checkpoint folder, the model at the end,
    # as versions of model-<run name> (made a valid artifact name).
    collection = f"default/{project}/model-tiny-bert"
    versions = {alias: v for v in api.artifacts("model", collection) for alias in v.aliases}
    base = versions["base_model"]
    assert base.metadata["initial_model"] is True and base.metadata["num_parameters"] == model.num_parameters()
    assert [f.path for f in base.files()] == ["model_architecture.txt"]
    first = versions["checkpoint_global_step_4"]
    assert "epoch_1.0" in first.aliases and first.type == "model"
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= {f.path for f in first.files()}
    assert not (Path(args.output_dir) / "checkpoint-4").exists()  # deleted by save_total_limit, logged before
    final = versions["final_model"]
    assert final.metadata["final_model"] is True and final.metadata["train/global_step"] == STEPS
    folder = final.download(root=tmp_path / "final")
    loaded = BertForSequenceClassification.from_pretrained(folder)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight.cpu())
    assert (Path(folder) / "model_architecture.txt").read_text().startswith("BertForSequenceClassification(")


def test_an_active_run_is_used_and_no_model_is_logged_unless_asked(server, api, tmp_path, monkeypatch):
    monkeypatch.delenv("RUNSTREAM_LOG_MODEL", raising=False)
    monkeypatch.delenv("WANDB_LOG_MODEL", raising=False)
    project = unique("hf-active")
    run = runstream.init(
        project=project, config={"dataset": "toy"}, dir=tmp_path, settings={**QUIET, "url": server.url}
    )
    trainer = Trainer(model=_model(), args=_args(tmp_path, eval_strategy="no"), train_dataset=Sentences(SAMPLES),
                      callbacks=[RunstreamCallback()])  # fmt: skip
    trainer.train()
    runstream.finish()

    path = f"default/{project}/{run.id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    stored = api.run(path)
    assert stored.config["dataset"] == "toy" and stored.config["per_device_train_batch_size"] == BATCH
    assert len([r for r in scanned_history(api, path) if "train/loss" in r]) == STEPS
    assert list(stored.logged_artifacts()) == []


def test_values_runstream_cannot_log_are_left_out_with_one_warning_each(tmp_path, caplog):
    callback = WandbCallback(project="hf-odd", mode="offline", dir=tmp_path, settings=QUIET)
    args, control = _args(tmp_path), TrainerControl()
    state = TrainerState(global_step=3)
    callback.on_train_begin(args, state, control, model=None)
    with caplog.at_level(logging.WARNING, logger="runstream"):  # a custom compute_metrics, say, returns these
        callback.on_log(args, state, control, logs={"loss": 0.5, "labels_seen": ["a", "b"], "pair": (1, "a")})
        state.global_step = 4
        callback.on_log(args, state, control, logs={"loss": 0.25, "labels_seen": ["c"]})
        callback.on_predict(args, state, control, metrics={"test_loss": 0.75, "test_names": [("x", 1)]})
    run = callback.run
    assert run is not None
    run.finish()
    assert caplog.text.count("train/labels_seen is not logged") == 1 and "train/pair is not logged" in caplog.text
    assert "test/names is not logged" in caplog.text
    points = sorted(metric_points(spooled_events(run.dir)))
    assert points == [
        (0, "train/global_step", 3), (0, "train/loss", 0.5), (1, "train/global_step", 4), (1, "train/loss", 0.25),
        (2, "test/loss", 0.75),
    ]  # fmt: skip


def test_a_process_other_than_the_main_one_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNSTREAM_LOG_MODEL", "checkpoint")
    callback = WandbCallback(project="hf-rank1", mode="offline", dir=tmp_path, settings=QUIET)
    args, control = _args(tmp_path), TrainerControl()
    state = TrainerState(is_world_process_zero=False, global_step=4, epoch=1.0)  # a DDP worker of rank 1
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    model = _model()
    callback.on_train_begin(args, state, control, model=model)
    callback.on_log(args, state, control, model=model, logs={"loss": 0.5})
    callback.on_save(args, state, control)
    callback.on_predict(args, state, control, metrics={"test_loss": 0.5})
    callback.on_train_end(args, state, control, model=model)
    assert callback.run is None and runstream.run is None
    assert not (tmp_path / "runstream-runs").exists()


# -- code written for wandb ------------------------------------------------------------------------------

WANDB_SCRIPT = """\
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.integrations import WandbCallback


class Data(torch.utils.data.Dataset):
    def __init__(self, n):
        self.ids = torch.randint(0, 100, (n, 8))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i][0] % 2}


config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16, num_labels=2)
args = TrainingArguments(output_dir="out", num_train_epochs=2, per_device_train_batch_size=4, logging_steps=2,
                         save_strategy="no", report_to="none", use_cpu=True, run_name="switched")
trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Data(16),
                  callbacks=[WandbCallback()])
trainer.train()
"""


def test_a_script_written_for_transformers_wandb_callback_switches_by_its_import_line(server, api, tmp_path):
    project = unique("hf-switch")
    wandb_import = "from transformers.integrations import WandbCallback"
    assert WANDB_SCRIPT.count(wandb_import) == 1
    script = WANDB_SCRIPT.replace(wandb_import, "from runstream.integration.transformers import WandbCallback")
    (tmp_path / "train.py").write_text(script)
    env = {**script_env(server.url, tmp_path), "WANDB_PROJECT": project, "WANDB_LOG_MODEL": "end"}
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr

    (stored,) = list(api.runs(f"default/{project}"))  # WANDB_PROJECT, as transformers' callback reads it
    path = f"default/{project}/{stored.id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")  # ended with the script
    stored = api.run(path)
    assert stored.name == "switched" and stored.config["logging_steps"] == 2
    steps = [r["train/global_step"] for r in scanned_history(api, path) if "train/loss" in r]
    assert steps == [2, 4, 6, 8]
    final = api.artifact(f"default/{project}/model-switched:final_model")  # WANDB_LOG_MODEL=end
    assert {"model.safetensors", "config.json"} <= {f.path for f in final.files()}
