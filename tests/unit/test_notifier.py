"""The webhook notifier against a local HTTP receiver: payload, retries with backoff, giving up."""

from __future__ import annotations

import asyncio

from aiohttp import web

from infra.net import free_port
from runstream.events import ALERT, Event
from runstream.streams.notifier import Notifier

ALERT_EVENT = Event(ALERT, "acme", "mnist", "run1", 7, 1_760_000_000.0,
                    {"title": "loss too big", "text": "loss = 12", "level": "ERROR", "source": "rule", "rule_id": "r1"})


async def _with_receiver(statuses: list[int], body) -> list[dict]:
    """Run ``body(url)`` against a receiver answering ``statuses`` in turn (then 200)."""
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await body(f"http://127.0.0.1:{port}/hook")
    finally:
        await runner.cleanup()
    return got


def test_a_flaky_receiver_gets_the_alert_after_retries_and_only_once():
    async def body(url: str) -> None:
        notifier = Notifier([url], first_backoff_s=0.01)
        assert await notifier.deliver(ALERT_EVENT, "a1") == 1
        assert await notifier.deliver(ALERT_EVENT, "a1") == 0  # already delivered

    got = asyncio.run(_with_receiver([500, 503], body))
    assert len(got) == 3
    payload = got[-1]
    assert payload["text"] == "[ERROR] loss too big (acme/mnist/run1)"
    assert payload["attachments"][0]["text"] == "loss = 12"
    assert payload["runstream"]["alert_id"] == "a1" and payload["runstream"]["rule_id"] == "r1"


def test_a_refusing_receiver_is_not_retried_and_an_unreachable_one_is_given_up():
    async def body(url: str) -> None:
        notifier = Notifier([url], tries=3, first_backoff_s=0.01)
        assert await notifier.deliver(ALERT_EVENT, "a2") == 0  # 400: the payload is refused, no retry
        dead = Notifier([f"http://127.0.0.1:{free_port()}/nobody"], tries=2, first_backoff_s=0.01)
        assert await dead.deliver(ALERT_EVENT, "a3") == 0

    got = asyncio.run(_with_receiver([400], body))
    assert len(got) == 1
