"""Keras 3 callbacks with the names, arguments and behaviour of ``wandb.integration.keras``.

``from runstream.integration.keras import WandbMetricsLogger, WandbModelCheckpoint, WandbEvalCallback``
replaces wandb's import line. Keras 3 runs on any of its backends (torch, jax, tensorflow): nothing here
imports tensorflow, unlike wandb's callbacks, which are tf.keras ones.

- ``WandbMetricsLogger`` logs the ``logs`` Keras hands its callbacks (loss, compiled metrics, val_*) and the
  learning rate, under ``epoch/*`` against ``epoch/epoch`` or ``batch/*`` against ``batch/batch_step``.
- ``WandbModelCheckpoint`` is Keras' ``ModelCheckpoint``; every checkpoint it writes is logged as a version of
  the ``model`` artifact ``run_<run id>_model``, aliased ``latest`` and ``epoch_<e>`` (or ``epoch_<e>_batch_<b>``).
- ``WandbEvalCallback`` is the abstract base for prediction tables (ground truth once, predictions per epoch).

Each callback logs to the run current when it is called (``runstream.init()`` must come before the callback is
made, as with wandb): a callback kept across ``finish()`` and a new ``init()`` logs to the new run, and callbacks
copy (``copy.deepcopy``: KerasTuner, ``sklearn.clone``) and pickle, since they hold no run.
"""

from __future__ import annotations

import abc
import copy
import logging
import os
import string
from pathlib import Path
from typing import Any, Literal

import runstream
from runstream.media import Table
from runstream.run import Error, Run

try:
    import keras
except ModuleNotFoundError as exc:  # keras' default backend is tensorflow; say how to pick another
    if exc.name == "tensorflow":
        raise ImportError(
            "keras could not load its backend: tensorflow is not installed. Set KERAS_BACKEND=torch (or jax) in the "
            "environment before keras is first imported, or install tensorflow"
        ) from exc
    raise

__all__ = ["WandbEvalCallback", "WandbMetricsLogger", "WandbModelCheckpoint"]

log = logging.getLogger("runstream")

LogStrategy = Literal["epoch", "batch"]
Mode = Literal["auto", "min", "max"]


#: How long a checkpoint save waits for the previous version's copy of the same file before going on regardless.
COPY_WAIT_S = 600.0


def _current_run(what: str) -> Run:
    if runstream.run is None:
        raise Error(f"You must call runstream.init() before {what}()")
    return runstream.run


def _learning_rate(model: Any, global_step: int) -> float | None:
    """The optimizer's current learning rate: a variable, a float, or a schedule called at ``global_step``."""
    optimizer = getattr(model, "optimizer", None)
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        return None
    try:
        if callable(rate) and not hasattr(rate, "shape"):  # a LearningRateSchedule (Keras 3 usually evaluates it)
            rate = rate(global_step)
        value = getattr(rate, "value", rate)  # a keras Variable holds a backend tensor
        if hasattr(value, "detach"):  # torch: no numpy round trip (numpy 2 warns on keras' __array__)
            value = value.detach().cpu()
        return float(value)
    except Exception as exc:  # noqa: BLE001 - an odd optimizer must not stop training; said once
        if not getattr(model, "_runstream_lr_warned", False):
            log.warning("runstream: unable to log the learning rate: %s", exc)
            model._runstream_lr_warned = True
        return None


class WandbMetricsLogger(keras.callbacks.Callback):
    """Logs the metrics Keras computes (train and validation) and the learning rate (wandb's WandbMetricsLogger).

    Args:
        log_freq: "epoch" (default): log at the end of each epoch, as ``epoch/<metric>`` against ``epoch/epoch``;
            "batch" or an int N: also log every N training batches, as ``batch/<metric>`` against
            ``batch/batch_step`` (the number of batches trained before this one, across epochs).
        initial_global_step: the number of batches already trained, when resuming with ``initial_epoch``: the
            learning rate schedule is evaluated from there.
    """

    def __init__(
        self, log_freq: LogStrategy | int = "epoch", initial_global_step: int = 0, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        _current_run("WandbMetricsLogger")  # wandb's check, at once
        if log_freq == "batch":
            log_freq = 1
        if log_freq != "epoch" and (isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1):
            raise ValueError(f'log_freq must be "epoch", "batch" or a positive int, got {log_freq!r}')
        self.logging_batch_wise = isinstance(log_freq, int)
        self.log_freq: int | None = log_freq if isinstance(log_freq, int) else None
        self.global_step = initial_global_step  # for the learning rate schedule
        self.global_batch = 0  # batches trained by this callback's fits: batch/batch_step
        self._defined_in: int | None = None  # id() of the run the x-axes were defined in
        _ = self._run  # defines them now, as wandb's does

    @property
    def _run(self) -> Run:
        """The current run, its metrics' x-axes defined (once per run: a reused callback may meet a new one)."""
        run = _current_run("WandbMetricsLogger")
        if self._defined_in != id(run):
            self._defined_in = id(run)
            if self.logging_batch_wise:
                run.define_metric("batch/batch_step")
                run.define_metric("batch/*", step_metric="batch/batch_step")
            else:
                run.define_metric("epoch/epoch")
                run.define_metric("epoch/*", step_metric="epoch/epoch")
        return run

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {f"epoch/{k}": v for k, v in (logs or {}).items()}
        row["epoch/epoch"] = epoch
        rate = _learning_rate(self.model, self.global_step)
        if rate is not None:
            row["epoch/learning_rate"] = rate
        self._run.log(row)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """wandb's name for ``on_train_batch_end``."""
        self.global_step += 1
        if self.log_freq is not None and batch % self.log_freq == 0:
            row = {f"batch/{k}": v for k, v in (logs or {}).items()}
            row["batch/batch_step"] = self.global_batch
            rate = _learning_rate(self.model, self.global_step)
            if rate is not None:
                row["batch/learning_rate"] = rate
            self._run.log(row)
        self.global_batch += 1


class WandbModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint`` that logs each checkpoint it writes as a ``model`` artifact (wandb's
    WandbModelCheckpoint): one artifact per run, ``run_<run id>_model``, a version per distinct checkpoint, aliased
    ``latest`` and ``epoch_<epoch>`` (``epoch_<epoch>_batch_<batch>`` with an int ``save_freq``).

    The arguments are ModelCheckpoint's: ``filepath`` (Keras 3: ending in ``.keras``, or ``.weights.h5`` with
    ``save_weights_only=True``; may hold ``{epoch:02d}``-style fields), ``monitor``, ``verbose``,
    ``save_best_only``, ``save_weights_only``, ``mode``, ``save_freq`` ("epoch" or a number of batches),
    ``initial_value_threshold``. With ``save_best_only`` only a checkpoint that was written is logged (a new best).
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: Mode = "auto",
        save_freq: Literal["epoch"] | int = "epoch",
        initial_value_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filepath=filepath,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            save_weights_only=save_weights_only,
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=initial_value_threshold,
            **kwargs,
        )
        _current_run("WandbModelCheckpoint")  # wandb's check, at once
        self._logged: dict[Path, Any] = {}  # checkpoint file -> the artifact last logged from it
        if save_best_only and not any(field for _, field, _, _ in string.Formatter().parse(self.filepath)):
            log.warning(
                "runstream: with save_best_only, give filepath fields such as {epoch:02d}, so each best checkpoint "
                "keeps its own file (the artifact versions are kept apart either way)"
            )

    @property
    def _run(self) -> Run:
        return _current_run("WandbModelCheckpoint")

    def __deepcopy__(self, memo: dict[int, Any]) -> WandbModelCheckpoint:
        # The artifacts logged so far hold thread events, and belong to this callback's saves: a copy (KerasTuner
        # copies callbacks for each trial) starts with none.
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        for name, value in self.__dict__.items():
            copied.__dict__[name] = {} if name == "_logged" else copy.deepcopy(value, memo)
        return copied

    def _save_model(self, epoch: int, batch: int | None, logs: dict[str, Any] | None) -> None:
        # Keras decides whether to save (save_best_only, monitor); log only what it wrote. Both the epoch and the
        # batch paths of ModelCheckpoint come through here.
        path = Path(self._get_file_path(epoch, batch, logs or {}))
        self._let_staging_read(path)
        before = _stamp(path)
        super()._save_model(epoch=epoch, batch=batch, logs=logs)
        after = _stamp(path)
        if after is None or after == before:
            return
        aliases = ["latest", f"epoch_{epoch}" if batch is None else f"epoch_{epoch}_batch_{batch}"]
        self._log_checkpoint(path, aliases)

    def _log_checkpoint(self, path: Path, aliases: list[str]) -> None:
        run = self._run
        artifact = runstream.Artifact(f"run_{run.id}_model", type="model")
        if path.is_dir():
            artifact.add_dir(path)
        else:
            artifact.add_file(path)
        self._logged[path] = run.log_artifact(artifact, aliases=aliases)

    def _let_staging_read(self, path: Path) -> None:
        """Wait until the artifact last logged from ``path`` has been read, before Keras writes over it.

        A logged artifact's files are read on the run's artifact thread, after log_artifact returns; a filepath
        without ``{epoch}``-style fields is rewritten at every save, and the version must hold its own checkpoint,
        not the next one. The read is local (the upload comes after): usually long done by the next save. Past
        ``COPY_WAIT_S``, training goes on (with a warning): that version may then hold the new checkpoint."""
        artifact = self._logged.pop(path, None)
        if artifact is None:
            return
        if not artifact._staged.wait(COPY_WAIT_S):
            log.warning(
                "runstream: checkpoint %s was still being copied after %.0f s; training goes on (if the file changes "
                "first, that version fails and the run says so)",
                path,
                COPY_WAIT_S,
            )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten checkpoint from the one there before (None: there is none)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class _TableRef(Table):
    """The logged ground-truth table, as wandb's ``data_table_ref``: ``.data`` rows and ``get_index()``."""

    def get_index(self) -> list[int]:
        return list(range(len(self.data)))


class WandbEvalCallback(keras.callbacks.Callback, abc.ABC):
    """Base class for prediction tables (wandb's WandbEvalCallback): subclass it and implement
    ``add_ground_truth`` (fill ``self.data_table``, once, at the start of training) and ``add_model_predictions``
    (fill ``self.pred_table``, at the end of each epoch).

    The ground truth is logged as the artifact ``val`` (type ``dataset``) holding ``val_data.table.json``; each
    epoch's predictions as a version of ``run_<run id>_pred`` (type ``evaluation``) holding
    ``eval_data.table.json``, and as the table ``eval_data`` on the run's media tab. Unlike wandb, table cells
    hold values, not images (runstream tables do not nest media yet).
    """

    def __init__(self, data_table_columns: list[str], pred_table_columns: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _current_run("WandbEvalCallback")  # wandb's check, at once
        self.data_table_columns = data_table_columns
        self.pred_table_columns = pred_table_columns

    @property
    def _run(self) -> Run:
        return _current_run("WandbEvalCallback")

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.init_data_table(column_names=self.data_table_columns)
        self.add_ground_truth(logs)
        self.log_data_table()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.init_pred_table(column_names=self.pred_table_columns)
        self.add_model_predictions(epoch, logs)
        self.log_pred_table()

    @abc.abstractmethod
    def add_ground_truth(self, logs: dict[str, Any] | None = None) -> None:
        """Add the validation data to ``self.data_table`` (``self.data_table.add_data(...)``)."""

    @abc.abstractmethod
    def add_model_predictions(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Add the model's predictions to ``self.pred_table``; ``self.data_table_ref.data`` holds the ground truth."""

    def init_data_table(self, column_names: list[str]) -> None:
        self.data_table: Table = _TableRef(columns=column_names)

    def init_pred_table(self, column_names: list[str]) -> None:
        self.pred_table: Table = Table(columns=column_names)

    def log_data_table(self, name: str = "val", type: str = "dataset", table_name: str = "val_data") -> None:
        artifact = _table_artifact(name, type, table_name, self.data_table)
        self._run.log_artifact(artifact)
        ref = _TableRef(columns=self.data_table.columns)
        ref.data = list(self.data_table.data)
        self.data_table_ref = ref

    def log_pred_table(
        self, type: str = "evaluation", table_name: str = "eval_data", aliases: list[str] | None = None
    ) -> None:
        artifact = _table_artifact(f"run_{self._run.id}_pred", type, table_name, self.pred_table)
        self._run.log_artifact(artifact, aliases=aliases or ["latest"])
        self._run.log({table_name: self.pred_table}, commit=False)  # also on the media tab, with the next row


def _table_artifact(name: str, type: str, table_name: str, table: Table) -> Any:
    import orjson

    artifact = runstream.Artifact(name, type=type)
    with artifact.new_file(f"{table_name}.table.json", mode="wb") as f:
        f.write(orjson.dumps({"columns": table.columns, "data": table.data}))
    return artifact
