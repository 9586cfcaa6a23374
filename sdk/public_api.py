"""The public read client: ``runstream.Api()``, shaped like wandb's public API.

From a notebook::

    import runstream
    api = runstream.Api()
    runs = api.runs("acme/mnist", filters={"config.lr": {"$gt": 0.01}}, order="+summary.loss")
    df = runs[0].history(keys=["loss"])
    api.export("acme/mnist", "mnist.parquet", filters={"state": "finished"})

Scripts written for ``wandb.Api()`` run unchanged with ``import runstream as wandb``: ``Api``,
``Runs``, ``Run``, ``Project``, ``File`` and the run summary keep wandb's names and behaviour;
what runstream does not have raises ``NotImplementedError`` naming the attribute (``UNSUPPORTED``).

It speaks the server's read endpoints (docs/api.md, "Read") over plain HTTP with
stdlib ``urllib``: the SDK's base install has no HTTP library. The server sends
times as Unix seconds; runs and projects show them as ISO 8601 text, as wandb's
client does.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import importlib
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlparse

import orjson

from runstream.events import NON_FINITE
from runstream.run import Error
from runstream.settings import Settings
from runstream.values import json_safe

API_PREFIX = "/api/v1"
DEFAULT_ENTITY = "default"

# JSON has no NaN or infinities: the server sends the contract's strings instead.
_SPECIAL_FLOATS = NON_FINITE
_MISSING = object()


class ApiError(Error):
    """A request the server refused or could not answer (``status`` 0: the server was unreachable)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


# wandb names runstream does not have, by class: each raises NotImplementedError saying so (and what to
# use instead), so a wandb script stops at the line that needs it rather than at an AttributeError later.
UNSUPPORTED: dict[str, dict[str, str]] = {
    "Api": {
        "create_run": "runs are created by runstream.init()",
        "create_run_queue": "runstream has no launch queues",
        "upsert_run_queue": "runstream has no launch queues",
        "run_queue": "runstream has no launch queues",
        "queued_run": "runstream has no launch queues",
        "create_custom_chart": "charts are the web UI's panels",
        "create_user": "members are added with PUT /api/v1/teams/{team}/members/{user}",
        "create_team": "teams are created with `runstream keys create`",
        "team": "teams are listed at GET /api/v1/teams",
        "user": "runstream has no user directory; members are at GET /api/v1/teams/{team}/members",
        "users": "runstream has no user directory; members are at GET /api/v1/teams/{team}/members",
        "organization": "runstream has no organizations",
        "sync_tensorboard": "log the metrics through runstream.init()",
        "reports": "reports are at GET /api/v1/projects/{team}/{project}/reports",
        "artifact_types": "use Api.artifact_collections(project, type_name)",
        "artifact_type": "use Api.artifact_collections(project, type_name)",
        "artifact_collection": "use Api.artifact_versions(type_name, name)",
        "artifact_collection_exists": "use Api.artifact_versions(type_name, name)",
        "job": "runstream has no launch jobs",
        "list_jobs": "runstream has no launch jobs",
        "registries": "runstream has no registries",
        "registry": "runstream has no registries",
        "create_registry": "runstream has no registries",
        "integrations": "alert rules post to webhooks: /api/v1/projects/{team}/{project}/alert-rules",
        "webhook_integrations": "alert rules post to webhooks: /api/v1/projects/{team}/{project}/alert-rules",
        "slack_integrations": "alert rules post to webhooks: /api/v1/projects/{team}/{project}/alert-rules",
        "automation": "alert rules are at /api/v1/projects/{team}/{project}/alert-rules",
        "automations": "alert rules are at /api/v1/projects/{team}/{project}/alert-rules",
        "create_automation": "alert rules are at /api/v1/projects/{team}/{project}/alert-rules",
        "update_automation": "alert rules are at /api/v1/projects/{team}/{project}/alert-rules",
        "delete_automation": "alert rules are at /api/v1/projects/{team}/{project}/alert-rules",
    },
    "Run": {
        "create": "runs are created by runstream.init()",
        "update_state": "a run's state follows its process (finished, failed, killed, crashed)",
        "stop": "runstream cannot stop a run from outside its process",
        "upload_file": "save files from the run with run.save()",
        "use_artifact": "declare inputs from the run itself: runstream.init(...).use_artifact()",
        "log_artifact": "log artifacts from the run itself: runstream.init(...).log_artifact()",
        "download_history_exports": "use run.export(path) (Parquet, Arrow or CSV)",
        "history_line_count": "use run.lastHistoryStep",
        "project_internal_id": "runstream names projects by team and name only",
        "server_provides_internal_id_field": "runstream names projects by team and name only",
    },
    "Project": {
        "id": "runstream names a project by its path (team, name)",
        "owner": "runstream projects belong to a team, not a user",
        "user": "runstream projects belong to a team, not a user",
        "artifacts_types": "use Api.artifact_collections(project, type_name)",
        "collections": "use Api.artifact_collections(project, type_name)",
        "entity_name": "use Project.entity",
        "is_benchmark": "runstream has no benchmarks",
    },
    "File": {
        "delete": "files stay with their run",
        "path_uri": "files download through the server: File.url",
    },
}


class Unsupported(NotImplementedError, AttributeError):
    """A wandb name runstream does not have. Also an AttributeError, so ``hasattr`` and ``getattr(obj, name,
    default)`` answer as for any missing attribute."""


def _unsupported(cls: str, name: str) -> Unsupported:
    return Unsupported(
        f"runstream.Api: {cls}.{name} is not supported; {UNSUPPORTED[cls][name]} (see docs/sdk.md, 'The public API')"
    )


def _missing(obj: object, cls: str, name: str) -> Exception:
    """What ``__getattr__`` raises for ``name``: the named refusal of a wandb name runstream lacks, else AttributeError."""
    if name in UNSUPPORTED[cls]:
        return _unsupported(cls, name)
    return AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")


def _artifacts_module() -> Any:
    """runstream.artifacts, imported when first asked for (it is optional here: the public API works without it)."""
    try:
        return importlib.import_module("runstream.artifacts")
    except ImportError as exc:
        raise NotImplementedError(
            f"runstream.Api: artifacts need runstream.artifacts, which this installation lacks ({exc})"
        ) from None


class User(str):
    """The user who made a run: the name as text (``run.user == "alice"``), with wandb's User fields."""

    @property
    def name(self) -> str:
        return str(self)

    @property
    def username(self) -> str:
        return str(self)

    @property
    def email(self) -> None:
        return None  # runstream keeps no e-mail addresses


class Project:
    """A project of a team (wandb's ``entity``)."""

    def __init__(
        self,
        entity: str,
        name: str,
        visibility: str = "private",
        run_count: int = 0,
        created_at: str | None = None,
        description: str | None = None,
        api: Api | None = None,
    ) -> None:
        self.entity = entity
        self.name = name
        self.visibility = visibility
        self.run_count = run_count
        self.created_at = created_at
        self.description = description
        self._api = api

    @classmethod
    def _from(cls, api: Api, p: dict[str, Any]) -> Project:
        return cls(
            p["team"],
            p["name"],
            p.get("visibility", "private"),
            p.get("run_count", 0),
            _iso(p.get("created_at")),
            p.get("description"),
            api,
        )

    @property
    def path(self) -> list[str]:
        return [self.entity, self.name]

    @property
    def url(self) -> str:
        """The project's workspace in the web UI."""
        return f"{self._client().url}/projects/{_quoted(self.entity, self.name)}"

    def runs(self, filters: dict[str, Any] | None = None, order: str = "+created_at", per_page: int = 50) -> Runs:
        """The project's runs (``Api.runs`` of this project)."""
        return self._client().runs(f"{self.entity}/{self.name}", filters=filters, order=order, per_page=per_page)

    def sweeps(self, per_page: int = 50) -> list[Sweep]:
        """The project's sweeps, newest first."""
        api, found, offset = self._client(), [], 0
        while True:
            body = api._request(
                "GET",
                f"/projects/{_quoted(self.entity, self.name)}/sweeps",
                params={"limit": per_page, "offset": offset},
            )
            found += [Sweep(api, self.entity, self.name, attrs) for attrs in body["sweeps"]]
            offset += len(body["sweeps"])
            if not body["sweeps"] or offset >= body["total"]:
                return found

    def delete(self) -> None:
        """Delete the project and its runs (team admins)."""
        self._client()._request("DELETE", f"/projects/{_quoted(self.entity, self.name)}", what=self._what())

    def to_html(self, height: int = 420, hidden: bool = False) -> str:
        return _iframe(self.url, height, hidden)

    def _repr_html_(self) -> str:
        return self.to_html()

    def display(self, height: int = 420, hidden: bool = False) -> bool:
        """Show the project's workspace in a Jupyter notebook; False outside one."""
        return _display(self.to_html(height, hidden))

    def _client(self) -> Api:
        if self._api is None:
            raise ValueError(f"{self!r} was made without an Api: get it from Api.project() or Api.projects()")
        return self._api

    def _what(self) -> str:
        return f"project {self.entity}/{self.name}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Project):
            return NotImplemented
        return (self.entity, self.name, self.visibility, self.run_count, self.created_at) == (
            other.entity,
            other.name,
            other.visibility,
            other.run_count,
            other.created_at,
        )

    def __hash__(self) -> int:
        return hash((self.entity, self.name))

    def __repr__(self) -> str:
        return f"<Project {self.entity}/{self.name}>"

    def __getattr__(self, name: str) -> Any:
        raise _missing(self, "Project", name)


class Projects(list[Project]):
    """The projects ``Api.projects()`` found: a list, with wandb's ``Projects`` fields."""

    def __init__(self, entity: str | None, projects: Iterable[Project]) -> None:
        super().__init__(projects)
        self.entity = entity

    @property
    def length(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"<Projects {self.entity or '(all teams)'}>"


class Api:
    """Client of a runstream server, shaped like ``wandb.Api()``.

    ``url`` and ``api_key`` default to RUNSTREAM_URL and RUNSTREAM_API_KEY, ``entity`` (the team of a
    path that names none) to RUNSTREAM_ENTITY or ``default``. wandb's ``Api(overrides={...})`` works too
    (``base_url``, ``entity``, ``project``), as its first argument or by name.
    """

    def __init__(
        self,
        url: str | Mapping[str, Any] | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        entity: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        project: str | None = None,
    ) -> None:
        if isinstance(url, Mapping):  # wandb.Api({"entity": ...}): wandb's first argument is its overrides
            overrides, url = url, None
        overrides = dict(overrides or {})
        url = url or overrides.get("base_url")
        if url is None or api_key is None:
            settings = Settings.from_env()
            url = settings.url if url is None else url
            api_key = settings.key_for(url) if api_key is None else api_key
        if urlparse(url).scheme not in ("http", "https"):
            raise Error(
                f"runstream.Api reads through the HTTP server, but the URL is {url!r}: "
                "set RUNSTREAM_URL (or Api(url=...)) to the server's http(s):// address"
            )
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout: float = 30 if timeout is None else timeout
        self.entity = entity or overrides.get("entity") or os.environ.get("RUNSTREAM_ENTITY") or DEFAULT_ENTITY
        # Not ``self.project``: that is wandb's method.
        self.default_project: str = (
            project or overrides.get("project") or os.environ.get("RUNSTREAM_PROJECT") or "uncategorized"
        )

    # -- wandb's Api fields ----------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """wandb's settings dict: where this Api reads from and its defaults."""
        return {"base_url": self.url, "entity": self.entity, "project": self.default_project}

    @property
    def default_entity(self) -> str:
        return self.entity

    @property
    def client(self) -> Api:
        return self

    @property
    def user_agent(self) -> str:
        return "runstream public API"

    @property
    def viewer(self) -> User:
        """Who this Api's key belongs to (``GET /whoami``)."""
        me = self._request("GET", "/whoami", what="whoami")
        return User(me.get("user") or "")

    def flush(self) -> None:
        """Nothing to flush: runstream's Api keeps no cache, each call reads the server."""

    # -- projects --------------------------------------------------------------------------------------

    def projects(self, entity: str | None = None, per_page: int = 200) -> Projects:
        """The projects visible with this key; all teams when ``entity`` is None."""
        params = {"team": entity} if entity else None
        body = self._request("GET", "/projects", params=params, what="projects")
        return Projects(entity, (Project._from(self, p) for p in body["projects"]))

    def project(self, name: str, entity: str | None = None) -> Project:
        """The project ``name`` of team ``entity`` (this Api's entity when None); ``name`` may be ``team/name``."""
        if entity is None and "/" in name:
            entity, name = name.split("/", 1)
        team = entity or self.entity
        body = self._request("GET", f"/projects/{_quoted(team, name)}", what=f"project {team}/{name}")
        return Project._from(self, body)

    def create_project(self, name: str, entity: str | None = None, visibility: str | None = None) -> Project:
        """Create the project (wandb's returns nothing; this returns it). An existing one is an ApiError 409."""
        team = entity or self.entity
        body: dict[str, Any] = {"name": name}
        if visibility is not None:
            body["visibility"] = visibility
        created = self._request("POST", f"/projects/{quote(team, safe='')}", body=body, what=f"team {team}")
        return Project._from(self, created)

    # -- runs ------------------------------------------------------------------------------------------

    def runs(
        self,
        path: str | None = None,
        filters: dict[str, Any] | None = None,
        order: str = "+created_at",
        per_page: int = 50,
        include_sweeps: bool = False,
        lazy: bool = True,
    ) -> Runs:
        """Runs of the project ``"team/project"`` (or ``"project"`` in this Api's entity; None: this Api's
        project), fetched lazily, oldest first by default (wandb's order). ``include_sweeps`` and ``lazy``
        are wandb's and change nothing here: every run comes whole."""
        team, project = self._project_path(path)
        return Runs(self, team, project, filters, order or "+created_at", per_page)

    def run(self, path: str = "") -> Run:
        """The run ``"team/project/run_id"`` (also ``"team/project/runs/run_id"``, ``"project/run_id"``,
        ``"project:run_id"``, or ``"run_id"`` in this Api's project)."""
        expected = "'team/project/run_id' or 'team/project/runs/run_id'"
        parts = _split_path(path, expected)
        if len(parts) == 4 and parts[2] == "runs":
            del parts[2]
        elif len(parts) == 2 and ":" in parts[1]:  # "team/project:run_id"
            parts = [parts[0], *parts[1].split(":", 1)]
        elif len(parts) == 2:
            parts.insert(0, self.entity)
        elif len(parts) == 1:
            parts = (
                [self.entity, *parts[0].split(":", 1)]
                if ":" in parts[0]
                else [self.entity, self.default_project, parts[0]]
            )
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"expected a run path {expected}, got {path!r}")
        return Run(self, self._get_run(*parts))

    def from_path(self, path: str) -> Project | Run:
        """A project (``"project"``, ``"team/project"``) or a run (``"team/project/run_id"``, ``".../runs/id"``)."""
        parts = path.strip("/ ").split("/")
        if len(parts) == 1:
            return self.project(parts[0])
        if len(parts) == 2:
            return self.project(parts[1], parts[0])
        if len(parts) == 3 or (len(parts) == 4 and parts[2].startswith("run")):
            return self.run("/".join(parts[:2] + parts[-1:]))
        raise ValueError(f"expected a project or run path (team/project, team/project/runs/run_id), got {path!r}")

    # -- sweeps (docs/sweeps.md) -----------------------------------------------------------------------

    def sweep(self, path: str) -> Sweep:
        """The sweep ``"team/project/sweep_id"`` (or ``"project/sweep_id"``, ``"sweep_id"`` in this Api's project)."""
        parts = _split_path(path, "'team/project/sweep_id'")
        if len(parts) == 4 and parts[2] == "sweeps":  # a sweep page's path
            del parts[2]
        parts = [self.entity, self.default_project][: 3 - len(parts)] + parts if len(parts) < 3 else parts
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"expected a sweep path 'team/project/sweep_id', got {path!r}")
        team, project, sweep_id = parts
        attrs = self._request(
            "GET", f"/projects/{_quoted(team, project)}/sweeps/{quote(sweep_id, safe='')}", what=f"sweep {path}"
        )
        return Sweep(self, team, project, attrs)

    # -- artifacts (runstream.artifacts) ---------------------------------------------------------------

    def artifact(self, name: str, type: str | None = None) -> Any:
        """The artifact ``"team/project/name:version"`` (or ``"name:alias"`` in this Api's project)."""
        return _artifacts_module().fetch_artifact(self, self._artifact_path(name), type)

    def artifact_versions(self, type_name: str, name: str, per_page: int = 50) -> Any:
        """The versions of the artifact collection ``name`` (``"team/project/name"`` or ``"name"``)."""
        return _artifacts_module().artifact_versions(self, self._artifact_path(name))

    def artifacts(self, type_name: str, name: str, per_page: int = 50, tags: Any = None) -> Any:
        """The versions of the artifact collection ``name`` (wandb's newer name for ``artifact_versions``)."""
        return _artifacts_module().artifact_versions(self, self._artifact_path(name))

    def artifact_collections(self, project_name: str, type_name: str, per_page: int = 50) -> Any:
        """The artifact collections of type ``type_name`` in the project (``"team/project"`` or ``"project"``)."""
        team, project = self._project_path(project_name)
        return _artifacts_module().artifact_collections(self, f"{team}/{project}", type_name)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        """Whether the artifact ``name`` exists (and is visible with this key)."""
        try:
            self.artifact(name, type)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def __getattr__(self, name: str) -> Any:
        raise _missing(self, "Api", name)

    def _project_path(self, path: str | None) -> tuple[str, str]:
        if path is None:
            return self.entity, self.default_project
        parts = _split_path(path, "'team/project' or 'project'")
        if len(parts) == 1:
            parts.insert(0, self.entity)
        if len(parts) != 2:
            raise ValueError(f"expected a project path 'team/project' or 'project', got {path!r}")
        return parts[0], parts[1]

    def _artifact_path(self, name: str) -> str:
        """``"team/project/name"``, this Api's team and project filling what ``name`` leaves out."""
        parts = name.strip("/").split("/")
        if len(parts) == 1:
            parts = [self.entity, self.default_project, *parts]
        elif len(parts) == 2:
            parts.insert(0, self.entity)
        return "/".join(parts)

    def export(
        self,
        path: str,
        file: str | os.PathLike[str],
        runs: list[str | Run] | None = None,
        filters: dict[str, Any] | None = None,
        metrics: list[str] | None = None,
        format: str = "parquet",
        progress: bool = True,
        table: str = "history",
    ) -> Path:
        """Download the metric history of a project's runs to ``file``: Parquet, Arrow IPC stream or CSV.

        One row per logged value (run_id, metric, step, time, value). Runs are ``runs``
        (ids or Run objects) or those matching ``filters`` (all runs when neither is
        given); ``metrics`` limits the metrics. ``table="runs"`` exports the runs'
        metadata instead (config, summary, tags, ...). The file appears only once
        complete; ``progress`` shows a bar of the bytes received.
        """
        parts = _split_path(path, "'team/project' or 'project'")
        if len(parts) == 1:
            parts.insert(0, self.entity)
        if len(parts) != 2:
            raise ValueError(f"expected a project path 'team/project' or 'project', got {path!r}")
        if runs is not None and filters is not None:
            raise ValueError("pass runs or filters, not both")
        params = {
            "format": format,
            "table": table,
            "run_ids": None if runs is None else ",".join(r.id if isinstance(r, Run) else r for r in runs),
            "filters": None if filters is None else orjson.dumps(filters).decode(),
            "metrics": None if metrics is None else ",".join(metrics),
        }
        team, project = parts
        route = f"/projects/{quote(team, safe='')}/{quote(project, safe='')}/export"
        return self._download(route, params, file, progress, f"project {team}/{project}")

    def _get_run(self, team: str, project: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", _run_path(team, project, run_id), what=f"run {team}/{project}/{run_id}")

    def _open(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        what: str = "",
    ) -> http.client.HTTPResponse:
        """Send one request and return the open response; ``what`` names the thing asked for in a 404's message."""
        url = self.url + API_PREFIX + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urlencode(query)
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, what) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> ApiError:
        reason = getattr(exc, "reason", exc)
        return ApiError(
            0,
            "unreachable",
            f"cannot reach the runstream server at {self.url} ({reason}): "
            "start it (`runstream api`) or set RUNSTREAM_URL to its address",
        )

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        what: str = "",
    ) -> Any:
        """One JSON request; ``what`` names the thing asked for in a 404's message."""
        url = self.url + API_PREFIX + path
        try:
            with self._open(method, path, params, body, what) as response:
                raw = response.read()
        except (http.client.HTTPException, OSError) as exc:  # the connection broke mid-answer
            raise self._unreachable(exc) from exc
        if not raw and method == "DELETE":
            return None  # 204 No Content
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Something else answers at this address (a web UI's index page, say).
            raise ApiError(
                200, "bad_response", f"{url} did not answer with JSON: is RUNSTREAM_URL the runstream server's address?"
            ) from None

    def _download(
        self, path: str, params: dict[str, Any], file: str | os.PathLike[str], progress: bool, what: str
    ) -> Path:
        """Stream a GET's body into ``file`` through a temporary file beside it, renamed once complete."""
        from tqdm.auto import tqdm

        target = Path(file)
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, self._open("GET", path, params, what=what) as response:
                length = response.headers.get("Content-Length")
                with tqdm(
                    total=int(length) if length else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=target.name,
                    disable=not progress,
                ) as bar:
                    try:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
                    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                        raise ApiError(
                            0,
                            "incomplete",
                            f"the download of {what} stopped before its end "
                            f"({type(exc).__name__}); {target} was not written: retry",
                        ) from exc
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return target


class Sweep:
    """A sweep (wandb's ``Api().sweep(path)``): its configuration, state, runs and best run, as read."""

    def __init__(self, api: Api, entity: str, project: str, attrs: dict[str, Any]) -> None:
        self._api = api
        self._attrs = attrs
        self.entity = entity
        self.project = project
        self.id: str = attrs["sweep_id"]
        self.name: str = attrs.get("name") or self.id
        self.config: dict[str, Any] = attrs.get("config") or {}
        self.state: str = attrs.get("state", "")
        self.method: str = attrs.get("method", "")

    @property
    def path(self) -> list[str]:
        return [self.entity, self.project, self.id]

    @property
    def url(self) -> str:
        return f"{self._api.url}/projects/{_quoted(self.entity, self.project)}/sweeps/{quote(self.id, safe='')}"

    @property
    def runs(self) -> Runs:
        """The sweep's runs, oldest first."""
        return self._api.runs(f"{self.entity}/{self.project}", filters={"sweep": self.id})

    @property
    def expected_run_count(self) -> int | None:
        """``run_cap`` when the configuration sets one (a grid's size is not counted here)."""
        cap = self.config.get("run_cap")
        return cap if isinstance(cap, int) else None

    def best_run(self, order: str | None = None) -> Run | None:
        """The run with the best value of the sweep's metric (by its goal), or ``order`` (``"-summary.acc"``)."""
        if order is None:
            best = self._attrs.get("best")
            return None if not best else self._api.run(f"{self.entity}/{self.project}/{best['run_id']}")
        for run in self._api.runs(f"{self.entity}/{self.project}", filters={"sweep": self.id}, order=order, per_page=1):
            return run
        return None

    def __repr__(self) -> str:
        return f"<Sweep {self.entity}/{self.project}/{self.id} ({self.state})>"


class Runs:
    """A project's runs matching ``filters``, in ``order``; pages are fetched as iteration or indexing needs them.

    ``len(runs)`` asks the server for the count (``runs/count``) until every page is fetched.
    """

    def __init__(
        self, api: Api, entity: str, project: str, filters: dict[str, Any] | None, order: str, per_page: int
    ) -> None:
        self._api = api
        self.entity = entity
        self.project = project
        self.filters = filters or {}
        self.order = order
        self.per_page = per_page
        self._runs: list[Run] = []
        self._cursor: str | None = None
        self._done = False
        self._count: int | None = None
        self.index = -1  # wandb's: where next(runs) is

    def __iter__(self) -> Iterator[Run]:
        # By index over the cache, so several iterations (and indexing) share the fetched pages.
        i = 0
        while self._fetch_until(i + 1):
            yield self._runs[i]
            i += 1

    def __next__(self) -> Run:
        """wandb's Runs is its own iterator: ``next(runs)`` walks it once."""
        if not self._fetch_until(self.index + 2):
            raise StopIteration
        self.index += 1
        return self._runs[self.index]

    next = __next__

    def __len__(self) -> int:
        if self._done:
            return len(self._runs)
        if self._count is None:
            params = {"filters": orjson.dumps(self.filters).decode()}
            body = self._api._request("GET", self._path() + "/count", params=params, what=self._what())
            self._count = int(body["count"])
        return self._count

    @property
    def length(self) -> int:
        return len(self)

    @property
    def objects(self) -> list[Run]:
        """The runs fetched so far (wandb's)."""
        return self._runs

    @property
    def more(self) -> bool:
        """Whether pages remain to fetch (wandb's)."""
        return not self._done

    @property
    def cursor(self) -> str | None:
        return self._cursor

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            bounds = (index.start, index.stop)
            if index.stop is None or any(b is not None and b < 0 for b in bounds):
                self._fetch_until(None)
            else:
                self._fetch_until(max(b for b in bounds if b is not None))
            return self._runs[index]
        self._fetch_until(None if index < 0 else index + 1)
        return self._runs[index]

    def __repr__(self) -> str:
        return f"<Runs {self.entity}/{self.project}>"

    def histories(
        self,
        samples: int = 500,
        keys: list[str] | None = None,
        x_axis: str = "_step",
        format: str = "default",
        stream: str = "default",
    ) -> Any:
        """Sampled history of every run, each row with its ``run_id``: a list of dicts (``"default"``), or one
        ``"pandas"`` or ``"polars"`` DataFrame with the columns sorted (as wandb's)."""
        if format not in ("default", "pandas", "polars"):
            raise ValueError(f"Invalid format: {format}. Must be one of 'default', 'pandas', 'polars'")
        rows: list[dict[str, Any]] = []
        for run in self:
            for row in run.history(samples=samples, keys=keys, x_axis=x_axis, pandas=False, stream=stream):
                rows.append({**row, "run_id": run.id})
        if format == "default":
            return rows
        if format == "pandas":
            import pandas as pd

            frame = pd.DataFrame.from_records(rows)
            return frame[sorted(frame.columns)] if len(frame.columns) else frame
        pl = importlib.import_module("polars")  # optional, as in wandb
        pframe = pl.from_records(rows) if rows else pl.DataFrame()
        return pframe.select(sorted(pframe.columns))

    def upgrade_to_full(self) -> None:
        """wandb's: runs come whole here, so nothing to do."""

    def _path(self) -> str:
        return f"/projects/{_quoted(self.entity, self.project)}/runs"

    def _what(self) -> str:
        return f"project {self.entity}/{self.project}"

    def _fetch_until(self, count: int | None) -> bool:
        """Fetch pages until ``count`` runs are cached (all when None); whether that many exist."""
        while not self._done and (count is None or len(self._runs) < count):
            self._fetch_page()
        return count is None or len(self._runs) >= count

    def _fetch_page(self) -> None:
        params = {
            "filters": orjson.dumps(self.filters).decode(),
            "order": self.order,
            "limit": max(1, min(self.per_page, 1000)),  # the server's page bounds; wandb takes any per_page
            "cursor": self._cursor,
        }
        body = self._api._request("GET", self._path(), params=params, what=self._what())
        self._runs.extend(Run(self._api, attrs) for attrs in body["runs"])
        self._cursor = body.get("next_cursor")
        self._done = self._cursor is None


class Summary(MutableMapping[str, Any]):
    """A run's summary, as wandb's ``run.summary``: a dict-like whose edits ``run.update()`` (or this
    object's ``update()``) saves.

    Values are what the server holds: nested dicts as dicts, non-finite numbers as the contract's
    ``"NaN"``/``"Infinity"`` strings. ``_json_dict`` is that dict, as in wandb. A changed top-level key
    becomes an explicit value on the server, which wins over the one computed from metrics.
    """

    def __init__(self, run: Run, values: dict[str, Any]) -> None:
        self._run = run
        self._json_dict = values

    def __getitem__(self, key: str) -> Any:
        return self._json_dict[key.strip() if isinstance(key, str) else key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._json_dict[key.strip()] = value

    def __delitem__(self, key: str) -> None:
        del self._json_dict[key.strip()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json_dict)

    def __len__(self) -> int:
        return len(self._json_dict)

    def __contains__(self, key: object) -> bool:
        return (key.strip() if isinstance(key, str) else key) in self._json_dict

    def __getattr__(self, key: str) -> Any:  # wandb's summary.loss
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._json_dict[key]
        except KeyError:
            raise AttributeError(f"the summary has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            self[key] = value

    def keys(self) -> Any:
        return self._json_dict.keys()

    def update(self, key_vals: Mapping[str, Any] | None = None, overwrite: bool = True) -> None:  # type: ignore[override]
        """Set ``key_vals`` (wandb's ``overwrite=False`` skips keys that are set) and save the summary's edits now."""
        for key, value in (key_vals or {}).items():
            if overwrite or key.strip() not in self._json_dict:
                self[key] = value
        self._run._save(("summary",))

    def load(self) -> None:
        """wandb's: nothing to load, the summary came with the run."""

    def __repr__(self) -> str:
        return repr(self._json_dict)


class Run:
    """One run: its metadata, ``config`` and ``summary`` (edit them, then ``update()``), ``history()`` and
    ``scan_history()`` for its metrics, ``files()`` for its files."""

    def __init__(self, api: Api, attrs: dict[str, Any]) -> None:
        self._api = api
        self._summary: Summary | None = None
        self._set(attrs)

    def _set(self, attrs: dict[str, Any]) -> None:
        self._attrs = attrs
        self.entity: str = attrs["team"]
        self.project: str = attrs["project"]
        self.id: str = attrs["id"]
        self.name: str | None = attrs.get("name")
        self.state: str | None = attrs.get("state")
        self.config: dict[str, Any] = attrs.get("config") or {}
        # In place, so a summary object the caller holds sees the server's values.
        if self._summary is None:
            self._summary = Summary(self, attrs.get("summary") or {})
        else:
            self._summary._json_dict = attrs.get("summary") or {}
        self.tags: list[str] = list(attrs.get("tags") or [])
        self.group: str | None = attrs.get("group")
        self.job_type: str | None = attrs.get("job_type")
        self.notes: str | None = attrs.get("notes")
        self.created_at: str | None = _iso(attrs.get("created_at"))
        self.updated_at: str | None = _iso(attrs.get("updated_at"))
        self.heartbeat_at: str | None = _iso(attrs.get("heartbeat_at"))
        self.finished_at: str | None = _iso(attrs.get("finished_at"))
        self.exit_code: int | None = attrs.get("exit_code")
        self.user: User | None = None if attrs.get("user") is None else User(attrs["user"])
        self.host: str | None = attrs.get("host")
        self.git: dict[str, Any] = attrs.get("git") or {}
        self.error: str | None = attrs.get("error")  # a failed run's traceback
        self.metric_definitions: list[dict[str, Any]] = list(attrs.get("metrics") or [])
        # What update() compares edits with, so it sends only what changed.
        self._loaded: dict[str, Any] = {
            "name": self.name,
            "tags": list(self.tags),
            "notes": self.notes,
            "group": self.group,
            "job_type": self.job_type,
            "config": copy.deepcopy(self.config),
            "summary": copy.deepcopy(self._summary._json_dict),
        }

    # -- wandb's fields --------------------------------------------------------------------------------

    @property
    def summary(self) -> Summary:
        assert self._summary is not None
        return self._summary

    @summary.setter
    def summary(self, values: Mapping[str, Any]) -> None:
        # run.summary = {...}: the new values, compared with the loaded ones on update().
        self.summary._json_dict = dict(values)

    @property
    def display_name(self) -> str | None:
        return self.name

    @display_name.setter
    def display_name(self, value: str) -> None:
        self.name = value

    @property
    def description(self) -> str | None:
        """wandb's older name for the notes."""
        return self.notes

    @description.setter
    def description(self, value: str | None) -> None:
        self.notes = value

    @property
    def path(self) -> list[str]:
        return [self.entity, self.project, self.id]

    @property
    def url(self) -> str:
        """The run's page in the web UI."""
        return f"{self._api.url}/projects/{_quoted(self.entity, self.project)}/runs/{quote(self.id, safe='')}"

    @property
    def storage_id(self) -> str:
        return self.id  # runstream has one id per run

    @property
    def username(self) -> str:
        return self.entity  # wandb's deprecated name for entity

    @property
    def summary_metrics(self) -> dict[str, Any]:
        return self.summary._json_dict

    @property
    def rawconfig(self) -> dict[str, Any]:
        return self.config  # runstream keeps no internal keys (wandb's _wandb) in the config

    @property
    def json_config(self) -> str:
        """The config as wandb stores it, ``{"key": {"value": ..., "desc": null}}``, as JSON text."""
        return orjson.dumps({k: {"value": json_safe(v), "desc": None} for k, v in self.config.items()}).decode()

    @property
    def commit(self) -> str | None:
        return self.git.get("commit")

    @property
    def read_only(self) -> bool:
        return False

    @property
    def sweep_name(self) -> str | None:
        """The id of the sweep that started this run (None for a run of no sweep)."""
        return self._attrs.get("sweep") or None

    @property
    def sweep(self) -> Sweep | None:
        """The sweep that started this run, read when asked for."""
        sweep_id = self.sweep_name
        return None if sweep_id is None else self._api.sweep(f"{self.entity}/{self.project}/{sweep_id}")

    @property
    def dir(self) -> str:
        """Where ``file().download()`` puts files by wandb's default (the working directory here)."""
        return os.getcwd()

    @property
    def metadata(self) -> dict[str, Any]:
        """What wandb keeps in wandb-metadata.json, from what the SDK recorded: host, program, args, python,
        git, start time and user."""
        git = {k: v for k, v in (("commit", self.git.get("commit")), ("remote", self.git.get("remote"))) if v}
        values = {
            "host": self.host,
            "program": self._attrs.get("program"),
            "args": self._attrs.get("args"),
            "python": self._attrs.get("python"),
            "git": git or None,
            "startedAt": self.created_at,
            "username": self.user,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def lastHistoryStep(self) -> int:  # noqa: N802 - wandb's name
        """The largest step the run logged, -1 when none."""
        stats = self._api._request("GET", self._route("/statistics"), what=self._what())
        last = stats.get("last_step")
        return -1 if last is None else int(last)

    @property
    def history_keys(self) -> dict[str, Any]:
        """wandb's ``{"keys": {metric: {"typeCounts": [...]}}, "lastStep": n}``, from the run's statistics."""
        stats = self._api._request("GET", self._route("/statistics"), what=self._what())
        keys = {
            name: {"typeCounts": [{"type": "number", "count": m.get("count") or 0}]}
            for name, m in (stats.get("metrics") or {}).items()
        }
        last = stats.get("last_step")
        return {"keys": keys, "lastStep": -1 if last is None else int(last)}

    def __getattr__(self, name: str) -> Any:
        # Run fields without an attribute of their own (program, args, python, ...), as wandb reads its attrs.
        attrs = self.__dict__.get("_attrs")
        if attrs is not None and name in attrs and name not in UNSUPPORTED["Run"]:
            return attrs[name]
        raise _missing(self, "Run", name)

    def __repr__(self) -> str:
        return f"<Run {'/'.join(self.path)} ({self.state})>"

    def to_html(self, height: int = 420, hidden: bool = False) -> str:
        return _iframe(self.url, height, hidden)

    def _repr_html_(self) -> str:
        return self.to_html()

    def display(self, height: int = 420, hidden: bool = False) -> bool:
        """Show the run's page in a Jupyter notebook; False outside one."""
        return _display(self.to_html(height, hidden))

    # -- reading and saving ----------------------------------------------------------------------------

    def load(self, force: bool = False) -> Run:
        """Re-fetch the run from the server (local edits not saved with update() are dropped)."""
        self._set(self._api._get_run(*self.path))
        return self

    def load_full_data(self, force: bool = False) -> Run:
        return self.load(force)

    def wait_until_finished(self, poll_s: float = 5.0, timeout: float | None = None) -> None:
        """Re-read the run every ``poll_s`` s until it is no longer running (``TimeoutError`` after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Only the fields the run's end sets: local edits not yet saved stay.
            attrs = self._api._get_run(*self.path)
            for field in ("state", "exit_code", "error"):
                setattr(self, field, attrs.get(field))
            self.finished_at, self.heartbeat_at = _iso(attrs.get("finished_at")), _iso(attrs.get("heartbeat_at"))
            self._attrs.update(
                {k: attrs.get(k) for k in ("state", "exit_code", "error", "finished_at", "heartbeat_at")}
            )
            if self.state not in ("running", "pending", None):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self._what()} is still {self.state} after {timeout:g} s")
            time.sleep(poll_s)

    def update(self) -> None:
        """Save edits of ``name`` (``display_name``), ``tags``, ``notes``, ``group``, ``job_type``, ``config``
        and ``summary`` (wandb's semantics: edit the attributes, then call this).

        Only what changed since the run was loaded is sent (a running run's own later edits of the
        other fields stay): changed config values merge into the run's config; changed (top-level)
        summary keys become explicit values, which win over the ones computed from metrics, so the
        untouched computed ones keep following the run. Deleted config keys (``del run.config["x"]``,
        nested ones too) and summary keys (``del run.summary["old"]``) are deleted on the server; a
        deleted summary key computed from a metric comes back when the metric is logged again.
        """
        self._save(("name", "tags", "notes", "group", "job_type", "config", "summary"))

    def save(self) -> None:
        """wandb's other name for ``update()``."""
        self.update()

    def _save(self, fields: tuple[str, ...]) -> None:
        """PATCH the edits of ``fields`` since the run was loaded; nothing when nothing changed."""
        loaded, summary = self._loaded, self.summary._json_dict
        body: dict[str, Any] = {}
        if "tags" in fields and list(self.tags) != loaded["tags"]:
            body["tags"] = list(self.tags)
        for text in ("notes", "group", "job_type"):
            if text in fields and getattr(self, text) != loaded[text]:
                body[text] = getattr(self, text)
        if "config" in fields and (gone := _deleted(loaded["config"], self.config)):
            body["config_delete"] = gone
        if "summary" in fields and (gone := sorted(loaded["summary"].keys() - summary.keys())):
            body["summary_delete"] = gone
        if "name" in fields and self.name and self.name != loaded["name"]:
            body["name"] = self.name
        if "config" in fields and (config := _changed(loaded["config"], self.config, nested=True)):
            body["config"] = config
        if "summary" in fields and (changed := _changed(loaded["summary"], summary, nested=False)):
            body["summary"] = changed
        if not body:
            return  # nothing changed
        edited = self._api._request("PATCH", self._route(), body=body, what=self._what())
        # The fields not saved keep their local edits (summary.update() saves the summary alone).
        kept = {
            f: getattr(self, f) for f in ("name", "tags", "notes", "group", "job_type", "config") if f not in fields
        }
        self._set(edited)
        for field, value in kept.items():
            setattr(self, field, value)

    def delete(self, delete_artifacts: bool = False) -> None:
        """Delete the run: its metadata, history, logs and files."""
        if delete_artifacts:
            raise NotImplementedError(
                "runstream.Api: Run.delete(delete_artifacts=True) is not supported; "
                "delete the run, then its artifacts (nothing was deleted)"
            )
        self._api._request("DELETE", self._route(), what=self._what())

    def move(self, project: str) -> Run:
        """Move the run to another project of its team (runstream's; wandb has none); ``path`` follows it."""
        moved = self._api._request("POST", self._route("/move"), body={"project": project}, what=self._what())
        self.entity, self.project, self.id = moved["team"], moved["project"], moved["run_id"]
        self._attrs.update(team=self.entity, project=self.project, id=self.id)
        return self

    # -- metrics ---------------------------------------------------------------------------------------

    def history(
        self,
        samples: int = 500,
        keys: list[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
    ) -> Any:
        """At most ``samples`` rows of metrics (sampled by the server, keeping extremes), all metrics without ``keys``.

        A DataFrame with ``_step``, ``_timestamp`` and one column per key (NaN where a row did not
        log the key); with ``pandas=False``, one dict per row holding only the keys it logged.
        Unlike wandb's, a row is kept when it logged any of ``keys`` (not only all of them).
        """
        if isinstance(samples, (list, tuple)):  # history(["loss"]): runstream's older argument order
            keys, samples = list(samples), 500 if keys is None else keys
        if stream in ("system", "events"):
            return self._system_history(samples, pandas)
        if stream != "default":
            raise ValueError(f"stream must be 'default' or 'system', got {stream!r}")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError("keys must be a list of strings")
        if keys is not None and x_axis not in keys:
            keys = [*keys, x_axis]
        params = {"keys": _metric_keys(keys), "samples": samples}
        body = self._api._request("GET", self._route("/history"), params=params, what=self._what())
        columns = self._with_runtime(body["columns"], keys)
        if not pandas:
            return list(_rows(columns))
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Run.history() returns a pandas DataFrame: pip install pandas (or pass pandas=False)"
            ) from None
        order = list(dict.fromkeys(["_step", "_timestamp", "_runtime", *(keys if keys is not None else columns)]))
        order = [name for name in order if name in columns or name not in _SPECIAL_KEYS]
        decoded = {
            name: [math.nan if v is None else _SPECIAL_FLOATS.get(v, v) for v in values]
            for name, values in columns.items()
        }
        return pd.DataFrame(decoded).reindex(columns=order)

    def scan_history(
        self,
        keys: list[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Every logged row, unsampled and by step, as dicts of the keys that row logged; pages load lazily.

        With ``keys``, only the rows that logged every one of them (as wandb's). ``min_step`` is
        inclusive and ``max_step`` exclusive (as in wandb). ``use_cache`` is wandb's and changes nothing.
        """
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError("keys must be a list of strings")
        return self._scan(keys, page_size, min_step, max_step)

    def beta_scan_history(
        self,
        keys: list[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[dict[str, Any]]:
        return self.scan_history(keys, page_size, min_step, max_step)

    def _scan(
        self, keys: list[str] | None, page_size: int, min_step: int | None, max_step: int | None
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params = {
                "keys": _metric_keys(keys),
                "page_size": page_size,
                "min_step": min_step,
                "max_step": max_step,
                "cursor": cursor,
            }
            body = self._api._request("GET", self._route("/history/scan"), params=params, what=self._what())
            for row in _rows(self._with_runtime(body["columns"], keys)):
                # Also bounded here, so the range holds whether or not the server applies it.
                if min_step is not None and row["_step"] < min_step:
                    continue
                if max_step is not None and row["_step"] >= max_step:
                    return
                if keys is None or all(k in row for k in keys):
                    yield row
            cursor = body.get("next_cursor")
            if cursor is None:
                return

    @property
    def system_metrics(self) -> dict[str, Any]:
        """The latest value of each system metric (``system.cpu``, ``system.gpu.0.util``, ...), as wandb's."""
        latest: dict[str, Any] = {}
        for row in self._system_history(500, pandas=False):
            latest.update({k: v for k, v in row.items() if k.startswith("system.")})
        return latest

    def _system_history(self, samples: int, pandas: bool) -> Any:
        """wandb's ``history(stream="system")``: one row per time bucket, ``_timestamp`` (its start),
        ``_runtime`` (seconds since the first) and the bucket's mean of each system metric."""
        body = self._api._request("GET", self._route("/system"), params={"points": samples}, what=self._what())
        by_time: dict[float, dict[str, Any]] = {}
        for series in body["series"]:
            name = series["metric"] if series["metric"].startswith("system.") else "system." + series["metric"]
            for t, mean in zip(series["time"], series["mean"], strict=False):
                if mean is not None:
                    by_time.setdefault(t, {"_timestamp": t})[name] = mean
        first = min(by_time, default=0.0)
        rows = [{**by_time[t], "_runtime": t - first} for t in sorted(by_time)]
        if not pandas:
            return rows
        import pandas as pd

        return pd.DataFrame.from_records(rows)

    def console_logs(self, *, per_page: int = 1000, last: int | None = None) -> list[ConsoleLogLine]:
        """The run's console output, oldest line first (wandb's): every line, or the ``last`` ones. ``number``
        is the line's position in what is returned; ``level`` is ``"error"`` for stderr lines."""
        page = max(1, min(last or per_page, 10_000))
        lines: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:  # the server pages from the newest line back
            params = {"tail": page, "cursor": cursor}
            body = self._api._request("GET", self._route("/console"), params=params, what=self._what())
            lines[:0] = body["lines"]
            cursor = body.get("next_cursor")
            if cursor is None or (last is not None and len(lines) >= last):
                break
        if last is not None:
            lines = lines[-last:]
        return [
            ConsoleLogLine(
                number=i,
                timestamp=None if line.get("time") is None else datetime.fromtimestamp(line["time"], tz=UTC),
                level="error" if line.get("stream") == "stderr" else "",
                label="",
                content=line.get("line", ""),
            )
            for i, line in enumerate(lines)
        ]

    def _with_runtime(self, columns: dict[str, list[Any]], keys: list[str] | None) -> dict[str, list[Any]]:
        """wandb's ``_runtime`` (seconds since the run started) beside ``_timestamp``: in every row without
        ``keys``, else when asked for; with ``keys``, only the columns asked for (and ``_step``, ``_timestamp``)."""
        if keys is not None:
            columns = {k: v for k, v in columns.items() if k in keys or k in _SPECIAL_KEYS}
        start = _seconds(self._attrs.get("created_at"))
        if (keys is None or "_runtime" in keys) and start is not None and "_timestamp" in columns:
            columns["_runtime"] = [None if t is None else t - start for t in columns["_timestamp"]]
        return columns

    def export(
        self,
        file: str | os.PathLike[str],
        metrics: list[str] | None = None,
        format: str = "parquet",
        progress: bool = True,
    ) -> Path:
        """Download this run's full metric history to ``file`` (see ``Api.export``)."""
        params = {"format": format, "metrics": None if metrics is None else ",".join(metrics)}
        return self._api._download(self._route("/export"), params, file, progress, self._what())

    # -- files and artifacts ---------------------------------------------------------------------------

    def files(self, names: list[str] | None = None, pattern: str | None = None, per_page: int = 50) -> Files:
        """The run's files (what ``run.save()`` and media logging stored), by name; ``names`` keeps those names,
        ``pattern`` those matching a SQL ``LIKE`` pattern (``"%.json"``), as in wandb."""
        if names and pattern:
            raise ValueError("Querying for files by both names and pattern is not supported. Please provide either")
        body = self._api._request("GET", self._route("/files"), what=self._what())
        files = [File(self, entry) for entry in body["files"]]
        if names:
            by_name = {f.name: f for f in files}
            files = [by_name[n] for n in names if n in by_name]
        elif pattern:
            like = re.compile(
                "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern), re.DOTALL
            )
            files = [f for f in files if like.fullmatch(f.name)]
        return Files(self, files)

    def file(self, name: str) -> File:
        """The run's file ``name`` (``ApiError`` 404 when it has none)."""
        found = self.files(names=[name])
        if not found:
            raise ApiError(404, "not_found", f"file {name!r} not found in {self._what()}")
        return found[0]

    def logged_artifacts(self, per_page: int = 100) -> Any:
        """The artifacts this run logged."""
        return _artifacts_module().run_artifacts(self._api, self.entity, self.project, self.id, "logged")

    def used_artifacts(self, per_page: int = 100) -> Any:
        """The artifacts this run used."""
        return _artifacts_module().run_artifacts(self._api, self.entity, self.project, self.id, "used")

    def _route(self, suffix: str = "") -> str:
        return _run_path(*self.path) + suffix

    def _what(self) -> str:
        return f"run {'/'.join(self.path)}"


@dataclass(frozen=True)
class ConsoleLogLine:
    """A line of a run's console (wandb's)."""

    number: int
    timestamp: datetime | None
    level: str
    label: str
    content: str


class File:
    """A file of a run (wandb's ``File``): ``name``, ``size``, ``url``, ``download()``."""

    def __init__(self, run: Run, entry: dict[str, Any]) -> None:
        self.run = run
        self._attrs = entry
        self.name: str = entry["path"]
        self.size: int = entry.get("size") or 0
        self.mimetype: str | None = entry.get("media_type")
        self.sha256: str | None = entry.get("sha256")
        self.md5: str | None = None  # runstream checks files by SHA-256
        self.updated_at: str | None = _iso(entry.get("time"))
        self.id: str = entry.get("store_key") or self.name
        self.kind: str | None = entry.get("kind")
        self.step: int | None = entry.get("step")
        self.meta: dict[str, Any] = entry.get("meta") or {}  # a media file's meta (its key, caption, size...)
        self.url: str = run._api.url + entry["url"]  # needs the Api's key to download (Authorization)

    @property
    def direct_url(self) -> str:
        return self.url

    def download(
        self, root: str | os.PathLike[str] = ".", replace: bool = False, exist_ok: bool = False, api: Api | None = None
    ) -> IO[str]:
        """Download the file to ``root/name`` and return it open for reading, as wandb does: a file that is
        there already is a ``ValueError`` unless ``replace`` (download again) or ``exist_ok`` (keep it)."""
        base = Path(root).resolve()
        target = (base / self.name).resolve()
        if not target.is_relative_to(base):
            raise ValueError(f"file name {self.name!r} leaves the directory {root}")
        if target.exists() and not replace:
            if exist_ok:
                return open(target)
            raise ValueError(
                "File already exists, pass replace=True to overwrite or exist_ok=True to leave it as is and don't error."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        client = api or self.run._api
        route = self._attrs["url"].removeprefix(API_PREFIX)
        client._download(route, {}, target, False, f"file {self.name} of {self.run._what()}")
        return open(target)

    def __repr__(self) -> str:
        return f"<File {self.name} ({self.mimetype}) {self.size} bytes>"

    def __getattr__(self, name: str) -> Any:
        raise _missing(self, "File", name)


class Files(list[File]):
    """A run's files (wandb's ``Files``): a list."""

    def __init__(self, run: Run, files: Iterable[File]) -> None:
        super().__init__(files)
        self.run = run

    @property
    def length(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"<Files {'/'.join(self.run.path)} ({len(self)})>"


def _deleted(loaded: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The (dotted) keys of ``loaded`` that ``now`` no longer has, nested dicts key by key."""
    gone: list[str] = []
    for key, before in loaded.items():
        if key not in now:
            gone.append(prefix + key)
        elif isinstance(before, dict) and isinstance(now[key], dict):
            gone += _deleted(before, now[key], f"{prefix}{key}.")
    return gone


def _iframe(url: str, height: int, hidden: bool) -> str:
    style = f"border:none;width:100%;height:{height}px;" + ("display:none;" if hidden else "")
    return f"<iframe src={url!r} style={style!r}></iframe>"


def _display(html: str) -> bool:
    """wandb's ``display()``: the HTML shown in the notebook running this, if any."""
    try:
        ipython = importlib.import_module("IPython")
        shown = importlib.import_module("IPython.display")
    except ImportError:
        return False
    if ipython.get_ipython() is None:
        return False
    shown.display(shown.HTML(html))
    return True


def _quoted(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


def _changed(loaded: dict[str, Any], now: dict[str, Any], nested: bool) -> dict[str, Any]:
    """The keys of ``now`` whose values differ from ``loaded`` (as JSON carries them: the server sent
    non-finite numbers as "NaN" strings); ``nested``: only the changed keys of nested dicts too."""
    out: dict[str, Any] = {}
    for key, value in now.items():
        value = json_safe(value)
        before = loaded.get(key, _MISSING)
        if nested and isinstance(value, dict) and isinstance(before, dict) and value:
            if inner := _changed(before, value, nested):
                out[key] = inner
        elif value != before:
            out[key] = value
    return out


# Columns every history row has (``_runtime`` computed here), never metric names sent to the server.
_SPECIAL_KEYS = ("_step", "_timestamp", "_runtime")


def _metric_keys(keys: list[str] | None) -> str | None:
    """The ``keys`` query value: the metric names among ``keys`` (None: every metric)."""
    if keys is None:
        return None
    return ",".join(k for k in keys if k not in _SPECIAL_KEYS) or None


def _seconds(value: Any) -> float | None:
    """A time from the server (Unix seconds, or ISO 8601 text) as Unix seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return None


def _rows(columns: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Column lists to row dicts, leaving out the keys a row did not log (null)."""
    length = max((len(values) for values in columns.values()), default=0)
    for i in range(length):
        yield {name: _SPECIAL_FLOATS.get(v, v) for name, values in columns.items() if (v := values[i]) is not None}


def _http_error(exc: urllib.error.HTTPError, what: str) -> ApiError:
    raw = exc.read()
    try:
        error = orjson.loads(raw)["error"]
        code, message, details = error.get("code", "error"), error.get("message", ""), error.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        # Not the API's error shape (a proxy in between, say): show what came back.
        code, message, details = "http_error", raw[:500].decode(errors="replace"), None
    if exc.code == 404:
        message = f"{what or 'resource'} not found, or not visible with this API key" + (
            f" ({message})" if message else ""
        )
    elif exc.code in (401, 403):
        message = f"{message or 'not authorized'} (set RUNSTREAM_API_KEY or pass Api(api_key=...))"
    return ApiError(exc.code, code, message or f"HTTP {exc.code}", details)


def _iso(value: Any) -> Any:
    """A time from the server (Unix seconds) as ISO 8601 UTC text; text and None stay as they are."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _split_path(path: str, expected: str) -> list[str]:
    parts = path.strip("/").split("/")
    if not all(parts):
        raise ValueError(f"expected a path {expected}, got {path!r}")
    return parts


def _run_path(team: str, project: str, run_id: str) -> str:
    return "/runs/" + "/".join(quote(part, safe="") for part in (team, project, run_id))
