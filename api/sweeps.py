"""Sweeps (docs/sweeps.md): create, read and steer a sweep; the agents' protocol (register, next, heartbeat).

``next`` hands an agent its next run: it gives back the claims that will not run (see ``_give_back``),
hands the agent again a claim it may not have received (a ``next`` tried again), or asks the controller
(``streams/sweep_controller.py``) for a suggestion and claims it under a fresh run id. A claim is read
back once written: one that finds another live claim of its grid cell, or more live claims than the run
cap, is given back and asks again. Of two claims racing on two API replicas at least one finds the other (each reads after its
own insert), so a grid cell is never run twice; both may give way, and ask again after a short random
pause. Within one process a lock per sweep keeps its agents from racing at all.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import orjson
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream import events, sweep_config
from runstream.api import audit
from runstream.api.auth import PROJECT_INGEST, PROJECT_READ, PROJECT_WRITE, Principal
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import contract_numbers, json_response
from runstream.api.schemas import Time
from runstream.lifecycle import _new_run_id
from runstream.storage import sweeps
from runstream.streams import sweep_controller
from runstream.sweep_config import SweepConfig, SweepConfigError

SWEEPS_PATH = f"{PROJECT_PATH}/sweeps"
SWEEP_PATH = f"{SWEEPS_PATH}/{{sweep}}"
AGENT_PATH = f"{SWEEP_PATH}/agents/{{agent}}"
MAX_CONFIG_BYTES = 1 << 20
MAX_RUNNING = 1000
#: How long an agent waits before asking again: the sweep is paused, or what is left is being run elsewhere.
WAIT_S = 5.0
#: How often ``next`` claims again after losing a grid cell (or the run cap) to another agent's claim.
MAX_CLAIM_TRIES = 8
#: The longest pause (seconds, times the try) before claiming again after a race.
CLAIM_BACKOFF_S = 0.05
CANCELED_REASON = "the sweep was canceled"
#: From which states PATCH may go where (finished and canceled are final).
_MOVES = {
    "running": {"paused", "stopped", "canceled"},
    "paused": {"running", "stopped", "canceled"},
    "stopped": {"running", "canceled"},
    "finished": set(),
    "canceled": set(),
}

# -- what a request sends -----------------------------------------------------------------------


class NewSweep(msgspec.Struct, forbid_unknown_fields=True):
    config: Annotated[
        dict[str, Any],
        Meta(
            description="the sweep configuration (docs/sweeps.md; W&B's keys)",
            extra={"error": "config must be a JSON object: the sweep configuration"},
        ),
    ]
    name: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=256,
                description="default: the configuration's name, else the sweep id",
                extra={"error": "name must be a string of 1 to 256 characters"},
            ),
        ]
        | None
    ) = None


class SweepEdit(msgspec.Struct, forbid_unknown_fields=True):
    state: Annotated[
        Literal["paused", "running", "stopped", "canceled"],
        Meta(description="paused; running (resume); stopped (no new runs); canceled (and its running runs stop)"),
    ]


class SweepsQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[
        int,
        Meta(
            ge=1,
            le=sweeps.MAX_PAGE,
            description=f"how many to answer (at most {sweeps.MAX_PAGE})",
            extra={"error": f"limit must be a whole number from 1 to {sweeps.MAX_PAGE}"},
        ),
    ] = sweeps.DEFAULT_PAGE
    offset: Annotated[
        int, Meta(ge=0, description="how many to skip", extra={"error": "offset must be a whole number from 0"})
    ] = 0


class NewSweepAgent(msgspec.Struct, forbid_unknown_fields=True):
    host: Annotated[str, Meta(max_length=256, extra={"error": "host must be a string of at most 256 characters"})]
    pid: Annotated[int, Meta(ge=0, le=2**32 - 1, extra={"error": "pid must be a whole number from 0 to 2^32 - 1"})]


class AgentHeartbeat(msgspec.Struct, forbid_unknown_fields=True):
    running: Annotated[
        list[Annotated[str, Meta(max_length=64)]],
        Meta(
            max_length=MAX_RUNNING,
            description="the run ids the agent is running (from the moment it was handed them)",
            extra={"error": f"running must be an array of at most {MAX_RUNNING} run ids"},
        ),
    ] = []
    state: (
        Annotated[
            Literal["running", "finished"],
            Meta(
                description="finished: the agent is ending (its last heartbeat); default: as it was",
                extra={"error": "state must be running or finished"},
            ),
        ]
        | None
    ) = None


class NextAsk(msgspec.Struct, forbid_unknown_fields=True):
    ended: Annotated[
        list[Annotated[str, Meta(max_length=64)]],
        Meta(
            max_length=MAX_RUNNING,
            description="the runs the agent was handed and has run to their end (their process or function "
            "returned) since its last next; a claim of the agent not named here, without a run, is handed "
            "out to it again (its next was tried again)",
            extra={"error": f"ended must be an array of at most {MAX_RUNNING} run ids"},
        ),
    ] = []


# -- what it answers -----------------------------------------------------------------------------


class SweepMetric(TypedDict, total=False):
    name: str
    goal: Literal["minimize", "maximize"]
    target: float


class Sweep(TypedDict):
    sweep_id: Annotated[str, Meta(description="8 characters of [a-z0-9]")]
    name: str
    method: Literal["grid", "random", "bayes"]
    state: Literal["running", "paused", "finished", "stopped", "canceled"]
    config: Annotated[dict[str, Any], Meta(description="the configuration as it was sent")]
    metric: SweepMetric | None
    created_by: str
    created_at: Time
    updated_at: Time
    run_count: Annotated[int, Meta(description="how many runs name the sweep")]


class Sweeps(TypedDict):
    sweeps: Annotated[list[Sweep], Meta(description="a page, newest first")]
    total: Annotated[int, Meta(description="how many sweeps the project has")]


class SweepAgent(TypedDict):
    agent_id: str
    host: str
    pid: int
    started_at: Time
    heartbeat_at: Time
    state: Annotated[
        Literal["running", "finished", "gone"],
        Meta(description="finished: told the sweep is done; gone: silent for longer than the crash timeout"),
    ]


class BestRun(TypedDict):
    run_id: str
    name: str
    value: float


class SweepDetail(Sweep):
    agents: list[SweepAgent]
    counts: Annotated[dict[str, int], Meta(description="run state -> how many of its runs are in it")]
    best: Annotated[BestRun | None, Meta(description="the run with the best summary value of the metric")]


class SweepAgentId(TypedDict):
    agent_id: str


class NextRun(TypedDict, total=False):
    run_id: Annotated[str, Meta(description="the run id to start the run as (RUNSTREAM_RUN_ID)")]
    params: Annotated[dict[str, Any], Meta(description="the suggestion, nested (RUNSTREAM_SWEEP_PARAM_PATH)")]
    flat: Annotated[dict[str, Any], Meta(description='the suggestion with dotted names ("optimizer.lr")')]
    command: Annotated[
        list[str],
        Meta(description="the command line with every macro resolved but ${interpreter}: the agent puts its Python"),
    ]
    wait_s: Annotated[float, Meta(description="nothing to run now (paused, or the rest is being run): ask again then")]
    done: Annotated[bool, Meta(description="true: the sweep hands out no more runs; the agent exits")]


class RunToStop(TypedDict):
    run_id: str
    reason: str


class AgentHeartbeatAnswer(TypedDict):
    state: Literal["running", "paused", "finished", "stopped", "canceled"]
    stop: Annotated[list[RunToStop], Meta(description="runs of the agent to stop (SIGTERM), and why")]


# -- helpers ---------------------------------------------------------------------------------------

_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(team: str, project: str, sweep_id: str) -> threading.Lock:
    """This process's lock of a sweep: its agents' ``next`` calls take turns (one small lock per sweep)."""
    with _locks_guard:
        return _locks.setdefault((team, project, sweep_id), threading.Lock())


class _Missing(Exception):
    """What a blocking read found missing: the handler answers 404 for it."""


def _sweep_id(request: Request) -> str:
    sweep_id: str = request.path_params["sweep"]
    if not events.is_sweep_id(sweep_id):
        raise ApiError(400, f"sweep id {sweep_id[:100]!r} is not valid: 8 characters of a-z and 0-9")
    return sweep_id


def _config(sweep: Mapping[str, Any]) -> SweepConfig:
    return sweep_config.validate(sweep["config"])


def _metric(cfg: SweepConfig) -> dict[str, Any] | None:
    if cfg.metric is None:
        return None
    metric: dict[str, Any] = {"name": cfg.metric.name, "goal": cfg.metric.goal}
    if cfg.metric.target is not None:
        metric["target"] = cfg.metric.target
    return metric


def _public(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep as the API answers it (storage's record, less its row version, with its metric)."""
    return {**{k: v for k, v in sweep.items() if k != "version"}, "metric": _metric(_config(sweep))}


def _agent(row: Mapping[str, Any], now_ms: int, timeout_ms: int) -> dict[str, Any]:
    gone = row["state"] == "running" and row["heartbeat_ms"] < now_ms - timeout_ms
    return {
        "agent_id": row["agent_id"],
        "host": row["host"],
        "pid": int(row["pid"]),
        "started_at": row["started_ms"] / 1000,
        "heartbeat_at": row["heartbeat_ms"] / 1000,
        "state": "gone" if gone else row["state"],
    }


def _best(runs: list[sweeps.SweepRun], goal: str) -> dict[str, Any] | None:
    sign = 1 if goal == "minimize" else -1
    scored = [(sign * r.value, r) for r in runs if r.value is not None]
    if not scored:
        return None
    best = min(scored, key=lambda pair: pair[0])[1]
    return {"run_id": best.run_id, "name": best.name, "value": best.value}


def _seed(sweep_id: str, claims_made: int, run_id: str) -> int:
    """The seed of the controller's random draws for a sweep's next claim: from its id, how many claims it
    has made (given back ones too) and the new claim's run id, so each claim draws afresh, and two replicas
    claiming at once draw apart. 32 bits: Optuna's samplers take no more."""
    return int.from_bytes(hashlib.sha256(f"{sweep_id}:{claims_made}:{run_id}".encode()).digest()[:4], "big")


def _timeout_ms(request: Request) -> int:
    """Silent longer than this, an agent is gone (the crash timeout runs are held to)."""
    return int(backend_of(request).settings.crash_timeout * 1000)


def _invalid(problems: list[str]) -> Response:
    """422 for a configuration that is not valid: the API's error, and ``problems`` (also in its details)."""
    message = f"the sweep configuration is not valid ({len(problems)} problems): " + "; ".join(problems)
    error = {"code": "invalid", "message": message[:4000], "details": {"problems": problems}}
    return json_response({"error": error, "problems": problems}, status_code=422)


# -- sweeps ------------------------------------------------------------------------------------


@endpoint(
    summary="Create a sweep",
    tags=["sweeps"],
    ok={201: Answer(Sweep, "the new sweep, running")},
    access=PROJECT_WRITE,
    body_bytes=MAX_CONFIG_BYTES,
    refusals={422: "the configuration is not valid: problems lists every problem found, one line each"},
)
async def create_sweep(request: Request, body: NewSweep, principal: Principal) -> Response:
    """Create a sweep from a configuration (W&B's: ``method``, ``metric``, ``parameters``, ...). It starts
    running: agents (``runstream agent TEAM/PROJECT/SWEEP_ID``) ask it for runs."""
    team, project = project_path(request)
    try:
        orjson.dumps(body.config)  # what storage keeps: JSON text (an integer beyond 64 bits cannot be)
        cfg = sweep_config.validate(body.config)
    except TypeError as exc:
        return _invalid([f"config: cannot be stored as JSON: {exc}"])
    except SweepConfigError as exc:
        return _invalid(list(exc.problems))

    author = principal.user or principal.describe()
    name = body.name or cfg.name or ""
    sweep = await backend_of(request).run(sweeps.create_sweep, team, project, name, body.config, cfg.method, author)
    return json_response(_public(sweep), status_code=201)


@endpoint(
    summary="List sweeps",
    tags=["sweeps"],
    ok=Answer(Sweeps, "a page of the project's sweeps, newest first, and how many it has"),
    access=PROJECT_READ,
)
async def list_sweeps(request: Request, query: SweepsQuery) -> Response:
    """A page of the project's sweeps, newest first."""
    team, project = project_path(request)
    timeout_ms = _timeout_ms(request)

    def read(client: Client) -> tuple[list[dict[str, Any]], int]:
        found, total = sweeps.list_sweeps(client, team, project, query.limit, query.offset)
        return [_finished_if_complete(client, team, project, s, timeout_ms) for s in found], total

    found, total = await backend_of(request).run(read)
    return json_response({"sweeps": [_public(s) for s in found], "total": total})


def _finished_if_complete(
    client: Client, team: str, project: str, sweep: dict[str, Any], timeout_ms: int
) -> dict[str, Any]:
    """``sweep``, finished now if it is a running grid or capped sweep whose agents ran its last runs and left
    (``--count``): it finishes when it is next looked at, as it would at an agent's next ask."""
    if sweep["state"] != "running":
        return sweep
    cfg = _config(sweep)
    if cfg.method != "grid" and cfg.run_cap is None:
        return sweep  # only an agent's ask (the controller) can say it is done
    runs = sweeps.sweep_runs(client, team, project, sweep["sweep_id"], None)
    gone = _idle_agents(client, team, project, sweep["sweep_id"], timeout_ms)[0]
    if not _complete(cfg, sweeps.claims(client, team, project, sweep["sweep_id"]), runs, gone):
        return sweep
    with _lock(team, project, sweep["sweep_id"]):
        current = sweeps.get_sweep(client, team, project, sweep["sweep_id"])
        if current is None or current["state"] != "running":
            return current or sweep
        return sweeps.set_state(client, team, project, current, "finished")


@endpoint(
    summary="Get a sweep",
    tags=["sweeps"],
    ok=Answer(SweepDetail, "the sweep, its agents, how many of its runs are in each state, and its best run"),
    access=PROJECT_READ,
    refusals={400: "a sweep id that cannot exist", 404: "no such sweep, or not visible"},
)
async def get_sweep(request: Request) -> Response:
    """A sweep with its agents, its runs counted by state and its best run (by the metric's goal)."""
    team, project = project_path(request)
    sweep_id = _sweep_id(request)
    timeout_ms = _timeout_ms(request)

    def read(client: Client) -> dict[str, Any] | None:
        sweep = sweeps.get_sweep(client, team, project, sweep_id)
        if sweep is None:
            return None
        sweep = _finished_if_complete(client, team, project, sweep, timeout_ms)
        cfg = _config(sweep)
        runs = sweeps.sweep_runs(client, team, project, sweep_id, cfg.metric.name if cfg.metric else None)
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.state] = counts.get(run.state, 0) + 1
        now = int(time.time() * 1000)
        return {
            **_public(sweep),
            "agents": [_agent(a, now, timeout_ms) for a in sweeps.agents(client, team, project, sweep_id)],
            "counts": counts,
            "best": _best(runs, cfg.metric.goal) if cfg.metric else None,
        }

    found = await backend_of(request).run(read)
    if found is None:
        raise not_found(f"sweep {sweep_id} in {team}/{project}")
    return json_response(contract_numbers(found))


@endpoint(
    summary="Pause, resume, stop or cancel a sweep",
    tags=["sweeps"],
    ok=Answer(Sweep, "the sweep in its new state"),
    access=PROJECT_WRITE,
    body_bytes=4096,
    refusals={
        400: "a sweep id that cannot exist, or a state that is not one of the four",
        404: "no such sweep, or not visible",
        409: "the sweep is finished or canceled (final), or a stopped sweep cannot be paused",
    },
)
async def patch_sweep(request: Request, body: SweepEdit, principal: Principal) -> Response:
    """Set a sweep's state: ``paused`` (agents wait), ``running`` (resume), ``stopped`` (no new runs;
    running ones finish) or ``canceled`` (no new runs; running ones are told to stop at their agent's next
    heartbeat). Setting the state it has changes nothing."""
    team, project = project_path(request)
    sweep_id = _sweep_id(request)

    def change(client: Client) -> tuple[dict[str, Any], str]:
        with _lock(team, project, sweep_id):  # not between a next's read of the state and its claim
            sweep = sweeps.get_sweep(client, team, project, sweep_id)
            if sweep is None:
                raise _Missing
            was = sweep["state"]
            if was == body.state:
                return sweep, was
            if body.state not in _MOVES[was]:
                raise ApiError(409, f"sweep {sweep_id} is {was}; it cannot be set {body.state}", code="conflict")
            sweep = sweeps.set_state(client, team, project, sweep, body.state)
            if body.state == "canceled":
                runs = sweeps.sweep_runs(client, team, project, sweep_id, None)
                running = [r.run_id for r in runs if r.state == "running"]
                sweeps.add_stops(client, team, project, sweep_id, dict.fromkeys(running, CANCELED_REASON))
            return sweep, was

    try:
        sweep, was = await backend_of(request).run(change)
    except _Missing:
        raise not_found(f"sweep {sweep_id} in {team}/{project}") from None
    if was != sweep["state"]:
        details = {"from": was, "to": sweep["state"]}
        await audit.record(request, principal, team, "sweep.state", f"{project}/{sweep_id}", details)
    return json_response(_public(sweep))


# -- agents --------------------------------------------------------------------------------------


@endpoint(
    summary="Register a sweep agent",
    tags=["sweeps"],
    ok={201: Answer(SweepAgentId, "the agent's id, for next and heartbeat")},
    access=PROJECT_INGEST,
    body_bytes=4096,
    refusals={400: "a sweep id that cannot exist, or a bad host or pid", 404: "no such sweep, or not visible"},
)
async def register_agent(request: Request, body: NewSweepAgent) -> Response:
    """An agent (``runstream agent``) says it is there, and from where: its host and process id."""
    team, project = project_path(request)
    sweep_id = _sweep_id(request)

    def register(client: Client) -> dict[str, Any] | None:
        if sweeps.get_sweep(client, team, project, sweep_id) is None:
            return None
        return sweeps.register_agent(client, team, project, sweep_id, body.host, body.pid)

    agent = await backend_of(request).run(register)
    if agent is None:
        raise not_found(f"sweep {sweep_id} in {team}/{project}")
    return json_response({"agent_id": agent["agent_id"]}, status_code=201)


def _find_agent(client: Client, team: str, project: str, sweep_id: str, agent_id: str) -> dict[str, Any]:
    for row in sweeps.agents(client, team, project, sweep_id):
        if row["agent_id"] == agent_id:
            return row
    raise _Missing


def _next(
    client: Client, team: str, project: str, sweep_id: str, agent_id: str, ended: set[str], timeout_ms: int
) -> dict[str, Any]:
    """What ``next`` answers (see the module's doc); _Missing for an unknown sweep or agent."""
    with _lock(team, project, sweep_id):
        sweep = sweeps.get_sweep(client, team, project, sweep_id)
        if sweep is None:
            raise _Missing
        agent = _find_agent(client, team, project, sweep_id, agent_id)
        if sweep["state"] == "paused":
            sweeps.heartbeat(client, team, project, sweep_id, agent, "running")
            return {"wait_s": WAIT_S}
        if sweep["state"] != "running":
            sweeps.heartbeat(client, team, project, sweep_id, agent, "finished")
            return {"done": True}
        agent = sweeps.heartbeat(client, team, project, sweep_id, agent, "running")
        cfg = _config(sweep)
        metric = cfg.metric.name if cfg.metric else None
        for attempt in range(MAX_CLAIM_TRIES):
            everything = sweeps.claims(client, team, project, sweep_id)
            runs = {r.run_id: r for r in sweeps.sweep_runs(client, team, project, sweep_id, metric)}
            live = _give_back(client, team, project, sweep_id, agent_id, ended, everything, runs, timeout_ms)
            again = _unreceived(agent_id, ended, everything, live, runs)
            if again is not None:
                return _handed_out(cfg, again.run_id, again.params)
            params = {c.run_id: c.params for c in everything}
            trials = [
                sweep_controller.Trial(r.run_id, params[r.run_id], r.state, r.value)
                for r in runs.values()
                if r.run_id in params
            ]
            claims = [
                sweep_controller.Claim(c.run_id, c.params, None if c.grid_index < 0 else c.grid_index) for c in live
            ]
            run_id = _new_run_id()
            answer = sweep_controller.suggest(cfg, trials, claims, _seed(sweep_id, len(everything), run_id))
            if isinstance(answer, sweep_controller.Done):
                if all(r.state in sweeps.ENDED for r in runs.values()) and all(c.run_id in runs for c in live):
                    sweeps.set_state(client, team, project, sweep, "finished")
                    sweeps.heartbeat(client, team, project, sweep_id, agent, "finished")
                    return {"done": True}
                return {"wait_s": WAIT_S}  # the last runs are under way: one may be given back
            if isinstance(answer, sweep_controller.Wait):
                return {"wait_s": answer.seconds}
            grid_index = -1 if answer.grid_index is None else answer.grid_index
            claim = sweeps.add_claim(client, team, project, sweep_id, run_id, agent_id, answer.params, grid_index)
            if _won(claim, sweeps.claims(client, team, project, sweep_id), cfg.run_cap):
                return _handed_out(cfg, claim.run_id, answer.params)
            sweeps.release_claims(client, team, project, sweep_id, [claim])  # raced another replica's claim
            time.sleep(random.uniform(0, CLAIM_BACKOFF_S * (attempt + 1)))  # so that two racing claims part ways
        return {"wait_s": WAIT_S}


def _idle_agents(client: Client, team: str, project: str, sweep_id: str, timeout_ms: int) -> tuple[set[str], set[str]]:
    """The sweep's agents gone (silent for longer than the crash timeout) and those that said they ended."""
    cutoff = int(time.time() * 1000) - timeout_ms
    agents = sweeps.agents(client, team, project, sweep_id)
    finished = {a["agent_id"] for a in agents if a["state"] == "finished"}
    return {a["agent_id"] for a in agents if a["heartbeat_ms"] < cutoff} - finished, finished


def _complete(cfg: SweepConfig, everything: list[sweeps.ClaimRow], runs: list[sweeps.SweepRun], gone: set[str]) -> bool:
    """Whether a grid or a capped sweep has nothing left to hand out and every run it handed out ended (what
    the controller's ``Done`` and ``_next`` decide, for the two methods whose end is known without it); a crashed
    run of an agent that is ``gone`` is not an end: ``_give_back`` hands it out again."""
    live = [c for c in everything if not c.released]
    ended = {r.run_id for r in runs if r.state in sweeps.ENDED}
    crashed_gone = {r.run_id for r in runs if r.state == "crashed"} & {c.run_id for c in live if c.agent_id in gone}
    if not live or any(c.run_id not in ended or c.run_id in crashed_gone for c in live):
        return False
    if cfg.run_cap is not None and len(live) >= cfg.run_cap:
        return True
    return cfg.method == "grid" and len({c.grid_index for c in live}) >= sweep_config.grid_size(cfg)


def _unreceived(
    agent_id: str,
    ended: set[str],
    everything: list[sweeps.ClaimRow],
    live: list[sweeps.ClaimRow],
    runs: Mapping[str, sweeps.SweepRun],
) -> sweeps.ClaimRow | None:
    """The agent's newest claim when it may never have reached it: still claimed, without a run, and not among
    the runs the agent says it ran. Its ``next`` is being tried again (the answer was lost on the way: a
    proxy's 502, a timeout), so it gets that claim again rather than leave it orphaned."""
    mine = [c for c in everything if c.agent_id == agent_id]
    if not mine:
        return None
    newest = mine[-1]
    if newest in live and newest.run_id not in runs and newest.run_id not in ended:
        return newest
    return None


def _handed_out(cfg: SweepConfig, run_id: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """The run ``next`` hands out. Its command line has ``${interpreter}`` left as it is (the agent puts its own
    Python there); a configuration whose command needs a program it does not name has none (a ``function=``
    agent needs none)."""
    out = {"run_id": run_id, "params": sweep_config.nest(flat), "flat": dict(flat)}
    try:
        out["command"] = sweep_config.build_command(cfg, flat, interpreter="${interpreter}")
    except ValueError:
        pass
    return out


def _give_back(
    client: Client,
    team: str,
    project: str,
    sweep_id: str,
    caller: str,
    ended: Collection[str],
    everything: list[sweeps.ClaimRow],
    runs: Mapping[str, sweeps.SweepRun],
    timeout_ms: int,
) -> list[sweeps.ClaimRow]:
    """Give back the claims that will not run, so that their grid cells (and their room under the run cap) are
    handed out again; the claims left, not given back. Given back:

    - a claim whose run crashed, of an agent gone (silent for longer than the crash timeout: the machine was
      lost with its run); a crashed run of an agent that goes on, or that ended saying so, counts as ended;
    - a claim without a run, older than the crash timeout (time for a run's first events to be stored), that
      its agent is not running: the agent is gone or finished, has had a later claim since (an agent runs one
      at a time), or (``caller``) says in ``ended`` that it ran it (its program died before ``init()``).

    A claim whose run is running is never given back: if its process is dead, the crash timeout marks the
    run crashed."""
    cutoff = int(time.time() * 1000) - timeout_ms
    gone, finished = _idle_agents(client, team, project, sweep_id, timeout_ms)
    idle = (gone | finished) - {caller}
    newest = {c.agent_id: c.run_id for c in everything}  # oldest first: the last one stays

    def wont_run(claim: sweeps.ClaimRow) -> bool:
        run = runs.get(claim.run_id)
        if run is not None:  # a crash that took its agent along (a lost machine); a run of a live agent is its own
            return run.state == "crashed" and claim.agent_id in gone - {caller}
        if claim.claimed_ms >= cutoff:
            return False
        mine = claim.agent_id == caller and claim.run_id in ended
        return mine or claim.agent_id in idle or newest[claim.agent_id] != claim.run_id

    live = [c for c in everything if not c.released]
    given_back = [c for c in live if wont_run(c)]
    sweeps.release_claims(client, team, project, sweep_id, given_back)
    return [c for c in live if c not in given_back]


def _won(claim: sweeps.ClaimRow, everything: list[sweeps.ClaimRow], run_cap: int | None) -> bool:
    """Whether ``claim`` stands, read back with every claim of the sweep: no other live claim of its grid
    cell, and no more live claims than the run cap. (The earlier claim winning instead would not be exact:
    a claim whose insert lands late may be the earlier one, after the later one already found itself alone.)"""
    live = [c for c in everything if not c.released]
    if claim.grid_index >= 0 and any(c.grid_index == claim.grid_index and c.run_id != claim.run_id for c in live):
        return False
    return run_cap is None or len(live) <= run_cap


@endpoint(
    summary="The next run of a sweep agent",
    tags=["sweeps"],
    ok=Answer(NextRun, "a run to start ({run_id, params, flat, command}), or {wait_s}, or {done: true}"),
    access=PROJECT_INGEST,
    body_bytes=MAX_RUNNING * 80 + 4096,
    empty_body_ok=True,
    refusals={
        400: "a sweep or agent id that cannot exist, or a bad list of ended runs",
        404: "no such sweep or agent, or not visible",
    },
)
async def next_run(request: Request, body: NextAsk) -> Response:
    """The agent's next run: the controller's suggestion, claimed for this agent under a new run id. While
    the sweep is paused (or what is left is being run by other agents) the answer is ``{wait_s}``: ask again
    then; once it is stopped, canceled or finished, ``{done: true}``. The body (optional) names the runs the
    agent ran since its last ``next`` (``ended``): its latest claim, when not named there and without a run,
    is handed to it again (a ``next`` tried again after a lost answer). Claims that will not run (their
    agent gone, finished or past them, older than the crash timeout, without a run or with a crashed one)
    are given back first and handed out again; a claim whose run is running never is."""
    team, project = project_path(request)
    sweep_id, agent_id = _sweep_id(request), request.path_params["agent"]
    timeout_ms = _timeout_ms(request)
    ended = set(body.ended)
    try:
        answer = await backend_of(request).run(_next, team, project, sweep_id, agent_id, ended, timeout_ms)
    except _Missing:
        raise not_found(f"agent {agent_id[:100]} of sweep {sweep_id} in {team}/{project}") from None
    return json_response(contract_numbers(answer))


@endpoint(
    summary="A sweep agent's heartbeat",
    tags=["sweeps"],
    ok=Answer(AgentHeartbeatAnswer, "the sweep's state, and which of the agent's runs to stop"),
    access=PROJECT_INGEST,
    body_bytes=MAX_RUNNING * 80 + 4096,
    refusals={
        400: "a sweep id that cannot exist, or a bad list of runs",
        404: "no such sweep or agent, or not visible",
    },
)
async def heartbeat(request: Request, body: AgentHeartbeat) -> Response:
    """The agent is alive, running these runs (``state: finished``: it is ending). The answer names the ones
    to stop: stopped early by hyperband, or every one when the sweep is canceled. A finished agent stays
    finished. The agent's claims it does not say it runs, older than the crash timeout and without a run,
    are given back (see ``next``)."""
    team, project = project_path(request)
    sweep_id, agent_id = _sweep_id(request), request.path_params["agent"]
    timeout_ms = _timeout_ms(request)

    def beat(client: Client) -> dict[str, Any]:
        sweep = sweeps.get_sweep(client, team, project, sweep_id)
        if sweep is None:
            raise _Missing
        agent = _find_agent(client, team, project, sweep_id, agent_id)
        sweeps.heartbeat(client, team, project, sweep_id, agent, body.state or agent["state"])
        running = set(body.running)
        everything = sweeps.claims(client, team, project, sweep_id)
        cutoff = int(time.time() * 1000) - timeout_ms
        mine = [c for c in everything if c.agent_id == agent_id]  # its older ones: next gives them back
        idle = {c.run_id for c in mine[-1:] if not c.released and c.run_id not in running and c.claimed_ms < cutoff}
        if idle:  # the sweep's runs are read only when there may be a claim to give back
            with _lock(team, project, sweep_id):
                everything = sweeps.claims(client, team, project, sweep_id)
                runs = {r.run_id: r for r in sweeps.sweep_runs(client, team, project, sweep_id, None)}
                _give_back(client, team, project, sweep_id, agent_id, idle, everything, runs, timeout_ms)
        stop = sweeps.stops(client, team, project, sweep_id, running)
        if sweep["state"] == "canceled":  # its runs started after the cancel have no stop yet
            claimed = {c.run_id for c in everything}
            late = dict.fromkeys(sorted((running & claimed) - set(stop)), CANCELED_REASON)
            sweeps.add_stops(client, team, project, sweep_id, late)
            stop |= late
        return {"state": sweep["state"], "stop": [{"run_id": r, "reason": why} for r, why in sorted(stop.items())]}

    try:
        answer = await backend_of(request).run(beat)
    except _Missing:
        raise not_found(f"agent {agent_id[:100]} of sweep {sweep_id} in {team}/{project}") from None
    return json_response(answer)


routes = [
    Route(SWEEPS_PATH, list_sweeps, methods=["GET"]),
    Route(SWEEPS_PATH, create_sweep, methods=["POST"]),
    Route(SWEEP_PATH, get_sweep, methods=["GET"]),
    Route(SWEEP_PATH, patch_sweep, methods=["PATCH"]),
    Route(f"{SWEEP_PATH}/agents", register_agent, methods=["POST"]),
    Route(f"{AGENT_PATH}/next", next_run, methods=["POST"]),
    Route(f"{AGENT_PATH}/heartbeat", heartbeat, methods=["POST"]),
]
