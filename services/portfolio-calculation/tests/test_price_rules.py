"""The SQL the batched price consumer and the live publisher rely on, against the stack's
Postgres (as admin, on symbols of their own that no event names)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from portfolio_testkit import new_symbol
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.handlers import latest_per_symbol

pytestmark = pytest.mark.stack
NOON = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
async def engine(stack) -> AsyncIterator[AsyncEngine]:
    url = stack.pg_admin_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()


def price(symbol: str, value: str, at: datetime, offset: int) -> repo.PriceUpdate:
    quote = d.Quote(symbol, Decimal(value), at, "ticks", 0, offset)
    return repo.PriceUpdate(quote, at + timedelta(seconds=1), repo.Source("prices", 0, offset))


def long_named_price(n: int) -> repo.StoredPrice:
    """A price with the longest names a price event can carry (Kafka: 249 characters)."""
    topic = "t" * 249
    quote = d.Quote(
        f"{n:032d}",
        Decimal("12345678901234567890.123456789012345678"),
        NOON,
        topic,
        2**31 - 1,
        2**63 - 1,
        Decimal("-0.000000000000000001"),
        NOON - timedelta(days=1),
    )
    return repo.StoredPrice(quote, repo.Source(topic, 2**31 - 1, 2**63 - 1), NOON)


async def stored(engine: AsyncEngine, symbol: str) -> repo.StoredPrice:
    async with engine.begin() as conn:
        return (await repo.prices(conn, [symbol]))[symbol]


async def test_a_batch_stores_what_one_by_one_would_with_the_previous_close(engine) -> None:
    a, b = new_symbol(), new_symbol()
    yesterday = NOON - timedelta(days=1)
    async with engine.begin() as conn:  # b already has yesterday's price
        assert await repo.record_prices(conn, latest_per_symbol([price(b, "5", yesterday, 1)]))
    batch = [
        price(a, "9", yesterday, 1),
        price(a, "10", yesterday + timedelta(hours=1), 2),  # a's close
        price(a, "11", NOON, 3),
        price(b, "6", NOON, 2),  # b's close is the stored price
        price(a, "8", yesterday + timedelta(hours=2), 4),  # late: changes nothing
    ]
    async with engine.begin() as conn:
        moved = await repo.record_prices(conn, latest_per_symbol(batch))
    assert sorted(p.quote.symbol for p in moved) == sorted([a, b])
    pa, pb = await stored(engine, a), await stored(engine, b)
    assert {p.quote.symbol: p for p in moved} == {a: pa, b: pb}  # what it stored, read back
    assert (pa.quote.price, pa.quote.previous_close, pa.event.offset) == (11, 10, 3)
    assert (pb.quote.price, pb.quote.previous_close, pb.event.offset) == (6, 5, 2)
    async with engine.begin() as conn:  # older than what is stored: nothing moves
        assert await repo.record_prices(conn, latest_per_symbol(batch[:2])) == []


async def test_changes_are_announced_at_commit_only_in_bounded_payloads(engine, stack) -> None:
    """Also the prices themselves, exactly, in payloads under Postgres' 8,000 bytes however
    long their names (pg_notify refuses a longer one)."""
    heard: asyncio.Queue[dict[str, list[str]]] = asyncio.Queue()
    listener = await asyncpg.connect(stack.pg_admin_url)
    await listener.add_listener(
        repo.CHANGES_CHANNEL, lambda *args: heard.put_nowait(json.loads(args[3]))
    )
    try:
        owners = [uuid.uuid4() for _ in range(repo.NOTIFY_ITEMS_MAX + 1)]
        symbol = new_symbol()
        prices = [long_named_price(n) for n in range(20)]
        async with engine.connect() as conn:
            async with conn.begin() as tx:  # rolled back: never announced
                await repo.notify_changes(conn, owners=owners[:1], symbols=[symbol])
                await tx.rollback()
            async with conn.begin():
                await repo.notify_changes(conn, owners=owners, symbols=[symbol], prices=prices)
                await asyncio.sleep(0.2)
                assert heard.empty()  # nothing before the commit
        expected = repo.announcements(owners, [symbol], prices)
        got = [await asyncio.wait_for(heard.get(), 5) for _ in expected]
        assert got == [json.loads(e) for e in expected]
        assert got[:2] == [
            {"owners": [str(o) for o in owners[: repo.NOTIFY_ITEMS_MAX]]},
            {"owners": [str(owners[-1])]},
        ]
        assert got[-1] == {"symbols": [symbol]}
        announced = [repo.price_of_payload(i) for change in got[2:-1] for i in change["prices"]]
        assert announced == prices
        assert len(got) > 4  # the long names took more than one payload: each under 8,000
        await asyncio.sleep(0.2)
        assert heard.empty()
    finally:
        await listener.close()
