"""Who is calling, and what they may do.

A request carries at most one credential:

- ``Authorization: Bearer rs_<key_id>_<secret>``: an API key of one member of one
  team, with that member's current role and the key's scope (checked on every request
  against this replica's copy of keys and members, ``api/keyring.py``, kept current from
  every replica's writes: a revoked key or a removed member fails within moments);
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
| ingest (write runs and files) | 401 | 401 | 403 | own team | own team |
| write (rules, reports, run edits) | 401 | 401 | 403 | own team | own team |
| administer a team (members, keys, visibility) | 401 | 401 | 403 | 403 | own team |

A key's scope caps its member's role (its rights are the smaller of the two):

| scope | may |
|---|---|
| ``ingest`` | ingest only: the key a training job carries; it cannot read or change anything else |
| ``read`` | read only (team resources: the GET endpoints) |
| ``admin`` | all its member's role allows (the default, and what keys made before scopes are) |

Each endpoint's scope is in its OpenAPI entry (``x-runstream-scope``). Anything private
that a caller cannot read is 404, never 403, so its existence does not leak.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from clickhouse_connect.driver.client import Client
from starlette.requests import Request

from runstream.api.errors import ApiError, not_found
from runstream.api.keyring import keyring_of
from runstream.api.requests import run_path
from runstream.storage import runs
from runstream.storage.accounts import Role, Scope

T = TypeVar("T")

Need = Literal["read", "ingest", "write", "admin"]
_RANK = {"viewer": 1, "member": 2, "admin": 3}
_NEED_RANK = {"read": 1, "ingest": 2, "write": 2, "admin": 3}
#: What each key scope may need (the member's role decides the rest).
_SCOPE_GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset(_NEED_RANK),
    "read": frozenset({"read"}),
    "ingest": frozenset({"ingest"}),
}
#: What an endpoint's scope (``Access.scope``) admits, for the OpenAPI document and its checks.
SCOPE_DESCRIPTIONS = {
    "none": "no credential needed",
    "any": "any credential, or none",
    "read": "keys of scope read or admin (and share links, anonymous callers for public projects)",
    "ingest": "keys of scope ingest or admin",
    "admin": "keys of scope admin",
}
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
    scope: Scope | None = None
    share: Share | None = None
    local_admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user is None and not self.local_admin

    def describe(self) -> str:
        if self.local_admin:
            return "local admin"
        if self.user:
            scoped = "" if self.scope in (None, "admin") else f", with a {self.scope} key"
            return f"{self.user} ({self.role} of {self.team}{scoped})"
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
    try:
        principal = await _authenticate(request)
    except ApiError as exc:
        if exc.status == 401:
            _charge_failure(request)
        raise
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


def _charge_failure(request: Request) -> None:
    """A credential that does not work costs its client address a request: guessing keys (each
    unknown key id costs a ClickHouse read) gets 429 like any other flood, not free 401s."""
    from runstream.api import quotas  # quotas -> auth

    if getattr(request.app.state, "quotas", None) is not None:
        quotas.charge_failed_auth(request)


async def _authenticate(request: Request) -> Principal:
    backend = request.app.state.backend
    header = request.headers.get("authorization")
    share_token = request.headers.get(SHARE_HEADER) or request.query_params.get("share")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "send the API key as 'Authorization: Bearer <key>'")
        owner = await keyring_of(backend).resolve(raw.strip())
        if owner is None:
            raise ApiError(
                401,
                "this API key is not valid (unknown, revoked, or its user left the team); "
                "create a new one with `runstream keys create`",
                code="invalid_api_key",
            )
        return Principal(user=owner.user, team=owner.team, role=owner.role, key_id=owner.key_id, scope=owner.scope)
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
#: Headers a proxy adds (or a client says it came through one): the request was relayed, or claims
#: to be, so its peer is not the user. Any ``X-Forwarded-*`` header counts as well.
_FORWARDING = (
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
)
#: ``Sec-Fetch-Site`` of a request another page made: another site's, or another port or name of
#: localhost (same-site, not same-origin), which is as foreign as any site.
_FOREIGN_FETCH = ("cross-site", "same-site")


def _is_loopback(request: Request) -> bool:
    """A request from this machine's own user: the socket's peer is loopback, and nothing says otherwise.

    The peer alone is not enough. A request relayed by a proxy on this machine carries
    forwarding headers. A web page in the user's browser shows itself by a foreign Host
    (DNS rebinding), by an ``Origin`` other than this server's own (scheme, host and port as
    the Host header names them: a page on another loopback port is another origin), or by
    ``Sec-Fetch-Site: cross-site``/``same-site`` (a GET sends no Origin, but browsers send
    this). Those are not local. The web UI this server serves is same-origin, and a tool
    like curl sends none of these headers.
    """
    peer = request.client.host if request.client else ""
    if peer not in _LOOPBACK:
        return False
    if any(name in _FORWARDING or name.startswith("x-forwarded-") for name in request.headers):
        return False
    own = _origin(request.scope.get("scheme", "http"), request.headers.get("host", ""))
    if own is None or own[1] not in _LOOPBACK:
        return False
    if request.headers.get("sec-fetch-site", "").strip().lower() in _FOREIGN_FETCH:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    sent = urlsplit(origin.strip())
    return not sent.path and _origin(sent.scheme, sent.netloc) == own


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``scheme://netloc`` (``host:port`` or ``[v6]:port``), the default port
    filled in; None for anything that is not an http(s) origin (``Origin: null`` included)."""
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        return None
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


# -- authorization ------------------------------------------------------------------------------


def allows(principal: Principal, team: str, need: Need) -> bool:
    """Whether an authenticated caller holds ``need`` in ``team``: its role and its key's scope both allow it."""
    if principal.local_admin:
        return True
    return (
        principal.team == team
        and principal.role is not None
        and _RANK[principal.role] >= _NEED_RANK[need]
        and _scope_allows(principal, need)
    )


def _scope_allows(principal: Principal, need: Need) -> bool:
    return principal.scope is None or need in _SCOPE_GRANTS[principal.scope]


def _scope_refusal(principal: Principal, need: Need) -> ApiError:
    what = {"read": "only read", "ingest": "only write runs and files"}.get(principal.scope or "", "do this")
    return ApiError(
        403,
        f"{principal.describe()} may not {need} here: a key of scope {principal.scope} may {what}; "
        "use a key of scope admin (`runstream keys create --scope admin`)",
        code="key_scope",
    )


async def require_project(request: Request, team: str, project: str, need: Need = "read") -> Principal:
    """The principal, if it may ``need`` the project; else 401, 403 or 404 (see the module's table)."""
    principal = await authenticate(request)
    if allows(principal, team, need):
        return principal
    if principal.team == team:  # a member whose role (or key) is too low
        if principal.role is not None and _RANK[principal.role] >= _NEED_RANK[need]:
            raise _scope_refusal(principal, need)
        raise ApiError(
            403, f"{principal.describe()} may not {need} in team {team}; ask a team admin for a role that can"
        )
    if need != "read" and principal.anonymous:
        raise ApiError(401, f"{need} access needs an API key: send 'Authorization: Bearer <key>'")
    if principal.share and (principal.share.team, principal.share.project) == (team, project):
        if need == "read":
            return principal
        raise ApiError(401, "a share link only reads; use an API key to change anything")
    visibility = await keyring_of(request.app.state.backend).visibility(team, project)
    if visibility != "public":
        raise not_found(f"project {team}/{project}")
    if need == "read":
        if not _scope_allows(principal, "read"):
            raise _scope_refusal(principal, "read")
        return principal
    raise ApiError(403, f"{principal.describe()} may only read the public project {team}/{project}")


async def require_team(request: Request, team: str, need: Need = "read", scope_need: Need | None = None) -> Principal:
    """For team resources (members, keys): its members read, admins change; others get 404 (or 401 when anonymous).

    ``scope_need``: what the key's scope must allow, when more than ``need`` (a key of scope read
    may list keys, but not make one: that would give it more than its scope).
    """
    principal = await authenticate(request)
    scoped = scope_need or need
    if allows(principal, team, need) and _scope_allows(principal, scoped):
        return principal
    if principal.team == team:
        if principal.role is not None and _RANK[principal.role] >= _NEED_RANK[need]:
            raise _scope_refusal(principal, scoped)
        raise ApiError(403, f"{principal.describe()} may not {need} team {team}; only its admins can")
    if principal.anonymous:
        raise ApiError(401, "team resources need an API key: send 'Authorization: Bearer <key>'")
    raise not_found(f"team {team}")


async def still_allowed(request: Request, team: str, project: str, need: Need = "read") -> bool:
    """Whether the request's credential still may ``need`` the project, checked afresh (for a long
    answer such as an event stream: a key revoked, a member removed, a share link revoked since)."""
    request.scope.setdefault("state", {}).pop("principal", None)
    try:
        await require_project(request, team, project, need)
    except ApiError:
        return False
    return True


# -- access, as endpoints declare it -----------------------------------------------------------------

_SAFE_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Access:
    """Who may call an endpoint, checked before anything about the request is answered (``api/openapi.py``).

    ``refusals`` are the statuses the check answers, for the endpoint's documentation. ``scope``
    is the key scope it needs (``SCOPE_DESCRIPTIONS``), ``unsafe_scope`` the one for methods other
    than GET when that differs.
    """

    check: Callable[[Request], Awaitable[Principal]]
    refusals: tuple[int, ...]
    scope: str = "admin"
    unsafe_scope: str | None = None

    def scope_for(self, method: str) -> str:
        if self.unsafe_scope is None or method.upper() in _SAFE_METHODS:
            return self.scope
        return self.unsafe_scope


#: The key scope that a need on a project asks for.
_PROJECT_SCOPE = {"read": "read", "ingest": "ingest", "write": "admin", "admin": "admin"}


def _project_access(need: Need) -> Access:
    async def check(request: Request) -> Principal:
        return await require_project(request, request.path_params["team"], request.path_params["project"], need)

    return Access(check, (401, 403, 404), _PROJECT_SCOPE[need])  # 403 on a read: a key of scope ingest


def _team_access(need: Need) -> Access:
    async def check(request: Request) -> Principal:
        scope_need: Need = need if request.method in _SAFE_METHODS else "admin"
        return await require_team(request, request.path_params["team"], need, scope_need)

    return Access(check, (401, 403, 404), "read" if need == "read" else "admin", unsafe_scope="admin")


async def _reader(request: Request) -> Principal:
    principal = await authenticate(request)
    if not _scope_allows(principal, "read"):
        raise _scope_refusal(principal, "read")
    return principal


#: The project in the path ({team}/{project}): read (public projects and share links too), write, administer.
PROJECT_READ, PROJECT_WRITE, PROJECT_ADMIN = (_project_access(need) for need in ("read", "write", "admin"))
#: The project in the path: write runs and files (keys of scope ingest too).
PROJECT_INGEST = _project_access("ingest")
#: The team in the path: its members read, admins change. Methods other than GET need a key of scope admin.
TEAM_READ, TEAM_WRITE, TEAM_ADMIN = (_team_access(need) for need in ("read", "write", "admin"))
#: Any caller, signed in or not; the endpoint decides with the principal.
ANYONE = Access(authenticate, (401,), "any")
#: Any caller that may read (not a key of scope ingest); the endpoint decides the rest.
ANY_READER = Access(_reader, (401, 403), "read")


# -- reads -------------------------------------------------------------------------------------------


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
