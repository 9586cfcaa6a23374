"""``runstream.init()`` and the process's life with its runs: the active runs, resume, and the exit hooks.

A process may run several runs at once (``init(reinit="create_new")``); ``runstream.run`` is
the last one started. How a process ends its unfinished runs (docs/sdk.md has the same table):

| the script ...                                   | the run              | exit code |
|--------------------------------------------------|----------------------|-----------|
| returns, falls off the end, calls ``sys.exit(0)`` | finished             | 0         |
| calls ``sys.exit(n)``, n != 0 (a message: 1)      | failed               | n         |
| raises an uncaught exception                      | failed, + traceback  | 1         |
| is interrupted (Ctrl-C, ``KeyboardInterrupt``)    | killed               | 130       |
| gets SIGTERM                                      | killed               | 143       |
| gets SIGKILL, ``os._exit``, loses power           | crashed (by the server, after its crash timeout) | none |

Each path but the last finishes every unfinished run, all at once: each sends what is left,
waiting at most ``finish_timeout`` s; what it could not send stays in the run's spool, and the
next run on this machine that logs to the same server sends it (or ``runstream sync --all``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import secrets
import shutil
import signal
import string
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from runstream import events, names
from runstream import resume as resuming  # `resume` is init()'s argument
from runstream.resume import Previous
from runstream.run import Error, Run, check_tags, exit_status
from runstream.run_settings import RunSettings
from runstream.spool import SpoolLocked
from runstream.values import json_safe

log = logging.getLogger("runstream")

MODES = ("online", "offline", "disabled")
RESUME = ("allow", "must", "never", "auto", None, True, False)
#: What ``init()`` does while a run is active (wandb's names). "default" is "finish_previous", as
#: runstream always did (wandb's default outside notebooks is "return_previous").
REINIT = ("default", "return_previous", "finish_previous", "create_new")
#: The folder, in the script's directory (or ``dir=``), that holds this machine's runs. Not
#: "runstream": a folder of that name beside a script is imported instead of the package.
RUNS_DIR_NAME = "runstream-runs"
#: Where runs were kept before; ``runstream sync`` still looks there.
LEGACY_RUNS_DIR_NAMES = ("runstream",)
#: What a sweep's agent starts each run with (docs/sweeps.md): the sweep's id, the run's id, and a JSON file
#: of the run's parameters (nested).
SWEEP_ID_ENV = "RUNSTREAM_SWEEP_ID"
RUN_ID_ENV = "RUNSTREAM_RUN_ID"
SWEEP_PARAM_PATH_ENV = "RUNSTREAM_SWEEP_PARAM_PATH"

_ADJECTIVES = [
    "amber",
    "bold",
    "brisk",
    "calm",
    "clever",
    "crisp",
    "daring",
    "eager",
    "fluent",
    "gentle",
    "golden",
    "hardy",
    "keen",
    "lively",
    "lucid",
    "mellow",
    "misty",
    "noble",
    "quiet",
    "rapid",
    "silent",
    "snowy",
    "solar",
    "steady",
    "swift",
    "vivid",
]
_NOUNS = [
    "brook",
    "cedar",
    "comet",
    "dawn",
    "delta",
    "ember",
    "field",
    "fjord",
    "glade",
    "grove",
    "harbor",
    "lake",
    "meadow",
    "moon",
    "orbit",
    "pine",
    "prairie",
    "river",
    "sky",
    "sun",
    "thunder",
    "valley",
    "wave",
    "wind",
]

#: ``runstream.run``: the last run started, until it finishes.
_current: Run | None = None
#: Every unfinished run of this process, oldest first (a run leaves once its finish() has ended).
_active: list[Run] = []
_active_lock = threading.Lock()


def current() -> Run:
    if _current is None:
        raise Error("call runstream.init() before using the run (runstream.log, runstream.finish, ...)")
    return _current


def active_runs() -> list[Run]:
    """The process's unfinished runs, oldest first."""
    return list(_active)


def _reinit_choice(reinit: Any, settings: Any) -> str:
    """``init(reinit=...)``, else ``settings``' reinit, as one of ``REINIT`` (wandb's bools: True is
    "finish_previous", False "return_previous")."""
    if reinit is None:
        reinit = settings.get("reinit") if isinstance(settings, Mapping) else getattr(settings, "reinit", None)
    if reinit is None:
        return "default"
    if isinstance(reinit, bool):
        return "finish_previous" if reinit else "return_previous"
    if reinit not in REINIT:
        raise ValueError(f"init(reinit=...) must be one of {REINIT}, True or False, got {reinit!r}")
    return str(reinit)


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _new_name() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randint(1, 999)}"


def _new_run_dir(root: Path, run_id: str) -> Path:
    return root / f"run-{time.strftime('%Y%m%d_%H%M%S')}-{run_id}"


def find_run_dir(root: Path, run_id: str) -> Path | None:
    matches = sorted(p for p in root.glob(f"run-*-{run_id}") if p.name.endswith(f"-{run_id}"))
    return matches[-1] if matches else None


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
    reinit: str | bool | None = None,
    fork_from: str | None = None,
    resume_from: str | None = None,
    **ignored: Any,
) -> Run:
    """Start a run, or continue one (wandb.init's arguments and meaning; see docs/sdk.md for resume and reinit).

    ``fork_from="RUN_ID?_step=N"``: a new run whose history reads as that run's up to step N, then its
    own (from step N + 1). ``resume_from="RUN_ID?_step=N"``: continue that run from step N + 1, its history
    after N replaced by what is logged from now on (the replaced part stays stored, readable as such).

    Started by a sweep's agent (docs/sweeps.md), the run takes its id from ``RUNSTREAM_RUN_ID`` (unless ``id=``
    is given), belongs to the sweep ``RUNSTREAM_SWEEP_ID``, and its config takes the sweep's parameters
    (``RUNSTREAM_SWEEP_PARAM_PATH``) over ``config=``."""
    global _exit_code, _terminated_by
    mode = mode or os.environ.get("RUNSTREAM_MODE") or os.environ.get("WANDB_MODE") or "online"
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise ValueError(f"init(mode=...) must be one of {MODES}, got {mode!r}")
    if resume not in RESUME:
        raise ValueError(f"init(resume=...) must be 'allow', 'must', 'never', 'auto' or None, got {resume!r}")
    fork = resuming.run_at_step(fork_from, "fork_from") if fork_from is not None else None
    rewind = resuming.run_at_step(resume_from, "resume_from") if resume_from is not None else None
    sweep, params = _sweep_env()
    if sweep is not None:
        entity, project, id = _sweep_names(entity, project, id)  # noqa: A001
    if id is None and rewind is None and os.environ.get(RUN_ID_ENV):
        id = os.environ[RUN_ID_ENV]  # noqa: A001 - a sweep's agent names the run it starts
    if fork or rewind:
        id = _lineage_id(fork, rewind, id, resume)  # noqa: A001
        resume = "must" if rewind else "allow"  # a fork's own id must be new: checked below, with its own words
    how = _reinit_choice(reinit, settings)
    active = active_runs()
    if active and how == "return_previous":
        if resume == "must":  # as wandb: the caller asked for that run, not the active one
            raise Error(
                "init(resume='must') while a run is active: finish it with run.finish(), or pass reinit='create_new'"
            )
        return active[-1]
    if how != "create_new":
        _finish_together(active)
    _exit_code = _terminated_by = None  # what ended an earlier run of this process is not this one's
    team = entity or os.environ.get("RUNSTREAM_ENTITY") or "default"
    project = project or os.environ.get("RUNSTREAM_PROJECT") or "uncategorized"
    for what, value in (("entity", team), ("project", project)):
        if not names.is_name(value):
            raise ValueError(f"{what} {value!r} must be {names.NAME_RULE}")
    if id is not None and not names.is_run_id(str(id)):
        raise ValueError(f"run id {id!r} must be {names.RUN_ID_RULE}")
    if id is not None and any(r.path == f"{team}/{project}/{id}" for r in active_runs()):
        raise Error(f"run {team}/{project}/{id} is already active in this process: finish it before starting it again")
    meta = _given_meta(tags, group, job_type, notes)
    if mode == "disabled":
        run = _disabled_run(team, project, str(id) if id else _new_run_id(), name, config, meta)
        _apply_sweep(run, params)
        _publish(run)
        return run

    run_settings = RunSettings.resolve(settings)
    root = Path(dir or os.environ.get("RUNSTREAM_DIR") or ".").absolute() / RUNS_DIR_NAME
    run_id = str(id) if id else None
    auto = resume in ("auto", True)
    if run_id is None and auto:
        run_id = resuming.auto_resume_id(root)
    existing, previous = _previous(root, team, project, run_id, mode, run_settings, resume) if run_id else (None, None)
    first_step = None
    if fork is not None:
        if previous is not None:
            raise Error(
                f"init(fork_from=...) starts a new run, but run {team}/{project}/{run_id} exists: use another id"
            )
        _check_parent(team, project, fork, mode, run_settings)
        first_step = fork[1] + 1
    if rewind is not None and previous is not None:
        if previous.rewinds >= events.MAX_REWINDS:
            raise Error(
                f"init(resume_from=...): run {team}/{project}/{rewind[0]} was rewound {previous.rewinds} times, "
                f"the most a run may be: start a new run, or fork it (init(fork_from=...))"
            )
        if previous.last_step is not None and rewind[1] > previous.last_step:
            raise Error(
                f"init(resume_from=...): run {team}/{project}/{rewind[0]} logged up to step {previous.last_step}, "
                f"so it cannot be rewound to step {rewind[1]}"
            )
        first_step = rewind[1] + 1
    run_id = run_id or _new_run_id()
    run_dir = existing or _new_run_dir(root, run_id)
    try:
        run = _new_run_when_free(team, project, run_id, name, run_dir, run_settings, mode, previous, meta, first_step)
    except SpoolLocked:
        if not (auto and id is None):
            raise Error(
                f"run {team}/{project}/{run_id} is being logged by another process on this machine "
                f"({run_dir}); wait for it to end, or use another id"
            ) from None
        # resume="auto" remembered a run that another script in this directory is logging: a new run.
        run_id = _new_run_id()
        run_dir = _new_run_dir(root, run_id)
        run = _new_run(team, project, run_id, name, run_dir, run_settings, mode, None, meta)
    if previous is not None:
        run.config.update(previous.config, allow_val_change=True)
        run.summary.restore(previous.metrics, previous.summary)
    if config is not None:
        run.config.update(config if isinstance(config, Mapping) else vars(config), allow_val_change=True)
    _apply_sweep(run, params)
    run.on_finish = _forget
    if auto:
        Run._guarded("resume file", lambda: resuming.remember_for_auto_resume(root, run_id))
    Run._guarded("latest-run link", lambda: _link_latest(root, run_dir))
    start = _start_data(run)
    if fork is not None:
        start["fork"] = {"run_id": fork[0], "step": fork[1]}
    if rewind is not None:
        start["rewind"] = {"step": rewind[1]}
    if sweep is not None:
        start["sweep"] = sweep
    run._start(start)
    Run._guarded("unsent runs", lambda: _leftovers(run, root, run_dir))
    if run_settings.git:
        Run._guarded("git", lambda: _save_git_patch(run))
    Run._guarded("requirements", lambda: _save_requirements(run))
    _install_hooks()
    _publish(run)
    return run


def _new_run_when_free(*args: Any) -> Run:
    """``_new_run``; when a background resend of this run's leftovers (another run's ``init()``) holds the
    spool, ask it to give way (``wanted``: it stops after the request it is in) and wait while the resending
    process lives, ``RESUME_WAIT`` s at most (one HTTP request's timeout and a margin)."""
    from runstream.sync import RESUME_WAIT, WANTED, resending

    spool_dir: Path = args[4] / "spool"
    deadline = time.monotonic() + RESUME_WAIT
    want = spool_dir / WANTED
    asked = False
    try:
        while True:
            try:
                return _new_run(*args)
            except SpoolLocked:
                if time.monotonic() > deadline or not resending(spool_dir):
                    raise
                if not asked:
                    want.write_text(f"{os.getpid()}\n")
                    asked = True
                time.sleep(0.05)
    finally:
        if asked:  # only ours: another init() may be waiting too
            want.unlink(missing_ok=True)


def _new_run(
    team: str,
    project: str,
    run_id: str,
    name: str | None,
    run_dir: Path,
    settings: RunSettings,
    mode: str,
    previous: Previous | None,
    meta: dict[str, Any],
    first_step: int | None = None,
) -> Run:
    """The Run, continuing ``previous`` when there is one (its step, name, record, sequence numbers);
    ``first_step``: the step it logs first by default (a fork's or a rewind's: after the step named)."""
    last_step = previous.last_step if previous is not None and previous.last_step is not None else -1
    if first_step is not None:
        last_step = first_step - 1
    return Run(
        team=team,
        project=project,
        run_id=run_id,
        name=name or (previous.name if previous else None) or _new_name(),
        run_dir=run_dir,
        settings=settings,
        mode=mode,
        resumed=previous is not None,
        step=last_step + 1,
        meta={**(previous.meta if previous else {}), **meta},
        seq_floor=previous.last_seq + 1 if previous is not None and previous.last_seq is not None else 0,
    )


def _lineage_id(fork: tuple[str, int] | None, rewind: tuple[str, int] | None, id: Any, resume: Any) -> Any:  # noqa: A002
    """The run id ``init`` uses with ``fork_from`` or ``resume_from`` (wandb's rules)."""
    if fork and rewind:
        raise ValueError("init() takes fork_from or resume_from, not both")
    if resume not in (None, False):
        raise ValueError("init(resume=...) cannot be combined with fork_from or resume_from")
    if fork is not None:
        if id is not None and str(id) == fork[0]:
            raise ValueError("init(fork_from=...) starts a new run: its id must differ from the run it forks")
        return id
    assert rewind is not None
    if id is not None and str(id) != rewind[0]:
        raise ValueError(f"init(resume_from=...) rewinds run {rewind[0]!r}: id, when given, must be that run's")
    return rewind[0]


def _check_parent(team: str, project: str, fork: tuple[str, int], mode: str, settings: RunSettings) -> None:
    """Online, the server must know the run a fork starts from, with a history reaching the fork step."""
    base = resuming.server_url(settings.url, settings.files_url) if mode == "online" else None
    path = f"{team}/{project}/{fork[0]}"
    if base is None:
        log.warning("runstream: run %s cannot be checked offline; the fork reads its history once it is stored", path)
        return
    try:
        parent = resuming.from_server(base, settings.api_key, team, project, fork[0])
    except resuming.KeyCannotRead as exc:
        raise Error(
            f"init(fork_from=...): {exc}, so it cannot check that run {path} exists on {base}; "
            "fork with a key of scope admin"
        ) from None
    except resuming.ServerUnreachable as exc:
        raise Error(
            f"init(fork_from=...): could not ask {base} whether run {path} exists ({exc}); retry when it answers"
        ) from None
    if parent is None:
        raise Error(f"init(fork_from=...): run {path} was not found on {base}")
    if parent.last_step is None or fork[1] > parent.last_step:
        logged = "nothing" if parent.last_step is None else f"up to step {parent.last_step}"
        raise Error(f"init(fork_from=...): run {path} logged {logged}, so it cannot be forked at step {fork[1]}")


def _sweep_env() -> tuple[str | None, dict[str, Any]]:
    """The sweep this process's run belongs to and its parameters (nested), from the agent's environment."""
    sweep = os.environ.get(SWEEP_ID_ENV) or None
    if sweep is not None and not events.is_sweep_id(sweep):
        raise ValueError(f"{SWEEP_ID_ENV}={sweep!r} must be a sweep id: 8 characters of [a-z0-9]")
    path = os.environ.get(SWEEP_PARAM_PATH_ENV)
    if not path:
        return sweep, {}
    try:
        params = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Error(f"{SWEEP_PARAM_PATH_ENV}={path}: the sweep's parameters cannot be read ({exc})") from None
    if not isinstance(params, dict):
        raise Error(f"{SWEEP_PARAM_PATH_ENV}={path}: the sweep's parameters must be a JSON object")
    return sweep, params


_sweep_warned: set[str] = set()


def _sweep_names(entity: str | None, project: str | None, id: str | None) -> tuple[str | None, str | None, str | None]:  # noqa: A002
    """In a sweep the agent names the run's entity, project and id (``RUNSTREAM_ENTITY``, ``RUNSTREAM_PROJECT``,
    ``RUNSTREAM_RUN_ID``): ``init()``'s own are ignored, as W&B does, so the run stays the sweep's claim (a run
    elsewhere would leave it unrun). One warning per name that differs."""
    given = {"entity": entity, "project": project, "id": id}
    named = {
        "entity": os.environ.get("RUNSTREAM_ENTITY"),
        "project": os.environ.get("RUNSTREAM_PROJECT"),
        "id": os.environ.get(RUN_ID_ENV),
    }
    for what, value in given.items():
        wanted = named[what]
        if wanted and value is not None and str(value) != wanted and what not in _sweep_warned:
            _sweep_warned.add(what)
            print(
                f"runstream: init({what}={value!r}) is ignored in a sweep: the sweep's agent runs it as {wanted!r}",
                file=sys.__stderr__,
            )
    return named["entity"] or entity, named["project"] or project, named["id"] or id


def _apply_sweep(run: Run, params: dict[str, Any]) -> None:
    """The sweep's parameters win over ``init(config=...)`` (a nested one is merged into the given object), and
    keep winning: a later update of their keys is ignored unless it passes ``allow_val_change=True``."""
    if not params:
        return
    run.config.update({k: _merged(run.config.get(k), v) for k, v in params.items()}, allow_val_change=True)
    run.config.lock(params)


def _merged(base: Any, value: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(value, Mapping)):
        return value
    return {**base, **{k: _merged(base.get(k), v) for k, v in value.items()}}


def _given_meta(tags: Any, group: Any, job_type: Any, notes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if tags is not None:
        meta["tags"] = check_tags(tags, "init(tags=...)")
    for key, value in (("group", group), ("job_type", job_type), ("notes", notes)):
        if value is not None:
            meta[key] = str(value)
    return meta


def _previous(
    root: Path, team: str, project: str, run_id: str, mode: str, settings: RunSettings, how: Any
) -> tuple[Path | None, Previous | None]:
    """This machine's directory of the run and what the run was, when it exists (here or on the server),
    after the rules of ``resume=``."""
    existing = find_run_dir(root, run_id)
    local = resuming.from_local(existing) if existing is not None else None
    server: Previous | None = None
    unreachable: Exception | None = None
    base = resuming.server_url(settings.url, settings.files_url) if mode == "online" else None
    if base is not None:
        try:
            server = resuming.from_server(base, settings.api_key, team, project, run_id)
        except resuming.ServerUnreachable as exc:
            unreachable = exc
    previous = resuming.combine(local, server)
    path = f"{team}/{project}/{run_id}"
    if how == "must" and previous is None:
        asked = f" nor on {base}" if base and not unreachable else ""
        hint = f"; {base} could not be asked ({unreachable}): retry when it answers" if unreachable else ""
        if isinstance(unreachable, resuming.KeyCannotRead):
            hint = f"; {base} could not be asked: {unreachable}"
        raise Error(f"resume='must' but run {path} was not found under {root}{asked}{hint}")
    if how == "never" and previous is not None:
        raise Error(f"resume='never' but run {path} already exists ({previous.where}): use another id")
    if previous is None and unreachable is not None:
        log.warning(
            "runstream: could not ask %s whether run %s exists (%s); starting it at step 0", base, path, unreachable
        )
    if previous is not None and how in (None, False):
        # wandb would start the run over; continuing it never writes over logged steps.
        print(
            f"runstream: run {path} exists ({previous.where}); continuing it after step {previous.last_step}. "
            "Pass resume='allow' to say so, or another id for a new run.",
            file=sys.__stderr__,
        )
    return existing, previous


def _disabled_run(team: str, project: str, run_id: str, name: str | None, config: Any, meta: dict[str, Any]) -> Run:
    """A run that records nothing and leaves nothing on disk (``mode="disabled"``)."""
    scratch = Path(tempfile.mkdtemp(prefix="runstream-disabled-"))
    run = Run(
        team=team,
        project=project,
        run_id=run_id,
        name=name or _new_name(),
        run_dir=scratch,
        settings=RunSettings(system_metrics=False, console=False, git=False),
        mode="disabled",
        resumed=False,
        meta=meta,
    )
    run._sender.discard()
    run._sender.spool.close()
    shutil.rmtree(scratch, ignore_errors=True)
    run.dir = tempfile.gettempdir()  # exists and is writable, as scripts that write into run.dir expect
    run.log = lambda *a, **k: None  # type: ignore[method-assign]  # log() stays free
    run.save = lambda *a, **k: []  # type: ignore[method-assign]
    run.summary.detach()
    if config is not None:
        run.config.update(config if isinstance(config, Mapping) else vars(config), allow_val_change=True)
    run.on_finish = _forget
    return run


def _start_data(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = {"name": run.name, "config": run.config.as_dict(), "resumed": run.resumed}
    data.update({k: v for k, v in run._meta.items() if v is not None})
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


def _leftovers(run: Run, root: Path, run_dir: Path) -> None:
    """This run enters the registry of runs with something unsent (it leaves when all is acknowledged),
    and what earlier runs left for the same server is offered again, in the background."""
    from runstream import sync

    try:
        sync.remember(run_dir)
    except OSError as exc:  # a read-only config directory: `runstream sync DIR` still finds the run
        log.debug("runstream: cannot remember %s among the unsent runs: %s", run_dir, exc)
    if run.mode == "online":
        sync.resend_leftovers(run.settings.url, run.settings.api_key, [root.parent], skip=[run_dir])


def _link_latest(root: Path, run_dir: Path) -> None:
    """``<root>/latest-run`` points at the newest run, as wandb's ``wandb/latest-run`` does."""
    link = root / "latest-run"
    tmp = root / f".latest-run-{os.getpid()}-{threading.get_ident()}"  # runs may start on several threads
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def _save_git_patch(run: Run) -> None:
    from runstream.collectors.git import diff_patch

    patch = diff_patch(".")
    if patch:
        run._store_file("diff.patch", patch.encode(), "git_patch")


def _save_requirements(run: Run) -> None:
    from runstream.collectors.host import installed_packages

    run._store_file("requirements.txt", ("\n".join(installed_packages()) + "\n").encode(), "requirements")


def _publish(run: Run) -> None:
    """A run has started: it is active, and it is ``runstream.run`` (whatever ``reinit`` was)."""
    global _current
    import runstream

    with _active_lock:
        _active.append(run)
        _current = run
    runstream.run = run
    runstream.config = run.config
    runstream.summary = run.summary


def _forget(run: Run, exit_code: int | None) -> None:
    """A run has finished: it is no longer active (nor ``runstream.run``); one that ended well is not auto-resumed."""
    global _current
    if not exit_code and run.mode != "disabled":
        root = Path(run.dir).parent
        Run._guarded("resume file", lambda: resuming.forget_auto_resume(root, run.id))
    with _active_lock:
        if run in _active:
            _active.remove(run)
        was_current = _current is run
        if was_current:
            _current = None
        remaining = list(_active)
    if was_current:
        import runstream

        runstream.run = None
        runstream.config = runstream._PreInit("config")
        runstream.summary = runstream._PreInit("summary")
    if _terminated_by is not None:  # SIGTERM came while a run was finishing: the others end killed, then the process
        unfinished = [r for r in remaining if not r._finished]
        if unfinished:
            _finish_together(unfinished, exit_code=128 + _terminated_by, state="killed")
        elif not remaining:
            _die_of(_terminated_by)


def _finish_together(
    runs: list[Run], exit_code: int | None = None, state: str | None = None, trace: str | None = None
) -> None:
    """Finish ``runs`` at once: every one starts finishing before any is waited for, so N runs
    take one ``finish_timeout``, not N. One that fails to finish does not stop the others."""
    begun = []
    for run in runs:
        try:
            if run._begin_finish(exit_code, state, trace):
                begun.append(run)
        except Exception as exc:  # noqa: BLE001 - the other runs must still end
            log.warning("runstream: finishing %s failed: %s", run.path, exc)
    for run in begun:
        try:
            run._end_finish()
        except Exception as exc:  # noqa: BLE001
            log.warning("runstream: finishing %s failed: %s", run.path, exc)


# -- the process's end: finished, failed (uncaught exception, sys.exit(n)) or killed ----------------

_hooks_installed = False
_hooks_lock = threading.Lock()
#: The status the script asked ``sys.exit`` for on the main thread (None: it did not).
_exit_code: int | None = None
#: The signal that is ending the process (SIGTERM), if one is.
_terminated_by: int | None = None
_original_exit = sys.exit
_previous_excepthook = sys.excepthook


def _install_hooks() -> None:
    global _hooks_installed, _original_exit, _previous_excepthook
    with _hooks_lock:  # runs may start on several threads: installed twice, sys.exit would call itself
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_at_exit)
    _original_exit = sys.exit
    sys.exit = _exit
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    # Only where SIGTERM would kill the process: a script's own handler (a checkpoint before a
    # requeue) or an ignored SIGTERM stays as it is, and the run ends however the script then ends.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Unwind the main thread (its ``finally`` blocks run, its locks are let go); ``_at_exit``
    finishes the runs as killed, then the process dies of the signal as it would have.

    Not finished here: the handler may interrupt the main thread inside the SDK, holding a lock
    that finishing needs (so no lock is taken here either: ``list()`` of the runs is atomic)."""
    global _terminated_by
    already = _terminated_by is not None
    _terminated_by = signum
    runs = list(_active)
    if not already and runs and not any(r._finished for r in runs):
        raise SystemExit(128 + signum)
    if not runs or already:  # nothing to finish, or asked twice: die now
        _die_of(signum)
    # a run is finishing (bounded by finish_timeout): when it has, _forget ends the rest killed, and the process


def _die_of(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _exit(code: str | int | None = 0) -> NoReturn:
    """``sys.exit`` that remembers the status, so the run ends failed with it (as wandb's hook does).

    Only the main thread's: ``sys.exit`` elsewhere ends just that thread."""
    global _exit_code
    if threading.current_thread() is threading.main_thread():
        _exit_code = exit_status(code)
    _original_exit(code)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    # The traceback is printed first, so that the console capture keeps it with the runs.
    _previous_excepthook(exc_type, exc, tb)
    if issubclass(exc_type, KeyboardInterrupt):
        _finish_together(active_runs(), exit_code=130, state="killed")
    else:
        trace = "".join(traceback.format_exception(exc_type, exc, tb))
        _finish_together(active_runs(), exit_code=1, state="failed", trace=trace)


def _at_exit() -> None:
    if _terminated_by is not None:
        _finish_together(active_runs(), exit_code=128 + _terminated_by, state="killed")
        _die_of(_terminated_by)
    _finish_together(active_runs(), exit_code=_exit_code or 0)
