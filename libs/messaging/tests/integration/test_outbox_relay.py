"""The transactional outbox and its relay, against the real Postgres and broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from messaging_testkit import (
    JsonCodec,
    count_rows,
    create_topics,
    event,
    header_map,
    read_topic_async,
    running,
    wait_for,
)
from sqlalchemy import select

from tickertap.db import DriverTransaction
from tickertap.messaging import headers as h
from tickertap.messaging.outbox import (
    OutboxEvent,
    add_event,
    add_events_driver,
    add_to_outbox,
    create_statements,
    outbox_table,
)
from tickertap.messaging.outbox import add_events as add_many
from tickertap.messaging.relay import OutboxRelay, replay

pytestmark = pytest.mark.stack

SCHEMA_NAME = "msgtest.event.v1"
codec = JsonCodec()


async def add_events(
    engine: Any, outbox: Any, topic: str, events: Sequence[dict[str, Any]], *, commit: bool = True
) -> list[int]:
    """Add `events` to the outbox in one transaction, committed or rolled back."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        ids = [
            await add_event(
                conn,
                outbox,
                codec,
                schema_name=SCHEMA_NAME,
                record=e,
                key=e["key"],
                topic=topic,
            )
            for e in events
        ]
        if commit:
            await transaction.commit()
        else:
            await transaction.rollback()
    return ids


def relay_for(stack: Any, database: Any, tables: Any, **settings: Any) -> OutboxRelay:
    settings = {"batch_max": 50, "poll_interval_s": 0.05, **settings}
    return OutboxRelay(database.engine, tables.outbox, stack.kafka_bootstrap, **settings)


def body(message: Any) -> dict[str, Any]:
    return dict(json.loads(message.value()[1:])["record"])


async def test_outbox_ddl_is_usable_by_a_migration(database: Any) -> None:
    table = outbox_table(__import__("sqlalchemy").MetaData(), "ledger", f"{database.prefix}_ddl")
    statements = [str(s.compile(database.engine.sync_engine)) for s in create_statements(table)]
    assert statements[0].startswith("\nCREATE TABLE ledger.")
    assert any("WHERE sent_at IS NULL" in s for s in statements)
    async with database.engine.begin() as conn:
        for statement in create_statements(table):
            await conn.execute(statement)
    assert await count_rows(database.engine, table) == 0


async def test_committed_rows_are_published_in_order_per_key_and_rolled_back_ones_never(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("orders", partitions=3)
    keys = [f"acct-{i}" for i in range(8)]
    committed: list[dict[str, Any]] = []
    rolled_back: list[dict[str, Any]] = []
    token = h.correlation_id_var.set("req-outbox-test")
    try:
        for round_ in range(25):
            events = [event(key, round_) for key in keys]
            await add_events(database.engine, tables.outbox, name, events)
            committed.extend(events)
            doomed = [event(key, 1000 + round_, doomed=True) for key in keys[:3]]
            await add_events(database.engine, tables.outbox, name, doomed, commit=False)
            rolled_back.extend(doomed)
    finally:
        h.correlation_id_var.reset(token)

    relay = relay_for(stack, database, tables)
    assert await relay.backlog() == len(committed)
    async with running(relay):
        await wait_for(lambda: _backlog_is(relay, 0), 20, "the relay to publish everything")
    assert relay.stats.published == len(committed)

    # one message more than committed is asked for: none may come
    messages = await read_topic_async(stack.kafka_bootstrap, name, len(committed) + 1, 2.0)
    assert len(messages) == len(committed)
    seen = [body(m) for m in messages]
    assert {e["event_id"] for e in seen} == {e["event_id"] for e in committed}
    assert not any(e.get("doomed") for e in seen)
    by_key: dict[str, list[int]] = defaultdict(list)
    for message, record in zip(messages, seen, strict=True):
        assert message.key() == record["key"].encode()
        by_key[record["key"]].append(record["seq"])
    assert by_key == {key: list(range(25)) for key in keys}

    first = header_map(messages[0])
    assert first[h.SCHEMA] == SCHEMA_NAME.encode()
    assert first[h.CORRELATION_ID] == b"req-outbox-test"
    assert uuid.UUID(first[h.EVENT_ID].decode()) == uuid.UUID(seen[0]["event_id"])

    async with database.engine.connect() as conn:
        rows = (await conn.execute(select(tables.outbox))).all()
    assert len(rows) == len(committed)
    assert all(row.sent_at is not None and row.attempts == 1 for row in rows)
    assert all(row.last_error is None for row in rows)


async def _backlog_is(relay: OutboxRelay, expected: int) -> bool:
    return await relay.backlog() == expected


async def test_replay_publishes_again_from_a_row(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("replayed", partitions=1)
    events = [event("k", seq) for seq in range(40)]
    ids = await add_events(database.engine, tables.outbox, name, events)
    relay = relay_for(stack, database, tables, batch_max=7)
    async with running(relay):
        await wait_for(lambda: _backlog_is(relay, 0), 20, "first publication")
        async with database.engine.begin() as conn:
            assert await replay(conn, tables.outbox, since_id=ids[30]) == 10
        await wait_for(lambda: _backlog_is(relay, 0), 20, "the replay")
    messages = await read_topic_async(stack.kafka_bootstrap, name, 50)
    assert [body(m)["seq"] for m in messages] == list(range(40)) + list(range(30, 40))
    async with database.engine.connect() as conn:
        attempts = (
            await conn.execute(select(tables.outbox.c.attempts).order_by(tables.outbox.c.id))
        ).scalars()
        assert list(attempts) == [1] * 30 + [2] * 10


async def test_one_relay_publishes_at_a_time_and_a_standby_takes_over(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("leader", partitions=2)
    relays = [relay_for(stack, database, tables, standby_poll_interval_s=0.1) for _ in range(2)]
    tasks = {id(relay): asyncio.create_task(relay.run()) for relay in relays}
    try:
        await wait_for(lambda: _true(any(r.stats.leader for r in relays)), 10, "a leader")
        await asyncio.sleep(0.3)
        assert [r.stats.leader for r in relays].count(True) == 1
        leader, standby = sorted(relays, key=lambda r: not r.stats.leader)
        await add_events(database.engine, tables.outbox, name, [event("a", 0)])
        await wait_for(lambda: _backlog_is(leader, 0), 10, "the leader to publish")
        assert (leader.stats.published, standby.stats.published) == (1, 0)

        leader.stop()
        await asyncio.wait_for(tasks[id(leader)], 10)
        await add_events(database.engine, tables.outbox, name, [event("a", 1)])
        await wait_for(lambda: _backlog_is(standby, 0), 10, "the standby to take over")
        assert standby.stats.leader
        assert standby.stats.published == 1
    finally:
        for relay in relays:
            relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)
    messages = await read_topic_async(stack.kafka_bootstrap, name, 2)
    assert [body(m)["seq"] for m in messages] == [0, 1]


async def _true(value: bool) -> bool:
    return value


async def test_failed_deliveries_are_retried_until_the_topic_exists(
    stack: Any, database: Any, tables: Any, admin: Any
) -> None:
    name = f"msgtest.late_{uuid.uuid4().hex[:8]}.v1"  # not created yet
    events = [event(f"k{i % 3}", i) for i in range(12)]
    await add_events(database.engine, tables.outbox, name, events)
    relay = relay_for(
        stack, database, tables, delivery_timeout_s=1.0, retry_backoff_s_min=0.05,
        retry_backoff_s_max=0.2,
    )  # fmt: skip
    outbox = tables.outbox
    async with running(relay):
        await wait_for(
            lambda: _rows_with(database.engine, outbox, outbox.c.attempts >= 2), 20, "two attempts"
        )
        async with database.engine.connect() as conn:
            error = (await conn.execute(select(outbox.c.last_error).limit(1))).scalar_one()
        assert error is not None
        assert "TIMED_OUT" in error
        assert relay.stats.failed_batches >= 2
        assert await relay.backlog() == len(events)
        await asyncio.to_thread(create_topics, admin, {name: 2})
        await wait_for(lambda: _backlog_is(relay, 0), 30, "publication once the topic exists")
    messages = await read_topic_async(stack.kafka_bootstrap, name, len(events))
    by_key: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        by_key[body(message)["key"]].append(body(message)["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_key.values())
    assert sorted(seq for seqs in by_key.values() for seq in seqs) == list(range(12))


async def _rows_with(engine: Any, table: Any, *where: Any) -> bool:
    return await count_rows(engine, table, *where) > 0


async def test_sent_rows_are_deleted_after_the_retention(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("purged", partitions=1)
    await add_events(database.engine, tables.outbox, name, [event("k", i) for i in range(5)])
    relay = relay_for(stack, database, tables, retention_s=0.0, purge_interval_s=0.1)
    async with running(relay):
        await wait_for(lambda: _table_empty(database.engine, tables.outbox), 10, "the purge")
    assert relay.stats.published == 5
    assert relay.stats.purged == 5


async def _table_empty(engine: Any, table: Any) -> bool:
    return await count_rows(engine, table) == 0


async def test_notify_wakes_a_listening_relay_at_once(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("notified", partitions=1)
    relay = relay_for(stack, database, tables, poll_interval_s=30.0, listen=True)
    async with running(relay):
        await wait_for(lambda: _true(relay.stats.leader), 10, "leadership")
        await asyncio.sleep(0.3)  # the first (empty) batch is done: the relay now waits
        async with database.engine.begin() as conn:
            await add_to_outbox(
                conn,
                tables.outbox,
                topic=name,
                key="k",
                value=codec.encode(SCHEMA_NAME, event("k", 0)),
                event_id=uuid.uuid4(),
                notify=True,
            )
        await wait_for(lambda: _backlog_is(relay, 0), 5, "a publication well before the poll")


async def test_a_lingering_relay_publishes_commits_that_arrive_meanwhile_in_one_batch(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str]
) -> None:
    name = topic("lingered", partitions=1)
    commits = 5
    relay = relay_for(stack, database, tables, poll_interval_s=30.0, listen=True, linger_s=1.0)
    async with running(relay):
        await wait_for(lambda: _true(relay.stats.leader), 10, "leadership")
        await asyncio.sleep(0.3)  # the first (empty) batch is done: the relay now waits
        for n in range(commits):  # the first wakes the relay, which lingers for the rest
            async with database.engine.begin() as conn:
                await add_to_outbox(
                    conn,
                    tables.outbox,
                    topic=name,
                    key="k",
                    value=codec.encode(SCHEMA_NAME, event("k", n)),
                    event_id=uuid.uuid4(),
                    notify=True,
                )
        await wait_for(lambda: _backlog_is(relay, 0), 10, "every row published")
    assert relay.stats.published == commits
    assert relay.stats.batches < commits  # they went out together, not one batch each
    messages = await read_topic_async(stack.kafka_bootstrap, name, commits, 10.0)
    assert [body(m)["seq"] for m in messages] == list(range(commits))


async def test_writers_of_one_key_are_serialized_in_commit_order(
    database: Any, tables: Any
) -> None:
    engine = database.engine
    async with engine.connect() as first:
        await first.begin()
        id_first = await _add(first, tables.outbox, "same-key")
        async with engine.connect() as other_key:
            await other_key.begin()
            await asyncio.wait_for(_add(other_key, tables.outbox, "other-key"), 5)
            await other_key.rollback()

        async def second_writer() -> int:
            async with engine.begin() as second:
                return await _add(second, tables.outbox, "same-key")

        second = asyncio.create_task(second_writer())
        await asyncio.sleep(0.3)
        assert not second.done(), "a second writer of the key must wait for the first"
        id_first_again = await _add(first, tables.outbox, "same-key")
        await first.commit()
        id_second = await asyncio.wait_for(second, 5)
    assert id_first < id_first_again < id_second


async def _add(conn: Any, outbox: Any, key: str) -> int:
    return await add_to_outbox(
        conn, outbox, topic="msgtest.any.v1", key=key, value=b"x", event_id=uuid.uuid4()
    )


@pytest.mark.parametrize("driver", [False, True], ids=["sqlalchemy", "asyncpg"])
async def test_many_events_added_in_one_statement_publish_in_order_per_key(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str], driver: bool
) -> None:
    name = topic("bulk", partitions=2)
    keys = [f"acct-{i}" for i in range(5)]
    batches = [[event(key, round_) for key in keys] for round_ in range(10)]
    for batch in batches:
        events = [OutboxEvent(SCHEMA_NAME, e, e["key"], topic=name) for e in batch]
        if driver:
            async with DriverTransaction(database.engine) as tx:
                await add_events_driver(tx.pg, tables.outbox, codec, events, notify=True)
                await tx.commit()
        else:
            async with database.engine.begin() as conn:
                await add_many(conn, tables.outbox, codec, events)
    relay = relay_for(stack, database, tables)
    async with running(relay):
        await wait_for(lambda: _backlog_is(relay, 0), 20, "the relay to publish everything")
    messages = await read_topic_async(stack.kafka_bootstrap, name, 50, 5.0)
    by_key: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        record = body(message)
        by_key[record["key"]].append(record["seq"])
        assert header_map(message)[h.SCHEMA] == SCHEMA_NAME.encode()
    assert by_key == {key: list(range(10)) for key in keys}
