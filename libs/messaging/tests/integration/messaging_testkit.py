"""Helpers shared by the messaging integration tests and the consumer process they kill
(kill_consumer.py): the effects table, a toy codec, reading a topic back by content."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from sqlalchemy import Column, Integer, MetaData, Table, Text, Uuid, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.messaging.consumer import ConsumedEvent, Handler, InvalidEvent
from tickertap.messaging.headers import correlation_id_var

SCHEMA = "ledger"


def effects_table(metadata: MetaData, name: str) -> Table:
    """What a handler changes: one row per application, no unique key, so that a
    duplicate application would show."""
    return Table(
        name,
        metadata,
        Column("n", Integer, primary_key=True, autoincrement=True),
        Column("event_id", Uuid(as_uuid=True), nullable=False),
        Column("key", Text, nullable=False),
        Column("seq", Integer, nullable=False),
        Column("correlation_id", Text, nullable=True),
        schema=SCHEMA,
    )


def create_topics(admin: AdminClient, names: Mapping[str, int]) -> None:
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name, partitions in names.items()],
        operation_timeout=10,
    )
    for future in futures.values():
        future.result(timeout=15)
    created = getattr(admin, "_tickertap_created", None)
    if created is not None:
        created.extend(names)


# -- a toy codec: JSON behind a one-byte marker --------------------------------------------


class JsonCodec:
    """Enough of a codec for tests: b"J" + JSON; anything else is undecodable."""

    def encode(self, schema_name: str, record: Mapping[str, Any], /) -> bytes:
        return b"J" + json.dumps({"schema": schema_name, "record": dict(record)}).encode()

    def decode(self, topic: str, data: bytes) -> tuple[str, Mapping[str, Any]]:
        if not data.startswith(b"J"):
            raise InvalidEvent("bad_magic", f"first byte {data[:1].hex() or 'none'}")
        try:
            body = json.loads(data[1:])
        except ValueError as exc:
            raise InvalidEvent("invalid_json", str(exc)) from exc
        return str(body["schema"]), body["record"]


def event(key: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "key": key, "seq": seq, **extra}


# -- reading a topic back, by content ------------------------------------------------------


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 20.0) -> list[Message]:
    """The first `count` messages of `topic`, partition by partition from the beginning
    (assigned, no group: no rebalance to wait for); waits on content, never on end
    offsets. Blocking: call it through asyncio.to_thread."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while len(messages) < count and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None:
                    assert not error.fatal(), error
                    continue
                messages.append(message)
    finally:
        consumer.close()
    return messages


async def read_topic_async(
    bootstrap: str, topic: str, count: int, timeout_s: float = 20.0
) -> list[Message]:
    return await asyncio.to_thread(read_topic, bootstrap, topic, count, timeout_s)


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def count_rows(engine: AsyncEngine, table: Table, *where: Any) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(table)
        if where:
            query = query.where(*where)
        return int((await conn.execute(query)).scalar_one())


def header_map(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return {
        key: value if isinstance(value, bytes) else (value or "").encode() for key, value in pairs
    }


# -- the handler the consumer tests run ------------------------------------------------------


def effects_handler(effects: Table) -> Handler:
    """Apply an event by inserting a row into `effects`; an event with `"invalid": true`
    is refused with InvalidEvent."""

    async def apply(conn: AsyncConnection, event: ConsumedEvent) -> None:
        record = event.record
        if record.get("invalid"):
            raise InvalidEvent("invalid_event", f"event {event.event_id} is marked invalid")
        await conn.execute(
            effects.insert().values(
                event_id=event.event_id,
                key=str(record["key"]),
                seq=int(record["seq"]),
                correlation_id=correlation_id_var.get(),
            )
        )

    return apply


class Runnable(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(*runners: Runnable, stop_timeout_s: float = 30.0) -> AsyncIterator[None]:
    """Run relays or consumers as tasks for the body of the block; stop them and
    re-raise their failures at the end."""
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    try:
        yield
        for task in tasks:
            if task.done():
                task.result()  # a runner that died early fails the test
    finally:
        for runner in runners:
            runner.stop()
        done, pending = await asyncio.wait(tasks, timeout=stop_timeout_s)
        for task in pending:
            task.cancel()
        assert not pending, "a runner did not stop in time"
        for task in done:
            task.result()
