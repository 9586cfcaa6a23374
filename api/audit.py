"""Recording audit entries from API handlers (``storage.audit``): who, from where, for a request.

The endpoint that reads the log is ``GET /api/v1/teams/{team}/audit`` (``api/teams.py``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from runstream.api.auth import Principal
from runstream.api.backend import backend_of
from runstream.storage import audit


def actor_of(request: Request, principal: Principal) -> audit.Actor:
    """The request's caller as an entry names it: the key (and its user) or the local admin, the
    connection's peer address, what a proxy claims the client was, and the user agent."""
    if principal.local_admin:
        kind: audit.ActorKind = "local_admin"
    elif principal.key_id:
        kind = "key"
    else:
        kind = "anonymous"  # nothing audited is open to anonymous callers; kept truthful all the same
    forwarded = request.headers.get("x-forwarded-for") or request.headers.get("forwarded") or ""
    return audit.Actor(
        kind,
        user=principal.user or "",
        key_id=principal.key_id or "",
        client_ip=request.client.host if request.client else "",
        forwarded_for=forwarded,
        user_agent=request.headers.get("user-agent", ""),
    )


async def record(
    request: Request,
    principal: Principal,
    team: str,
    action: audit.Action,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append an entry for a change the request just made."""
    actor = actor_of(request, principal)
    await backend_of(request).run(audit.record, team, action, actor, target, details)
