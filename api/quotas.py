"""Quotas: how much one API key, one team and one keyless client may ask of this API replica.

- ingest: metric points per second and body bytes per second (``POST /api/v1/events``, and
  the bytes of file uploads), and the largest body;
- queries: requests per second to project and team endpoints (charts, runs, reports...);
  a keyless client's address is also charged one for each failed authentication (401);
- live alert streams (Server-Sent Events) held open at once.

Rates are token buckets: a bucket holds ``burst_s`` seconds of its rate and refills
continuously, so bursts pass and the average is bounded. A request larger than a whole
bucket passes once the bucket is full and leaves it in debt, so it is never refused
forever. Over a limit the answer is 429 with ``Retry-After`` (whole seconds) and an
error that names the limit and the setting that raises it. One charge is taken whole
or not at all, but work done is paid for whatever its outcome: an ingest body's bytes are
charged once it is read, also when the batch is then refused (422, 403, 404, or 429 for
its points); its points only when it is accepted.

A key is limited by its own buckets and by its team's; a caller without a key (public
projects, share links) by its client address. The embedded server's local admin is
exempt unless ``quota_local_admin`` is set. Buckets live in this process: with N API
replicas behind a load balancer, a key may get up to N times its limit (docs/operations.md,
"Quotas").
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runstream.api.auth import Principal, authenticate
from runstream.api.errors import ApiError, error_response
from runstream.api.requests import read_body as _read_body
from runstream.settings import Settings, env_var

Clock = Callable[[], float]
Subject = tuple[str, str]  # ("key", key id) | ("team", team) | ("client", address) | ("local", "admin")

#: Buckets and stream counts kept at most per limit; full buckets (the same as none) go first.
MAX_SUBJECTS = 100_000


class QuotaExceeded(ApiError):
    """429: ``limit`` (a settings field) is used up for ``subject``; retry after ``retry_after`` seconds."""

    def __init__(self, limit: Limit, subject: Subject, retry_after: float) -> None:
        self.limit = limit
        self.subject = subject
        self.retry_after = max(1, math.ceil(retry_after))  # Retry-After is whole seconds; 0 would mean "now"
        setting = env_var(limit.setting)
        who = _describe(subject)
        if limit.concurrent:
            message = f"{who} holds {_number(limit.amount)} {limit.unit} already, the most allowed"
            retry = "close one, or retry"
        else:
            message = f"{who} is over its quota of {_number(limit.amount)} {limit.unit}"
            retry = "retry"
        super().__init__(
            429,
            f"{message} on this server ({setting}): {retry} after {self.retry_after} s, or ask the operator "
            f"to raise {setting} (0 = unlimited)",
            code="quota_exceeded",
            details={
                "limit": limit.setting,
                "setting": setting,
                "amount": limit.amount,
                "unit": limit.unit,
                "subject": who,
                "retry_after": self.retry_after,
            },
        )


async def on_quota_exceeded(request: Request, exc: Exception) -> Response:
    """The error handler of ``QuotaExceeded``: the API's error with ``Retry-After``."""
    assert isinstance(exc, QuotaExceeded)
    from runstream.api.middleware import QUOTA_REFUSED, REJECTED  # middleware -> openapi -> here

    QUOTA_REFUSED.labels(exc.limit.setting).inc()
    headers = {"Retry-After": str(exc.retry_after)}
    if exc.limit.setting.endswith(("points_per_s", "bytes_per_s")):
        REJECTED.labels("quota").inc()
        # The batch may be unread (refused before reading): closing spares the server receiving it, and a
        # client that asks again at once pays a new connection.
        headers["Connection"] = "close"
    return error_response(429, exc.code, exc.message, exc.details, headers)


def _number(amount: float) -> str:
    return f"{int(amount):,}" if amount == int(amount) else f"{amount:,g}"


def _describe(subject: Subject) -> str:
    kind, name = subject
    return {"key": f"API key {name}", "team": f"team {name}", "client": f"client {name} (no API key)"}.get(
        kind, "the local admin"
    )


@dataclass(frozen=True)
class Limit:
    setting: str  # its field in ``Settings``; the error names its variable
    amount: float  # per second, or at once for a concurrent limit; 0: unlimited
    unit: str
    concurrent: bool = False


class _Bucket:
    __slots__ = ("blocked_until", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.blocked_until = 0.0  # told to wait until then: a quick pre-check refuses before any work


class Rate:
    """Token buckets of one rate limit, one per subject, created full when first used."""

    def __init__(self, limit: Limit, burst_s: float) -> None:
        self.limit = limit
        self.capacity = limit.amount * max(burst_s, 1)
        self.buckets: dict[str, _Bucket] = {}

    def _bucket(self, name: str, now: float) -> _Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            if len(self.buckets) >= MAX_SUBJECTS:
                self._prune(now)
            bucket = self.buckets[name] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.limit.amount)
            bucket.updated = now
        return bucket

    def _prune(self, now: float) -> None:
        """Forget full buckets (a full bucket is the same as none); if none is full, the oldest half."""
        rate = self.limit.amount
        for name in [n for n, b in self.buckets.items() if b.tokens + (now - b.updated) * rate >= self.capacity]:
            del self.buckets[name]
        if len(self.buckets) >= MAX_SUBJECTS:
            for name in sorted(self.buckets, key=lambda n: self.buckets[n].updated)[: len(self.buckets) // 2]:
                del self.buckets[name]

    def wait(self, name: str, cost: float, now: float) -> float:
        """Seconds until ``cost`` can pass for ``name`` (0: now). Cost 0 asks only whether it was told to wait."""
        bucket = self._bucket(name, now)
        if now < bucket.blocked_until:
            return bucket.blocked_until - now
        need = min(cost, self.capacity)  # a request larger than the bucket passes when it is full
        return 0.0 if bucket.tokens >= need else (need - bucket.tokens) / self.limit.amount

    def block(self, name: str, until: float) -> None:
        bucket = self.buckets[name]
        bucket.blocked_until = max(bucket.blocked_until, until)

    def take(self, name: str, cost: float) -> None:
        self.buckets[name].tokens -= cost

    def debit(self, name: str, cost: float, now: float) -> None:
        """Take ``cost`` whatever the bucket holds (work already done): it may go into debt."""
        self._bucket(name, now).tokens -= cost


Charge = tuple[Rate, str, float]  # (the rate, the subject's name, the cost)


def admit(charges: Iterable[Charge], clock: Clock) -> None:
    """Take every charge, or none: QuotaExceeded for the one that would wait longest.

    Nothing awaits in here, so the check and the taking are one step for the event loop.
    """
    charges = list(charges)
    now = clock()
    worst: tuple[float, Rate, str] | None = None
    for rate, name, cost in charges:
        wait = rate.wait(name, cost, now)
        if wait > 0 and (worst is None or wait > worst[0]):
            worst = (wait, rate, name)
    if worst is not None:
        wait, rate, name = worst
        for other, other_name, cost in charges:  # every bucket that refuses tells its subject to wait
            other_wait = other.wait(other_name, cost, now)
            if other_wait > 0:
                other.block(other_name, now + other_wait)
        raise QuotaExceeded(rate.limit, _subject_of(name), wait)
    for rate, name, cost in charges:
        rate.take(name, cost)


class Streams:
    """How many live streams each subject holds open, against a limit."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def full(self, name: str) -> bool:
        return self.open.get(name, 0) >= self.limit.amount

    def add(self, name: str, change: int) -> None:
        count = self.open.get(name, 0) + change
        if count > 0:
            self.open[name] = count
        else:
            self.open.pop(name, None)


@dataclass(frozen=True)
class Slot:
    """Live streams held by one request, given back when its response ends."""

    held: tuple[tuple[Streams, str], ...]

    def release(self) -> None:
        for streams, name in self.held:
            streams.add(name, -1)

    def hold(self, response: StreamingResponse) -> Response:
        """``response``, giving the slot back once it has ended, however it ends (a client gone, an error)."""
        return _Releasing(response, self)


class _Releasing(Response):
    def __init__(self, response: StreamingResponse, slot: Slot) -> None:  # the wrapped response has the body
        self.response = response
        self.slot = slot
        self.status_code = response.status_code
        self.raw_headers = response.raw_headers  # what ``.headers`` reads: the wrapped response's
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.slot.release()


class Quotas:
    """This replica's quotas: built from ``Settings``; ``clock`` is injectable for tests."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.local_admin = settings.quota_local_admin
        self.request_bytes = settings.quota_request_bytes

        def rate(setting: str, unit: str) -> Rate | None:
            amount = getattr(settings, setting)
            return Rate(Limit(setting, amount, unit), settings.quota_burst_s) if amount > 0 else None

        def streams(setting: str) -> Streams | None:
            amount = getattr(settings, setting)
            return Streams(Limit(setting, amount, "live streams", concurrent=True)) if amount > 0 else None

        self.points = {
            "key": rate("quota_key_points_per_s", "points/s"),
            "team": rate("quota_team_points_per_s", "points/s"),
        }
        self.bytes = {
            "key": rate("quota_key_bytes_per_s", "bytes/s"),
            "team": rate("quota_team_bytes_per_s", "bytes/s"),
        }
        self.queries = {
            "key": rate("quota_key_queries_per_s", "requests/s"),
            "team": rate("quota_team_queries_per_s", "requests/s"),
            "client": rate("quota_anonymous_queries_per_s", "requests/s"),
            "local": rate("quota_key_queries_per_s", "requests/s"),
        }
        self.streams = {
            "key": streams("quota_key_streams"),
            "team": streams("quota_team_streams"),
            "client": streams("quota_anonymous_streams"),
            "local": streams("quota_key_streams"),
        }
        self.points["local"] = self.points["key"]
        self.bytes["local"] = self.bytes["key"]

    # -- who is charged --------------------------------------------------------------------------

    def subjects(self, principal: Principal, client: str) -> list[Subject]:
        """The subjects a caller's requests count against; none for an exempt local admin."""
        if principal.local_admin:
            return [("local", "admin")] if self.local_admin else []
        if principal.key_id is not None:
            return [("key", principal.key_id), *([("team", principal.team)] if principal.team else [])]
        return [("client", client)]

    def _charges(self, table: dict[str, Rate | None], subjects: list[Subject], cost: float) -> list[Charge]:
        return [(rate, f"{kind}:{name}", cost) for kind, name in subjects if (rate := table.get(kind)) is not None]

    # -- ingest ------------------------------------------------------------------------------------

    def check_ingest(self, subjects: list[Subject]) -> None:
        """Before reading a batch: refused if the caller was told to wait and the time is not up."""
        admit(self._charges(self.points, subjects, 0) + self._charges(self.bytes, subjects, 0), self.clock)

    def charge_bytes(self, subjects: list[Subject], size: int) -> None:
        """``size`` bytes received (a body read, whatever becomes of it), or QuotaExceeded."""
        admit(self._charges(self.bytes, subjects, size), self.clock)

    def debit_bytes(self, subjects: list[Subject], size: int) -> None:
        """``size`` bytes already received (an upload as streamed): taken, into debt if need be, never refused."""
        for rate, name, cost in self._charges(self.bytes, subjects, size):
            rate.debit(name, cost, self.clock())

    def charge_points(self, subjects: list[Subject], points: int) -> None:
        """An accepted batch's metric points, or QuotaExceeded (and nothing of the batch applied)."""
        admit(self._charges(self.points, subjects, points), self.clock)

    # -- queries -----------------------------------------------------------------------------------

    def charge_query(self, subjects: list[Subject]) -> None:
        admit(self._charges(self.queries, subjects, 1), self.clock)

    def charge_failed_auth(self, client: str) -> None:
        """A credential that did not work costs its client address one request (a flood of guesses gets 429)."""
        self.charge_query([("client", client)])

    # -- live streams ------------------------------------------------------------------------------

    def open_stream(self, subjects: list[Subject]) -> Slot:
        """A slot for one more live stream of these subjects, or QuotaExceeded (retry in a few seconds)."""
        held = [(s, f"{kind}:{name}") for kind, name in subjects if (s := self.streams.get(kind)) is not None]
        for streams, name in held:
            if streams.full(name):
                raise QuotaExceeded(streams.limit, _subject_of(name), STREAM_RETRY_S)
        for streams, name in held:
            streams.add(name, 1)
        return Slot(tuple(held))


#: What a client refused a live stream is told to wait: streams end when their clients go.
STREAM_RETRY_S = 5


def _subject_of(name: str) -> Subject:
    kind, _, rest = name.partition(":")
    return (kind, rest)


# -- what the endpoints call -------------------------------------------------------------------------


def quotas_of(request: Request) -> Quotas:
    return request.app.state.quotas


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def subjects_of(request: Request, principal: Principal | None = None) -> list[Subject]:
    quotas = quotas_of(request)
    if principal is None:
        principal = await authenticate(request)
    return quotas.subjects(principal, _client(request))


async def charge_query(request: Request, principal: Principal) -> None:
    """One request to a project or team endpoint, after its access check let ``principal`` in."""
    quotas_of(request).charge_query(await subjects_of(request, principal))


async def check_ingest(request: Request, principal: Principal) -> list[Subject]:
    """Before an ingest batch is read: the caller's subjects, or QuotaExceeded while it was told to wait."""
    subjects = await subjects_of(request, principal)
    quotas_of(request).check_ingest(subjects)
    return subjects


def charge_body(request: Request, subjects: list[Subject], size: int) -> None:
    """An ingest body just read, before any work on it: its bytes, whatever the batch's outcome."""
    quotas_of(request).charge_bytes(subjects, size)


def charge_points(request: Request, subjects: list[Subject], events: Iterable[Any]) -> None:
    """An accepted batch, before anything of it is applied: its metric points, or QuotaExceeded."""
    quotas_of(request).charge_points(subjects, count_points(events))


def charge_failed_auth(request: Request) -> None:
    """A 401: the client address pays one request, or the answer becomes 429."""
    quotas_of(request).charge_failed_auth(_client(request))


def metered(request: Request, subjects: list[Subject]) -> AsyncGenerator[bytes]:
    """A request's body to stream in (an upload), charged to the bytes buckets: now its declared size
    (QuotaExceeded when that does not fit), and as it streams whatever arrives past that (into debt,
    never cut off midway), charged when the stream is closed."""
    quotas = quotas_of(request)
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else 0
    quotas.charge_bytes(subjects, size)
    return _counted(request.stream(), lambda received: quotas.debit_bytes(subjects, max(0, received - size)))


async def _counted(chunks: AsyncIterator[bytes], done: Callable[[int], None]) -> AsyncGenerator[bytes]:
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            yield chunk
    finally:
        done(received)


def count_points(events: Iterable[Any]) -> int:
    """Metric points in a batch: one per metric value at one step (system metrics count the same way)."""
    points = 0
    for event in events:
        values = event.data.get("values") if isinstance(event.data, dict) else None
        if isinstance(values, dict):
            points += sum(len(column) if isinstance(column, list) else 1 for column in values.values())
    return points


async def open_stream(request: Request) -> Slot:
    """A slot for one more live stream of the caller (give it back with ``Slot.hold``), or 429."""
    return quotas_of(request).open_stream(await subjects_of(request))


def request_bytes(request: Request, ceiling: int) -> int:
    """The largest ingest body: ``quota_request_bytes``, never above what the endpoint reads at all."""
    limit = quotas_of(request).request_bytes
    return ceiling if limit <= 0 else min(limit, ceiling)


async def read_body(request: Request, ceiling: int) -> bytes:
    """An ingest body, at most ``quota_request_bytes`` (and ``ceiling``); 413 names the setting when it binds."""
    limit = request_bytes(request, ceiling)
    try:
        return await _read_body(request, limit)
    except ApiError as exc:
        if exc.status == 413 and limit < ceiling:
            setting = env_var("quota_request_bytes")
            exc.message += f" (the server's {setting}; at most {ceiling:,})"
            exc.args = (exc.message,)
        raise
