"""PyTorch Lightning: ``RunstreamLogger`` (alias ``WandbLogger``), a ``lightning.pytorch`` logger.

It takes ``lightning.pytorch.loggers.WandbLogger``'s arguments and does what it does, so a script written
for it switches by its import line::

    from runstream.integration.lightning import WandbLogger  # was: from lightning.pytorch.loggers import ...

    trainer = Trainer(logger=WandbLogger(project="mnist", log_model=True))

- ``experiment`` is the ``runstream.Run`` (made on first use: ``runstream.init(**kwargs)``; an active run is
  reused, with a warning, as wandb's).
- Hyperparameters go to the run's config; metrics are logged with ``trainer/global_step`` beside them (the
  x-axis ``define_metric`` sets up, as wandb's).
- ``log_model=True`` logs the checkpoints ``ModelCheckpoint`` kept (best and latest) as ``model`` artifacts
  once training ends; ``"all"`` logs each checkpoint as it is written (``save_top_k=-1`` also does, as wandb's).
- A failed fit finishes the run as failed, with the traceback (an interrupted one as killed); the logger lets go
  of it (``version`` still names it), and its next use (a retried fit) starts a new run. A successful one leaves
  it open, as wandb's does, so ``trainer.test()`` logs to the same run: the run ends with the script (or
  ``runstream.finish()``).
- ``strategy="ddp_spawn"``: the logger picks the run id before it is pickled for the workers, so the rank-0
  worker's run and the main process's (after ``fit``) are one run (``resume="allow"`` continues it).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning.fabric.utilities.logger import (
    _add_prefix,
    _convert_json_serializable,
    _convert_params,
    _sanitize_callable_params,
)
from lightning.pytorch.callbacks.model_checkpoint import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.loggers.utilities import _scan_checkpoints
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

import runstream
from runstream.lifecycle import RUN_ID_ENV, _new_run_id

if TYPE_CHECKING:
    import torch.nn as nn

    from runstream.artifacts import Artifact
    from runstream.run import Run

__all__ = ["RunstreamLogger", "WandbLogger"]

log = logging.getLogger("runstream")

#: The metric every logged row carries: the trainer's global step, the x-axis of the run's charts.
GLOBAL_STEP = "trainer/global_step"
#: What ``ModelCheckpoint`` settings a checkpoint artifact's metadata records (those this version has).
_CHECKPOINT_SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")


class RunstreamLogger(Logger):
    """Log a Lightning run to runstream (``lightning.pytorch.loggers.WandbLogger``'s arguments and behaviour).

    Args:
        name: the run's display name.
        save_dir: where the run's local folder goes (``runstream.init(dir=...)``).
        version: the run id (to resume a run, with ``resume="allow"``); ``id`` is the same.
        offline: keep the run on this machine (``runstream sync`` sends it later).
        dir: like ``save_dir`` (wandb's alias).
        id: like ``version``.
        anonymous: accepted for wandb's signature; runstream has no anonymous runs.
        project: the project (default: ``RUNSTREAM_PROJECT``, ``WANDB_PROJECT``, else ``"lightning_logs"``).
        log_model: ``True``: the checkpoints ``ModelCheckpoint`` keeps, logged once training ends; ``"all"``:
            every checkpoint as it is written; ``False``: none.
        experiment: a run to log to instead of starting one.
        prefix: put before every metric name (joined with ``-``).
        checkpoint_name: the model artifact's name (default ``model-<run id>``).
        add_file_policy: ``"mutable"`` (default): ``log`` waits until a checkpoint's bytes are copied for
            upload, so the trainer may then rewrite or delete it; ``"immutable"``: the file is promised to stay
            as it is until the run ends, and is read in the background.
        **kwargs: passed to ``runstream.init`` (``entity``, ``config``, ``tags``, ``group``, ``settings``, ...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,  # noqa: A002 - wandb's argument name
        id: str | None = None,  # noqa: A002
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Run | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if offline and log_model:
            raise MisconfigurationException(
                f"Providing log_model={log_model} and offline={offline} is an invalid configuration since model "
                "checkpoints cannot be uploaded in offline mode.\nHint: Set `offline=False` to log your model."
            )
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(f"add_file_policy must be 'mutable' or 'immutable', got {add_file_policy!r}")
        super().__init__()
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: dict[str, float] = {}  # checkpoint path -> the mtime it was logged at
        self._checkpoint_callbacks: dict[int, ModelCheckpoint] = {}
        self.add_file_policy = add_file_policy
        folder = save_dir if save_dir is not None else dir
        project = project or os.environ.get("RUNSTREAM_PROJECT") or os.environ.get("WANDB_PROJECT") or "lightning_logs"
        # What runstream.init gets (wandb's resume="allow": a given id continues that run, as WandbLogger does).
        self._init_args: dict[str, Any] = {
            "name": name,
            "project": project,
            "dir": os.fspath(folder) if folder is not None else None,
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
            **kwargs,
        }
        self._project: str = project
        self._save_dir: str | None = self._init_args["dir"]
        self._name: str | None = name
        self._id: str | None = self._init_args["id"]
        self._given_id = self._id  # the user's own id (a retry after a failed fit continues it, resume="allow")
        self._checkpoint_name = checkpoint_name

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned worker (strategy="ddp_spawn"): a Run does not travel, its id does; the rank-0
        # worker starts the run (or continues it, by that id) when it first logs. With no run and no id yet, the
        # id is chosen here, for this process too: after fit, the main process continues the worker's run
        # (resume="allow") rather than starting a second one. A sweep's agent names the run (RUNSTREAM_RUN_ID)
        # for both processes already.
        if self._experiment is None and self._init_args["id"] is None and not os.environ.get(RUN_ID_ENV):
            self._init_args["id"] = self._id = _new_run_id()
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = self._experiment.id
            state["_init_args"] = {**self._init_args, "id": self._experiment.id}
        state["_experiment"] = None
        return state

    # -- the run ----------------------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The ``runstream.Run`` (started on first use). ``self.logger.experiment.log({...})`` in a module."""
        if self._experiment is None:
            if self._offline:
                self._init_args.setdefault("mode", "offline")
            if runstream.run is not None:
                rank_zero_warn(
                    "There is a runstream run already in progress and newly created instances of `WandbLogger` will "
                    "reuse this run. If this is not desired, call `runstream.finish()` before instantiating "
                    "`WandbLogger`."
                )
                self._experiment = runstream.run
            else:
                self._experiment = runstream.init(**self._init_args)
                # Every metric's x-axis is the trainer's global step (wandb's default for this logger).
                self._experiment.define_metric(GLOBAL_STEP)
                self._experiment.define_metric("*", step_metric=GLOBAL_STEP, step_sync=True)
        return self._experiment

    def watch(
        self, model: nn.Module, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """Histograms of the model's gradients and/or parameters every ``log_freq`` steps (``run.watch``).

        ``log_graph`` is taken for WandbLogger's signature (its default is True) and ignored: runstream does
        not draw model graphs, only the histograms."""
        self.experiment.watch(model, log=log, log_freq=log_freq)

    # -- Lightning's logger interface ---------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self.experiment.config.update(params, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is not None and not self._init_args.get("sync_tensorboard"):
            self.experiment.log({**metrics, GLOBAL_STEP: step})
        else:
            self.experiment.log(dict(metrics))

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def name(self) -> str | None:
        """The project (as wandb's logger: Lightning puts checkpoints under ``save_dir/name/version``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id (the one given, until the run has started; the failed run's, after a failed fit)."""
        return self._experiment.id if self._experiment is not None else self._id

    # -- media, as WandbLogger's helpers ------------------------------------------------------
    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """A ``runstream.Table`` from ``columns`` and ``data``, or from a pandas ``dataframe``."""
        self.log_metrics({key: runstream.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Text, as a table."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Images (tensors, arrays, PIL images, paths); each kwarg is a list with one value per image (caption)."""
        self.log_metrics({key: _media_list(runstream.Image, "images", images, kwargs)}, step)

    @rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Audio clips (arrays or paths); kwargs are lists, one value per clip (sample_rate, caption)."""
        self.log_metrics({key: _media_list(runstream.Audio, "audios", audios, kwargs)}, step)

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Videos (arrays or paths); kwargs are lists, one value per video (caption, fps, format)."""
        self.log_metrics({key: _media_list(runstream.Video, "videos", videos, kwargs)}, step)

    # -- artifacts ----------------------------------------------------------------------------
    @staticmethod
    @rank_zero_only
    def download_artifact(
        artifact: str,
        save_dir: str | os.PathLike[str] | None = None,
        artifact_type: str | None = None,
        use_artifact: bool | None = True,
    ) -> str:
        """Download an artifact (``"name:alias"``) into ``save_dir``; the active run records it as used."""
        root = None if save_dir is None else os.fspath(save_dir)
        if runstream.run is not None and use_artifact:
            return str(runstream.run.use_artifact(artifact, type=artifact_type).download(root=root))
        return str(runstream.Api().artifact(artifact, type=artifact_type).download(root=root))

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Artifact:
        """Record that the run uses ``artifact``; returns it (to ``download()``)."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning calls this when fit/validate/test ends: ``"success"``, ``"failed"`` or ``"finished"`` (the
        SLURM requeue handler, before the job is requeued: nothing is logged then, as with wandb's logger)."""
        if self._experiment is None or self._experiment._finished:
            return
        if status == "failed":
            self._finish_failed()
            return
        if status != "success":
            return
        for checkpoint_callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(checkpoint_callback)

    def _finish_failed(self) -> None:
        """Finish the run as the exception being handled says (Lightning calls finalize inside its except),
        then let go of it: ``version`` keeps its id, and the logger's next use (a retried fit) starts a new run
        rather than logging to a finished one, where rows would be dropped."""
        run = self._experiment
        assert run is not None  # finalize checked
        exc_type, exc, tb = sys.exc_info()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            run.finish(exit_code=130, _state="killed")
        else:
            trace = "".join(traceback.format_exception(exc_type, exc, tb)) if exc_type is not None else None
            run.finish(exit_code=1, _state="failed", _traceback=trace)
        self._experiment, self._id = None, run.id
        self._logged_model_time.clear()  # the new run logs its own checkpoints
        self._checkpoint_callbacks.clear()
        if self._init_args["id"] == run.id and self._given_id is None:
            self._init_args["id"] = None  # an id chosen for ddp_spawn: the next run gets its own

    @rank_zero_only  # every rank saves; only rank 0 holds the run
    def _log_checkpoints(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Log every checkpoint of ``checkpoint_callback`` not logged yet (or rewritten since) as a model version."""
        for mtime, path, score, _tag in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": score.item() if hasattr(score, "item") else score,
                "original_filename": Path(path).name,
                # __class__: Lightning hands loggers a weakref.proxy of the callback
                checkpoint_callback.__class__.__name__: {
                    k: getattr(checkpoint_callback, k) for k in _CHECKPOINT_SETTINGS if hasattr(checkpoint_callback, k)
                },
            }
            name = self._checkpoint_name or f"model-{self.experiment.id}"  # the run of now (a retry has its own)
            artifact = runstream.Artifact(name=name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt")
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            if self.add_file_policy == "mutable":
                # Its bytes are read on the artifact thread: wait for the copy, since ModelCheckpoint may rewrite
                # (last.ckpt) or delete (save_top_k) the file next (wandb's "mutable" policy copies it here too).
                _wait_copied(artifact, path)
            self._logged_model_time[path] = mtime


#: How long ``log_model`` waits for a checkpoint's bytes to be copied before training goes on regardless.
COPY_WAIT_S = 600.0


def _wait_copied(artifact: Any, what: str) -> None:
    """Wait until the logged ``artifact``'s files are copied for upload (read on the artifact thread)."""
    if not artifact._staged.wait(COPY_WAIT_S):
        log.warning(
            "runstream: %s was still being copied after %.0f s; training goes on (if the file changes or goes "
            "first, that version fails and the run says so)",
            what,
            COPY_WAIT_S,
        )


def _media_list(kind: Any, what: str, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """``kind(item, **per-item kwargs)`` for each item; every kwarg is a list as long as ``items``."""
    if not isinstance(items, list):
        raise TypeError(f'Expected a list as "{what}", found {type(items)}')
    for key, values in kwargs.items():
        if len(values) != len(items):
            raise ValueError(f"Expected {len(items)} items but only found {len(values)} for {key}")
    return [kind(item, **{key: values[i] for key, values in kwargs.items()}) for i, item in enumerate(items)]


#: wandb's name, so ``from runstream.integration.lightning import WandbLogger`` is the one line to change.
WandbLogger = RunstreamLogger
