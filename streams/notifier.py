"""Alert notifications: post each alert to webhooks, Slack-compatible, with retries.

The payload is what a Slack incoming webhook takes (``text`` plus an
attachment with the details); receivers that are not Slack read the same JSON,
and the ``runstream`` entry carries the alert's fields for them. A failed post
is retried with exponential backoff; after the last try the alert is logged
and skipped, so one dead receiver never stops the stream. An alert id already
delivered (a replayed alert, or a stall seen again by the next sweep) is not
posted twice while it is remembered.

A rule's own webhooks are typed in by any project member, so they may only
reach public addresses (no server-side request forgery into the cluster's
network): ``WebhookPolicy`` checks every address the host resolves to, at
connection time, and redirects are not followed. The operator's global
webhooks, and hosts or networks in ``RUNSTREAM_WEBHOOK_ALLOW``, are trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from runstream.events import Event
from runstream.settings import Settings

log = logging.getLogger(__name__)

_COLORS = {"INFO": "#2eb67d", "WARN": "#ecb22e", "ERROR": "#e01e5a"}


def slack_payload(event: Event, alert_id: str, run_url: str | None = None) -> dict[str, Any]:
    data = event.data
    where = f"{event.team}/{event.project}/{event.run_id}"
    fields = [
        {"title": "run", "value": where, "short": True},
        {"title": "level", "value": data["level"], "short": True},
    ]
    return {
        "text": f"[{data['level']}] {data['title']} ({where})",
        "attachments": [
            {
                "color": _COLORS.get(data["level"], "#888888"),
                "title": data["title"],
                "title_link": run_url,
                "text": data["text"],
                "fields": fields,
                "ts": int(event.ts),
            }
        ],
        "runstream": {
            "alert_id": alert_id,
            "team": event.team,
            "project": event.project,
            "run_id": event.run_id,
            "level": data["level"],
            "title": data["title"],
            "text": data["text"],
            "source": data["source"],
            "rule_id": data.get("rule_id"),
            "time": event.ts,
        },
    }


class WebhookRefused(OSError):
    """A webhook whose host is (or resolves to) an address the policy does not allow."""


#: IPv6 ranges that carry an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible, SIIT): Python calls
#: some of them global, yet they can reach an internal IPv4 host; webhooks have no use for them.
_IPV4_CARRIERS = tuple(
    ipaddress.ip_network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32", "::/96", "::ffff:0:0:0/96")
)


class WebhookPolicy:
    """Which hosts a rule's webhook may reach: public addresses, plus the hosts and networks allowed by name.

    ``allow`` is comma-separated host names, addresses and CIDR networks (``hooks.internal,10.1.0.0/16``).
    """

    def __init__(self, allow: str | Sequence[str] = "") -> None:
        items = allow.split(",") if isinstance(allow, str) else list(allow)
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (i.strip().lower().replace("[", "").replace("]", "") for i in items):
            if not item:
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not _HOST_NAME.fullmatch(item):
                    log.warning(
                        "RUNSTREAM_WEBHOOK_ALLOW entry %r is neither a host name, an address nor a "
                        "network (no ports or paths); it is ignored",
                        item,
                    )
                    continue
                self.hosts.add(item.rstrip("."))

    def trusts_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone id is not part of the address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.networks):
            return True
        return ip.is_global and not any(ip in carrier for carrier in _IPV4_CARRIERS)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be posted to, judged without DNS (an address or localhost); else None.

        The host is read as aiohttp will connect to it (yarl normalises Unicode digits and
        dots into an address, and aiohttp does not resolve an address).
        """
        try:
            parsed = URL(url)
            host = (parsed.raw_host or "").rstrip(".")
        except (ValueError, TypeError):
            return f"webhook {url[:200]!r} is not a valid URL"
        if parsed.scheme not in ("http", "https") or not host:
            return f"webhook {url[:200]!r} is not an http:// or https:// URL with a host"
        if self.trusts_host(host):
            return None
        try:
            allowed = self.allows_address(host)
        except ValueError:  # a name: its addresses are checked when the alert is posted
            allowed = host != "localhost" and not host.endswith(".localhost")
        if allowed:
            return None
        return (
            f"webhook host {host} is an internal address; only public hosts are allowed, unless the "
            f"operator lists it in RUNSTREAM_WEBHOOK_ALLOW"
        )


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


class _PolicyResolver(AbstractResolver):
    """DNS through aiohttp's default resolver, keeping only the addresses the policy allows: the
    connection goes to a checked address, so a name cannot resolve to a public one for the check
    and an internal one for the post."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self.policy = policy
        self.inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if self.policy.trusts_host(host):
            return found
        kept = [r for r in found if self.policy.allows_address(r["host"])]
        if not kept:
            raise WebhookRefused(
                f"webhook host {host} resolves only to internal addresses "
                f"({', '.join(sorted({r['host'] for r in found}))}); the operator can "
                f"allow it in RUNSTREAM_WEBHOOK_ALLOW"
            )
        return kept

    async def close(self) -> None:
        await self.inner.close()


class Notifier:
    def __init__(
        self,
        webhooks: Sequence[str],
        tries: int = 5,
        first_backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        remember: int = 10_000,
        allow: str | Sequence[str] = "",
    ) -> None:
        self.webhooks = [url for url in webhooks if url]
        self.policy = WebhookPolicy(allow)  # for rules' webhooks; the operator's own are trusted as they are
        self.tries = tries
        self.first_backoff_s = first_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        """The notifier of a worker or the embedded server: the operator's webhooks
        (``RUNSTREAM_ALERT_WEBHOOKS``, comma-separated) and what rules' webhooks may reach."""
        return cls([url.strip() for url in settings.alert_webhooks.split(",")], allow=settings.webhook_allow)

    async def deliver(self, event: Event, alert_id: str, extra_urls: Sequence[str] = ()) -> int:
        """Post the alert to the webhooks (and a rule's own); return how many accepted it."""
        if alert_id in self._delivered:
            return 0
        rules_urls = [url for url in dict.fromkeys(extra_urls) if url not in self.webhooks]
        if not self.webhooks and not rules_urls:
            return 0
        payload = slack_payload(event, alert_id)
        resolver = _PolicyResolver(self.policy)
        # Two sessions (alerts are rare: no pool to keep): only a rule's URLs go through the policy.
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as trusted,
                aiohttp.ClientSession(
                    timeout=self.timeout, connector=aiohttp.TCPConnector(resolver=resolver)
                ) as guarded,
            ):
                results = await asyncio.gather(
                    *(self._post(trusted, url, payload) for url in self.webhooks),
                    *(self._post(guarded, url, payload, checked=True) for url in rules_urls),
                )
        finally:
            await resolver.close()  # a connector does not close a resolver it was given
        self._delivered[alert_id] = None
        while len(self._delivered) > self._remember:
            self._delivered.popitem(last=False)
        return sum(results)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, payload: dict[str, Any], checked: bool = False
    ) -> bool:
        """Post with retries; ``checked``: the URL must pass the policy (a rule's). Never raises."""
        refused = self.policy.refusal(url) if checked else None
        if refused:
            log.warning("%s; alert %s not posted there", refused, payload["runstream"]["alert_id"])
            return False
        try:
            return await self._post_retrying(session, url, payload)
        except Exception as exc:  # noqa: BLE001 - one bad URL must not keep the alert from the others
            log.warning(
                "alert webhook %s failed (%s); alert %s not delivered there",
                _where(url),
                type(exc).__name__,
                payload["runstream"]["alert_id"],
            )
            return False

    async def _post_retrying(self, session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> bool:
        delay = self.first_backoff_s
        for attempt in range(1, self.tries + 1):
            try:
                # No redirects: a public receiver must not bounce the post to an internal address.
                async with session.post(url, json=payload, allow_redirects=False) as response:
                    if response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
                    if 300 <= response.status < 400:
                        problem += f" (redirects are not followed: use the URL it points to, {_where(response.headers.get('Location', ''))})"
                    if response.status < 500 and response.status not in (408, 429):
                        break  # a redirect, or the receiver refuses this payload: retrying will not help
            except aiohttp.ClientConnectorError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if isinstance(exc.os_error, WebhookRefused):
                    problem = str(exc.os_error)
                    break
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.tries:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning(
            "alert webhook %s failed after %d tries (%s); alert %s not delivered there",
            _where(url),
            attempt,
            problem,
            payload["runstream"]["alert_id"],
        )
        return False


def _where(url: str) -> str:
    """A webhook's scheme and host, for logs: its path is its secret (Slack's are)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}/…"
    except ValueError:
        return "(not a URL)"


class Rules(Protocol):
    def rules(self, team: str, project: str) -> Sequence[Any]: ...


def rule_webhooks(rules: Rules, event: Event) -> list[str]:
    """The webhooks a rule alert's own rule names (in its spec), besides the global ones."""
    rule_id = event.data.get("rule_id")
    if not rule_id:
        return []
    return next(
        (list(r.spec.get("webhooks", [])) for r in rules.rules(event.team, event.project) if r.rule_id == rule_id), []
    )


async def notify(notifier: Notifier, rules: Rules, event: Event, alert_id: str) -> None:
    """Deliver one alert; a failure is logged, never raised (it must not stop storing alerts)."""
    try:
        extra = await asyncio.to_thread(rule_webhooks, rules, event)
        await notifier.deliver(event, alert_id, extra)
    except Exception as exc:  # noqa: BLE001
        log.warning("notifying alert %s failed (%s: %s)", alert_id, type(exc).__name__, exc)
