"""Who is calling, and what they may do.

A request carries at most one credential:

- ``Authorization: Bearer rs_<key_id>_<secret>``: an API key of one member of one
  team, with that member's current role (looked up on every request, so a revoked
  key or a removed member fails at once);
- a report's share token (``X-Runstream-Share`` header or ``?share=``): read-only
  access to that report and to its project's data, until it expires or the report's
  links are revoked;
- nothing: anonymous, which reads public projects only. The embedded server trusts
  its machine's own user instead (``local_admin``): a request from loopback, not
  relayed by a proxy, for a loopback Host, and not sent by another site's page.

Access rules, one place for every endpoint:

| need | anonymous | share link | viewer | member | admin |
|---|---|---|---|---|---|
| read a project | public only | its report's project | own team + public | same | same |
| write (runs, files, rules, reports) | 401 | 401 | 403 | own team | own team |
| administer a team (members, keys, visibility) | 401 | 401 | 403 | 403 | own team |

Anything private that a caller cannot read is 404, never 403, so its existence
does not leak.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from clickhouse_connect.driver.client import Client
from starlette.requests import Request

from runstream.api.errors import ApiError, not_found
from runstream.api.requests import run_path
from runstream.storage import accounts, runs
from runstream.storage.accounts import Role

T = TypeVar("T")

Need = Literal["read", "write", "admin"]
_RANK = {"viewer": 1, "member": 2, "admin": 3}
_NEED_RANK = {"read": 1, "write": 2, "admin": 3}
SHARE_HEADER = "X-Runstream-Share"
MAX_SHARE_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True)
class Share:
    team: str
    project: str
    report_id: str
    expires_at: float


@dataclass(frozen=True)
class Principal:
    user: str | None = None
    team: str | None = None
    role: Role | None = None
    key_id: str | None = None
    share: Share | None = None
    local_admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user is None and not self.local_admin

    def describe(self) -> str:
        if self.local_admin:
            return "local admin"
        if self.user:
            return f"{self.user} ({self.role} of {self.team})"
        return "share link" if self.share else "anonymous"


# -- share tokens ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_share(secret: bytes, team: str, project: str, report_id: str, share_version: int, expires_at: float) -> str:
    payload = _b64(orjson.dumps({"t": team, "p": project, "r": report_id, "v": share_version, "exp": int(expires_at)}))
    signature = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def read_share(secrets: list[bytes], token: str, now: float | None = None) -> tuple[Share, int]:
    """The grant in a share token and the report share version it was made for; ApiError 401 when it is not valid."""
    invalid = ApiError(401, "this share link is not valid; ask for a new one", code="invalid_share_link")
    payload, _, signature = token.partition(".")
    # Bytes, so a token with any characters is just "not valid" (str comparison refuses non-ASCII).
    expected = [
        _b64(hmac.new(secret, payload.encode(errors="replace"), hashlib.sha256).digest()).encode() for secret in secrets
    ]
    if not signature or not any(hmac.compare_digest(signature.encode(errors="replace"), e) for e in expected):
        raise invalid
    try:
        claims = orjson.loads(_unb64(payload))
        share = Share(claims["t"], claims["p"], claims["r"], float(claims["exp"]))
        version = int(claims["v"])
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise invalid from None
    if share.expires_at <= (time.time() if now is None else now):
        raise ApiError(401, "this share link has expired; ask for a new one", code="share_link_expired")
    return share, version


async def open_share(backend: Any, token: str) -> tuple[Share, int]:
    """``read_share`` with the server's secrets, re-read once when none fits (another replica made a new one)."""
    try:
        return read_share(await backend.share_secrets(), token)
    except ApiError as exc:
        if exc.code != "invalid_share_link":
            raise
        return read_share(await backend.share_secrets(refresh=True), token)


# -- authentication ---------------------------------------------------------------------------


async def authenticate(request: Request) -> Principal:
    """The request's principal, cached on the request; ApiError 401 for a credential that does not work."""
    cached = request.scope.get("state", {}).get("principal")
    if cached is not None:
        return cached
    principal = await _authenticate(request)
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


async def _authenticate(request: Request) -> Principal:
    backend = request.app.state.backend
    header = request.headers.get("authorization")
    share_token = request.headers.get(SHARE_HEADER) or request.query_params.get("share")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "send the API key as 'Authorization: Bearer <key>'")
        owner = await backend.run(accounts.resolve_key, raw.strip())
        if owner is None:
            raise ApiError(
                401,
                "this API key is not valid (unknown, revoked, or its user left the team); "
                "create a new one with `runstream keys create`",
                code="invalid_api_key",
            )
        return Principal(user=owner.user, team=owner.team, role=owner.role, key_id=owner.key_id)
    if share_token:
        share, version = await open_share(backend, share_token)
        from runstream.storage import reports  # the report decides whether its links still hold

        report = await backend.run(reports.get_report, share.team, share.project, share.report_id)
        if report is None or report["share_version"] != version:
            raise ApiError(401, "this share link was revoked; ask for a new one", code="share_link_revoked")
        return Principal(share=share)
    if backend.local_admin and _is_loopback(request):
        return Principal(local_admin=True)
    return Principal()


_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_FORWARDING = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def _is_loopback(request: Request) -> bool:
    """A request from this machine's own user: the socket's peer is loopback, and nothing says otherwise.

    The peer alone is not enough. A request relayed by a proxy on this machine carries
    forwarding headers; a web page in the user's browser sends its own Origin (a
    cross-site request) or a foreign Host (DNS rebinding). Those are not local.
    """
    peer = request.client.host if request.client else ""
    if peer not in _LOOPBACK or any(h in request.headers for h in _FORWARDING):
        return False
    if _hostname(request.headers.get("host", "")) not in _LOOPBACK:
        return False
    origin = request.headers.get("origin")
    return origin is None or _hostname(urlsplit(origin).netloc) in _LOOPBACK


def _hostname(netloc: str) -> str:
    """``host`` of ``host:port`` or ``[v6]:port``."""
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    return netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc


# -- authorization ------------------------------------------------------------------------------


def allows(principal: Principal, team: str, need: Need) -> bool:
    """Whether an authenticated caller holds ``need`` in ``team`` (the rule every check below applies)."""
    if principal.local_admin:
        return True
    return principal.team == team and principal.role is not None and _RANK[principal.role] >= _NEED_RANK[need]


async def require_project(request: Request, team: str, project: str, need: Need = "read") -> Principal:
    """The principal, if it may ``need`` the project; else 401, 403 or 404 (see the module's table)."""
    principal = await authenticate(request)
    if allows(principal, team, need):
        return principal
    if principal.team == team:  # a member whose role is too low
        raise ApiError(
            403, f"{principal.describe()} may not {need} in team {team}; ask a team admin for a role that can"
        )
    if need != "read" and principal.anonymous:
        raise ApiError(401, f"{need} access needs an API key: send 'Authorization: Bearer <key>'")
    if principal.share and (principal.share.team, principal.share.project) == (team, project):
        if need == "read":
            return principal
        raise ApiError(401, "a share link only reads; use an API key to change anything")
    visibility = await request.app.state.backend.run(accounts.project_visibility, team, project)
    if visibility != "public":
        raise not_found(f"project {team}/{project}")
    if need == "read":
        return principal
    raise ApiError(403, f"{principal.describe()} may only read the public project {team}/{project}")


async def require_team(request: Request, team: str, need: Need = "read") -> Principal:
    """For team resources (members, keys): its members read, admins change; others get 404 (or 401 when anonymous)."""
    principal = await authenticate(request)
    if allows(principal, team, need):
        return principal
    if principal.team == team:
        raise ApiError(403, f"{principal.describe()} may not {need} team {team}; only its admins can")
    if principal.anonymous:
        raise ApiError(401, "team resources need an API key: send 'Authorization: Bearer <key>'")
    raise not_found(f"team {team}")


# -- access, as endpoints declare it -----------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Who may call an endpoint, checked before anything about the request is answered (``api/openapi.py``).

    ``refusals`` are the statuses the check answers, for the endpoint's documentation.
    """

    check: Callable[[Request], Awaitable[Principal]]
    refusals: tuple[int, ...]


def _project_access(need: Need) -> Access:
    async def check(request: Request) -> Principal:
        return await require_project(request, request.path_params["team"], request.path_params["project"], need)

    return Access(check, (401, 404) if need == "read" else (401, 403, 404))


def _team_access(need: Need) -> Access:
    async def check(request: Request) -> Principal:
        return await require_team(request, request.path_params["team"], need)

    return Access(check, (401, 403, 404))


#: The project in the path ({team}/{project}): read (public projects and share links too), write, administer.
PROJECT_READ, PROJECT_WRITE, PROJECT_ADMIN = (_project_access(need) for need in ("read", "write", "admin"))
#: The team in the path: its members read, admins change.
TEAM_READ, TEAM_WRITE, TEAM_ADMIN = (_team_access(need) for need in ("read", "write", "admin"))
#: Any caller, signed in or not; the endpoint decides with the principal.
ANYONE = Access(authenticate, (401,))


# -- reads whose check overlaps the work -----------------------------------------------------


async def read_project(request: Request, team: str, project: str, read: Callable[[Client], T]) -> T:
    """``read`` in the thread pool once the caller may read the project.

    In the plain order the check (``require_project``) comes first. A key that already read
    this project on this replica (a dashboard's, request after request) gets the read started
    beside its fresh check instead: the key lookup, a ClickHouse query of ~4 ms, hides behind
    the read. The answer still waits for the check; a refusal wins over everything (and the key
    is forgotten for the project), and the read's result is dropped. So a key never makes the
    server read a project it has not been allowed to read. (The request's arguments were
    checked before: ``endpoint(overlapped=True)``.)
    """
    backend = request.app.state.backend
    reader = _reader(request, team, project)
    if reader is None or reader not in backend.keys_read:
        await require_project(request, team, project, "read")
        if reader is not None:
            _remember(backend.keys_read, reader)
        return await backend.run(read)
    check = _started(require_project(request, team, project, "read"))
    _remember(backend.keys_read, reader)  # a busy dashboard's key stays remembered
    reading = _started(backend.run(read))
    try:
        await _passed(check, backend.keys_read, reader)
    except BaseException:
        reading.cancel()  # its thread finishes the query; the result goes nowhere
        raise
    return await reading


async def read_run(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(client, team, project, run_id, *args)`` in the thread pool, for a caller the endpoint's access
    check let read the project; 404 when the run does not exist (a run's sub-resources are not empty lists
    for a typo)."""
    team, project, run_id = run_path(request)

    def read(client: Client) -> tuple[bool, Any]:
        if runs.count_runs(client, team, project, {"run_id": run_id}) == 0:
            return False, None
        return True, fn(client, team, project, run_id, *args)

    found, result = await request.app.state.backend.run(read)
    if not found:
        raise not_found(f"run {team}/{project}/{run_id}")
    return result


_READERS_REMEMBERED = 10_000


def _reader(request: Request, team: str, project: str) -> tuple[bytes, str, str] | None:
    """(digest of the request's API key, team, project), or None without a key."""
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    return hashlib.sha256(raw.strip().encode()).digest(), team, project


def _remember(readers: OrderedDict[tuple[bytes, str, str], None], reader: tuple[bytes, str, str]) -> None:
    readers[reader] = None
    readers.move_to_end(reader)
    while len(readers) > _READERS_REMEMBERED:
        readers.popitem(last=False)


async def _passed(
    check: asyncio.Future[Principal], readers: OrderedDict[tuple[bytes, str, str], None], reader: tuple[bytes, str, str]
) -> None:
    try:
        await check
    except ApiError:  # refused: no more early reads for this key here (a client going away is no refusal)
        readers.pop(reader, None)
        raise


def _started(work: Awaitable[T]) -> asyncio.Future[T]:
    """``work`` running now; a failure nobody awaits (the request was answered) is dropped quietly."""
    future = asyncio.ensure_future(work)
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future
