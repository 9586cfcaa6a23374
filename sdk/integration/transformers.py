"""Hugging Face Transformers: ``RunstreamCallback`` (alias ``WandbCallback``), a ``transformers.TrainerCallback``.

It does what transformers' own ``WandbCallback`` does, so a script that passes that callback switches by its
import line::

    from runstream.integration.transformers import WandbCallback  # was: from transformers.integrations import ...

    trainer = Trainer(model=model, args=TrainingArguments(..., report_to="none"), callbacks=[WandbCallback()])

``report_to="wandb"`` names transformers' own callback (which needs the ``wandb`` package), and transformers
refuses names it does not know: pass ``report_to="none"`` and the callback in ``callbacks=[...]``.

- The run starts when training begins (``runstream.init``; an active run is used as it is): its config is the
  model's config, then the ``TrainingArguments`` (``args.to_dict()``), and ``model/num_parameters``.
- Each ``Trainer.log`` becomes one row: ``loss`` as ``train/loss``, ``eval_loss`` as ``eval/loss``,
  ``test_*`` as ``test/*``, with ``train/global_step`` beside it (every metric's x-axis). The end-of-training
  figures (``train_runtime``, ``train_loss``, ``total_flos``, ...) go to the summary only.
- Environment, as transformers reads it (``RUNSTREAM_*`` first, then ``WANDB_*``): ``*_PROJECT`` (default
  ``"huggingface"``), ``*_LOG_MODEL`` = ``"end"`` (the trained model as a ``model`` artifact when training
  ends), ``"checkpoint"`` (each ``checkpoint-N`` folder as a version when it is saved) or ``"false"``;
  ``*_WATCH`` = ``"gradients"``, ``"parameters"`` or ``"all"`` (``run.watch``).
- A logged value runstream cannot store (a list of strings, say, from a custom ``compute_metrics``) is left out
  of its row with one warning per key: logging never stops training.
- Resuming (``resume_from_checkpoint``): runstream reads ``RUNSTREAM_RUN_ID`` but has no resume environment
  variable (transformers' callback relies on ``WANDB_RESUME``), so continue the run with
  ``WandbCallback(id="<run id>", resume="must")``.
- Like transformers', the callback does not finish the run: it ends with the script (or ``runstream.finish()``),
  so ``trainer.evaluate()`` after ``train()`` logs to it too.
"""

from __future__ import annotations

import enum
import logging
import numbers
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.integration_utils import rewrite_logs

import runstream

if TYPE_CHECKING:
    from runstream.run import Run

__all__ = ["RunstreamCallback", "WandbCallback"]

log = logging.getLogger("runstream")

#: The metric every logged row carries, the x-axis of the run's charts (transformers' name).
GLOBAL_STEP = "train/global_step"
#: What ``Trainer`` logs once, at the end of training: the run's summary, not its history (as transformers').
SUMMARY_ONLY = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)
#: Characters an artifact name may not hold (``runstream.names.NAME_RULE``): a run name may.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


class LogModel(str, enum.Enum):  # noqa: UP042 - str() of a member is its value, as transformers' WandbLogModel
    """``RUNSTREAM_LOG_MODEL`` / ``WANDB_LOG_MODEL``: when the model is logged as an artifact."""

    CHECKPOINT = "checkpoint"
    END = "end"
    FALSE = "false"

    @property
    def is_enabled(self) -> bool:
        return self in (LogModel.CHECKPOINT, LogModel.END)


def _env(name: str, default: str) -> str:
    """``RUNSTREAM_<name>``, else ``WANDB_<name>`` (what scripts written for wandb set), else ``default``."""
    return os.environ.get(f"RUNSTREAM_{name}") or os.environ.get(f"WANDB_{name}") or default


def log_model_setting() -> LogModel:
    value = _env("LOG_MODEL", "false").lower()
    if value in ("true", "1"):  # transformers' older meaning of "true": the model at the end
        return LogModel.END
    try:
        return LogModel(value)
    except ValueError:
        log.warning(
            "runstream: LOG_MODEL=%r is not one of 'end', 'checkpoint' or 'false': models are not logged", value
        )
        return LogModel.FALSE


class RunstreamCallback(TrainerCallback):
    """Log a ``transformers.Trainer``'s run to runstream (transformers' ``WandbCallback``'s behaviour).

    ``init_kwargs`` (none needed) go to ``runstream.init`` when the callback starts the run: ``project``,
    ``entity``, ``tags``, ``settings``, ... (a ``TrainingArguments.run_name`` names the run, as transformers').
    """

    def __init__(self, **init_kwargs: Any) -> None:
        self._init_kwargs = init_kwargs
        self._run: Run | None = None
        self._initialized = False
        self._log_model = log_model_setting()
        self._skipped: set[str] = set()  # keys left out of rows, said once each

    @property
    def run(self) -> Run | None:
        """The run the callback logs to (None until training begins)."""
        return self._run

    # -- the run ------------------------------------------------------------------------------
    def setup(self, args: TrainingArguments, state: TrainerState, model: Any, **kwargs: Any) -> None:
        """Start (or take up) the run and record the configuration; subclass to change what is recorded."""
        self._initialized = True
        if not state.is_world_process_zero:
            return
        combined: dict[str, Any] = dict(args.to_dict())
        model_config = getattr(model, "config", None)
        if model_config is not None:
            combined = {**(model_config if isinstance(model_config, dict) else model_config.to_dict()), **combined}
        if getattr(model, "peft_config", None) is not None:
            combined = {"peft_config": model.peft_config, **combined}
        init_args: dict[str, Any] = {}
        if state.trial_name is not None:  # a hyperparameter search: one run per trial, grouped
            init_args = {"name": state.trial_name, "group": args.run_name or args.output_dir}
        elif args.run_name is not None:
            init_args = {"name": args.run_name}
        run = runstream.run
        if run is None:
            run = runstream.init(**{"project": _env("PROJECT", "huggingface"), **init_args, **self._init_kwargs})
        self._run = run
        run.config.update(combined, allow_val_change=True)  # the run may have been started by the script
        run.define_metric(GLOBAL_STEP)
        run.define_metric("*", step_metric=GLOBAL_STEP, step_sync=True)
        watch = _env("WATCH", "false")
        if watch in ("gradients", "parameters", "all") and model is not None:
            run.watch(model, log=watch, log_freq=max(100, state.logging_steps))
        if hasattr(model, "num_parameters"):
            run.config.update({"model/num_parameters": model.num_parameters()}, allow_val_change=True)
        if self._log_model.is_enabled and model is not None:
            self._log_architecture(args, model)

    def _artifact_name(self, args: TrainingArguments) -> str:
        """``model-<run id>``, or ``model-<run name>`` when the run was named (transformers' names)."""
        assert self._run is not None  # set up
        named = args.run_name is not None and args.run_name != args.output_dir
        name = f"model-{self._run.name}" if named else f"model-{self._run.id}"
        return _NOT_IN_NAME.sub("-", name)[:128]

    def _log_architecture(self, args: TrainingArguments, model: Any) -> None:
        """The initial model's architecture (its printed form) as a version aliased ``base_model``."""
        assert self._run is not None  # set up
        artifact = runstream.Artifact(
            self._artifact_name(args),
            type="model",
            metadata={
                "model_config": model.config.to_dict() if hasattr(model, "config") else None,
                "num_parameters": self._run.config.get("model/num_parameters"),
                "initial_model": True,
            },
        )
        with artifact.new_file("model_architecture.txt") as f:
            print(model, file=f)
        self._run.log_artifact(artifact, aliases=["base_model"])

    # -- TrainerCallback ----------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if state.is_hyper_param_search:  # each trial is a run of its own
            if self._run is not None and not self._run._finished:
                self._run.finish()
            self._run, self._initialized = None, False
            args.run_name = None
        if not self._initialized:
            self.setup(args, state, model, **kwargs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or self._run is None or not logs:
            return
        for key, value in logs.items():
            if key in SUMMARY_ONLY:
                try:
                    self._run.summary[key] = value
                except Exception as exc:  # noqa: BLE001 - a metric must never stop training
                    self._skip(key, exc)
        row = rewrite_logs({k: v for k, v in logs.items() if k not in SUMMARY_ONLY})
        self._log_row(row, {GLOBAL_STEP: state.global_step})

    def on_predict(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: Any = None, **kwargs: Any
    ) -> None:
        if not self._initialized:
            self.setup(args, state, kwargs.get("model"))
        if state.is_world_process_zero and self._run is not None and metrics:
            self._log_row(rewrite_logs(metrics), {})

    def _log_row(self, row: dict[str, Any], extra: dict[str, Any]) -> None:
        """Log ``row`` and ``extra`` as one row, leaving out what runstream cannot log (a list of strings, an
        object): one warning per key, never an exception into the training loop."""
        run = self._run
        assert run is not None
        try:
            run.log({**row, **extra})
            return
        except Exception:  # noqa: BLE001 - some value is not loggable: found below, key by key
            pass
        # A log() that raises stores nothing of its call: each value alone, into the same uncommitted row.
        for key, value in row.items():
            try:
                run.log({key: value}, commit=False)
            except Exception as exc:  # noqa: BLE001 - a metric must never stop training
                self._skip(key, exc)
        try:
            run.log(extra)  # commits the row
        except Exception as exc:  # noqa: BLE001
            self._skip(", ".join(extra) or "a row", exc)

    def _skip(self, key: str, exc: Exception) -> None:
        if key not in self._skipped:
            self._skipped.add(key)
            log.warning("runstream: %s is not logged (said once per key): %s: %s", key, type(exc).__name__, exc)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """LOG_MODEL=checkpoint: the ``checkpoint-<step>`` folder just written, as a version of the model."""
        if self._log_model != LogModel.CHECKPOINT or not self._initialized or not state.is_world_process_zero:
            return
        assert self._run is not None  # set up on the main process
        folder = Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("runstream: checkpoint folder %s is not there: not logged", folder)
            return
        metadata = self._numeric_summary()
        metadata["model/num_parameters"] = self._run.config.get("model/num_parameters")
        artifact = runstream.Artifact(self._artifact_name(args), type="model", metadata=metadata)
        artifact.add_dir(folder)
        epoch = round(state.epoch or 0.0, 2)
        self._run.log_artifact(artifact, aliases=[f"epoch_{epoch}", f"checkpoint_global_step_{state.global_step}"])
        # The folder is read on the artifact thread: wait for the copy, since save_total_limit deletes old
        # checkpoints (wandb copies the files at this point too).
        _wait_copied(artifact, str(folder))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        """LOG_MODEL=end (or checkpoint): the trained model (``save_pretrained``), aliased ``final_model``."""
        if not self._log_model.is_enabled or not self._initialized or not state.is_world_process_zero:
            return
        if self._run is None or model is None:
            return
        if args.load_best_model_at_end:
            metadata: dict[str, Any] = {
                f"eval/{args.metric_for_best_model}": state.best_metric,
                "train/total_floss": state.total_flos,
                "model/num_parameters": self._run.config.get("model/num_parameters"),
            }
        else:
            metadata = self._numeric_summary()
        metadata["final_model"] = True
        artifact = runstream.Artifact(self._artifact_name(args), type="model", metadata=metadata)
        with tempfile.TemporaryDirectory() as folder:
            _save_model(model, processing_class, Path(folder))
            artifact.add_dir(folder)
            self._run.log_artifact(artifact, aliases=["final_model"])
            _wait_copied(artifact, "the final model")  # read before the folder goes

    def _numeric_summary(self) -> dict[str, Any]:
        """The run's summary numbers (artifact metadata, as transformers records)."""
        assert self._run is not None
        return {k: v for k, v in self._run.summary.items() if isinstance(v, numbers.Number) and not k.startswith("_")}


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


def _save_model(model: Any, processing_class: Any, folder: Path) -> None:
    """What ``Trainer.save_model`` writes (weights, config, tokenizer), and the printed architecture."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        import torch

        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)
    (folder / "model_architecture.txt").write_text(f"{model}\n")


#: transformers' name, so ``from runstream.integration.transformers import WandbCallback`` is the line to change.
WandbCallback = RunstreamCallback
