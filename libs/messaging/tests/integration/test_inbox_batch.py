"""The inbox consumer's batch mode (one transaction per batch), against the real stack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from messaging_testkit import (
    count_rows,
    effects_handler,
    event,
    header_map,
    read_topic_async,
    running,
    wait_for,
)
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from test_inbox_consumer import codec, encoded, produce

from tickertap.messaging import headers as h
from tickertap.messaging.consumer import BatchHandler, ConsumedEvent, InboxConsumer, Outcome

pytestmark = pytest.mark.stack
SERIALIZATION_FAILURE = (
    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure'; END $$"
)


def batch_consumer(
    stack: Any, database: Any, tables: Any, topic: str, handler: BatchHandler, **settings: Any
) -> InboxConsumer:
    return InboxConsumer(
        database.engine,
        tables.inbox,
        codec.decode,
        None,
        batch_handler=handler,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"msgtest-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        **{"poll_timeout_s": 0.1, **settings},
    )


def recording(tables: Any, calls: list[list[int]]) -> BatchHandler:
    """The effects handler over a batch, recording each call's sequence numbers."""
    one = effects_handler(tables.effects)

    async def apply(conn: AsyncConnection, events: Sequence[ConsumedEvent]) -> None:
        calls.append([int(e.record["seq"]) for e in events])
        for e in events:
            await one(conn, e)

    return apply


async def _at_least(engine: Any, table: Any, n: int) -> bool:
    return await count_rows(engine, table) >= n


async def _true(value: bool) -> bool:
    return value


async def test_a_batch_is_applied_once_its_duplicates_dropped_and_a_poison_event_isolated(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("batch", partitions=1)
    records = [event("k", i) for i in range(10)]
    poison = event("k", 10, invalid=True)
    garbage = (b"k", b"\x00\xffnot avro", {})
    messages = [
        *(encoded(r) for r in records[:5]),
        garbage,
        encoded(records[2]),  # a duplicate within the batch
        encoded(poison),
        *(encoded(r) for r in records[5:]),
    ]
    await asyncio.to_thread(produce, stack.kafka_bootstrap, name, messages)
    calls: list[list[int]] = []
    outcomes: list[tuple[str, Outcome, str | None]] = []
    consumer = batch_consumer(
        stack,
        database,
        tables,
        name,
        recording(tables, calls),
        on_outcome=lambda *o: outcomes.append(o),
    )
    async with running(consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 10), 20, "ten effects")
        await wait_for(lambda: _true(consumer.stats.dead_lettered == 2), 10, "the dead letters")
    assert (consumer.stats.processed, consumer.stats.duplicates) == (10, 1)
    assert sorted(o[1] for o in outcomes).count("applied") == 10
    assert (name, "dead_lettered", "bad_magic") in outcomes
    assert (name, "dead_lettered", "invalid_event") in outcomes
    # the first batch held the poison event: it failed as a whole, then went one by one
    assert any(len(c) > 1 for c in calls), calls
    assert [10] in calls
    async with database.engine.connect() as conn:
        applied = (await conn.execute(select(tables.effects.c.event_id))).scalars().all()
        claimed = (await conn.execute(select(tables.inbox.c.event_id))).scalars().all()
    valid = {uuid.UUID(r["event_id"]) for r in records}
    assert sorted(applied) == sorted(valid)
    assert set(claimed) == valid
    letters = await read_topic_async(stack.kafka_bootstrap, h.dead_letter_topic(name), 2)
    reasons = sorted(header_map(m)[h.DLQ_REASON] for m in letters)
    assert reasons == [b"bad_magic", b"invalid_event"]


async def test_a_transient_error_retries_the_whole_batch(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("batchflaky", partitions=1)
    records = [event("k", i) for i in range(8)]
    await asyncio.to_thread(produce, stack.kafka_bootstrap, name, [encoded(r) for r in records])
    calls: list[list[int]] = []
    inner = recording(tables, calls)
    kills = {"left": 1}

    async def flaky(conn: AsyncConnection, events: Sequence[ConsumedEvent]) -> None:
        await inner(conn, events)
        if kills["left"] > 0:
            kills["left"] -= 1
            # a real serialization failure from the server, after the batch's writes
            await conn.execute(text(SERIALIZATION_FAILURE))

    consumer = batch_consumer(
        stack, database, tables, name, flaky, retry_backoff_s_min=0.01, retry_backoff_s_max=0.05
    )
    async with running(consumer):
        await wait_for(lambda: _at_least(database.engine, tables.effects, 8), 20, "all effects")
    assert kills["left"] == 0
    assert consumer.stats.retries == 1
    assert (consumer.stats.processed, consumer.stats.dead_lettered) == (8, 0)
    assert calls[1] == calls[0]  # the same batch again, not one by one
    async with database.engine.connect() as conn:
        seqs = (await conn.execute(select(tables.effects.c.seq).order_by("n"))).scalars().all()
    assert list(seqs) == list(range(8))
