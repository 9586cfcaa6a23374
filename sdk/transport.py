"""How spooled events leave the training process, chosen by URL.

- ``kafka://host:port[,host:port]``: straight to the cluster's topics (aiokafka,
  acks=all, idempotent producer, compression, key = run).
- ``http(s)://server``: the API's ingest endpoint (the embedded server, or
  clients outside the cluster network), which answers once the events are durable.

``send()`` returns only when every record was acknowledged and raises otherwise;
the sender then keeps the records in the spool and tries again later.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlparse

from runstream.kafka import start_producer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger("runstream")

Records = list[tuple[str, bytes]]

INGEST_PATH = "/api/v1/events"
FILES_PATH = "/api/v1/files"
#: Artifact blobs, content-addressed per team: ``{BLOBS_PATH}/missing`` and ``{BLOBS_PATH}/<sha256>``.
BLOBS_PATH = "/api/v1/projects/{team}/{project}/blobs"
#: Read from disk and handed to the socket this much at a time: a blob never sits in memory whole.
BLOB_CHUNK_BYTES = 1 << 20
#: How long a blob upload waits for the server (per read or write): resuming a large blob, the server reads
#: what it holds again (checking its SHA-256) before it reads on.
BLOB_TIMEOUT = 300.0
#: The most SHA-256s one ``blobs/missing`` question may name (the API's bound).
MAX_MISSING_QUERY = 10_000


#: Statuses that blame the key (or a proxy's authentication): a key to fix, the events are fine.
KEY_STATUSES = (401, 403, 407)
#: Statuses with which the runstream API refuses events for good (too large, invalid): never worth resending.
REJECTED_STATUSES = (413, 422)
#: Kafka's refusals of a record for its size: it fails the same way every time.
KAFKA_TOO_LARGE = ("MessageSizeTooLargeError", "RecordTooLargeError")
#: Bounds (s) on a Retry-After: 0 would make a tight loop, a huge value would park the sender.
RETRY_AFTER_BOUNDS = (0.5, 300.0)


class TransportError(RuntimeError):
    """A send that failed; ``permanent`` when retrying the same records at once cannot help.

    ``status`` is the HTTP status (None for a connection failure or Kafka), ``retry_after`` the
    seconds a 429/503 asked to wait (clamped to ``RETRY_AFTER_BOUNDS``), ``bad_lines`` the 1-based
    records the server named as invalid (a 422's ``details.errors``), ``all_invalid`` when it said
    every record of the batch is, ``reason`` the server's own message. ``rejected`` is set only where
    the events themselves are refused for good: the runstream API's 413/422, Kafka's record-too-large.
    """

    def __init__(
        self,
        message: str,
        permanent: bool = False,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        bad_lines: dict[int, str] | None = None,
        all_invalid: bool = False,
        reason: str = "",
        rejected: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent or rejected
        self.status = status
        self.retry_after = retry_after
        self.bad_lines = bad_lines or {}
        self.all_invalid = all_invalid
        self.reason = reason or message
        self.rejected = rejected

    @property
    def blames_key(self) -> bool:
        return self.refused and self.status in KEY_STATUSES

    @property
    def refused(self) -> bool:
        """A permanent failure that does not blame the events (a refused key, a wrong address, a proxy's
        4xx): the events are fine, keep them and retry slowly."""
        return self.permanent and not self.rejected


def key_hint(api_key: str) -> str:
    """A key as it may be shown: its public id (``rs_<id>…``) or its first few characters, never the secret."""
    if not api_key:
        return "no API key"
    match = re.match(r"(rs_[0-9a-f]{6,16})_", api_key)
    if match:
        return f"key {match.group(1)}…"
    shown = api_key[: min(6, len(api_key) // 3)]
    return f"key {shown}…" if shown else "a short API key"


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds within ``RETRY_AFTER_BOUNDS``: a number of seconds or an HTTP date; None
    when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    low, high = RETRY_AFTER_BOUNDS
    return min(max(seconds, low), high)


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer's body says: the runstream API's JSON shape (``{"error": {"code": ...}}``) or not."""

    message: str
    api: bool = False  # the body is the runstream API's error, not a proxy's or another server's
    bad_lines: dict[int, str] = field(default_factory=dict)
    all_invalid: bool = False  # details.invalid == details.total: every event of the batch is refused


def _error_body(body: str) -> ErrorBody:
    """The API's error message and the invalid lines it names (``details.errors[].line``: why), if any."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return ErrorBody(body.strip()[:500])
    details = error.get("details")
    details = details if isinstance(details, dict) else {}
    errors = details.get("errors")
    lines = {
        e["line"]: str(e.get("reason", ""))
        for e in (errors if isinstance(errors, list) else [])
        if isinstance(e, dict) and isinstance(e.get("line"), int)
    }
    invalid, total = details.get("invalid"), details.get("total")
    reasons = "; ".join(f"line {n}: {why}" for n, why in list(lines.items())[:3])
    message = str(error.get("message") or body.strip()[:500])
    return ErrorBody(
        f"{message} ({reasons})" if reasons else message,
        api=True,
        bad_lines=lines,
        all_invalid=isinstance(invalid, int) and invalid > 0 and invalid == total,
    )


class Transport(Protocol):
    async def send(self, records: Records, key: bytes) -> None: ...

    async def close(self) -> None: ...


def open_transport(url: str, api_key: str = "") -> Transport:
    scheme = urlparse(url).scheme
    if scheme == "kafka":
        return KafkaTransport(url)
    if scheme in ("http", "https"):
        return HttpTransport(url, api_key)
    raise ValueError(f"unsupported runstream URL {url!r}: use http(s)://server or kafka://host:port[,host:port]")


def open_uploader(transport: Transport | None, files_url: str, api_key: str = "") -> HttpTransport | None:
    """Where a run's blobs go: ``files_url``, else the transport itself when it is the API's HTTP one.

    None (a Kafka run without ``files_url``) means the blobs stay in the run's files directory.
    """
    if files_url:
        return HttpTransport(files_url, api_key)
    return transport if isinstance(transport, HttpTransport) else None


class _QuietInSender(logging.Filter):
    """aiokafka logs every refused connection; in the sender thread those are retried, and reported once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not threading.current_thread().name.startswith("runstream-")


def _quiet_aiokafka() -> None:
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender", "aiokafka.client"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietInSender) for f in logger.filters):
            logger.addFilter(_QuietInSender())


class KafkaTransport:
    """An idempotent producer to the brokers, started on the first send. The runs of a process that
    send to the same brokers share one (``sender._Hub.send_for``), so its sends may interleave."""

    def __init__(self, url: str) -> None:
        self.bootstrap = urlparse(url).netloc
        if not self.bootstrap:
            raise ValueError(f"a Kafka URL names its brokers: kafka://host:port[,host:port], got {url!r}")
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Lock | None = None  # made on the loop that sends
        _quiet_aiokafka()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # one start, whichever run's send asks first
            if self._producer is None:
                self._producer = await start_producer(self.bootstrap)
            return self._producer

    async def send(self, records: Records, key: bytes, on_wire: Callable[[], None] | None = None) -> None:
        """``on_wire`` is called once the producer is up, as the records are handed to it."""
        producer = None
        futures: list[asyncio.Future] = []
        try:
            producer = await self._ensure_producer()
            if on_wire is not None:
                on_wire()
            for topic, value in records:
                futures.append(await producer.send(topic, value, key=key))
        except Exception as exc:
            for future in futures:  # what was handed over goes anyway; nobody waits for it (nor its error)
                future.add_done_callback(_retrieved)
            too_large = type(exc).__name__ in KAFKA_TOO_LARGE
            if not too_large:  # the producer refused a record itself for its size: the producer is fine
                await self._drop(producer)
            raise TransportError(f"Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}", rejected=too_large) from exc
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            # A fresh producer after a failure the brokers reported: the idempotent producer's sequence state may
            # be broken. (Other runs' sends through it fail too, and are tried again like this one.)
            await self._drop(producer)
            # A record the brokers refuse for what it is (too large for the topic) fails the same way again.
            too_large = type(exc).__name__ in KAFKA_TOO_LARGE
            raise TransportError(f"Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}", rejected=too_large) from exc

    async def _drop(self, producer: AIOKafkaProducer | None) -> None:
        if producer is not None and producer is self._producer:
            await self.close()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=5)
            except Exception:  # noqa: BLE001 - closing a producer whose broker is gone
                pass


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: asyncio does not log it as never retrieved


class HttpTransport:
    def __init__(self, url: str, api_key: str = "", timeout: float = 30.0) -> None:
        self.base = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        #: The largest blob the server takes, as its last ``blobs/missing`` answer said (None: not said yet, or an
        #: older server that does not say): a larger file is refused before any byte of it is sent.
        self.max_blob_bytes: int | None = None
        self._limit_asked = False

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes],
        content_type: str,
        length: int | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One request; ``body`` may be an iterable of chunks (streamed) when ``length`` gives its size."""
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Content-Type", content_type)
        if length is not None:
            request.add_header("Content-Length", str(length))
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            said = _error_body(exc.read()[:20000].decode(errors="replace"))
            # 4xx other than 408/429 fail the same way again; 5xx and timeouts may pass later. Only the
            # API's own 413/422 blame the events: any other 4xx (a proxy's 400, 415, 431...) is retried slowly.
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            raise TransportError(
                f"{method} {self.base}{path}: HTTP {exc.code}: {said.message}",
                permanent,
                status=exc.code,
                retry_after=parse_retry_after(exc.headers.get("Retry-After")) if exc.headers else None,
                bad_lines=said.bad_lines,
                all_invalid=said.all_invalid,
                reason=f"HTTP {exc.code}: {said.message}",
                rejected=exc.code in REJECTED_STATUSES and said.api,
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise TransportError(f"{method} {self.base}{path}: {exc}") from exc

    async def send(self, records: Records, key: bytes) -> None:
        body = b"\n".join(event for _, event in records) + b"\n"
        await asyncio.to_thread(self._request, "POST", INGEST_PATH, body, "application/x-ndjson")

    async def upload(self, run_path: str, store_key: str, data: bytes, sha256: str) -> None:
        """Put a run file's bytes into the file store (``run_path`` is team/project/run_id)."""
        path = f"{FILES_PATH}/{quote(run_path)}/{quote(store_key)}?sha256={sha256}"
        await asyncio.to_thread(self._request, "PUT", path, data, "application/octet-stream")

    # -- artifact blobs (blocking: called on a thread of their own, off the sender's loop) ----
    def missing_blobs(self, team: str, project: str, shas: list[str]) -> tuple[set[str], dict[str, int]]:
        """Which of ``shas`` the server does not hold yet, and how many bytes it holds of those partly uploaded."""
        missing: set[str] = set()
        partial: dict[str, int] = {}
        path = BLOBS_PATH.format(team=quote(team, safe=""), project=quote(project, safe="")) + "/missing"
        for start in range(0, len(shas), MAX_MISSING_QUERY):
            body = json.dumps({"sha256": shas[start : start + MAX_MISSING_QUERY]}).encode()
            answer = json.loads(self._request("POST", path, body, "application/json"))
            missing.update(answer.get("missing", ()))
            limit = answer.get("max_blob_bytes")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
                self.max_blob_bytes = limit
            partial.update({sha: int(n) for sha, n in (answer.get("partial") or {}).items()})
        return missing, partial

    def put_blob(
        self,
        team: str,
        project: str,
        sha256: str,
        source: Path,
        size: int,
        offset: int = 0,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Stream ``source`` (``size`` bytes, SHA-256 ``sha256``) to the blob store from ``offset`` on; the bytes
        sent. One request for the rest of the blob: a cut one loses nothing (the server keeps what arrived), each
        resumed one makes the server read what it holds again (to go on checking the SHA-256), and a request
        larger than the bytes/s quota's burst still passes once the bucket is full. When the server holds another
        offset (a 409: an earlier upload got further, or not as far), it goes on from the server's. ``stop()``
        true cuts the upload short (``TransportError``), between two chunks."""
        if self.max_blob_bytes is None and not self._limit_asked:  # learn the limit before the first bytes
            self._limit_asked = True
            self.missing_blobs(team, project, [sha256])
        if self.max_blob_bytes is not None and size > self.max_blob_bytes:  # a 413 would come after the bytes
            why = f"the blob is {size:,} bytes, more than the server's max_blob_bytes ({self.max_blob_bytes:,})"
            raise TransportError(f"{self.base}: {why}", status=413, reason=why, rejected=True)
        base = BLOBS_PATH.format(team=quote(team, safe=""), project=quote(project, safe="")) + f"/{sha256}"
        for _ in range(3):
            length = size - offset
            try:
                self._request(
                    "PUT",
                    f"{base}?offset={offset}&size={size}",
                    _file_chunks(source, offset, length, stop),
                    "application/octet-stream",
                    length,
                    max(self.timeout, BLOB_TIMEOUT),
                )
                return length
            except TransportError as exc:
                if exc.status != 409:
                    raise
                missing, partial = self.missing_blobs(team, project, [sha256])  # where does the server stand?
                if sha256 not in missing:
                    return 0
                offset = partial.get(sha256, 0)
        raise TransportError(f"{self.base}: the upload of blob {sha256} kept meeting another one (HTTP 409)")

    async def close(self) -> None:
        return None


def _file_chunks(source: Path, offset: int, length: int, stop: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """``length`` bytes of ``source`` from ``offset``, a chunk at a time (a blob is never read whole)."""
    with open(source, "rb") as f:
        f.seek(offset)
        while length > 0:
            if stop is not None and stop():
                raise TransportError(f"the upload of {source} was stopped")
            chunk = f.read(min(BLOB_CHUNK_BYTES, length))
            if not chunk:
                raise TransportError(f"{source} ended {length} bytes before its recorded size", rejected=True)
            length -= len(chunk)
            yield chunk
