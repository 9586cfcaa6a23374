"""Alert notifications: post each alert to webhooks, Slack-compatible, with retries.

The payload is what a Slack incoming webhook takes (``text`` plus an
attachment with the details); receivers that are not Slack read the same JSON,
and the ``runstream`` entry carries the alert's fields for them. A failed post
is retried with exponential backoff; after the last try the alert is logged
and skipped, so one dead receiver never stops the stream. An alert id already
delivered (a replayed alert, or a stall seen again by the next sweep) is not
posted twice while it is remembered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from runstream.events import Event

log = logging.getLogger(__name__)

_COLORS = {"INFO": "#2eb67d", "WARN": "#ecb22e", "ERROR": "#e01e5a"}


def slack_payload(event: Event, alert_id: str, run_url: str | None = None) -> dict[str, Any]:
    data = event.data
    where = f"{event.team}/{event.project}/{event.run_id}"
    fields = [{"title": "run", "value": where, "short": True}, {"title": "level", "value": data["level"], "short": True}]
    return {
        "text": f"[{data['level']}] {data['title']} ({where})",
        "attachments": [{
            "color": _COLORS.get(data["level"], "#888888"),
            "title": data["title"],
            "title_link": run_url,
            "text": data["text"],
            "fields": fields,
            "ts": int(event.ts),
        }],
        "runstream": {
            "alert_id": alert_id, "team": event.team, "project": event.project, "run_id": event.run_id,
            "level": data["level"], "title": data["title"], "text": data["text"], "source": data["source"],
            "rule_id": data.get("rule_id"), "time": event.ts,
        },
    }


class Notifier:
    def __init__(
        self,
        webhooks: Sequence[str],
        tries: int = 5,
        first_backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        remember: int = 10_000,
    ) -> None:
        self.webhooks = [url for url in webhooks if url]
        self.tries = tries
        self.first_backoff_s = first_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    async def deliver(self, event: Event, alert_id: str, extra_urls: Sequence[str] = ()) -> int:
        """Post the alert to the webhooks (and a rule's own); return how many accepted it."""
        if alert_id in self._delivered:
            return 0
        urls = list(dict.fromkeys([*self.webhooks, *extra_urls]))
        if not urls:
            return 0
        payload = slack_payload(event, alert_id)
        async with aiohttp.ClientSession(timeout=self.timeout) as session:  # alerts are rare: no pool to keep
            results = await asyncio.gather(*(self._post(session, url, payload) for url in urls))
        self._delivered[alert_id] = None
        while len(self._delivered) > self._remember:
            self._delivered.popitem(last=False)
        return sum(results)

    async def _post(self, session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> bool:
        delay = self.first_backoff_s
        for attempt in range(1, self.tries + 1):
            try:
                async with session.post(url, json=payload) as response:
                    if response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this payload: retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.tries:
                await asyncio.sleep(delay)
                delay *= 2
        # The host only: a webhook's path is its secret (Slack's are).
        log.warning("alert webhook at %s failed after %d tries (%s); alert %s not delivered there",
                    urlsplit(url).hostname, attempt, problem, payload["runstream"]["alert_id"])
        return False


class Rules(Protocol):
    def rules(self, team: str, project: str) -> Sequence[Any]: ...


def rule_webhooks(rules: Rules, event: Event) -> list[str]:
    """The webhooks a rule alert's own rule names (in its spec), besides the global ones."""
    rule_id = event.data.get("rule_id")
    if not rule_id:
        return []
    return next((list(r.spec.get("webhooks", [])) for r in rules.rules(event.team, event.project)
                 if r.rule_id == rule_id), [])


async def notify(notifier: Notifier, rules: Rules, event: Event, alert_id: str) -> None:
    """Deliver one alert; a failure is logged, never raised (it must not stop storing alerts)."""
    try:
        extra = await asyncio.to_thread(rule_webhooks, rules, event)
        await notifier.deliver(event, alert_id, extra)
    except Exception as exc:  # noqa: BLE001
        log.warning("notifying alert %s failed (%s: %s)", alert_id, type(exc).__name__, exc)
