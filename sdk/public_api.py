"""The public read client: ``runstream.Api()``, shaped like wandb's export API.

From a notebook::

    import runstream
    api = runstream.Api()
    runs = api.runs("acme/mnist", filters={"config.lr": {"$gt": 0.01}}, order="+summary.loss")
    df = runs[0].history(keys=["loss"])
    api.export("acme/mnist", "mnist.parquet", filters={"state": "finished"})

It speaks the server's read endpoints (docs/api.md, "Read") over plain HTTP with
stdlib ``urllib``: the SDK's base install has no HTTP library. The server sends
times as Unix seconds; runs and projects show them as ISO 8601 text, as wandb's
client does.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
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


@dataclass(frozen=True)
class Project:
    entity: str
    name: str
    visibility: str
    run_count: int
    created_at: str | None

    @property
    def path(self) -> list[str]:
        return [self.entity, self.name]


class Api:
    """Read client for a runstream server; ``url`` and ``api_key`` default to RUNSTREAM_URL and RUNSTREAM_API_KEY."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
        entity: str | None = None,
    ) -> None:
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
        self.timeout = timeout
        self.entity = entity or DEFAULT_ENTITY

    def projects(self, entity: str | None = None) -> list[Project]:
        """The projects visible with this key; all teams when ``entity`` is None."""
        params = {"team": entity} if entity else None
        body = self._request("GET", "/projects", params=params, what="projects")
        return [
            Project(p["team"], p["name"], p["visibility"], p["run_count"], _iso(p.get("created_at")))
            for p in body["projects"]
        ]

    def runs(
        self,
        path: str,
        filters: dict[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
    ) -> Runs:
        """Runs of the project ``"team/project"`` (or ``"project"`` in this Api's entity), fetched lazily."""
        parts = _split_path(path, "'team/project' or 'project'")
        if len(parts) == 1:
            parts.insert(0, self.entity)
        if len(parts) != 2:
            raise ValueError(f"expected a project path 'team/project' or 'project', got {path!r}")
        return Runs(self, parts[0], parts[1], filters, order, per_page)

    def run(self, path: str) -> Run:
        """The run ``"team/project/run_id"`` (also ``"team/project/runs/run_id"``, or ``"project/run_id"``)."""
        expected = "'team/project/run_id' or 'team/project/runs/run_id'"
        parts = _split_path(path, expected)
        if len(parts) == 4 and parts[2] == "runs":
            del parts[2]
        elif len(parts) == 2:
            parts.insert(0, self.entity)
        if len(parts) != 3:
            raise ValueError(f"expected a run path {expected}, got {path!r}")
        return Run(self, self._get_run(*parts))

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


class Runs:
    """A project's runs matching ``filters``, in ``order``; pages are fetched as iteration or indexing needs them.

    ``len(runs)`` fetches every page: the server does not count matches up front.
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

    def __iter__(self) -> Iterator[Run]:
        # By index over the cache, so several iterations (and indexing) share the fetched pages.
        i = 0
        while self._fetch_until(i + 1):
            yield self._runs[i]
            i += 1

    def __len__(self) -> int:
        self._fetch_until(None)
        return len(self._runs)

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

    def _fetch_until(self, count: int | None) -> bool:
        """Fetch pages until ``count`` runs are cached (all when None); whether that many exist."""
        while not self._done and (count is None or len(self._runs) < count):
            self._fetch_page()
        return count is None or len(self._runs) >= count

    def _fetch_page(self) -> None:
        params = {
            "filters": orjson.dumps(self.filters).decode(),
            "order": self.order,
            "limit": self.per_page,
            "cursor": self._cursor,
        }
        path = f"/projects/{quote(self.entity, safe='')}/{quote(self.project, safe='')}/runs"
        body = self._api._request("GET", path, params=params, what=f"project {self.entity}/{self.project}")
        self._runs.extend(Run(self._api, attrs) for attrs in body["runs"])
        self._cursor = body.get("next_cursor")
        self._done = self._cursor is None


class Run:
    """One run's metadata; ``history()`` and ``scan_history()`` read its metrics."""

    def __init__(self, api: Api, attrs: dict[str, Any]) -> None:
        self._api = api
        self._set(attrs)

    def _set(self, attrs: dict[str, Any]) -> None:
        self._attrs = attrs
        self.entity: str = attrs["team"]
        self.project: str = attrs["project"]
        self.id: str = attrs["id"]
        self.name: str | None = attrs.get("name")
        self.state: str | None = attrs.get("state")
        self.config: dict[str, Any] = attrs.get("config") or {}
        self.summary: dict[str, Any] = attrs.get("summary") or {}
        self.tags: list[str] = list(attrs.get("tags") or [])
        self.group: str | None = attrs.get("group")
        self.job_type: str | None = attrs.get("job_type")
        self.notes: str | None = attrs.get("notes")
        self.created_at: str | None = _iso(attrs.get("created_at"))
        self.updated_at: str | None = _iso(attrs.get("updated_at"))
        self.heartbeat_at: str | None = _iso(attrs.get("heartbeat_at"))
        self.finished_at: str | None = _iso(attrs.get("finished_at"))
        self.exit_code: int | None = attrs.get("exit_code")
        self.user: str | None = attrs.get("user")
        self.host: str | None = attrs.get("host")
        self.git: dict[str, Any] = attrs.get("git") or {}
        self.error: str | None = attrs.get("error")  # a failed run's traceback
        self.metric_definitions: list[dict[str, Any]] = list(attrs.get("metrics") or [])
        # What update() compares edits with, so it sends only what changed.
        self._loaded: dict[str, Any] = {
            "name": self.name,
            "tags": list(self.tags),
            "notes": self.notes,
            "config": copy.deepcopy(self.config),
            "summary": copy.deepcopy(self.summary),
        }

    @property
    def path(self) -> list[str]:
        return [self.entity, self.project, self.id]

    def __repr__(self) -> str:
        return f"<Run {'/'.join(self.path)} ({self.state})>"

    def load(self) -> Run:
        """Re-fetch the run from the server (local edits not saved with update() are dropped)."""
        self._set(self._api._get_run(*self.path))
        return self

    def update(self) -> None:
        """Save edits of ``name``, ``tags``, ``notes``, ``config`` and ``summary`` (wandb's semantics: edit the
        attributes, then call this).

        Only what changed since the run was loaded is sent (a running run's own later edits of the
        other fields stay): changed config
        values merge into the run's config; changed (top-level) summary keys become explicit values,
        which win over the ones computed from metrics, so the untouched computed ones keep following
        the run. Deleting a key here deletes nothing on the server.
        """
        body: dict[str, Any] = {}
        if list(self.tags) != self._loaded["tags"]:
            body["tags"] = list(self.tags)
        if self.notes != self._loaded["notes"]:
            body["notes"] = self.notes
        if self.name and self.name != self._loaded["name"]:
            body["name"] = self.name
        if config := _changed(self._loaded["config"], self.config, nested=True):
            body["config"] = config
        if summary := _changed(self._loaded["summary"], self.summary, nested=False):
            body["summary"] = summary
        if not body:
            return  # nothing changed
        self._set(self._api._request("PATCH", _run_path(*self.path), body=body, what=self._what()))

    def history(
        self,
        keys: list[str] | None = None,
        samples: int = 500,
        x_axis: str = "_step",
        pandas: bool = True,
    ) -> Any:
        """At most ``samples`` rows of metrics (sampled by the server, keeping extremes), all metrics without ``keys``.

        A DataFrame with ``_step``, ``_timestamp`` and one column per key (NaN where a row did not
        log the key); with ``pandas=False``, one dict per row holding only the keys it logged.
        """
        if keys is not None and x_axis not in keys and x_axis not in ("_step", "_timestamp"):
            keys = [*keys, x_axis]
        params = {"keys": ",".join(keys) if keys is not None else None, "samples": samples}
        body = self._api._request("GET", _run_path(*self.path) + "/history", params=params, what=self._what())
        columns: dict[str, list[Any]] = body["columns"]
        if not pandas:
            return list(_rows(columns))
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Run.history() returns a pandas DataFrame: pip install pandas (or pass pandas=False)"
            ) from None
        order = list(dict.fromkeys(["_step", "_timestamp", *(keys if keys is not None else columns)]))
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
    ) -> Iterator[dict[str, Any]]:
        """Every logged row, unsampled and by step, as dicts of the keys that row logged; pages load lazily.

        ``min_step`` is inclusive and ``max_step`` exclusive (as in wandb).
        """
        cursor: str | None = None
        while True:
            params = {
                "keys": ",".join(keys) if keys is not None else None,
                "page_size": page_size,
                "min_step": min_step,
                "max_step": max_step,
                "cursor": cursor,
            }
            body = self._api._request("GET", _run_path(*self.path) + "/history/scan", params=params, what=self._what())
            for row in _rows(body["columns"]):
                # Also bounded here, so the range holds whether or not the server applies it.
                if min_step is not None and row["_step"] < min_step:
                    continue
                if max_step is not None and row["_step"] >= max_step:
                    return
                yield row
            cursor = body.get("next_cursor")
            if cursor is None:
                return

    def export(
        self,
        file: str | os.PathLike[str],
        metrics: list[str] | None = None,
        format: str = "parquet",
        progress: bool = True,
    ) -> Path:
        """Download this run's full metric history to ``file`` (see ``Api.export``)."""
        params = {"format": format, "metrics": None if metrics is None else ",".join(metrics)}
        return self._api._download(_run_path(*self.path) + "/export", params, file, progress, self._what())

    def _what(self) -> str:
        return f"run {'/'.join(self.path)}"


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
