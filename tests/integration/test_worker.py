"""The Faust worker (the real app, in this process) on a real Kafka broker and the real engine:
dead letters, alert rules, the webhook notifier and crash detection end to end."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from infra.net import free_port
from runstream import events
from runstream.settings import Settings
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.app import create_app
from tests.helpers import dead_letters_with, make_event, unique


async def _produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _send(event: dict) -> tuple[str, bytes, bytes]:
    e = events.validate(event)
    return e.topic.name, e.key, e.to_bytes()


async def _until(check, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(every)


async def _scenario(bootstrap: str, dsn: str, data_dir: str) -> None:
    project = unique("proj")
    received: list[dict] = []

    async def webhook(request: web.Request) -> web.Response:
        payload = await request.json()
        if payload["runstream"]["project"] == project:  # a new group also reads earlier tests' alerts
            received.append(payload)
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", webhook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    client = connect(dsn)
    migrate(client)
    client.insert(
        "alert_rules",
        [
            [
                "acme",
                project,
                "big-loss",
                "loss too big",
                "threshold",
                orjson.dumps({"metric": "loss", "op": ">", "value": 10}).decode(),
                True,
                600,
                0,
                0,
                1,
                0,
            ]
        ],
        column_names=[
            "team",
            "project",
            "rule_id",
            "name",
            "kind",
            "spec",
            "enabled",
            "cooldown_s",
            "created_at",
            "updated_at",
            "version",
            "is_deleted",
        ],
    )
    settings = Settings(
        kafka=bootstrap,
        clickhouse_dsn=dsn,
        data_dir=data_dir,
        app_id=unique("worker"),
        crash_timeout=3,
        alert_webhooks=f"http://127.0.0.1:{port}/hook",
    )
    app = create_app(settings, sweep_every_s=0.5)
    await app.start()
    try:
        now = time.time()
        start = make_event("run_start", {"name": "live"}, seq=1, run_id="live", project=project, ts=now)
        bad = [b'{"broken ' + project.encode() + b" " + str(i).encode() for i in range(10_000)]
        messages: list[tuple[str, bytes | None, bytes]] = [_send(start)]
        messages += [(events.TOPIC_METRICS.name, None, raw) for raw in bad]
        loss = [1.0, 2.0, 30.0, 40.0, 3.0]  # crosses 10 once: one alert
        messages.append(
            _send(
                make_event(
                    "metrics",
                    {"step": list(range(5)), "time": [now] * 5, "values": {"loss": loss}},
                    seq=2,
                    run_id="live",
                    project=project,
                    ts=now,
                )
            )
        )
        messages.append(_send(make_event("heartbeat", {}, seq=3, run_id="live", project=project, ts=now)))
        messages += [m for m in messages if m[1] is not None]  # every good event twice: changes nothing
        await _produce(bootstrap, messages)

        def points() -> int:
            return client.command(  # type: ignore[return-value]  # a one-value command() returns that value
                "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": project}
            )

        assert await _until(lambda: points() == 5)  # good events after 10,000 bad ones: the worker lived
        assert await _until(
            lambda: (
                client.query(
                    "SELECT count, max FROM metric_summaries FINAL WHERE project = {p:String}",
                    parameters={"p": project},
                ).result_rows
                == [(5, 40.0)]
            )
        )  # each point folded once although delivered twice
        alerts = await _until(
            lambda: (
                client.query(
                    "SELECT rule_id, title FROM alerts FINAL WHERE project = {p:String}", parameters={"p": project}
                ).result_rows
            )
        )
        assert [a[0] for a in alerts] == ["big-loss"]
        assert await _until(lambda: received)
        assert received[0]["runstream"]["rule_id"] == "big-loss" and "loss" in received[0]["text"]
        assert received[0]["attachments"][0]["fields"][0]["value"] == f"acme/{project}/live"

        # The run goes silent: after the timeout the sweep marks it crashed, as an event too.
        def state() -> str:
            rows = client.query(
                "SELECT state FROM runs FINAL WHERE project = {p:String}", parameters={"p": project}
            ).result_rows
            return rows[0][0] if rows else ""

        assert await _until(lambda: state() == "crashed", timeout=30)
        await asyncio.sleep(1.0)
        assert (
            len(
                client.query(
                    "SELECT * FROM alerts FINAL WHERE project = {p:String}", parameters={"p": project}
                ).result_rows
            )
            == 1
        )
        assert len(received) == 1  # the condition fired once
    finally:
        await app.stop()
        await runner.cleanup()

    dead = await dead_letters_with(bootstrap, project.encode(), want=len(bad))
    assert len(dead) == len(bad)
    assert {dict(m.headers)[events.DEAD_LETTER_REASON_HEADER].decode()[:14] for m in dead} == {"not valid JSON"}
    assert {dict(m.headers)[events.DEAD_LETTER_SOURCE_HEADER] for m in dead} == {events.TOPIC_METRICS.name.encode()}


def test_worker_dead_letters_alerts_webhooks_and_crashes(kafka_bootstrap, clickhouse_dsn, tmp_path):
    asyncio.run(_scenario(kafka_bootstrap, clickhouse_dsn, str(tmp_path)))
