"""The live publisher against the stack's Postgres and broker: one leader at a time, a
takeover when it stops, and announced changes published (a lock key of the test's own, so
the running service's publisher is left alone)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging.kafka import key_partition
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.handlers import UPDATES_TOPIC
from tickertap.portfolio.live import LivePublisher
from tickertap.portfolio.live_process import ShardFigures
from tickertap.portfolio.metrics import PortfolioMetrics

pytestmark = pytest.mark.stack
WAIT_S = 30.0
TABLE = "portfolio.portfolios"


@pytest.fixture
async def engine(stack) -> AsyncIterator[AsyncEngine]:
    url = stack.pg_admin_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()


def publisher(
    stack, engine: AsyncEngine, lock_key: int, *, shard: int = 0, shards: int = 1
) -> tuple[LivePublisher, CollectorRegistry]:
    registry = CollectorRegistry()
    return LivePublisher(
        engine,
        AvroCodec(load_schemas(find_schemas_dir())),
        bootstrap_servers=stack.kafka_bootstrap,
        interval_ms=250,
        poll_interval_ms=50,
        batch_max=2000,
        base_currency="USD",
        scales=d.Scales(),
        metrics=PortfolioMetrics(registry),
        lock_key=lock_key,
        shard=shard,
        shards=shards,
    ), registry


def gauge(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_leader_publishes_every_portfolio_and_a_standby_takes_over(stack, engine) -> None:
    lock_key = uuid.uuid4().int & 0x7FFF_FFFF  # this test's own leadership
    own = uuid.uuid4()
    async with engine.begin() as conn:
        await repo.see_all(conn)  # an empty portfolio of its own, besides the other tests'
        await conn.execute(text(f"INSERT INTO {TABLE} (owner_id) VALUES (:o)"), {"o": own})
        owners = await repo.owners(conn)
    first, first_metrics = publisher(stack, engine, lock_key)
    second, second_metrics = publisher(stack, engine, lock_key)
    leading = asyncio.create_task(first.run())
    standing_by = asyncio.create_task(second.run())
    try:
        published = "tickertap_portfolio_updates_published_total"
        leader = "tickertap_portfolio_live_leader"
        await until(lambda: gauge(first_metrics, leader) == 1, "a leader")
        await until(lambda: gauge(first_metrics, published) >= len(owners), "every portfolio once")
        assert len(first.book) >= len(owners)
        assert gauge(second_metrics, leader) == 0
        assert gauge(second_metrics, published) == 0

        before = gauge(first_metrics, published)
        async with engine.begin() as conn:  # an announced change is published again
            await repo.notify_changes(conn, owners=owners[:1])
        await until(lambda: gauge(first_metrics, published) == before + 1, "the change published")

        await stopped(leading)
        await until(lambda: gauge(second_metrics, leader) == 1, "takeover")
        await until(lambda: gauge(second_metrics, published) >= len(owners), "all published again")
        async with engine.connect() as conn:
            holders = await conn.execute(
                text(  # the two-key form: classid, objid = the key, the shard
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND objsubid = 2 AND classid::bigint = :k AND objid::bigint = 0"
                ),
                {"k": lock_key},
            )
            assert holders.scalar() == 1
    finally:
        for task in (leading, standing_by):
            await stopped(task)
        async with engine.begin() as conn:
            await conn.execute(text(f"DELETE FROM {TABLE} WHERE owner_id = :o"), {"o": own})


async def test_shards_lead_side_by_side_and_split_the_portfolios(stack, engine) -> None:
    """Shard i of 2 publishes the portfolios on the partitions i modulo 2, and every update
    lands on the partition its key hashes to (as any producer of the project puts it)."""
    lock_key = uuid.uuid4().int & 0x7FFF_FFFF
    async with engine.begin() as conn:
        await repo.see_all(conn)
        owners = set(await repo.owners(conn))
    partitions = updates_partitions(stack)
    reader = updates_reader(stack, partitions)
    shards = [publisher(stack, engine, lock_key, shard=i, shards=2) for i in range(2)]
    tasks = [asyncio.create_task(p.run()) for p, _ in shards]
    try:
        for _, registry in shards:
            await until(lambda r=registry: gauge(r, "tickertap_portfolio_live_leader") == 1, "lead")
        books = [set(p.book.owners()) for p, _ in shards]
        assert not books[0] & books[1]
        assert books[0] | books[1] >= owners
        assert all(
            key_partition(str(o).encode(), partitions) % 2 == i
            for i, book in enumerate(books)
            for o in book
        )
        published = "tickertap_portfolio_updates_published_total"
        for (_, registry), book in zip(shards, books, strict=True):
            await until(lambda r=registry, b=book: gauge(r, published) >= len(b), "published")
        seen: set[uuid.UUID] = set()
        deadline = time.monotonic() + WAIT_S
        while not owners <= seen and time.monotonic() < deadline:
            for message in await asyncio.to_thread(reader.consume, 500, 0.5):
                if message.error():
                    continue
                key = message.key()
                assert message.partition() == key_partition(key, partitions)
                seen.add(uuid.UUID(key.decode()))
        assert owners <= seen
    finally:
        reader.close()
        for task in tasks:
            await stopped(task)


def updates_partitions(stack) -> int:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    return len(admin.list_topics(UPDATES_TOPIC, timeout=10).topics[UPDATES_TOPIC].partitions)


def updates_reader(stack, partitions: int) -> Consumer:
    """A reader of the updates topic from its end (no group)."""
    reader = Consumer(
        {"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}"}
    )
    ends = []
    for p in range(partitions):
        _, high = reader.get_watermark_offsets(TopicPartition(UPDATES_TOPIC, p), timeout=10)
        ends.append(TopicPartition(UPDATES_TOPIC, p, high))
    reader.assign(ends)
    return reader


def test_the_parent_sums_its_shards_figures() -> None:
    registry = CollectorRegistry()
    figures = ShardFigures(PortfolioMetrics(registry))
    line = '{{"shard": {}, "leader": 1, "dirty": {}, "oldest_s": {}, "published": {}}}'
    figures.take(line.format(0, 5, 0.5, 100))
    figures.take(line.format(1, 7, 0.25, 40))
    figures.take(line.format(0, 2, 0.125, 130))
    figures.take("not json")
    assert gauge(registry, "tickertap_portfolio_live_leader") == 2
    assert gauge(registry, "tickertap_portfolio_live_dirty_portfolios") == 9
    assert gauge(registry, "tickertap_portfolio_live_oldest_dirty_seconds") == 0.25
    assert gauge(registry, "tickertap_portfolio_updates_published_total") == 170


def test_the_publishers_producer_reports_failed_deliveries_only(stack) -> None:
    """With the live producer's settings, a delivered update calls nothing back and one
    that cannot be delivered (here: a topic the broker does not have) reaches the
    callback that marks its portfolio again."""
    from confluent_kafka import KafkaError, Message, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tickertap.messaging.kafka import producer_config
    from tickertap.portfolio.live import PRODUCER_OVERRIDES

    topic = f"test.live-deliveries.{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=10)[topic].result(timeout=30)

    reported: list[tuple[KafkaError | None, bytes | None]] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        key = message.key()
        reported.append((error, key if isinstance(key, bytes) else None))

    config = producer_config(stack.kafka_bootstrap, PRODUCER_OVERRIDES)
    producer = Producer({**config, "on_delivery": delivered, "message.timeout.ms": 2000})
    producer.produce(topic, b"an update", b"delivered")
    assert producer.flush(10) == 0
    assert reported == []
    producer.produce(f"no-such-topic-{uuid.uuid4().hex}", b"x", b"failed")
    assert producer.flush(10) == 0
    assert len(reported) == 1
    error, key = reported[0]
    assert error is not None
    assert key == b"failed"


async def test_prices_announced_by_another_role_are_read_from_the_database(stack, engine) -> None:
    """Any session of the database can announce on the channel: a price announced by a role
    that is not a member of the publisher's (another service's) is not taken as stored;
    the symbol's price is read from the database instead."""
    symbol = f"LL{uuid.uuid4().hex[:8].upper()}"
    role = f"ttest_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    live, _ = publisher(stack, engine, lock_key=0x7E57)
    real = stored_price(symbol, "100.00", 1)
    fake = stored_price(symbol, "0.01", 2)
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
        await conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
        await conn.execute(
            text(
                "INSERT INTO portfolio.prices (symbol, price, exchange_ts, received_at,"
                " source_topic, source_partition, source_offset, event_topic,"
                " event_partition, event_offset) VALUES (:s, 100.00, :at, :at, 'ticks', 0, 1,"
                " 'marketdata.prices.v1', 0, 1)"
            ),
            {"s": symbol, "at": real.quote.exchange_ts},
        )
    other = stack.pg_admin_url.split("@", 1)[1]
    try:
        outsider = await asyncpg.connect(f"postgresql://{role}:{password}@{other}")
        own = await asyncpg.connect(stack.pg_admin_url)
        try:
            (payload,) = repo.announcements([], [], [fake])
            for conn in (outsider, own):
                received: asyncio.Queue[int] = asyncio.Queue()

                def heard(_conn: object, pid: int, _channel: str, text_: str) -> None:
                    live._changes.add(text_, pid)  # as the leader's listener does
                    received.put_nowait(pid)  # noqa: B023  # awaited within this iteration

                listener = await asyncpg.connect(stack.pg_admin_url)
                await listener.add_listener(repo.CHANGES_CHANNEL, heard)
                await conn.execute("SELECT pg_notify($1, $2)", repo.CHANGES_CHANNEL, payload)
                assert await asyncio.wait_for(received.get(), WAIT_S) == conn.get_server_pid()
                await listener.close()
                await live._reload(live._changes.take())
                taken = live.book._prices[symbol]
                if conn is outsider:  # read from the database: the real price
                    assert taken.quote.price == 100
                else:  # the publisher's own role (here the admin): taken as announced
                    assert taken == fake
        finally:
            await outsider.close()
            await own.close()
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM portfolio.prices WHERE symbol = :s"), {"s": symbol}
            )
            await conn.execute(text(f"DROP OWNED BY {role}"))  # its CONNECT grant
            await conn.execute(text(f"DROP ROLE {role}"))


def stored_price(symbol: str, price: str, offset: int) -> repo.StoredPrice:
    at = datetime(2026, 3, 2, 12, 0, offset, tzinfo=UTC)
    quote = d.Quote(symbol, Decimal(price), at, "ticks", 0, offset)
    return repo.StoredPrice(quote, repo.Source("marketdata.prices.v1", 0, offset), at)
