"""The inbox consumer loop, against the real Postgres and broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer
from messaging_testkit import (
    JsonCodec,
    count_rows,
    create_topics,
    effects_handler,
    event,
    header_map,
    read_topic_async,
    running,
    wait_for,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.messaging import headers as h
from tickertap.messaging.codec import AvroCodec
from tickertap.messaging.consumer import (
    ConsumedEvent,
    Decode,
    Handler,
    InboxConsumer,
    Outcome,
    avro_decoder,
)
from tickertap.messaging.kafka import producer_config
from tickertap.messaging.outbox import add_event
from tickertap.messaging.relay import OutboxRelay
from tickertap.messaging.schemas import find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack

codec = JsonCodec()


def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes, bytes | None, Mapping[str, str]]],
) -> None:
    """Produce (key, value, headers) messages straight to the broker and wait for them."""
    producer = Producer(producer_config(bootstrap))
    errors: list[Any] = []
    for key, value, headers in messages:
        producer.produce(
            topic,
            value=value,
            key=key,
            headers=h.encode_headers(headers),
            on_delivery=lambda error, _: errors.append(error) if error else None,
        )
    assert producer.flush(15) == 0
    assert not errors, errors


def encoded(
    record: dict[str, Any], correlation_id: str | None = None
) -> tuple[bytes, bytes, dict[str, str]]:
    headers = {h.EVENT_ID: record["event_id"]}
    if correlation_id:
        headers[h.CORRELATION_ID] = correlation_id
    return record["key"].encode(), codec.encode("msgtest.event.v1", record), headers


def consumer_for(
    stack: Any,
    database: Any,
    tables: Any,
    topic: str,
    *,
    handler: Handler | None = None,
    decode: Decode = codec.decode,
    **settings: Any,
) -> InboxConsumer:
    return InboxConsumer(
        database.engine,
        tables.inbox,
        decode,
        handler or effects_handler(tables.effects),
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"msgtest-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        **{"poll_timeout_s": 0.1, **settings},
    )


async def _at_least(engine: Any, table: Any, n: int) -> bool:
    return await count_rows(engine, table) >= n


async def _true(value: bool) -> bool:
    return value


async def test_undecodable_message_is_dead_lettered_and_the_consumer_goes_on(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("garbled", partitions=1)
    before, after = event("k", 0), event("k", 2)
    garbage = (b"k", b"\x00\xffnot avro", {"x-custom": "kept", h.CORRELATION_ID: "req-7"})
    await _to_thread(
        produce, stack.kafka_bootstrap, name, [encoded(before), garbage, encoded(after)]
    )
    outcomes: list[tuple[str, Outcome, str | None]] = []
    consumer = consumer_for(stack, database, tables, name, on_outcome=lambda *o: outcomes.append(o))
    async with running(consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 2), 20, "two effects")
        await wait_for(lambda: _true(consumer.stats.dead_lettered == 1), 10, "the dead letter")
    assert (consumer.stats.processed, consumer.stats.duplicates) == (2, 0)
    assert outcomes == [
        (name, "applied", None),
        (name, "dead_lettered", "bad_magic"),
        (name, "applied", None),
    ]

    (letter,) = await read_topic_async(stack.kafka_bootstrap, h.dead_letter_topic(name), 1)
    assert letter.topic() == name.removesuffix(".v1") + ".dlq.v1"
    assert (letter.key(), letter.value()) == (b"k", b"\x00\xffnot avro")
    headers = header_map(letter)
    assert headers[h.DLQ_REASON] == b"bad_magic"
    assert headers[h.DLQ_DETAIL] == b"first byte 00"
    assert headers[h.DLQ_SOURCE_TOPIC] == name.encode()
    assert headers[h.DLQ_SOURCE_PARTITION] == b"0"
    assert headers[h.DLQ_SOURCE_OFFSET] == b"1"
    assert headers[h.DLQ_CONSUMER_GROUP] == consumer.group_id.encode()
    assert headers["x-custom"] == b"kept"
    assert headers[h.CORRELATION_ID] == b"req-7"


async def test_invalid_event_from_the_handler_is_rolled_back_and_dead_lettered(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("invalid", partitions=2)
    records = [event("a", 0), event("a", 1, invalid=True), event("b", 0), event("a", 2)]
    await _to_thread(produce, stack.kafka_bootstrap, name, [encoded(r) for r in records])
    consumer = consumer_for(stack, database, tables, name)
    async with running(consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 3), 20, "three effects")
        await wait_for(lambda: _true(consumer.stats.dead_lettered == 1), 10, "the dead letter")
    (letter,) = await read_topic_async(stack.kafka_bootstrap, h.dead_letter_topic(name), 1)
    assert letter.value() == encoded(records[1])[1]
    assert header_map(letter)[h.DLQ_REASON] == b"invalid_event"
    async with database.engine.connect() as conn:
        applied = (await conn.execute(select(tables.effects.c.event_id))).scalars().all()
        claimed = (await conn.execute(select(tables.inbox.c.event_id))).scalars().all()
    valid = {uuid.UUID(r["event_id"]) for r in records if not r.get("invalid")}
    assert set(applied) == valid
    assert set(claimed) == valid  # the refused event's claim was rolled back with it


async def test_a_redelivered_event_is_applied_once(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("dupes", partitions=3)
    records = [event(f"k{i % 4}", i) for i in range(20)]
    first_pass = [encoded(r, correlation_id=f"req-{r['seq']}") for r in records]
    again = [encoded(r) for r in records[:5]] + [encoded(records[7])] * 3
    await _to_thread(produce, stack.kafka_bootstrap, name, first_pass + again)
    consumer = consumer_for(stack, database, tables, name)
    async with running(consumer):
        await wait_for(lambda: _true(consumer.stats.duplicates == 8), 20, "the duplicates")
    assert consumer.stats.processed == 20
    async with database.engine.connect() as conn:
        rows = (await conn.execute(select(tables.effects))).all()
    assert len(rows) == 20
    assert len({row.event_id for row in rows}) == 20
    # the handler ran with the message's correlation id in the context
    assert {row.correlation_id for row in rows} == {f"req-{i}" for i in range(20)}


async def test_a_lost_database_connection_retries_the_same_message(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("flaky", partitions=1)
    records = [event("k", i) for i in range(6)]
    await _to_thread(produce, stack.kafka_bootstrap, name, [encoded(r) for r in records])
    inner = effects_handler(tables.effects)
    kills = {"left": 2}

    async def flaky(conn: AsyncConnection, event_: ConsumedEvent) -> None:
        await inner(conn, event_)
        if event_.record["seq"] == 3 and kills["left"] > 0:
            kills["left"] -= 1
            # the server ends this very session: a real connection loss mid-transaction
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    consumer = consumer_for(
        stack, database, tables, name, handler=flaky, retry_backoff_s_min=0.01,
        retry_backoff_s_max=0.05,
    )  # fmt: skip
    async with running(consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 6), 20, "all effects")
    assert kills["left"] == 0
    assert consumer.stats.retries == 2
    assert (consumer.stats.processed, consumer.stats.dead_lettered) == (6, 0)
    async with database.engine.connect() as conn:
        seqs = (await conn.execute(select(tables.effects.c.seq).order_by("n"))).scalars().all()
    assert list(seqs) == list(range(6))


async def test_avro_events_through_outbox_relay_and_consumer(
    stack: Any, database: Any, tables: Any, admin: Any
) -> None:
    """The real codec end to end; its DecodeError reasons reach the dead-letter headers."""
    avro = AvroCodec(load_schemas(find_schemas_dir()))
    base = f"msgtest.ticks_{uuid.uuid4().hex[:8]}"
    name = f"{base}.v1"
    await _to_thread(create_topics, admin, {name: 2, f"{base}.dlq.v1": 1})
    ticks = [
        {
            "event_id": uuid.uuid4(),
            "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, i, tzinfo=dt.UTC),
            "symbol": "BTC-USD",
            "venue": "test",
            "price": Decimal("64000.12345678") + i,
            "size": Decimal("0.5"),
            "bid": None,
            "ask": None,
            "exchange_ts": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "source_id": "feed-1",
            "source_seq": i,
        }
        for i in range(5)
    ]
    async with database.engine.begin() as conn:
        for tick in ticks:
            await add_event(
                conn,
                tables.outbox,
                avro,
                schema_name="marketdata.ticks.v1",
                record=tick,
                key=tick["symbol"],
                topic=name,
            )
    seen: list[ConsumedEvent] = []

    async def record_tick(conn: AsyncConnection, event_: ConsumedEvent) -> None:
        seen.append(event_)
        await conn.execute(
            tables.effects.insert().values(
                event_id=event_.event_id,
                key=event_.record["symbol"],
                seq=event_.record["source_seq"],
            )
        )

    relay = OutboxRelay(database.engine, tables.outbox, stack.kafka_bootstrap)
    consumer = consumer_for(
        stack, database, tables, name, handler=record_tick, decode=avro_decoder(avro)
    )
    truncated = avro.encode("marketdata.ticks.v1", ticks[0])[:12]
    async with running(relay, consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 5), 20, "five ticks")
        await _to_thread(
            produce, stack.kafka_bootstrap, name, [(b"BTC-USD", truncated, {}), (b"x", b"{}", {})]
        )
        await wait_for(lambda: _true(consumer.stats.dead_lettered == 2), 20, "two dead letters")
    assert [e.record["price"] for e in seen] == [t["price"] for t in ticks]
    assert all(e.schema_name == "marketdata.ticks.v1" for e in seen)
    assert [e.event_id for e in seen] == [t["event_id"] for t in ticks]
    letters = await read_topic_async(stack.kafka_bootstrap, f"{base}.dlq.v1", 2)
    reasons = sorted(header_map(m)[h.DLQ_REASON].decode() for m in letters)
    assert reasons == ["bad_magic", "truncated"]
    async with database.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(tables.inbox))).scalar_one()
    assert count == 5


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
