"""Deleting a run or a project, and moving a run to another project: for the team's admins.

Storage does the rows (``storage/deletion.py``: a tombstone first, so queries stop
showing the run at once and its late events are dead-lettered, then every run-keyed
table); this module adds the run's blobs in the file store (``team/project/run_id/``),
the audit entry (also of one that failed half way, with the failure), and the embedded
pipeline's cached run state; in embedded mode the rows are removed holding the pipeline's
lock, so no batch of the run is stored meanwhile. Each answer comes once the rows are gone
(or copied, for a move).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypedDict, TypeVar

import msgspec
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import audit
from runstream.api.auth import PROJECT_ADMIN, Principal
from runstream.api.backend import Backend, backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.filestore import LocalFileStore
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, RUN_PATH, project_path, run_path
from runstream.api.responses import json_response
from runstream.names import NAME_PATTERN, NAME_RULE
from runstream.storage import deletion
from runstream.storage.audit import Action
from runstream.storage.errors import QueryError

log = logging.getLogger("runstream.api")
T = TypeVar("T")


class DeletedRun(TypedDict):
    team: str
    project: str
    run_id: str
    deleted: Literal[True]


class DeletedProject(TypedDict):
    team: str
    project: str
    deleted: Literal[True]
    runs: Annotated[int, Meta(ge=0, description="how many runs it had")]


class MovedRun(TypedDict):
    team: str
    project: Annotated[str, Meta(description="the project the run is in now")]
    run_id: str


class MoveBody(msgspec.Struct, forbid_unknown_fields=True):
    project: Annotated[
        str,
        Meta(
            pattern=NAME_PATTERN,
            description="the project of the same team to move the run to; made if missing, as logging a run there would",
            extra={"error": f"project must be a project name: {NAME_RULE}"},
        ),
    ]


# -- the file store -------------------------------------------------------------------------------


def _folder(backend: Backend, *parts: str) -> Path | None:
    """The file store's folder ``root/parts...`` when it is a plain folder (no link on its way), else None.

    Only the local store is known here; another store keeps its blobs (said in docs/api.md)."""
    files = backend.files
    if not isinstance(files, LocalFileStore):
        return None
    path = files.root
    for part in parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None  # missing, or a link the store would not follow either
    return path


def _remove_files(backend: Backend, *parts: str) -> None:
    folder = _folder(backend, *parts)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_files(backend: Backend, team: str, project: str, run_id: str, target: str) -> None:
    """The run's blobs under the target (hard links: no bytes copied); the source's go with its rows."""
    source = _folder(backend, team, project, run_id)
    if source is None:
        return
    assert isinstance(backend.files, LocalFileStore)  # _folder found one
    destination = backend.files.root / team / target / run_id
    destination.parent.mkdir(parents=True, exist_ok=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, symlinks=True, copy_function=link, dirs_exist_ok=True)


def _forget_states(backend: Backend, keys: list[tuple[str, str, str]]) -> None:
    """The embedded pipeline's cached run states of runs that are gone (it would drop their events anyway),
    and its cached "not deleted" answers for them."""
    pipeline = getattr(backend.sink, "pipeline", None)
    states = getattr(pipeline, "states", None)
    if isinstance(states, dict):
        for key in keys:
            states.pop(key, None)
    cache = getattr(getattr(pipeline, "processor", None), "tombstone_cache", None)
    if isinstance(cache, deletion.TombstoneCache):
        cache.forget(keys)


def _held(backend: Backend, work: Callable[[Client], T]) -> Callable[[Client], T]:
    """``work`` holding the embedded pipeline's lock (a batch at a time): a batch cannot be stored while the
    run's rows are removed, so none of it outlives the deletion. Cluster mode has no such lock: a worker's
    sweep removes what a batch stored then (``deletion.purge_reappeared``)."""
    lock = getattr(getattr(backend.sink, "pipeline", None), "_lock", None)
    if lock is None or not hasattr(lock, "__enter__"):
        return work

    def held(client: Client) -> T:
        with lock:
            return work(client)

    return held


# -- the endpoints --------------------------------------------------------------------------------


@endpoint(
    summary="Delete a run",
    tags=["runs"],
    ok=Answer(DeletedRun, "deleted: its points, logs, files and the artifact versions only it had"),
    access=PROJECT_ADMIN,
    refusals={404: "no such run (or it was moved away), or not visible", 409: "the run is being moved"},
)
async def delete_run(request: Request, principal: Principal) -> Response:
    """Delete a run: its history, summaries, system metrics, console, files, alerts and processor state, and
    the artifact versions it logged that no other run logged or used.

    The run disappears from every query at once; a late event of it (a resend, a replay) is dead-lettered,
    never stored, so the id cannot be written to again in this project. Deleting a deleted run again
    removes what remains of it (a deletion that failed half way is finished so).
    """
    team, project, run_id = run_path(request)
    backend = backend_of(request)
    key = (team, project, run_id)

    def delete(client: Client) -> None:
        deletion.delete_run(client, team, project, run_id)
        _forget_states(backend, [key])

    try:
        await backend.run(_held(backend, delete))
        await backend.run(lambda _client: _remove_files(backend, team, project, run_id))
    except deletion.RunNotFound:
        raise not_found(f"run {team}/{project}/{run_id}") from None
    except deletion.MoveConflict as exc:
        raise ApiError(409, exc.message, code="conflict") from None
    except Exception as exc:
        await _failed(request, principal, team, "run.delete", f"{project}/{run_id}", exc)
        raise
    _forget_states(backend, [key])
    await audit.record(request, principal, team, "run.delete", f"{project}/{run_id}")
    return json_response({"team": team, "project": project, "run_id": run_id, "deleted": True})


async def _failed(
    request: Request, principal: Principal, team: str, action: Action, target: str, exc: Exception, **more: str
) -> None:
    """The audit entry of a deletion or move that failed half way (retrying it finishes it), with the failure."""
    error = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:
        await audit.record(request, principal, team, action, target, {**more, "failed": error})
    except Exception:
        log.exception("recording the failed %s of %s in the audit log failed", action, target)


@endpoint(
    summary="Move a run",
    tags=["runs"],
    ok=Answer(MovedRun, "where the run is now"),
    access=PROJECT_ADMIN,
    body_bytes=4096,
    refusals={
        400: "a bad project name, or the project the run is in",
        404: "no such run, or not visible",
        409: "the run is running (its process writes to where it is) or being moved elsewhere, or the target has "
        "(or had) a run with its id",
    },
)
async def move_run(request: Request, body: MoveBody, principal: Principal) -> Response:
    """Move a finished run to another project of the same team, made if missing (as logging a run there would
    make it): its history, summaries, config, logs, files and processor state go with it.

    The run keeps its id; under its old project it is gone, as if deleted, and a late event sent there is
    dead-lettered. A running run cannot move (``409``): its process keeps writing to the old project. A move
    that failed half way is finished by sending it again.
    """
    team, project, run_id = run_path(request)
    backend = backend_of(request)
    target = body.project

    def move(client: Client) -> None:
        deletion.move_run(
            client,
            team,
            project,
            run_id,
            target,
            copy_files=lambda: _copy_files(backend, team, project, run_id, target),
        )
        _forget_states(backend, [(team, project, run_id)])
        _remove_files(backend, team, project, run_id)

    try:
        await backend.run(_held(backend, move))
    except deletion.RunNotFound:
        raise not_found(f"run {team}/{project}/{run_id}") from None
    except deletion.MoveConflict as exc:
        raise ApiError(409, exc.message, code="conflict") from None
    except QueryError as exc:
        raise ApiError(400, exc.message) from None
    except Exception as exc:
        await _failed(request, principal, team, "run.move", f"{project}/{run_id}", exc, to=target)
        raise
    _forget_states(backend, [(team, project, run_id)])
    await audit.record(request, principal, team, "run.move", f"{project}/{run_id}", {"to": target})
    return json_response({"team": team, "project": target, "run_id": run_id})


@endpoint(
    summary="Delete a project",
    tags=["projects"],
    ok=Answer(DeletedProject, "deleted, with every run, report, alert rule and artifact in it"),
    access=PROJECT_ADMIN,
    refusals={404: "no such project, or not visible"},
)
async def delete_project(request: Request, principal: Principal) -> Response:
    """Delete a project: every run in it (as deleting each), its reports and share links, alert rules,
    artifacts and settings.

    The ids of its runs stay dead (their late events are dead-lettered); new runs can be logged to the
    project's name again, which makes a new, private project.
    """
    team, project = project_path(request)
    backend = backend_of(request)

    def delete(client: Client) -> list[str]:
        ids = deletion.delete_project(client, team, project)
        _forget_states(backend, [(team, project, run_id) for run_id in ids])
        return ids

    try:
        ids = await backend.run(_held(backend, delete))
        await backend.run(lambda _client: _remove_files(backend, team, project))
    except deletion.RunNotFound:
        raise not_found(f"project {team}/{project}") from None
    except Exception as exc:
        await _failed(request, principal, team, "project.delete", project, exc)
        raise
    await audit.record(request, principal, team, "project.delete", project, {"runs": len(ids)})
    return json_response({"team": team, "project": project, "deleted": True, "runs": len(ids)})


routes = [
    Route(RUN_PATH, delete_run, methods=["DELETE"]),
    Route(RUN_PATH + "/move", move_run, methods=["POST"]),
    Route(PROJECT_PATH, delete_project, methods=["DELETE"]),
]
