"""``runstream.integration.lightning.WandbLogger``: a tiny real model trained by the real Lightning ``Trainer``
against a real ``runstream server``, read back through ``runstream.Api`` (history, config, summary, model
artifacts, the run's state), and a script written for wandb's ``WandbLogger`` switched by its import line.

Lightning's own ``WandbLogger`` (lightning/pytorch/loggers/wandb.py) is the reference for what is logged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

import runstream
from infra.net import free_port
from runstream.artifacts import Stager
from runstream.integration.lightning import RunstreamLogger, WandbLogger
from runstream.public_api import ApiError
from tests.helpers import Server, scanned_history, script_env, unique, wait_for

QUIET = {"console": False, "system_metrics": False, "git": False}
EPOCHS = 2
BATCHES = 4  # training batches per epoch


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


class Regressor(pl.LightningModule):
    """y = x @ w: a one-layer model; its hyperparameters go to the logger through save_hyperparameters()."""

    def __init__(
        self, lr: float = 0.05, hidden: int = 8, fail_at_step: int | None = None, interrupt: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(hidden, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams["fail_at_step"] is not None and self.global_step == self.hparams["fail_at_step"]:
            if self.hparams["interrupt"]:
                raise KeyboardInterrupt  # as Ctrl-C would
            raise ValueError("bad batch in training_step")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def _data(batches: int = BATCHES) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 4, 8, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


def _trainer(logger: Any, tmp_path: Path, **kw: Any) -> pl.Trainer:
    return pl.Trainer(
        logger=logger, max_epochs=EPOCHS, log_every_n_steps=1, default_root_dir=tmp_path, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )  # fmt: skip


def _logger(server: Server, project: str, tmp_path: Path, **kw: Any) -> RunstreamLogger:
    return WandbLogger(project=project, save_dir=tmp_path, settings={**QUIET, "url": server.url}, **kw)


def _slow_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the artifact thread copy each file late, so a checkpoint the trainer deletes right after saving it
    is gone before a background copy could read it: only a logger that waits for the copy keeps it."""
    original = Stager.stage_file

    def late(self: Stager, source: Path, job: Any = None) -> tuple[str, int]:
        time.sleep(0.5)
        return original(self, source, job)

    monkeypatch.setattr(Stager, "stage_file", late)


def _state(api: runstream.Api, path: str) -> str | None:
    try:
        return api.run(path).state
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None


def test_fit_logs_hyperparams_metrics_summary_and_the_best_checkpoint(server, api, tmp_path):
    project = unique("pl")
    logger = _logger(server, project, tmp_path, log_model=True, name="tiny-fit", tags=["pl"])
    assert logger.version is None and logger.name == project  # no run before the trainer asks for one
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1)
    trainer = _trainer(logger, tmp_path, callbacks=[checkpoint])
    trainer.fit(Regressor(), train_dataloaders=_data(), val_dataloaders=_data(2))
    run = logger.experiment
    trainer.test(
        dataloaders=_data(2), ckpt_path="best"
    )  # fit left the run open (as wandb's logger): the test logs to it too
    assert logger.experiment is run
    assert isinstance(run, runstream.Run) and logger.version == run.id and run.name == "tiny-fit"
    # A checkpoint goes under save_dir/<project>/<run id>/checkpoints, as with wandb's logger.
    assert Path(checkpoint.best_model_path).parent == tmp_path / project / run.id / "checkpoints"
    logger.log_text("samples", columns=["input", "output"], data=[["a", "b"]], step=trainer.global_step)
    assert runstream.run is run  # finished by the user (or the script's end), as with wandb
    runstream.finish()

    path = f"default/{project}/{run.id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    stored = api.run(path)
    assert stored.config["lr"] == 0.05 and stored.config["hidden"] == 8 and stored.config["fail_at_step"] is None
    assert stored.tags == ["pl"]
    rows = scanned_history(api, path)
    train = [r for r in rows if r.get("train_loss") is not None]
    # log_every_n_steps=1: one row per optimizer step, each with the trainer's global step beside it.
    assert [r["trainer/global_step"] for r in train] == list(range(EPOCHS * BATCHES))
    val = [r for r in rows if r.get("val_loss") is not None]
    assert [r["epoch"] for r in val] == [0, 1]
    assert [r["trainer/global_step"] for r in val] == [BATCHES - 1, 2 * BATCHES - 1]
    assert stored.summary["val_loss"] == pytest.approx(val[-1]["val_loss"])
    assert stored.summary["trainer/global_step"] == 2 * BATCHES  # log_text(step=trainer.global_step) came last
    (test,) = [r for r in rows if r.get("test_loss") is not None]
    assert test["trainer/global_step"] == 2 * BATCHES

    # log_model=True: once training ends, the checkpoint ModelCheckpoint kept, as a version of model-<run id>.
    best = api.artifact(f"default/{project}/model-{run.id}:best")
    assert best.type == "model" and [f.path for f in best.files()] == ["model.ckpt"]
    assert best.metadata["score"] == pytest.approx(checkpoint.best_model_score.item())
    assert best.metadata["original_filename"] == Path(checkpoint.best_model_path).name
    assert best.metadata["ModelCheckpoint"]["monitor"] == "val_loss"
    state = torch.load(Path(best.download(root=tmp_path / "dl")) / "model.ckpt", weights_only=False)
    assert state["global_step"] == 2 * BATCHES and "layer.weight" in state["state_dict"]
    assert sorted(best.aliases) == ["best", "latest"]
    assert [a.name for a in stored.logged_artifacts()] == [f"model-{run.id}:v0"]


def test_log_model_all_logs_every_checkpoint_as_it_is_written(server, api, tmp_path, monkeypatch):
    _slow_copies(monkeypatch)
    project = unique("pl-all")
    logger = _logger(server, project, tmp_path, log_model="all", checkpoint_name="regressor", prefix="fit")
    # save_top_k=1: each new best deletes the one before it; the logged copy must not depend on it staying.
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, every_n_epochs=1)
    trainer = _trainer(logger, tmp_path, callbacks=[checkpoint])
    trainer.fit(Regressor(), train_dataloaders=_data(), val_dataloaders=_data(2))
    run_id = logger.experiment.id
    runstream.finish()

    path = f"default/{project}/{run_id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    versions = api.artifacts("model", f"default/{project}/regressor")
    assert len(versions) == EPOCHS  # one per epoch, each logged when it was written
    assert [f.path for v in versions for f in v.files()] == ["model.ckpt"] * EPOCHS
    # prefix: every metric name is "<prefix>-<name>" (LOGGER_JOIN_CHAR), as wandb's logger does.
    assert "fit-train_loss" in api.run(path).summary


def test_a_failed_fit_finishes_the_run_as_failed_and_a_retry_starts_a_new_run(server, api, tmp_path):
    project = unique("pl-fail")
    logger = _logger(server, project, tmp_path)
    trainer = _trainer(logger, tmp_path)
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(Regressor(fail_at_step=2), train_dataloaders=_data())
    failed_id = logger.version
    assert failed_id is not None and runstream.run is None  # finished, and the logger let go of it
    _trainer(logger, tmp_path).fit(Regressor(), train_dataloaders=_data())  # the retry: a run of its own
    retry_id = logger.experiment.id
    assert retry_id != failed_id and logger.version == retry_id
    runstream.finish()

    path = f"default/{project}/{failed_id}"
    wait_for(lambda: _state(api, path) == "failed", f"{path} to be failed")
    stored = api.run(path)
    assert stored.exit_code == 1 and "ValueError: bad batch in training_step" in (stored._attrs.get("error") or "")
    assert [r["trainer/global_step"] for r in scanned_history(api, path)] == [0, 1]
    retry = f"default/{project}/{retry_id}"
    wait_for(lambda: _state(api, retry) == "finished", f"{retry} to be finished")
    assert len([r for r in scanned_history(api, retry) if "train_loss" in r]) == EPOCHS * BATCHES


def test_an_interrupted_fit_finishes_the_run_as_killed(server, api, tmp_path):
    project = unique("pl-ctrl-c")
    logger = _logger(server, project, tmp_path)
    trainer = _trainer(logger, tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown: finalize("failed"), then sys.exit(1)
            trainer.fit(Regressor(fail_at_step=1, interrupt=True), train_dataloaders=_data())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C from then on
    path = f"default/{project}/{logger.version}"
    wait_for(lambda: _state(api, path) == "killed", f"{path} to be killed")
    assert api.run(path).exit_code == 130  # as runstream records a script's Ctrl-C


def test_media_helpers_log_images_and_tables_and_check_their_arguments(server, api, tmp_path):
    project = unique("pl-media")
    logger = _logger(server, project, tmp_path)
    with pytest.raises(TypeError, match='Expected a list as "images"'):
        logger.log_image("samples", torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="Expected 2 items but only found 1 for caption"):
        logger.log_image("samples", [torch.zeros(3, 4, 4)] * 2, caption=["one"])
    logger.log_image("samples", [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)], step=5, caption=["zeros", "ones"])
    logger.log_table("preds", columns=["x", "y"], data=[[1, 2.5], [2, 3.5]], step=6)
    run_id = logger.experiment.id
    runstream.finish()

    path = f"default/{project}/{run_id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    images = api._request("GET", f"/runs/{path}/media", params={"key": "samples"}, what="media")["media"]
    assert [(m["media_type"], m["meta"]["caption"]) for m in images] == [("image", "zeros"), ("image", "ones")]
    (table,) = api._request("GET", f"/runs/{path}/media", params={"key": "preds"}, what="media")["media"]
    assert table["media_type"] == "table"
    assert [r["trainer/global_step"] for r in scanned_history(api, path)] == [5, 6]
    with pytest.raises(MisconfigurationException, match="offline"):
        WandbLogger(offline=True, log_model=True)


def test_a_pickled_logger_keeps_its_version_so_spawned_workers_log_to_one_run(server, api, tmp_path):
    import pickle

    project = unique("pl-spawn")
    logger = _logger(server, project, tmp_path)
    worker = pickle.loads(pickle.dumps(logger))  # what strategy="ddp_spawn" hands its workers
    assert logger.version is not None and worker.version == logger.version and runstream.run is None
    worker.log_metrics({"loss": 1.0}, step=0)  # the rank-0 worker starts the run...
    assert worker.experiment.id == logger.version
    runstream.finish()  # ...which ends with the worker
    logger.log_metrics({"test_loss": 0.5}, step=1)  # after fit, the main process continues it
    assert logger.experiment.id == worker.version
    runstream.finish()
    path = f"default/{project}/{logger.version}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    assert [r["trainer/global_step"] for r in scanned_history(api, path)] == [0, 1]


def test_finalize_finished_logs_no_checkpoint(server, api, tmp_path):
    """Lightning's SLURM requeue handler calls finalize("finished") before the job is requeued: as with wandb's
    logger, only a "success" logs the checkpoints log_model=True kept."""
    project = unique("pl-requeue")
    logger = _logger(server, project, tmp_path, log_model=True)
    saved = tmp_path / "epoch=0.ckpt"
    torch.save({"state_dict": {}}, saved)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    checkpoint.best_model_path, checkpoint.best_model_score = str(saved), torch.tensor(0.5)
    checkpoint.best_k_models = {str(saved): torch.tensor(0.5)}
    logger.after_save_checkpoint(checkpoint)  # kept until training ends
    run_id = logger.experiment.id
    logger.finalize("finished")
    assert runstream.run is not None  # not finished either: the requeued job continues the run
    runstream.finish()
    path = f"default/{project}/{run_id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")
    assert api.run(path).logged_artifacts() == []


def test_ranks_other_than_zero_start_no_run(server, tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as Lightning sets it in a DDP worker of rank 1
    logger = _logger(server, unique("pl-rank1"), tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_image("samples", [torch.zeros(3, 4, 4)])
    logger.watch(torch.nn.Linear(2, 2))
    logger.experiment.log({"x": 1})  # a module's own self.logger.experiment.log(...): a dummy on rank 1
    logger.finalize("success")
    assert runstream.run is None and logger.version is None
    assert not (tmp_path / "runstream-runs").exists()


# -- code written for wandb ------------------------------------------------------------------------------

WANDB_SCRIPT = """\
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.loggers import WandbLogger


class Model(pl.LightningModule):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


x = torch.randn(16, 4)
data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)
wandb_logger = WandbLogger(project="{project}", name="switched", log_model="all")
wandb_logger.experiment.config.update({{"batch_size": 4}})
trainer = pl.Trainer(logger=wandb_logger, max_epochs=2, log_every_n_steps=1, accelerator="cpu",
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Model(), data)
print("RUN", wandb_logger.experiment.id)
"""


def test_a_script_written_for_wandbs_logger_switches_by_its_import_line(server, api, tmp_path):
    project = unique("pl-switch")
    original = WANDB_SCRIPT.format(project=project)
    wandb_import = "from lightning.pytorch.loggers import WandbLogger"
    assert original.count(wandb_import) == 1
    script = original.replace(wandb_import, "from runstream.integration.lightning import WandbLogger")
    (tmp_path / "train.py").write_text(script)
    env = script_env(server.url, tmp_path)
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    run_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("RUN "))

    path = f"default/{project}/{run_id}"
    wait_for(lambda: _state(api, path) == "finished", f"{path} to be finished")  # ended with the script
    stored = api.run(path)
    assert stored.name == "switched" and stored.config == {"lr": 0.1, "batch_size": 4}
    assert [r["trainer/global_step"] for r in scanned_history(api, path) if "loss" in r] == list(range(8))
    assert len(api.artifacts("model", f"default/{project}/model-{run_id}")) == 2  # log_model="all"
    assert (tmp_path / "runstream-runs").is_dir()  # the run's folder under save_dir=".", as wandb's ./wandb
