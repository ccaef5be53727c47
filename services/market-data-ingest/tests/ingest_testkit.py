"""What the ingest's integration tests share: fresh symbols, producing ticks, reading topics,
bounded waits, and an HTTP client with admin and reader tokens."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging.kafka import producer_config

WAIT_S = 30.0
_T = TypeVar("_T")


def codec() -> AvroCodec:
    return AvroCodec(load_schemas(find_schemas_dir()))


def fresh_symbol(prefix: str = "T") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


def now_us() -> int:
    return time.time_ns() // 1000


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name in names], operation_timeout=10
    )
    for future in futures.values():
        future.result(timeout=15)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Mapping[str, Any] | bytes],
    *,
    timestamp_ms: int | None = None,
) -> int:
    """Encode (unless already bytes) and publish, keyed by symbol; returns how many."""
    c = codec()
    producer = Producer(producer_config(bootstrap))
    count = 0
    for record in records:
        if isinstance(record, bytes):
            value, key = record, b"RAW"
        else:
            value, key = c.encode("marketdata.ticks.v1", record), record["symbol"].encode()
        kwargs: dict[str, Any] = {}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
    assert producer.flush(30) == 0, "not every tick was delivered"
    return count


def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Message]], bool],
    timeout_s: float = WAIT_S,
) -> list[Message]:
    """Messages of `topic` from the beginning of every partition (assigned, no group),
    until `done(messages)` or `timeout_s`; never relies on end offsets."""
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
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while not done(messages) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


async def wait_for(
    probe: Callable[[], Awaitable[_T | None]], what: str, timeout_s: float = WAIT_S
) -> _T:
    """Poll `probe` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


class Api:
    """The service's HTTP API with an admin and a reader token."""

    def __init__(self, client: httpx.AsyncClient, mint: Any) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {mint(str(uuid.uuid4()), ('admin',))}"}
        self.reader = {"Authorization": f"Bearer {mint(str(uuid.uuid4()), ('customer',))}"}

    async def instrument(self, symbol: str, scale: int = 2, currency: str = "USD") -> None:
        r = await self.client.post(
            "/v1/instruments",
            json={"symbol": symbol, "currency": currency, "price_scale": scale},
            headers=self.admin,
        )
        assert r.status_code in (200, 201), r.text
