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
import logging
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlparse

from runstream.kafka import start_producer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger("runstream")

Records = list[tuple[str, bytes]]

INGEST_PATH = "/api/v1/events"
FILES_PATH = "/api/v1/files"


class TransportError(RuntimeError):
    """A send that failed; ``permanent`` when retrying the same records cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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

    async def send(self, records: Records, key: bytes) -> None:
        producer = None
        try:
            producer = await self._ensure_producer()
            futures = [await producer.send(topic, value, key=key) for topic, value in records]
            await asyncio.gather(*futures)
        except Exception as exc:
            # A fresh producer after any failure: the idempotent producer's sequence state may be broken.
            # (Other runs' sends through it fail too, and are tried again like this one.)
            if producer is not None and producer is self._producer:
                await self.close()
            raise TransportError(f"Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=5)
            except Exception:  # noqa: BLE001 - closing a producer whose broker is gone
                pass


class HttpTransport:
    def __init__(self, url: str, api_key: str = "", timeout: float = 30.0) -> None:
        self.base = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes, content_type: str) -> bytes:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Content-Type", content_type)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000].decode(errors="replace")
            # 4xx other than 408/429 will fail the same way again; 5xx and timeouts may pass later.
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            raise TransportError(f"{method} {self.base}{path}: HTTP {exc.code}: {detail}", permanent) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise TransportError(f"{method} {self.base}{path}: {exc}") from exc

    async def send(self, records: Records, key: bytes) -> None:
        body = b"\n".join(event for _, event in records) + b"\n"
        await asyncio.to_thread(self._request, "POST", INGEST_PATH, body, "application/x-ndjson")

    async def upload(self, run_path: str, store_key: str, data: bytes, sha256: str) -> None:
        """Put a run file's bytes into the file store (``run_path`` is team/project/run_id)."""
        path = f"{FILES_PATH}/{quote(run_path)}/{quote(store_key)}?sha256={sha256}"
        await asyncio.to_thread(self._request, "PUT", path, data, "application/octet-stream")

    async def close(self) -> None:
        return None
