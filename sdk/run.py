"""``Run``: the wandb-compatible object a training script logs through (``runstream.init()`` makes it).

``log()`` does no I/O and no serialisation: it checks its arguments, copies the
row and appends it to the sender's list. Everything else (columnar batching,
encoding, spooling, sending, media encoding) happens on the sender's thread.
How a process starts and ends its run (``init()``, the exit hooks) lives in
``runstream.lifecycle``.
"""

from __future__ import annotations

import enum
import glob
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runstream import events
from runstream.config import Config
from runstream.resume import RECORD_FILE, read_progress, write_json
from runstream.run_settings import RunSettings
from runstream.sender import FinishResult, RunIdentity, Sender, file_event_data
from runstream.spool import Spool, this_host
from runstream.summary import Summary, make_definition
from runstream.transport import open_transport, open_uploader
from runstream.values import flatten, to_scalar

log = logging.getLogger("runstream")

#: How often files saved with policy "live" are looked at again (new matches, changes).
LIVE_SAVE_INTERVAL = 2.0


class Error(Exception):
    """A misuse of the SDK that the user must fix (wandb.Error's counterpart)."""


class AlertLevel(str, enum.Enum):  # noqa: UP042 - str() of a StrEnum member is its value, not AlertLevel.X
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


def _glob_base(pattern: str) -> Path:
    """The directory a glob's matches are relative to: its parts before the first wildcard (wandb's default)."""
    parts = Path(pattern).parts
    first_wildcard = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return Path(*parts[:first_wildcard]) if first_wildcard else Path(".")


def _seq_start(spool_dir: Path, floor: int = 0) -> int:
    """Sequence numbers of a run only grow, also across resumes: the session's start time in the
    high 32 bits, past this machine's last one, and past ``floor`` (the server's last one, so a
    resume on a machine whose clock is behind is not taken for a replay)."""
    start = max(int(time.time()) << 32, floor)
    _, last_seq = read_progress(spool_dir)
    return start if last_seq is None else max(start, last_seq + 1)


def exit_status(code: object) -> int:
    """The status a process exits with for ``sys.exit(code)``: None is 0, an int its low 8 bits
    (as the operating system keeps them), anything else (a message) 1."""
    if code is None:
        return 0
    return code & 0xFF if isinstance(code, int) else 1


def check_tags(tags: Any, what: str) -> list[str]:
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise TypeError(f"{what} takes a list of non-empty strings, got {tags!r}")
    tags = list(dict.fromkeys(tags))
    if not all(isinstance(t, str) and 0 < len(t) <= events.MAX_NAME_LEN for t in tags):
        raise TypeError(
            f"{what} takes a list of non-empty strings of at most {events.MAX_NAME_LEN} characters, got {tags!r}"
        )
    return tags


def _check_text(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, got {type(value).__name__}")
    if value is not None and len(value) > events.MAX_TEXT_LEN:
        raise ValueError(f"{what} is longer than {events.MAX_TEXT_LEN:,} characters")
    return value


class _RecordText:
    """``run.notes``, ``run.group``, ``run.job_type``: read from the run's record, set through a run_update."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, run: Run | None, owner: type | None = None) -> Any:
        return self if run is None else run._meta.get(self.name)

    def __set__(self, run: Run, value: str | None) -> None:
        run._update_record({self.name: _check_text(value, f"run.{self.name}")})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Run:
    """One tracked run. Create it with ``runstream.init()``."""

    def __init__(
        self,
        *,
        team: str,
        project: str,
        run_id: str,
        name: str,
        run_dir: Path,
        settings: RunSettings,
        mode: str,
        resumed: bool,
        step: int = 0,
        meta: Mapping[str, Any] | None = None,
        seq_floor: int = 0,
    ) -> None:
        self.entity = team
        self.project = project
        self.id = run_id
        self._name = name
        self._meta: dict[str, Any] = dict(meta or {})  # tags, notes, group, job_type
        self.dir = str(run_dir.absolute())
        self.mode = mode
        self.settings = settings
        self.resumed = resumed
        self._run_dir = run_dir
        self._files_dir = run_dir / "files"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        self._step = step
        self._fast_keys: frozenset[str] = frozenset()
        self._pending_step = step
        self._started = False
        self._finished = False  # from the start of finish() on
        self._finish_lock = threading.Lock()
        self._exit_code = 0  # the exit code finish() was given
        self._finish_result: FinishResult | None = None
        self._alert_times: dict[str, float] = {}
        self._pending_row: dict[str, Any] | None = None
        self._watched_models: list[Any] = []  # the modules run.watch() hooked (runstream.integration.torch)
        self._torch: Any = None  # their Watcher, made by the first watch()
        self._simple = True  # no uncommitted row and no watched model: log() may take its hot path
        self._saved: dict[Path, tuple[str, float]] = {}
        self._save_globs: list[tuple[str, Path, str]] = []  # (pattern, base, policy) of save() calls to look at again
        self._saved_lock = threading.Lock()  # save() (training thread) and the live re-scan (sender thread)
        self._copy_lock = threading.Lock()
        self._stager: Any = None  # runstream.artifacts.Stager, made by the first log_artifact()
        self._collectors: list[Any] = []
        identity = RunIdentity(team, project, run_id)
        transport = open_transport(settings.url, settings.api_key) if mode == "online" else None
        self._summary = Summary(refresh=self._refresh_summary, on_set=self._summary_set)
        self._sender = Sender(
            identity,
            Spool(run_dir / "spool"),
            transport,
            uploader=open_uploader(transport, settings.files_url, settings.api_key),
            seq_start=_seq_start(run_dir / "spool", seq_floor),
            stats=self._summary.stats,
            files_dir=self._files_dir,
            flush_interval=settings.flush_interval,
            heartbeat_interval=settings.heartbeat_interval,
            last_step=step - 1,
            next_step=lambda: self._step,
        )
        self._append_row = self._sender.rows.append
        self.config = Config()  # changes travel as run_update events once the run has started
        #: Called once the run has finished, with its exit code (``runstream.lifecycle`` forgets the run).
        self.on_finish: Callable[[Run, int | None], None] | None = None

    # -- the run's record: name, tags, notes, group, job type ------------------------------
    # Set during the run, each travels as a run_update and is kept in run.json for a resume.
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str) or not value or len(value) > events.MAX_NAME_LEN:
            raise ValueError(
                f"run.name must be a non-empty string of at most {events.MAX_NAME_LEN} characters, got {value!r}"
            )
        self._name = value
        self._update_record({"name": value})

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self._meta.get("tags", ()))

    @tags.setter
    def tags(self, value: Any) -> None:
        self._update_record({"tags": check_tags(value, "run.tags")})

    notes = _RecordText()
    group = _RecordText()
    job_type = _RecordText()

    def _update_record(self, changes: dict[str, Any]) -> None:
        self._meta.update({k: v for k, v in changes.items() if k != "name"})
        if self._started and not self._finished:
            self._sender.put(events.RUN_UPDATE, changes)
            self._save_record()
        elif self._finished:
            self._too_late(", ".join(changes))

    def _too_late(self, what: str) -> None:
        """Said of an edit after finish(): nothing more is sent (a disabled run sends nothing anyway)."""
        if self.mode != "disabled":
            log.warning(
                "runstream: the run has finished, so its %s is not sent; edit it with runstream.Api().run(%r).update()",
                what,
                self.path,
            )

    def _save_record(self) -> None:
        """run.json: what this machine knows of the run, for ``runstream sync`` and for a resume."""
        settings = self.settings
        record = {"team": self.entity, "project": self.project, "run_id": self.id, "name": self._name,
                  "url": settings.url, "files_url": settings.files_url, "mode": self.mode, "host": _HOST,
                  "config": self.config.as_dict(), **self._meta}  # fmt: skip
        try:
            write_json(self._run_dir / RECORD_FILE, record)
        except OSError as exc:  # a full disk must not stop training
            log.warning("runstream: could not write %s: %s", self._run_dir / RECORD_FILE, exc)

    # -- logging -----------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = True) -> None:
        """Record one row of metrics (and media) at ``step`` (default: the next step)."""
        # The hot path of every training loop: next step, known keys, plain numbers. Each
        # attribute lookup counts here; everything else goes through _log_checked.
        if step is None and commit is True and type(data) is dict and self._simple and data.keys() == self._fast_keys:
            for value in data.values():
                t = type(value)
                if t is not float and t is not int:
                    break
            else:
                step = self._step
                self._append_row((step, _now(), data.copy()))
                self._step = step + 1
                return
        self._log_checked(data, step, commit)

    def _log_checked(self, data: Mapping[str, Any], step: int | None, commit: bool | None) -> None:
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise TypeError(f"run.log() takes a dict of metric names to values, got {type(data).__name__}")
            data = dict(data)
        if step is None:
            step = self._step if self._pending is None else self._pending_step
        elif type(step) is not int:
            step = self._check_step(step)
        elif step < 0:
            raise ValueError(f"run.log(step=...) must be >= 0, got {step}")
        if commit is not False and self._pending is None and data.keys() == self._fast_keys:
            for value in data.values():
                t = type(value)
                if t is not float and t is not int:
                    break
            else:  # known keys and plain numbers at an explicit step
                self._append_row((step, _now(), data.copy()))
                if step >= self._step:
                    self._step = step + 1
                if self._watched:
                    self._log_watched(step)
                return
        self._log_slow(data, step, commit is not False)

    def _log_slow(self, data: Mapping[str, Any], step: int, commit: bool) -> None:
        now = time.time()
        scalars: dict[str, float | int] = {}  # to_scalar keeps ints as ints
        # Media and text are gathered here and handed over only once every key has passed: a log() that raises
        # (a bad key, an unloggable value) stores nothing of its call.
        media_items: list[tuple[int, float, str, Any]] = []
        texts: dict[str, str] = {}
        for key, value in flatten(data).items():
            if not key or len(key) > events.MAX_NAME_LEN:
                raise ValueError(f"log() key must be 1-{events.MAX_NAME_LEN} characters, got {key!r:.60}")
            if value is None:
                continue
            number = to_scalar(value)
            if number is not None:
                scalars[key] = number
                continue
            from runstream import media as media_types

            item = media_types.to_media(value)
            if item is None and isinstance(value, (list, tuple)):
                # A gallery of images (one file each), a histogram of numbers, or nothing when empty.
                for each in media_types.sequence_to_media(key, value):
                    media_items.append((step, now, key, each.snapshot()))
                continue
            if item is None and getattr(value, "ndim", 0) >= 1:
                item = media_types.Histogram(value)  # wandb turns arrays into histograms too
            if item is not None:
                media_items.append((step, now, key, item.snapshot()))
            elif isinstance(value, str):
                texts[key] = value  # text is not charted; the latest goes in the summary
            else:
                raise TypeError(
                    f"log() value for {key!r} is a {type(value).__name__}: use a number, a bool, a numpy/torch "
                    "scalar, a sequence of numbers (histogram), runstream.Image/Histogram/Table/Audio/Video/Html/"
                    "Object3D, a runstream.plot chart, or a list of Images, Audio or Videos"
                )
        self._sender.media.extend(media_items)
        if texts:
            self._summary.update(texts)
        if self._pending is not None and step != self._pending_step:
            self._commit_pending()
        if self._pending is None:
            self._pending, self._pending_step = {}, step
        self._pending.update(scalars)
        if commit:
            self._commit_pending()
        if self._watched:
            self._log_watched(step)

    def _commit_pending(self) -> None:
        row, step = self._pending, self._pending_step
        self._pending = None
        if row:
            keys = frozenset(row)
            self._fast_keys = keys  # validated: the next row with these keys takes the fast path
            self._append_row((step, _now(), row))
        if step >= self._step:
            self._step = step + 1

    # Whether log() can take its hot path follows from these two; keep the flag in step with them.
    @property
    def _pending(self) -> dict[str, Any] | None:
        return self._pending_row

    @_pending.setter
    def _pending(self, row: dict[str, Any] | None) -> None:
        self._pending_row = row
        self._simple = row is None and not self._watched_models

    @property
    def _watched(self) -> list[Any]:
        return self._watched_models

    @_watched.setter
    def _watched(self, models: list[Any]) -> None:
        self._watched_models = models
        self._simple = self._pending_row is None and not models

    @staticmethod
    def _check_step(step: Any) -> int:
        try:
            value = step.__index__()  # numpy and torch integers
        except (AttributeError, TypeError):
            raise TypeError(f"run.log(step=...) must be an integer, got {type(step).__name__}") from None
        if value < 0:
            raise ValueError(f"run.log(step=...) must be >= 0, got {value}")
        return value

    @property
    def step(self) -> int:
        return self._step

    # -- summary, metrics, alerts ------------------------------------------------------
    @property
    def summary(self) -> Summary:
        return self._summary

    def _refresh_summary(self) -> None:
        if self._pending:
            self._commit_pending()
        self._sender.drain()

    def _summary_set(self, values: dict[str, Any]) -> None:
        if not self._sender.put(events.RUN_UPDATE, {"summary": values}):
            self._too_late("summary")

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        summary: str | None = None,
        goal: str | None = None,
        **ignored: Any,
    ) -> None:
        """How a metric (or glob of metrics) is summarised and which metric is its x-axis."""
        definition = make_definition(name, step_metric, summary, goal)
        self._summary.define(definition)
        self._sender.put(events.RUN_UPDATE, {"define_metric": [definition.to_event()]})

    def alert(
        self, title: str, text: str, level: str | AlertLevel = AlertLevel.INFO, wait_duration: Any = None
    ) -> None:
        """Send an alert; with ``wait_duration`` (seconds or timedelta), repeats of ``title`` within it are dropped."""
        level = level.value if isinstance(level, AlertLevel) else str(level).upper()
        if level not in events.ALERT_LEVELS:
            raise ValueError(f"alert level must be one of {events.ALERT_LEVELS}, got {level!r}")
        if not isinstance(title, str) or not title or not isinstance(text, str):
            raise TypeError("run.alert() needs a non-empty title and a text string")
        wait = wait_duration.total_seconds() if hasattr(wait_duration, "total_seconds") else wait_duration
        now = time.monotonic()
        if wait and now - self._alert_times.get(title, -float("inf")) < float(wait):
            return
        self._alert_times[title] = now
        data: dict[str, Any] = {"title": title, "text": text, "level": level, "source": "sdk"}
        if wait:
            data["wait_duration"] = float(wait)
        self._sender.put(events.ALERT, data)

    # -- files -----------------------------------------------------------------------------
    def save(self, glob_str: str | os.PathLike, base_path: str | None = None, policy: str = "live") -> list[str]:
        """Copy matching files into the run's files and announce them; returns the run-relative paths.

        ``policy``: "now" (once), "end" (the files matching at finish), "live" (now, then every
        few seconds and at finish: changed files again, and files matching the glob later).
        """
        if policy not in ("live", "now", "end"):
            raise ValueError(f"save(policy=...) must be 'live', 'now' or 'end', got {policy!r}")
        pattern = os.path.abspath(os.fspath(glob_str))
        base = Path(base_path).absolute() if base_path else _glob_base(pattern)
        if policy != "now":
            with self._saved_lock:
                self._save_globs.append((pattern, base, policy))
        return self._save_matches(pattern, base, store=policy != "end", keep=policy != "now")

    def _save_matches(self, pattern: str, base: Path, store: bool, keep: bool) -> list[str]:
        """Store (or only note, for "end") the files matching ``pattern``; ``keep`` notes them for later."""
        saved = []
        runs_root = self._run_dir.resolve().parent
        for match in sorted(glob.glob(pattern, recursive=True)):
            source = Path(match)
            resolved = source.resolve()
            # Never this machine's runs (a glob may reach them, also through latest-run): the run
            # would copy its own files into themselves.
            if not resolved.is_file() or runs_root in resolved.parents:
                continue
            try:
                relative = resolved.relative_to(base.resolve()).as_posix()
            except ValueError:
                relative = source.name
            with self._saved_lock:
                if source not in self._saved:
                    self._saved[source] = (relative, -1.0)
            if store:
                self._store_saved(source)
            if not keep:
                with self._saved_lock:
                    self._saved.pop(source, None)
            saved.append(relative)
        return saved

    def _save_again(self, policies: tuple[str, ...]) -> None:
        """Look at the save() globs of ``policies`` again: new matches and changed files are stored."""
        with self._saved_lock:
            globs = [g for g in self._save_globs if g[2] in policies]
        for pattern, base, _ in globs:
            self._save_matches(pattern, base, store=True, keep=True)

    def _store_saved(self, source: Path) -> None:
        """Copy a saved file into the run's files when it changed since, and announce it. The copy
        happens outside the lock: a large checkpoint must not hold up save() or the other scans."""
        with self._saved_lock:
            relative, stored_mtime = self._saved[source]
        try:
            mtime = source.stat().st_mtime
        except FileNotFoundError:
            return  # deleted since: what was stored stays
        if mtime == stored_mtime:
            return
        target = self._files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._copy_lock:  # one copy of a target at a time (the live scan and finish may meet)
            shutil.copy2(source, target)
            size, digest = target.stat().st_size, _sha256(target)
        with self._saved_lock:
            self._saved[source] = (relative, mtime)
        self._sender.put(events.FILE, file_event_data(relative, "file", size, digest))

    def _store_file(self, relative: str, content: bytes, kind: str) -> None:
        target = self._files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        self._sender.put(
            events.FILE, file_event_data(relative, kind, len(content), hashlib.sha256(content).hexdigest())
        )

    # -- artifacts (runstream.artifacts; docs/artifacts.md) --------------------------------
    def log_artifact(
        self,
        artifact_or_path: Any,
        name: str | None = None,
        type: str | None = None,
        aliases: list[str] | str | None = None,
        **ignored: Any,
    ) -> Any:
        """Log an ``Artifact`` (or a file or directory as one): its files are read on a thread of their own and
        uploaded before its event; ``artifact.wait()`` returns once the version is stored. Returns the artifact."""
        from runstream import artifacts

        return artifacts.log_artifact(self, artifact_or_path, name=name, type=type, aliases=aliases)

    def use_artifact(self, artifact_or_name: Any, type: str | None = None, **ignored: Any) -> Any:
        """Record that this run uses a version (``"name:alias"``, ``"name:v3"``, ``"team/project/name:ref"`` or an
        ``Artifact``), resolved through the server; returns the ``Artifact`` to ``download()``."""
        from runstream import artifacts

        return artifacts.use_artifact(self, artifact_or_name, type=type)

    def log_model(self, path: str | os.PathLike, name: str | None = None, aliases: list[str] | None = None) -> Any:
        """Log a model file or directory as an artifact of type ``model``."""
        from runstream import artifacts

        return artifacts.log_model(self, path, name=name, aliases=aliases)

    def use_model(self, name: str) -> str:
        """Use a ``model`` artifact and download it; the local path."""
        from runstream import artifacts

        return artifacts.use_model(self, name)

    def _artifact_stager(self) -> Any:
        from runstream import artifacts

        with self._saved_lock:  # held only for moments (never for a copy)
            if self._stager is None:
                sender = self._sender
                self._stager = artifacts.Stager(
                    self._run_dir / artifacts.STAGING_DIR, sender.put, sender.uploader, self.entity, self.project
                )
            return self._stager

    # -- torch (the hooks live in runstream.integration.torch) ------------------------------
    def watch(
        self,
        models: Any,
        criterion: Any = None,
        log: str | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> list[Any]:
        """Hook a PyTorch model (or a list of them): histograms of its gradients and/or parameters every
        ``log_freq`` backward/forward passes, stored with the next ``log()`` under ``gradients/<name>`` and
        ``parameters/<name>``. Watching a watched model again replaces its hooks. ``criterion`` is accepted
        (wandb draws graphs with it); returns the graphs wandb would, none: ``log_graph`` is not supported."""
        try:
            from runstream.integration import torch as torch_hooks
        except ImportError as exc:
            raise ImportError(f"run.watch() needs PyTorch ({exc}): pip install torch") from exc
        if self._finished:
            raise Error("run.watch() after the run finished: call it between init() and finish()")
        if self.mode == "disabled":  # nothing is logged: no hooks, no histograms to compute
            return []
        if log_graph:
            logging.getLogger("runstream").warning(
                "runstream: watch(log_graph=True): model graphs are not drawn; only histograms are"
            )
        if self._torch is None:
            self._torch = torch_hooks.Watcher(is_live=_live_check(self))
        self._torch.watch(models, log=log, log_freq=log_freq, idx=idx)
        self._watched = self._torch.modules  # log() leaves its hot path while a model is watched
        return []

    def unwatch(self, models: Any = None) -> None:
        """Remove every hook ``watch()`` put on ``models`` (a module or a list; None: on every watched model)."""
        if self._watched:  # histograms the hooks took since the last log() still go out, with the next step
            self._log_watched(self._pending_step if self._pending is not None else self._step)
        if self._torch is not None:
            self._torch.unwatch(models)
            self._watched = self._torch.modules

    def _log_watched(self, step: int) -> None:
        """The histograms the hooks took since the last log(), stored at this log()'s step."""
        taken = self._torch.take()
        if taken:
            now = time.time()
            self._sender.media.extend([(step, now, key, histogram) for key, histogram in taken.items()])

    # -- life cycle -------------------------------------------------------------------
    def _start(self, start_data: dict[str, Any]) -> None:
        self._sender.put(events.RUN_START, start_data)
        self._started = True
        self._save_record()

        def config_changed(changed: dict[str, Any]) -> None:
            if not self._sender.put(events.RUN_UPDATE, {"config": changed}):
                self._too_late("config")
                return
            self._save_record()

        self.config.on_change(config_changed)
        self._sender.every(LIVE_SAVE_INTERVAL, lambda: self._save_again(("live",)))
        self._sender.start()
        self._start_collectors()

    def _start_collectors(self) -> None:
        settings = self.settings
        if settings.system_metrics:
            self._guarded("system metrics", self._start_system)
        if settings.console:
            self._guarded("console capture", self._start_console)

    def _start_system(self) -> None:
        from runstream.collectors.system import SystemSampler

        def on_sample(ts: float, values: dict[str, float]) -> None:
            if values:
                self._sender.put(events.SYSTEM, {"time": [ts], "values": {k: [v] for k, v in values.items()}}, ts)

        sampler = SystemSampler(interval=self.settings.system_interval, on_sample=on_sample)
        sampler.start()
        self._collectors.append(sampler)

    def _start_console(self) -> None:
        from runstream.collectors.console import ConsoleCapture

        capture = ConsoleCapture(on_lines=self._sender.put_console)
        capture.start()
        self._collectors.append(capture)

    @staticmethod
    def _guarded(what: str, start: Any) -> None:
        try:
            start()
        except Exception as exc:  # noqa: BLE001 - a collector must never stop the run
            log.warning("runstream: %s disabled: %s", what, exc)

    def finish(
        self,
        exit_code: int | None = None,
        quiet: bool | None = None,
        *,
        _state: str | None = None,
        _traceback: str | None = None,
    ) -> FinishResult:
        """End the run: flush (waiting at most ``settings.finish_timeout`` s) and mark it finished or failed."""
        if self._begin_finish(exit_code, _state, _traceback):
            self._end_finish()
        return self._finish_result  # type: ignore[return-value]  # None for a disabled run, as wandb's

    def _begin_finish(self, exit_code: int | None, state: str | None = None, trace: str | None = None) -> bool:
        """The first half of ``finish()``: stop collecting and hand the sender its last event; the
        bound starts now. False when the run was already finished (or is finishing).

        The exit hooks begin every unfinished run's finish before they wait for any (``_end_finish``)."""
        with self._finish_lock:  # two threads may finish a run at once (one's exit hook, another's finish())
            if self._finished:
                return False
            self._finished = True
        if self.mode == "disabled":  # nothing was collected, nothing to send
            self._exit_code = 0
            return True
        for collector in reversed(self._collectors):
            try:
                collector.stop()
            except Exception:  # noqa: BLE001
                pass
        if self._watched:  # histograms taken after the last log(): at the next step (wandb commits its partial row)
            self._log_watched(self._pending_step if self._pending is not None else self._step)
            self.unwatch()  # the model outlives the run: leave no hooks on it
        if self._pending:
            self._commit_pending()
        self._guarded("save", lambda: self._save_again(("live", "end")))
        if self._stager is not None:  # logged artifacts are read and their events queued before the final one
            self._guarded("artifacts", self._stager.join)
        # The server computes the summary from every point the run ever logged (also before a
        # resume); the user's own summary values went out as they were set.
        exit_code = 0 if exit_code is None else exit_code  # wandb: finish() is a success unless told otherwise
        self._exit_code = exit_code
        data: dict[str, Any] = {"state": state or ("finished" if not exit_code else "failed"), "exit_code": exit_code}
        if trace:
            data["traceback"] = trace[-events.MAX_TEXT_LEN :]
        self._sender.begin_finish(self.settings.finish_timeout, events.RUN_FINISH, data)
        return True

    def _end_finish(self) -> None:
        """The second half of ``finish()``: wait for the sender (within the bound), say what was not
        sent, and let ``on_finish`` know."""
        if self.mode != "disabled":
            self._finish_result = self._sender.end_finish()
            self._report_unsent(self._finish_result)
        if self.on_finish is not None:
            self.on_finish(self, self._exit_code)

    def _report_unsent(self, result: FinishResult) -> None:
        """Say what ``finish()`` could not deliver, as it is: sent and not yet answered, or never sent (and why);
        set aside by the server; lost to a full disk. Leftovers are sent by the next run on this machine."""
        if self.mode == "online" and not result.unacked_events and not result.quarantined_events:
            try:
                from runstream.spool import QUARANTINE_DIR
                from runstream.sync import forget

                # Nothing left (decided from the result: no spool read on the training thread): this run leaves
                # the registry of unsent runs, unless an earlier session of it left something quarantined.
                if not any((self._run_dir / QUARANTINE_DIR).glob("batch-*.json")):
                    forget(self._run_dir)
                    if self._stager is not None:  # every artifact is stored: its staged copies are not needed
                        shutil.rmtree(self._stager.staging, ignore_errors=True)
            except Exception:  # noqa: BLE001 - bookkeeping only
                pass
        for line in unsent_lines(result, self.settings.url, self.settings.finish_timeout, self.dir, self.mode):
            print(line, file=sys.__stderr__)

    @property
    def dropped_events(self) -> int:
        """Events the SDK could not keep because the disk was full (they are lost; the run went on)."""
        return self._sender.dropped_events

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, SystemExit):  # sys.exit() inside the block: its code says how it ended
            self.finish(exit_code=exit_status(exc.code))
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish(exit_code=130, _state="killed")
        else:
            self.finish(exit_code=1, _state="failed", _traceback="".join(traceback.format_exception(exc_type, exc, tb)))

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.id}"

    def __repr__(self) -> str:
        return f"<runstream.Run {self.path} ({self.name})>"


_now = time.time
#: This machine's name in run.json: only runs started here are resent in the background (``sync.leftovers``).
_HOST = this_host()


def unsent_lines(result: FinishResult, url: str, bound: float, run_dir: str, mode: str) -> list[str]:
    """What ``finish()`` says of what it did not deliver (nothing when everything was)."""
    lines = []
    if mode == "online" and result.unacked_events:
        later = (
            f"they are kept in {run_dir}; the next run on this machine that logs to {url} sends them by itself "
            "(or now: runstream sync --all)"
        )
        if result.refused:
            what, how = ("key", "--api-key KEY") if result.refused_key else ("address", "--url URL")
            lines.append(
                f"runstream: {result.unacked_events} events were not sent: {result.refused}. They are kept in "
                f"{run_dir}: send them with the right {what}: runstream sync {how} {run_dir}"
            )
        elif result.unsent_events == 0 and result.answered:
            lines.append(
                f"runstream: the last {result.in_flight_events} events were sent to {url} but its answer had not "
                f"come within {bound:g} s; they have most likely arrived, and {later} (a resend is harmless)"
            )
        elif result.unsent_events == 0:  # nothing of this process reached the server: maybe not even a connection
            lines.append(
                f"runstream: the last {result.in_flight_events} events were sent to {url}, no answer yet within "
                f"{bound:g} s; {later} (a resend is harmless)"
            )
        else:
            why = f" ({result.last_error})" if result.last_error else ""
            sent = (
                f" ({result.in_flight_events} more were sent and not yet answered)" if result.in_flight_events else ""
            )
            lines.append(
                f"runstream: {result.unsent_events} events were not sent to {url} within {bound:g} s{why}{sent}; "
                f"{later}"
            )
    if result.quarantined_events:
        lines.append(
            f"runstream: {result.quarantined_events} events were refused by the server for good and set aside in "
            f"{result.quarantine_dir} (with its reasons); retry them with: runstream sync --quarantined {run_dir}"
        )
    if result.dropped_events:
        lines.append(
            f"runstream: {result.dropped_events} events could not be kept (the disk was full) and are lost; "
            "everything else was kept"
        )
    return lines


def _live_check(run: Run) -> Callable[[], bool]:
    """Whether ``run`` is still going, without keeping it alive: the model's hooks hold this."""
    ref = weakref.ref(run)

    def is_live() -> bool:
        alive = ref()
        return alive is not None and not alive._finished

    return is_live
