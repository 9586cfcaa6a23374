"""The webhook notifier against a local HTTP receiver: payload, retries with backoff, giving up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import aiohttp.abc
from aiohttp import web

from infra.net import free_port
from runstream.events import ALERT, Event
from runstream.streams.notifier import Notifier, WebhookPolicy

ALERT_EVENT = Event(
    ALERT,
    "acme",
    "mnist",
    "run1",
    7,
    1_760_000_000.0,
    {"title": "loss too big", "text": "loss = 12", "level": "ERROR", "source": "rule", "rule_id": "r1"},
)


@contextlib.asynccontextmanager
async def _serving(handler) -> AsyncIterator[str]:
    """A local HTTP server with ``handler`` at /hook; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def _with_receiver(statuses: list[int], body) -> list[dict]:
    """Run ``body(url)`` against a receiver answering ``statuses`` in turn (then 200)."""
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=statuses.pop(0) if statuses else 200)

    async with _serving(hook) as url:
        await body(url)
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


def test_a_rules_webhook_may_not_reach_internal_addresses_unless_allowed():
    async def body(url: str) -> None:
        # The operator's own webhook is trusted; a rule's webhook to the same internal host is not.
        assert await Notifier([], tries=3, first_backoff_s=0.01).deliver(ALERT_EVENT, "b1", [url]) == 0
        assert await Notifier([url], tries=3, first_backoff_s=0.01).deliver(ALERT_EVENT, "b2", [url]) == 1
        allowed = Notifier([], tries=3, first_backoff_s=0.01, allow="10.0.0.0/8, 127.0.0.0/8")
        assert await allowed.deliver(ALERT_EVENT, "b3", [url]) == 1

        # Trusting the operator's webhook trusts that URL only, not its host for rules.
        other_path = url.replace("/hook", "/hook?x=1")
        assert await Notifier([url], tries=3, first_backoff_s=0.01).deliver(ALERT_EVENT, "b4", [other_path]) == 1
        # A rule's URL that is not even a URL is refused alone: the global webhook still gets the alert.
        assert await Notifier([url], tries=3, first_backoff_s=0.01).deliver(ALERT_EVENT, "b5", ["http://[::1"]) == 1

    got = asyncio.run(_with_receiver([], body))
    assert [g["runstream"]["alert_id"] for g in got] == ["b2", "b3", "b4", "b5"]


class _NameToLoopback(aiohttp.abc.AbstractResolver):
    """DNS where hooks.example is 127.0.0.1: a public-looking name for an internal address."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        assert host == "hooks.example"
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self):
        pass


def test_a_name_resolving_to_an_internal_address_is_refused_at_connection(monkeypatch):
    monkeypatch.setattr(aiohttp, "DefaultResolver", _NameToLoopback)

    async def body(url: str) -> None:
        by_name = url.replace("127.0.0.1", "hooks.example")
        refused = Notifier([], tries=3, first_backoff_s=5.0)
        assert refused.policy.refusal(by_name) is None  # the name alone looks fine
        assert await asyncio.wait_for(refused.deliver(ALERT_EVENT, "d1", [by_name]), 4) == 0  # and is not retried
        trusted = Notifier([], allow="hooks.example")
        assert await trusted.deliver(ALERT_EVENT, "d2", [by_name]) == 1

    got = asyncio.run(_with_receiver([], body))
    assert [g["runstream"]["alert_id"] for g in got] == ["d2"]


def test_a_redirect_is_not_followed():
    async def body(url: str) -> None:
        bounced: list[bool] = []

        async def redirect(request: web.Request) -> web.Response:
            bounced.append(True)
            raise web.HTTPFound(url)  # to a receiver the rule may not reach by itself

        async with _serving(redirect) as bounce:
            notifier = Notifier([], tries=3, first_backoff_s=5.0, allow="127.0.0.1/32")
            assert await asyncio.wait_for(notifier.deliver(ALERT_EVENT, "c1", [bounce]), 4) == 0
        assert bounced == [True]  # posted once, not retried, and the redirect was not followed

    assert asyncio.run(_with_receiver([], body)) == []


def test_webhook_policy_judges_addresses_and_names():
    policy = WebhookPolicy("hooks.internal, 192.168.7.0/24")
    assert policy.refusal("https://hooks.slack.com/services/T/B/x") is None
    assert policy.refusal("http://8.8.8.8/x") is None
    assert policy.refusal("http://hooks.internal:9000/x") is None
    assert policy.refusal("http://192.168.7.9/x") is None
    for url in (
        "http://127.0.0.1/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://localhost/x",
        "http://a.localhost/x",
        "http://192.168.8.1/x",
        "http://0.0.0.0/x",
        # Unicode digits and dots that yarl turns into 127.0.0.1 (aiohttp then connects without DNS)
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x",
        "http://127\u30020\u30020\u30021/x",
        # IPv6 forms that carry an internal IPv4 address: NAT64, 6to4, IPv4-compatible
        "http://[64:ff9b::a9fe:a9fe]/latest",
        "http://[2002:7f00:1::]/x",
        "http://[::127.0.0.1]/x",
        "http://[::ffff:0:7f00:1]/x",
    ):
        assert policy.refusal(url) and "RUNSTREAM_WEBHOOK_ALLOW" in policy.refusal(url), url
    for url in ("http://[::1", "ftp://example.org/x", "http:///x"):
        assert "URL" in policy.refusal(url), url
    assert WebhookPolicy("[fd00::]/64").refusal("http://[fd00::5]/x") is None
