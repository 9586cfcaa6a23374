"""Sweeps from the user's side (docs/sweeps.md): ``runstream.sweep()`` creates one on the server,
``runstream.agent()`` runs its suggestions, one run at a time, until the sweep or ``count`` says enough.

An agent registers with the sweep, then asks ``next`` for a suggestion (a run id and parameters) and
runs it: ``function()`` in this process, or the sweep's command as a child process. A heartbeat thread
tells the server which run is going and learns which runs to stop (hyperband, a cancelled sweep).
Several agents, on any number of machines, share a sweep: the server decides who runs what. Each
``next`` names the run the agent ran last (``ended``), so that one it never received (a ``next`` tried
again) is handed to it again, and one that never became a run goes back to the sweep. SIGTERM ends the
agent as Ctrl-C does: its run first. Runs that keep failing at once stop the agent (as W&B's).
"""

from __future__ import annotations

import _thread
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runstream.public_api import DEFAULT_ENTITY, Api, ApiError
from runstream.sweep_config import SweepConfig, SweepConfigError, build_command, load, validate

#: Seconds between two heartbeats of an agent (``RUNSTREAM_AGENT_HEARTBEAT_S``).
DEFAULT_HEARTBEAT_S = 5.0
#: Seconds a stopped child has between SIGTERM and SIGKILL (its SDK finishes the run meanwhile).
KILL_AFTER_S = 10.0
#: Answers worth asking again (the server restarting, a proxy in between): status 0 is "unreachable".
_TRANSIENT = (0, 429, 502, 503, 504)
_RETRIES = 5
#: A run that fails (exit code not 0, or ``function()`` raised) within this many seconds of its start
#: failed at once; this many in a row end the agent (``RUNSTREAM_AGENT_MAX_FAST_FAILURES``, 0: never).
#: W&B's agent: 3 failures within 60 s ("flapping").
FAST_FAILURE_S = 60.0
DEFAULT_MAX_FAST_FAILURES = 3

#: Set while the function an agent runs off the main thread has been told to stop (``stop_requested()``).
_stop_flag = threading.Event()


def stop_requested() -> bool:
    """Whether the sweep asked the run of ``agent(function=...)`` to stop. A function on the main thread
    gets a ``KeyboardInterrupt`` instead; one that runs on another thread should poll this and return."""
    return _stop_flag.is_set()


def sweep(
    sweep: Mapping[str, Any] | str | os.PathLike[str],
    entity: str | None = None,
    project: str | None = None,
    prior_runs: list[str] | None = None,
    *,
    name: str | None = None,
) -> str:
    """Create a sweep from ``sweep``, its configuration (a dict, or a YAML/JSON file), and return its path
    ``team/project/id`` (wandb's arguments, in wandb's order).

    The configuration is checked here first: ``SweepConfigError`` lists every problem and nothing is sent.
    The project is ``project``, else the configuration's, else ``RUNSTREAM_PROJECT`` (as for runs)."""
    if prior_runs:
        raise NotImplementedError("runstream.sweep(prior_runs=...) is not supported: a sweep learns from its own runs")
    path = create(sweep, project, entity, name)
    print(f"runstream: created sweep {path}; run agents with: runstream agent {path}", file=sys.stderr)
    return path


def create(
    config: Mapping[str, Any] | str | os.PathLike[str],
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
) -> str:
    """``sweep()`` without its message (the CLI says it its own way)."""
    raw = load(config if isinstance(config, Mapping) else str(config))
    validate(raw)
    team = entity or raw.get("entity") or os.environ.get("RUNSTREAM_ENTITY") or DEFAULT_ENTITY
    project = project or raw.get("project") or os.environ.get("RUNSTREAM_PROJECT") or "uncategorized"
    body: dict[str, Any] = {"config": raw}
    if name:
        body["name"] = name
    route = f"{_project_route(team, project)}/sweeps"
    try:
        created = Api(entity=team, project=project)._request("POST", route, body=body, what=f"project {team}/{project}")
    except ApiError as exc:
        raise _refused(exc) from None
    return f"{team}/{project}/{created['sweep_id']}"


def set_state(sweep_path: str, state: str, project: str | None = None, entity: str | None = None) -> dict[str, Any]:
    """``PATCH`` the sweep's state (``paused``, ``running``, ``stopped``, ``canceled``); the sweep as it is now."""
    team, project, sweep_id = sweep_path_parts(sweep_path, project, entity)
    return Api()._request(
        "PATCH", _sweep_route(team, project, sweep_id), body={"state": state}, what=f"sweep {team}/{project}/{sweep_id}"
    )


def agent(
    sweep_id: str,
    function: Callable[[], Any] | None = None,
    entity: str | None = None,
    project: str | None = None,
    count: int | None = None,
) -> None:
    """Run the sweep's suggestions until it is done (or paused for good, stopped, cancelled) or ``count`` runs ran.

    ``sweep_id`` is ``team/project/id``, ``project/id`` or the bare id (``project``, ``entity`` or their
    environment variables name the rest). With ``function``, each run is ``function()`` in this thread,
    with the sweep's environment set (``runstream.init()`` inside it picks the suggestion up); a run it
    leaves open is finished. Without it, each run is the sweep's ``command`` (by default
    ``python PROGRAM --name=value ...``) as a child process in the current directory, in a process group
    of its own. Ctrl-C ends the run and then the agent (``KeyboardInterrupt``); SIGTERM does too (then
    ``SystemExit(143)``). After ``RUNSTREAM_AGENT_MAX_FAST_FAILURES`` (3) runs in a row that failed within
    ``FAST_FAILURE_S`` (60 s) of their start, the agent says so and returns."""
    if count is not None and count < 1:
        raise ValueError(f"agent(count=...) must be at least 1, got {count}")
    team, project_name, sid = sweep_path_parts(sweep_id, project, entity)
    try:
        _Agent(team, project_name, sid, function).run(count)
    except _Terminated:
        _say("terminated (SIGTERM); its run (if one was going) was ended")
        raise SystemExit(128 + signal.SIGTERM) from None


def sweep_path_parts(path: str, project: str | None = None, entity: str | None = None) -> tuple[str, str, str]:
    """``team/project/id`` (``project/id`` and ``id`` filled from the arguments and environment) as its parts."""
    parts = path.strip().strip("/").split("/")
    if len(parts) > 3 or not all(parts):
        raise ValueError(
            f"expected a sweep path 'team/project/sweep_id' (or 'project/sweep_id', 'sweep_id'), got {path!r}"
        )
    if len(parts) < 3:
        parts.insert(0, project or os.environ.get("RUNSTREAM_PROJECT") or "uncategorized")
    if len(parts) < 3:
        parts.insert(0, entity or os.environ.get("RUNSTREAM_ENTITY") or DEFAULT_ENTITY)
    return parts[0], parts[1], parts[2]


def _project_route(team: str, project: str) -> str:
    return f"/projects/{quote(team, safe='')}/{quote(project, safe='')}"


def _sweep_route(team: str, project: str, sweep_id: str) -> str:
    return f"{_project_route(team, project)}/sweeps/{quote(sweep_id, safe='')}"


def _refused(exc: ApiError) -> Exception:
    """The server's 422 with its ``problems`` as the same ``SweepConfigError`` local validation raises."""
    problems = _problems_of(exc.details)
    return SweepConfigError(problems) if exc.status == 422 and problems else exc


def _problems_of(details: Any) -> list[str]:
    if isinstance(details, Mapping):
        details = details.get("problems")
    return [str(p) for p in details] if isinstance(details, list) else []


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the agent: handled as Ctrl-C is (the run ends first), then the agent exits."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def _max_fast_failures() -> int:
    raw = os.environ.get("RUNSTREAM_AGENT_MAX_FAST_FAILURES", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_FAST_FAILURES
    except ValueError:
        raise ValueError(f"RUNSTREAM_AGENT_MAX_FAST_FAILURES must be a whole number, got {raw!r}") from None


def _heartbeat_interval() -> float:
    raw = os.environ.get("RUNSTREAM_AGENT_HEARTBEAT_S", "")
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_S
    except ValueError:
        raise ValueError(f"RUNSTREAM_AGENT_HEARTBEAT_S must be a number of seconds, got {raw!r}") from None
    return max(value, 0.05)


def _say(message: str) -> None:
    print(f"runstream agent: {message}", file=sys.stderr, flush=True)


class _Agent:
    """One agent: registered with the sweep, running one suggestion at a time, beating while it lives."""

    def __init__(self, team: str, project: str, sweep_id: str, function: Callable[[], Any] | None) -> None:
        self.team, self.project, self.sweep_id = team, project, sweep_id
        self.path = f"{team}/{project}/{sweep_id}"
        self.function = function
        self.api = Api(entity=team, project=project)
        self.route = _sweep_route(team, project, sweep_id)
        self.lock = threading.Lock()
        self.running: str | None = None  # the run going now (from the moment next handed it out)
        self.stop_reason: str | None = None  # why the server told that run to stop
        self.in_function = False  # function() is running on the main thread: a stop interrupts it
        self.interrupting = False  # a stop's interrupt_main() is on its way to the main thread
        self.closed = threading.Event()
        self.param_dir = Path(tempfile.mkdtemp(prefix="runstream-sweep-"))
        self.agent_id = ""

    # -- the server --------------------------------------------------------------------------------

    def _call(self, method: str, suffix: str, body: dict[str, Any] | None = None, tries: int = _RETRIES) -> Any:
        """One request to the sweep; transient failures (the server restarting) are tried again a few times."""
        for attempt in range(tries):
            try:
                return self.api._request(method, self.route + suffix, body=body, what=f"sweep {self.path}")
            except ApiError as exc:
                if exc.status not in _TRANSIENT or attempt == tries - 1:
                    raise
                _say(f"{exc.message}; trying again")
                time.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    def _beat(self, state: str | None = None) -> None:
        with self.lock:
            running = [self.running] if self.running else []
        body: dict[str, Any] = {"running": running}
        if state is not None:
            body["state"] = state
        try:
            answer = self._call("POST", f"/agents/{self.agent_id}/heartbeat", body, tries=1)
        except ApiError as exc:  # the next beat tries again; the server's crash timeout is far longer
            _say(f"heartbeat failed: {exc.message}")
            return
        for stop in answer.get("stop") or ():
            self._stop(str(stop.get("run_id")), str(stop.get("reason") or "stopped by the sweep"))

    def _stop(self, run_id: str, reason: str) -> None:
        """The server told ``run_id`` to stop: the child gets SIGTERM (from the main loop), the function an
        interrupt on the main thread, or the flag ``stop_requested()`` off it."""
        with self.lock:
            if run_id != self.running or self.stop_reason is not None:
                return
            self.stop_reason = reason
            _say(f"stopping run {run_id}: {reason}")
            if self.function is not None:
                _stop_flag.set()
                if self.in_function:
                    self.interrupting = True
                    _thread.interrupt_main()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while ``function()`` runs on the main thread: the sweep's stop (``interrupt_main``)
        interrupts the function only while it runs (one landing after it returned is dropped, not taken
        for Ctrl-C); anything else is Ctrl-C."""
        if self.interrupting:
            self.interrupting = False
            if self.in_function:
                raise KeyboardInterrupt
            return
        raise KeyboardInterrupt

    def _heartbeats(self, interval: float) -> None:
        while not self.closed.wait(interval):
            self._beat()

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, count: int | None) -> None:
        cfg = None if self.function is not None else self._config()
        registered = self._call("POST", "/agents", {"host": socket.gethostname(), "pid": os.getpid()})
        self.agent_id = str(registered["agent_id"])
        _say(f"agent {self.agent_id} of sweep {self.path}")
        main = threading.current_thread() is threading.main_thread()
        saved_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
        beats = threading.Thread(target=self._heartbeats, args=(_heartbeat_interval(),), daemon=True)
        beats.name = "runstream-sweep-heartbeat"
        beats.start()
        ran, fast_failures, max_fast_failures = 0, 0, _max_fast_failures()
        ended: list[str] = []  # the run ran since the last next: the server gives it back if it never began
        try:
            while count is None or ran < count:
                answer = self._call("POST", f"/agents/{self.agent_id}/next", {"ended": ended})
                if answer.get("done"):
                    _say(f"sweep {self.path} has nothing more to run")
                    return
                if answer.get("run_id") is None:  # {wait_s}: the sweep is paused, or waits for running trials
                    time.sleep(float(answer.get("wait_s") or 5))
                    continue
                run_id = str(answer["run_id"])
                flat = answer.get("flat") or answer.get("params") or {}
                params_file = self.param_dir / f"{run_id}.json"
                params_file.write_text(json.dumps(answer.get("params") or {}))
                with self.lock:
                    self.running, self.stop_reason = run_id, None
                _stop_flag.clear()
                _say(f"run {run_id} with {json.dumps(flat)}")
                started = time.monotonic()
                try:
                    env = self._run_env(run_id, params_file)
                    if self.function is not None:
                        failed = self._run_function(env)
                    else:
                        assert cfg is not None  # read above, without function
                        failed = self._run_command(cfg, flat, env, params_file)
                finally:
                    with self.lock:
                        self.running = None
                    params_file.unlink(missing_ok=True)
                ended = [run_id]
                ran += 1
                fast_failures = fast_failures + 1 if failed and time.monotonic() - started < FAST_FAILURE_S else 0
                if max_fast_failures and fast_failures >= max_fast_failures:
                    _say(
                        f"{fast_failures} runs in a row failed within {FAST_FAILURE_S:g} s of their start: "
                        "stopping this agent (see the errors above; RUNSTREAM_AGENT_MAX_FAST_FAILURES=0 turns "
                        "this off)"
                    )
                    return
            _say(f"ran {ran} runs (count)")
        finally:
            self.closed.set()
            beats.join(timeout=5)
            self._beat("finished")  # the sweep's page shows the agent finished, not running until it is gone
            if saved_sigterm is not None:
                signal.signal(signal.SIGTERM, saved_sigterm)
            shutil.rmtree(self.param_dir, ignore_errors=True)

    def _config(self) -> SweepConfig:
        sweep = self._call("GET", "")
        config = sweep.get("config")
        cfg = validate(json.loads(config) if isinstance(config, str) else config)
        # No program (or a file for ${args_json_file}): say so before a claim.
        build_command(cfg, {}, interpreter=sys.executable, args_json_file=str(self.param_dir / "x.json"))
        return cfg

    def _run_env(self, run_id: str, params_file: Path) -> dict[str, str]:
        """The environment contract of a sweep's run (docs/sweeps.md, "The run's side")."""
        env = {
            "RUNSTREAM_SWEEP_ID": self.sweep_id,
            "RUNSTREAM_RUN_ID": run_id,
            "RUNSTREAM_SWEEP_PARAM_PATH": str(params_file),
            "RUNSTREAM_ENTITY": self.team,
            "RUNSTREAM_PROJECT": self.project,
            "RUNSTREAM_URL": self.api.url,
        }
        if self.api.api_key:
            env["RUNSTREAM_API_KEY"] = self.api.api_key
        return env

    def _run_command(
        self, cfg: SweepConfig, flat: Mapping[str, Any], env: Mapping[str, str], params_file: Path
    ) -> bool:
        """The sweep's command as a child process in a process group of its own (a launcher's workers too),
        its output straight through to ours; SIGTERM to the group on a stop (SIGKILL ``KILL_AFTER_S``
        later), and on Ctrl-C or SIGTERM before this agent ends too. Whether it failed (not stopped)."""
        environ = {**os.environ, **env}
        command = build_command(
            cfg, dict(flat), interpreter=sys.executable, args_json_file=str(params_file), environ=environ
        )
        child = subprocess.Popen(  # stdin: a run in a group of its own would stop (SIGTTIN) reading a terminal
            command, env=environ, cwd=os.getcwd(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        terminated_at: float | None = None
        try:
            while True:
                try:
                    code = child.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if terminated_at is None and self.stop_reason is not None:
                    _signal_group(child, signal.SIGTERM)
                    terminated_at = time.monotonic()
                elif terminated_at is not None and time.monotonic() - terminated_at > KILL_AFTER_S:
                    _signal_group(child, signal.SIGKILL)
        except BaseException:  # Ctrl-C, SIGTERM (or anything else): the run does not outlive its agent
            _end(child)
            raise
        if self.stop_reason is None and code != 0:
            _say(f"the run's command exited with {_exit_description(code)}: {' '.join(command)}")
        return self.stop_reason is None and code != 0

    def _run_function(self, env: Mapping[str, str]) -> bool:
        """``function()`` on this thread with the run's environment; the runs it leaves open are finished:
        failed when it raised, killed when the sweep stopped it (the server then marks the run stopped).
        Whether it failed (raised)."""
        from runstream import lifecycle

        assert self.function is not None
        before = set(map(id, lifecycle.active_runs()))
        main = threading.current_thread() is threading.main_thread()
        saved_sigint = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        state, code, trace = None, 0, None
        try:
            with environment(env):
                try:
                    with self.lock:
                        self.in_function = main
                        stopped = self.stop_reason is not None  # told to stop before it began
                    try:
                        if not stopped:
                            self.function()
                    finally:
                        with self.lock:
                            self.in_function = False
                    if stopped:
                        state, code = "killed", 130
                except KeyboardInterrupt as interrupt:
                    if self.stop_reason is None or isinstance(interrupt, _Terminated):
                        _finish_new(before, 130, "killed", None)  # Ctrl-C, SIGTERM: end the run, then the agent
                        raise
                    state, code = "killed", 130
                except Exception:  # noqa: BLE001 - as W&B's agent: the run failed, the sweep goes on
                    trace = traceback.format_exc()
                    print(trace, file=sys.stderr, end="")
                    state, code = "failed", 1
                _finish_new(before, code, state, trace)
        finally:
            if saved_sigint is not None:
                signal.signal(signal.SIGINT, saved_sigint)
            _stop_flag.clear()
        return state == "failed"


def _finish_new(before: set[int], exit_code: int, state: str | None, trace: str | None) -> None:
    """Finish the runs started since ``before`` (the function's own) that are still open."""
    from runstream import lifecycle

    for run in lifecycle.active_runs():
        if id(run) not in before:
            run.finish(exit_code=exit_code, _state=state, _traceback=trace)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as it was again afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    """``signum`` to the child's process group (it leads one of its own): its own children get it too."""
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:  # all of it has ended
        pass


def _end(child: subprocess.Popen) -> None:
    """SIGTERM to the child's group, then SIGKILL after ``KILL_AFTER_S``; Ctrl-C again kills it at once."""
    if child.poll() is not None:
        _signal_group(child, signal.SIGTERM)  # its launcher ended: what it started ends too
        return
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(timeout=KILL_AFTER_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        _signal_group(child, signal.SIGKILL)
        child.wait()


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
