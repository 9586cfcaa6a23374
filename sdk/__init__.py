"""runstream: the client a training script imports.

``import runstream as wandb`` works for scripts written for Weights & Biases:
``init``, ``log``, ``config``, ``summary``, ``define_metric``, ``alert``,
``save``, ``watch``, ``finish``, ``Image``, ``Histogram``, ``Table``, ``Api``, ``Artifact``,
``log_artifact``, ``use_artifact``, ``log_model``, ``use_model``, ``sweep``, ``agent``,
``Audio``, ``Video``, ``Html``, ``Object3D``, ``plot``, ``sklearn``.
"""

from __future__ import annotations

from typing import Any

from runstream.lifecycle import current as _current
from runstream.lifecycle import init
from runstream.run import AlertLevel, Error, Run
from runstream.run_settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AlertLevel", "Api", "Artifact", "Audio", "Error", "Histogram", "Html", "Image", "Object3D", "Plotly", "Run",
    "Settings", "Table", "Video", "agent", "alert", "config", "define_metric", "finish", "init", "log", "log_artifact",
    "log_model", "plot", "run", "save", "sklearn", "summary", "sweep", "unwatch", "use_artifact", "use_model", "watch",
]  # fmt: skip

#: The last run started, like ``wandb.run`` (None before ``init()`` and once that run has finished);
#: ``log``, ``finish`` and the other functions here act on it. Earlier runs that are still active
#: (``init(reinit="create_new")``) are used through their own ``Run`` objects.
run: Run | None = None


class _PreInit:
    """``runstream.config``/``runstream.summary`` before ``init()``: every use says what to do."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise Error(f"call runstream.init() before using runstream.{self._what}")

    def __getitem__(self, key: str) -> Any:
        raise Error(f"call runstream.init() before using runstream.{self._what}")

    __setitem__ = __getitem__


config: Any = _PreInit("config")
summary: Any = _PreInit("summary")


def log(data: dict[str, Any], step: int | None = None, commit: bool | None = True) -> None:
    _current().log(data, step=step, commit=commit)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> Any:
    return _current().finish(exit_code=exit_code) if run is not None else None


def define_metric(
    name: str, step_metric: str | None = None, summary: str | None = None, goal: str | None = None, **kw: Any
) -> None:
    _current().define_metric(name, step_metric=step_metric, summary=summary, goal=goal, **kw)


def alert(title: str, text: str, level: Any = AlertLevel.INFO, wait_duration: Any = None) -> None:
    _current().alert(title, text, level=level, wait_duration=wait_duration)


def save(glob_str: str, base_path: str | None = None, policy: str = "live") -> list[str]:
    return _current().save(glob_str, base_path=base_path, policy=policy)


def watch(
    models: Any,
    criterion: Any = None,
    log: str | None = "gradients",
    log_freq: int = 1000,
    idx: int | None = None,
    log_graph: bool = False,
) -> Any:
    return _current().watch(models, criterion=criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)


def unwatch(models: Any = None) -> None:
    _current().unwatch(models)


def log_artifact(
    artifact_or_path: Any, name: str | None = None, type: str | None = None, aliases: list[str] | None = None
) -> Any:
    return _current().log_artifact(artifact_or_path, name=name, type=type, aliases=aliases)


def use_artifact(artifact_or_name: Any, type: str | None = None) -> Any:
    return _current().use_artifact(artifact_or_name, type=type)


def log_model(path: Any, name: str | None = None, aliases: list[str] | None = None) -> Any:
    return _current().log_model(path, name=name, aliases=aliases)


def use_model(name: str) -> str:
    return _current().use_model(name)


def __getattr__(name: str) -> Any:
    # Media and the public API client load on first use: they pull in optional libraries.
    if name in ("Image", "Histogram", "Table", "Plotly", "Audio", "Video", "Html", "Object3D"):
        from runstream import media

        return getattr(media, name)
    if name == "Artifact":
        from runstream.artifacts import Artifact

        return Artifact
    if name == "Api":
        from runstream.public_api import Api

        return Api
    if name in ("plot", "sklearn"):  # runstream.plot.* charts; runstream.sklearn's plots (it imports scikit-learn)
        import importlib

        return importlib.import_module(f"runstream.{name}")
    if name in ("sweep", "agent"):  # the sweep configuration's parser (YAML) loads on first use
        from runstream import sweeps

        return getattr(sweeps, name)
    raise AttributeError(f"module 'runstream' has no attribute {name!r}")
