"""``runstream.init()`` and ``Run``: the wandb-compatible surface a training script uses.

``log()`` does no I/O and no serialisation: it checks its arguments, copies the
row and appends it to the sender's list. Everything else (columnar batching,
encoding, spooling, sending, media encoding) happens on the sender's thread.
"""

from __future__ import annotations

import atexit
import enum
import glob
import hashlib
import logging
import os
import random
import secrets
import shutil
import signal
import string
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from runstream import events
from runstream.config import Config
from runstream.run_settings import RunSettings
from runstream.sender import FinishResult, RunIdentity, Sender, file_event_data
from runstream.spool import Spool
from runstream.summary import Summary, make_definition
from runstream.transport import open_transport, open_uploader
from runstream.values import flatten, json_safe, to_scalar

log = logging.getLogger("runstream")

MODES = ("online", "offline", "disabled")
RESUME = ("allow", "must", "never", None, True, False)
RUNS_DIR_NAME = "runstream"

_ADJECTIVES = "amber bold brisk calm clever crisp daring eager fluent gentle golden hardy keen lively lucid mellow misty noble quiet rapid silent snowy solar steady swift vivid".split()
_NOUNS = "brook cedar comet dawn delta ember field fjord glade grove harbor lake meadow moon orbit pine prairie river sky sun thunder valley wave wind".split()


class Error(Exception):
    """A misuse of the SDK that the user must fix (wandb.Error's counterpart)."""


class AlertLevel(str, enum.Enum):
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _new_name() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randint(1, 999)}"


def _find_run_dir(root: Path, run_id: str) -> Path | None:
    matches = sorted(root.glob(f"run-*-{run_id}"))
    return matches[-1] if matches else None


def _glob_base(pattern: str) -> Path:
    """The directory a glob's matches are relative to: its parts before the first wildcard (wandb's default)."""
    parts = Path(pattern).parts
    first_wildcard = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return Path(*parts[:first_wildcard]) if first_wildcard else Path(".")


def _seq_start(spool_dir: Path) -> int:
    """Sequence numbers of a run only grow, also across resumes: the session's start time in the
    high 32 bits (a resume elsewhere starts above this session), and past this machine's last one."""
    start = int(time.time()) << 32
    try:
        return max(start, int((spool_dir / "last_seq").read_text()) + 1)
    except (FileNotFoundError, ValueError):
        return start


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
    ) -> None:
        self.entity = team
        self.project = project
        self.id = run_id
        self.name = name
        self.dir = str(run_dir)
        self.mode = mode
        self.settings = settings
        self.resumed = resumed
        self._files_dir = run_dir / "files"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        self._step = 0
        self._fast_keys: frozenset[str] = frozenset()
        self._pending_step = 0
        self._finished = False
        self._finish_result: FinishResult | None = None
        self._alert_times: dict[str, float] = {}
        self._pending_row: dict[str, Any] | None = None
        self._watched_models: list[tuple[Any, str, int]] = []
        self._simple = True  # no uncommitted row and no watched model: log() may take its hot path
        self._saved: dict[Path, tuple[str, float]] = {}
        self._collectors: list[Any] = []
        identity = RunIdentity(team, project, run_id)
        transport = open_transport(settings.url, settings.api_key) if mode == "online" else None
        self._summary = Summary(refresh=self._refresh_summary, on_set=self._summary_set)
        self._sender = Sender(
            identity,
            Spool(run_dir / "spool"),
            transport,
            uploader=open_uploader(transport, settings.files_url, settings.api_key),
            seq_start=_seq_start(run_dir / "spool"),
            stats=self._summary.stats,
            files_dir=self._files_dir,
            flush_interval=settings.flush_interval,
            heartbeat_interval=settings.heartbeat_interval,
        )
        self._append_row = self._sender.rows.append
        self.config = Config()  # changes travel as run_update events once the run has started

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
        scalars: dict[str, float] = {}
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
                    self._sender.media.append((step, now, key, each.snapshot()))
                continue
            if item is None and getattr(value, "ndim", 0) >= 1:
                item = media_types.Histogram(value)  # wandb turns arrays into histograms too
            if item is not None:
                self._sender.media.append((step, now, key, item.snapshot()))
            elif isinstance(value, str):
                self._summary.update({key: value})  # text is not charted; keep the latest in the summary
            else:
                raise TypeError(
                    f"log() value for {key!r} is a {type(value).__name__}: use a number, a bool, a numpy/torch "
                    "scalar, a sequence of numbers (histogram), runstream.Image/Histogram/Table or a list of Images"
                )
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
    def _watched(self) -> list[tuple[Any, str, int]]:
        return self._watched_models

    @_watched.setter
    def _watched(self, models: list[tuple[Any, str, int]]) -> None:
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
        self._sender.put(events.RUN_UPDATE, {"summary": values})

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

    def alert(self, title: str, text: str, level: str | AlertLevel = AlertLevel.INFO, wait_duration: Any = None) -> None:
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

        ``policy``: "now" (once), "end" (at finish), "live" (now, and again at finish if changed).
        """
        if policy not in ("live", "now", "end"):
            raise ValueError(f"save(policy=...) must be 'live', 'now' or 'end', got {policy!r}")
        pattern = os.fspath(glob_str)
        base = Path(base_path) if base_path else _glob_base(pattern)
        saved = []
        for match in sorted(glob.glob(pattern, recursive=True)):
            source = Path(match)
            if not source.is_file():
                continue
            try:
                relative = source.resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                relative = source.name
            self._saved[source] = (relative, -1.0)
            if policy in ("live", "now"):
                self._store_saved(source)
            if policy == "now":
                del self._saved[source]
            saved.append(relative)
        return saved

    def _store_saved(self, source: Path) -> None:
        relative, stored_mtime = self._saved[source]
        mtime = source.stat().st_mtime
        if mtime == stored_mtime:
            return
        target = self._files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        self._saved[source] = (relative, mtime)
        self._sender.put(events.FILE, file_event_data(relative, "file", target.stat().st_size, _sha256(target)))

    def _store_file(self, relative: str, content: bytes, kind: str) -> None:
        target = self._files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        self._sender.put(events.FILE, file_event_data(relative, kind, len(content), hashlib.sha256(content).hexdigest()))

    # -- torch ---------------------------------------------------------------------------
    def watch(self, models: Any, criterion: Any = None, log: str = "gradients", log_freq: int = 1000, **ignored: Any) -> None:
        """Log histograms of a PyTorch model's gradients and/or parameters every ``log_freq`` steps."""
        if log not in ("gradients", "parameters", "all", None):
            raise ValueError(f"watch(log=...) must be 'gradients', 'parameters' or 'all', got {log!r}")
        for model in models if isinstance(models, (list, tuple)) else [models]:
            if not hasattr(model, "named_parameters"):
                raise TypeError(f"watch() takes a torch.nn.Module, got {type(model).__name__}")
            if log is not None:
                self._watched = [*self._watched, (model, log, max(1, int(log_freq)))]

    def unwatch(self, models: Any = None) -> None:
        self._watched = [] if models is None else [w for w in self._watched if w[0] is not models]

    def _log_watched(self, step: int) -> None:
        from runstream import media as media_types

        now = time.time()
        for model, what, freq in self._watched:
            if step % freq:
                continue
            for name, param in model.named_parameters():
                if what in ("parameters", "all"):
                    self._sender.media.append((step, now, f"parameters/{name}", media_types.Histogram(_to_numpy(param))))
                if what in ("gradients", "all") and getattr(param, "grad", None) is not None:
                    self._sender.media.append((step, now, f"gradients/{name}", media_types.Histogram(_to_numpy(param.grad))))

    # -- life cycle -------------------------------------------------------------------
    def _start(self, start_data: dict[str, Any]) -> None:
        self._sender.put(events.RUN_START, start_data)
        self.config.on_change(lambda changed: self._sender.put(events.RUN_UPDATE, {"config": changed}))
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

    def finish(self, exit_code: int | None = None, quiet: bool | None = None, *, _state: str | None = None, _traceback: str | None = None) -> FinishResult:
        """End the run: flush (waiting at most ``settings.finish_timeout`` s) and mark it finished or failed."""
        if self._finished:
            return self._finish_result  # type: ignore[return-value]
        self._finished = True
        for collector in reversed(self._collectors):
            try:
                collector.stop()
            except Exception:  # noqa: BLE001
                pass
        if self._pending:
            self._commit_pending()
        for source in list(self._saved):
            if source.exists():
                self._guarded(f"save {source}", lambda source=source: self._store_saved(source))
        state = _state or ("finished" if not exit_code else "failed")
        data: dict[str, Any] = {"state": state, "exit_code": exit_code}
        if _traceback:
            data["traceback"] = _traceback[-events.MAX_TEXT_LEN :]
        summary = self._summary.as_dict()  # drains the last rows first
        if summary:
            self._sender.put(events.RUN_UPDATE, {"summary": summary})
        self._sender.put(events.RUN_FINISH, data)
        self._finish_result = self._sender.finish(self.settings.finish_timeout)
        if self.mode == "online" and self._finish_result.unacked_events:
            print(
                f"runstream: {self._finish_result.unacked_events} events were not acknowledged by {self.settings.url} "
                f"within {self.settings.finish_timeout:g} s; they are kept in {self.dir} — send them with: runstream sync {self.dir}",
                file=sys.__stderr__,
            )
        _on_finish(self)
        return self._finish_result

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
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


def _to_numpy(tensor: Any) -> Any:
    return tensor.detach().cpu().float().numpy()


# -- module state and init() ---------------------------------------------------------------

_current: Run | None = None
_hooks_installed = False
_previous_excepthook = sys.excepthook
_failure: tuple[str, int, str] | None = None


def _on_finish(run: Run) -> None:
    global _current
    if _current is run:
        _current = None
        import runstream

        runstream.run = None
        runstream.config = runstream._PreInit("config")
        runstream.summary = runstream._PreInit("summary")


def init(
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - wandb's argument name
    config: Mapping[str, Any] | Any | None = None,
    tags: list[str] | tuple[str, ...] | None = None,
    group: str | None = None,
    job_type: str | None = None,
    notes: str | None = None,
    dir: str | os.PathLike | None = None,  # noqa: A002
    mode: str | None = None,
    resume: str | bool | None = None,
    settings: Any = None,
    reinit: bool | None = None,
    **ignored: Any,
) -> Run:
    """Start a run (wandb.init's arguments and meaning)."""
    global _current
    mode = mode or os.environ.get("RUNSTREAM_MODE") or os.environ.get("WANDB_MODE") or "online"
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise ValueError(f"init(mode=...) must be one of {MODES}, got {mode!r}")
    if resume not in RESUME:
        raise ValueError(f"init(resume=...) must be 'allow', 'must', 'never' or None, got {resume!r}")
    if _current is not None:
        _current.finish()  # one active run per process, as in wandb (a new init ends the previous run)
    run_settings = RunSettings.resolve(settings)
    team = entity or os.environ.get("RUNSTREAM_ENTITY") or "default"
    project = project or os.environ.get("RUNSTREAM_PROJECT") or "uncategorized"
    for what, value in (("entity", team), ("project", project)):
        if not events._NAME.match(value):
            raise ValueError(f"{what} {value!r} must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    if id is not None and not events._RUN_ID.match(str(id)):
        raise ValueError(f"run id {id!r} must be 1-64 letters, digits, '_' or '-'")
    root = Path(dir or os.environ.get("RUNSTREAM_DIR") or ".") / RUNS_DIR_NAME
    existing = _find_run_dir(root, str(id)) if id else None
    if resume == "must" and existing is None:
        raise Error(f"resume='must' but no run {id!r} was found under {root}")
    if resume == "never" and existing is not None:
        raise Error(f"resume='never' but run {id!r} already exists at {existing}")
    resumed = existing is not None and resume in ("allow", "must", True)
    run_id = str(id) if id else _new_run_id()
    run_dir = existing if resumed else root / f"run-{time.strftime('%Y%m%d_%H%M%S')}-{run_id}"
    if mode == "disabled":
        run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"runstream-disabled-{os.getpid()}-{run_id}"
    run = Run(
        team=team,
        project=project,
        run_id=run_id,
        name=name or _new_name(),
        run_dir=run_dir,
        settings=run_settings if mode != "disabled" else RunSettings(system_metrics=False, console=False, git=False),
        mode=mode,
        resumed=resumed,
    )
    if config is not None:
        run.config.update(config if isinstance(config, Mapping) else vars(config), allow_val_change=True)
    start = _start_data(run, tags, group, job_type, notes)
    (run_dir / "run.json").write_bytes(
        orjson.dumps(
            {
                "team": team,
                "project": project,
                "run_id": run_id,
                "name": run.name,
                "url": run_settings.url,
                "files_url": run_settings.files_url,
                "mode": mode,
            }
        )
    )
    if mode == "disabled":
        run._finished = True  # nothing is collected or sent
        run.log = lambda *a, **k: None  # type: ignore[method-assign]  # and log() stays free
    else:
        run._start(start)
        if run_settings.git:
            Run._guarded("git", lambda: _save_git_patch(run))
        Run._guarded("requirements", lambda: _save_requirements(run))
        _install_hooks()
    _current = run
    _publish(run)
    return run


def _start_data(run: Run, tags: Any, group: str | None, job_type: str | None, notes: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"name": run.name, "config": run.config.as_dict(), "resumed": run.resumed}
    if tags:
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
            raise TypeError(f"init(tags=...) takes a list of non-empty strings, got {tags!r}")
        data["tags"] = list(tags)
    for key, value in (("group", group), ("job_type", job_type), ("notes", notes)):
        if value is not None:
            data[key] = str(value)
    if run.mode != "disabled":
        try:
            from runstream.collectors.host import host_info

            host = host_info()
            for key in ("host", "user", "program", "python"):
                if host.get(key) is not None:
                    data[key] = str(host[key])
            data["args"] = [str(a) for a in host.get("args", [])]
        except Exception as exc:  # noqa: BLE001
            log.warning("runstream: host information unavailable: %s", exc)
        if run.settings.git:
            try:
                from runstream.collectors.git import git_info

                info = git_info(".")
                if info:
                    data["git"] = json_safe(info)
            except Exception as exc:  # noqa: BLE001
                log.warning("runstream: git information unavailable: %s", exc)
    return data


def _save_git_patch(run: Run) -> None:
    from runstream.collectors.git import diff_patch

    patch = diff_patch(".")
    if patch:
        run._store_file("diff.patch", patch.encode(), "git_patch")


def _save_requirements(run: Run) -> None:
    from runstream.collectors.host import installed_packages

    run._store_file("requirements.txt", ("\n".join(installed_packages()) + "\n").encode(), "requirements")


def _publish(run: Run) -> None:
    import runstream

    runstream.run = run
    runstream.config = run.config
    runstream.summary = run.summary


# -- process exit: finished, failed (uncaught exception) or killed (SIGTERM) -------------------


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    sys.excepthook = _excepthook
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            if _current is not None:
                _current.finish(exit_code=128 + signum, _state="killed")
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if _current is not None:
        if issubclass(exc_type, KeyboardInterrupt):
            _current.finish(exit_code=130, _state="killed")
        else:
            _current.finish(exit_code=1, _state="failed", _traceback="".join(traceback.format_exception(exc_type, exc, tb)))
    _previous_excepthook(exc_type, exc, tb)


def _at_exit() -> None:
    if _current is not None:
        _current.finish()


def current() -> Run:
    if _current is None:
        raise Error("call runstream.init() before using the run (runstream.log, runstream.finish, ...)")
    return _current
