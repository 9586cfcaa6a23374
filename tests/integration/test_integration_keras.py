"""The Keras 3 callbacks (``runstream.integration.keras``) training real (tiny) models on numpy data, on the
torch backend, logging to a real ``runstream server`` (embedded ClickHouse); everything is read back through
``runstream.Api``.

W&B's behaviour pinned down (wandb/integration/keras): ``WandbMetricsLogger`` logs Keras' ``logs`` and the
learning rate as ``epoch/*`` against ``epoch/epoch`` (and ``batch/*`` against ``batch/batch_step`` every
``log_freq`` batches); ``WandbModelCheckpoint`` logs each checkpoint as a version of the ``model`` artifact
``run_<id>_model`` aliased ``latest`` and ``epoch_<e>`` (``epoch_<e>_batch_<b>`` with an int ``save_freq``);
``WandbEvalCallback`` logs the ground-truth table once and a prediction table per epoch.
"""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # tensorflow is not installed: keras must not default to it

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

import runstream
from infra.net import free_port
from runstream import events
from runstream.integration.keras import WandbEvalCallback, WandbMetricsLogger, WandbModelCheckpoint
from tests.helpers import Server, metric_points, scanned_history, script_env, spooled_events, unique

QUIET = {"console": False, "system_metrics": False, "git": False}
EPOCHS, BATCH, SAMPLES = 3, 16, 96  # 6 batches an epoch


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int32")


def _model(learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def _init(server: Server, tmp_path: Path, project: str, run_id: str) -> runstream.Run:
    return runstream.init(
        project=project, id=run_id, dir=tmp_path, settings={**QUIET, "url": server.url, "api_key": ""}
    )


def _versions(run: runstream.Api) -> dict[str, set[str]]:
    """{version: aliases} of the run's logged artifacts."""
    return {a.version: set(a.aliases) for a in run.logged_artifacts()}


def test_metrics_per_epoch_and_batch_and_a_checkpoint_per_epoch(server, api, tmp_path):
    project, run_id = unique("keras"), unique("r")
    run = _init(server, tmp_path, project, run_id)
    x, y = _data()
    # The rate halves every epoch (6 steps): the logged rate is the schedule's at each epoch's end.
    model = _model(keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=6, decay_rate=0.5))
    history = model.fit(
        x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=(x, y), verbose=0,
        callbacks=[WandbMetricsLogger(log_freq=2), WandbModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.keras"))],
    )  # fmt: skip
    assert run.finish().unacked_events == 0

    path = f"default/{project}/{run_id}"
    rows = scanned_history(api, path)
    epochs = [r for r in rows if r.get("epoch/epoch") is not None]
    assert [r["epoch/epoch"] for r in epochs] == list(range(EPOCHS))
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [r[f"epoch/{name}"] for r in epochs] == pytest.approx(history.history[name], rel=1e-5)
    assert [r["epoch/learning_rate"] for r in epochs] == pytest.approx([0.005, 0.0025, 0.00125], rel=1e-4)
    # log_freq=2: batches 0, 2 and 4 of each epoch; batch_step counts batches across epochs.
    batches = [r for r in rows if r.get("batch/batch_step") is not None]
    assert [r["batch/batch_step"] for r in batches] == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert all(r["batch/loss"] > 0 and 0 <= r["batch/accuracy"] <= 1 for r in batches)
    assert batches[1]["batch/learning_rate"] == pytest.approx(0.01 * 0.5 ** (3 / 6), rel=1e-4)  # after 3 steps

    logged = api.run(path)
    assert _versions(logged) == {"v0": {"epoch_0"}, "v1": {"epoch_1"}, "v2": {"epoch_2", "latest"}}
    (last,) = [a for a in logged.logged_artifacts() if a.version == "v2"]
    assert (last.name, last.type) == (f"run_{run_id}_model:v2", "model")
    folder = Path(last.download(tmp_path / "downloaded"))
    loaded = keras.saving.load_model(folder / "ckpt-03.keras")
    assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


class _PredictionTable(WandbEvalCallback):
    """wandb's documented subclass shape: ground truth once, a prediction per row each epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(["idx", "label"], ["epoch", "idx", "label", "pred"])
        self.x, self.y = x, y

    def add_ground_truth(self, logs=None):
        for idx, label in enumerate(self.y):
            self.data_table.add_data(idx, int(label))

    def add_model_predictions(self, epoch, logs=None):
        preds = self.model.predict(self.x, verbose=0).argmax(axis=-1)
        for idx in self.data_table_ref.get_index():
            self.pred_table.add_data(epoch, *self.data_table_ref.data[idx], int(preds[idx]))


def test_best_only_batch_checkpoints_and_prediction_tables(server, api, tmp_path):
    project, run_id = unique("keras"), unique("r")
    run = _init(server, tmp_path, project, run_id)
    x, y = _data()
    model = _model()
    # mode="max" on val_loss, which falls as the model learns: Keras writes only the epochs that beat the best so
    # far, and only those are logged (one file name: each new best is its own version all the same).
    best = WandbModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss", mode="max", save_best_only=True)
    every_4 = WandbModelCheckpoint(str(tmp_path / "w-{epoch}-{batch}.weights.h5"), save_weights_only=True, save_freq=4)
    history = model.fit(
        x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=(x, y), verbose=0,
        callbacks=[best, _PredictionTable(x[:5], y[:5])],
    )  # fmt: skip
    model.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[every_4])
    assert run.finish().unacked_events == 0

    val_loss = history.history["val_loss"]
    improved = [e for e in range(EPOCHS) if val_loss[e] > max(val_loss[:e], default=-np.inf)]
    logged = api.run(f"default/{project}/{run_id}")
    models = [a for a in logged.logged_artifacts() if a.type == "model"]
    aliases = set().union(*(set(a.aliases) for a in models))
    assert {a for a in aliases if a.startswith("epoch_") and "batch" not in a} == {f"epoch_{e}" for e in improved}
    # save_freq=4 over 2 epochs of 6 batches: after batches 4, 8 and 12 (epoch 0 batch 3, epoch 1 batches 1 and 5).
    assert {a for a in aliases if "batch" in a} == {"epoch_0_batch_3", "epoch_1_batch_1", "epoch_1_batch_5"}

    # The ground truth once (artifact `val`), the predictions of each epoch (versions of run_<id>_pred).
    tables = {a.name.split(":")[0]: a for a in logged.logged_artifacts() if a.type in ("dataset", "evaluation")}
    assert set(tables) == {"val", f"run_{run_id}_pred"}
    folder = Path(tables[f"run_{run_id}_pred"].download(tmp_path / "pred"))
    table = json.loads((folder / "eval_data.table.json").read_text())
    assert table["columns"] == ["epoch", "idx", "label", "pred"]
    # The latest version: the last epoch's five rows, each with its ground truth from data_table_ref.
    assert [row[:3] for row in table["data"]] == [[EPOCHS - 1, i, int(y[i])] for i in range(5)]
    assert all(row[3] in (0, 1) for row in table["data"])
    eval_tables = [f for f in logged.files() if f.kind == "media" and "eval_data" in f.name]
    assert len(eval_tables) == EPOCHS  # and on the media tab, once per epoch


def test_misuse_is_a_clear_error(server, tmp_path):
    assert runstream.run is None
    with pytest.raises(runstream.Error, match=r"runstream.init\(\) before WandbMetricsLogger"):
        WandbMetricsLogger()
    run = _init(server, tmp_path, unique("misuse"), unique("r"))
    try:
        with pytest.raises(ValueError, match='log_freq must be "epoch", "batch" or a positive int'):
            WandbMetricsLogger(log_freq=0)
        with pytest.raises(ValueError, match=r"\.keras"):  # Keras' own check, kept
            WandbModelCheckpoint(str(tmp_path / "model.bin"))
    finally:
        run.finish()


def test_the_callbacks_copy_and_log_to_the_run_current_when_called(tmp_path):
    """KerasTuner (and sklearn wrappers) deepcopy the callbacks; a script may keep them across finish() and a new
    init(): they hold no run, so the copies work and each fit logs to the run of its time."""
    x, y = _data()
    offline = {"mode": "offline", "dir": tmp_path, "settings": QUIET}
    first = runstream.init(project="keras-copies", **offline)
    callbacks = [
        WandbMetricsLogger(log_freq=3),
        WandbModelCheckpoint(str(tmp_path / "model.keras"), monitor="loss"),
        _PredictionTable(x[:3], y[:3]),
    ]
    copies = copy.deepcopy(callbacks)
    _model().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=copies)
    assert copies[1]._logged and copy.deepcopy(copies[1])._logged == {}  # the copy has saved nothing yet
    first.finish()
    second = runstream.init(project="keras-copies", **offline)
    _model().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=copies)  # kept across runs
    second.finish()
    for run in (first, second):
        spooled = spooled_events(run.dir)
        logged = {key for _, key, _ in metric_points(spooled)}
        assert {"epoch/loss", "epoch/epoch", "batch/loss", "batch/batch_step"} <= logged
        names = {e.data["name"] for e in spooled if e.type == events.ARTIFACT}
        assert names == {f"run_{run.id}_model", "val", f"run_{run.id}_pred"}, names


# A wandb user's Keras script, as wandb's docs write it; switching it is its import lines.
WANDB_SCRIPT = """\
import numpy as np
import keras
import wandb
from wandb.integration.keras import WandbMetricsLogger, WandbModelCheckpoint

run = wandb.init(project=PROJECT, id=RUN_ID, config={"epochs": 2, "batch_size": 16})
x = np.random.default_rng(1).normal(size=(64, 3)).astype("float32")
y = x.sum(axis=1)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
model.fit(x, y, epochs=wandb.config.epochs, batch_size=wandb.config.batch_size, verbose=0,
          callbacks=[WandbMetricsLogger(), WandbModelCheckpoint("model.keras", monitor="loss")])
wandb.finish()
"""


def test_a_wandb_keras_script_switches_by_its_import_lines(server, api, tmp_path):
    project, run_id = unique("kswitch"), unique("r")
    switched = WANDB_SCRIPT.replace("import wandb\n", "import runstream as wandb\n").replace(
        "from wandb.integration.keras import", "from runstream.integration.keras import"
    )
    changed = [(a, b) for a, b in zip(WANDB_SCRIPT.splitlines(), switched.splitlines(), strict=True) if a != b]
    assert len(changed) == 2  # the two import lines, nothing else
    (tmp_path / "train.py").write_text(f"PROJECT, RUN_ID = {project!r}, {run_id!r}\n" + switched)
    env = {**script_env(server.url, tmp_path), "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr

    path = f"default/{project}/{run_id}"
    logged = api.run(path)
    assert logged.state == "finished" and logged.config == {"epochs": 2, "batch_size": 16}
    rows = [r for r in scanned_history(api, path) if r.get("epoch/epoch") is not None]
    assert [r["epoch/epoch"] for r in rows] == [0, 1] and all(r["epoch/loss"] > 0 for r in rows)
    assert all(r["epoch/learning_rate"] == pytest.approx(0.01) for r in rows)  # sgd's default rate
    assert _versions(logged) == {"v0": {"epoch_0"}, "v1": {"epoch_1", "latest"}}
