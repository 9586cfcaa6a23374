"""Print each runstream alert once, read from the ``runstream.alerts`` Kafka topic.

    python examples/alerts_consumer.py --bootstrap kafka:9092 --group my-alerts [--team acme] [--project mnist]

One JSON object per alert goes to stdout (pipe it into ``jq``, a pager bot, a ticket system):
the fields of the API's alerts plus ``team`` and ``project``. The topic's contract is in
docs/alerts.md; this script needs only aiokafka, not runstream.

Delivery is at least once, so the same alert can arrive twice (a resent SDK event, a
worker that replayed a batch); alerts are told apart by ``alert_id`` and the ids of the
last ``--remember`` alerts are kept to drop repeats. Offsets are committed after each
batch is printed, so a restart with the same ``--group`` goes on where it stopped.
Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

TOPIC = "runstream.alerts"
ENVELOPE = {"v", "type", "team", "project", "run_id", "seq", "ts", "data"}


class Recent:
    """The ids of the last ``size`` alerts, least recently seen dropped first: repeats come soon after the first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, alert_id: str) -> bool:
        if alert_id in self._ids:
            self._ids.move_to_end(alert_id)
            return False
        self._ids[alert_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


def alert_id_of(event: dict[str, Any]) -> str:
    """A rule alert carries its id; an SDK alert's id is derived from its run and sequence number."""
    if event["data"].get("alert_id"):
        return str(event["data"]["alert_id"])
    identity = f"{event['team']}/{event['project']}/{event['run_id']}\0{event['seq']}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def parse(value: bytes) -> dict[str, Any] | None:
    """The alert event in a message, or None for what is not one (anyone may write to the topic)."""
    try:
        event = json.loads(value)
    except (TypeError, ValueError):  # not JSON, or a message without a value
        return None
    if not isinstance(event, dict) or not event.keys() >= ENVELOPE or not isinstance(event["data"], dict):
        return None
    return event if (event["v"], event["type"]) == (1, "alert") else None


def wanted(event: dict[str, Any], team: str | None, project: str | None) -> bool:
    return team in (None, event["team"]) and project in (None, event["project"])


def as_line(event: dict[str, Any], alert_id: str) -> str:
    """The alert as the API shows it (see docs/alerts.md), plus its team and project."""
    data = event["data"]
    alert = {"team": event["team"], "project": event["project"], "run_id": event["run_id"], "alert_id": alert_id}
    alert |= {"rule_id": data.get("rule_id"), "source": data.get("source"), "level": data.get("level")}
    alert |= {"title": data.get("title"), "text": data.get("text"), "time": event["ts"]}
    return json.dumps(alert)


async def consume(args: argparse.Namespace, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,  # your own group: the workers' group (RUNSTREAM_APP_ID) would take their partitions
        enable_auto_commit=False,  # commit only what was printed
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    await consumer.start()
    seen = Recent(args.remember)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    event = parse(message.value)
                    if event is None:
                        print(f"skipped a message that is not an alert at offset {message.offset}", file=sys.stderr)
                        continue
                    if not wanted(event, args.team, args.project):
                        continue
                    alert_id = alert_id_of(event)
                    if seen.first_time(alert_id):
                        print(as_line(event, alert_id), flush=True)
            if batches:
                try:
                    await consumer.commit()
                except KafkaError as exc:  # broker away or a rebalance: the next commit covers this batch
                    print(f"commit failed ({exc!r}); the batch may be read again", file=sys.stderr)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument("--group", required=True, help="this consumer's group id (not the workers' app id)")
    parser.add_argument("--team", help="only this team's alerts")
    parser.add_argument("--project", help="only this project's alerts")
    parser.add_argument("--from-beginning", action="store_true", help="a new group starts at the oldest alert kept")
    parser.add_argument("--remember", type=int, default=100_000, help="how many recent alert ids to deduplicate by")
    args = parser.parse_args()

    async def run() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await consume(args, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
