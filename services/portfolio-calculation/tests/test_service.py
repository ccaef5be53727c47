"""The portfolio service on the running local stack: ledger events in (published by hand,
encoded like the ledger's outbox), state, HTTP API and portfolio.updates.v1 out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from portfolio_testkit import (
    HOUSE,
    PRICES,
    TRANSFERS,
    Book,
    UpdatesReader,
    eventually,
    new_id,
    new_symbol,
    price_record,
    publish,
)

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
D = Decimal
TRANSFERS_DLQ = "ledger.transfers.dlq.v1"


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(load_schemas(find_schemas_dir()))


@pytest.fixture(scope="module")
def producer(stack):
    p = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    yield p
    p.flush(10)


@pytest.fixture
async def api(stack):
    async with httpx.AsyncClient(
        base_url=stack.service_url("portfolio-calculation"), timeout=30
    ) as client:
        yield client


@pytest.fixture
async def db(stack):
    """The Postgres admin, to see what the consumers have claimed."""
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()


@pytest.fixture
def support(mint_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(new_id(), ('support',))}"}


@pytest.fixture
def updates(stack, codec):
    reader = UpdatesReader(stack.kafka_bootstrap, codec)
    yield reader
    reader.close()


def today_starts(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: times computed from `now` are clamped to it so that a
    test started just after midnight cannot put "today's" events on yesterday."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


async def send(producer, codec, *records: dict[str, Any]) -> None:
    for record in records:
        await publish(producer, codec, TRANSFERS, record["transfer_id"], record)


async def summary_after(api, headers, owner: str, applied: int, method: str = "fifo") -> Any:
    """The summary once `applied` transfers count (reversed pairs do not)."""

    async def ready() -> Any:
        r = await api.get(f"/v1/portfolios/{owner}", params={"method": method}, headers=headers)
        if r.status_code == 200 and r.json()["transfers_applied"] == applied:
            return r.json()
        return None

    return await eventually(ready, f"{applied} transfers of {owner} applied")


async def test_trades_make_positions_lots_and_realized_pnl_to_the_cent(
    api, support, producer, codec
) -> None:
    book, symbol = Book(), new_symbol()
    b1 = book.trade(symbol, "buy", "10", "100.00", "1.00")
    b2 = book.trade(symbol, "buy", "10", "120.00", "1.20")
    sale = book.trade(symbol, "sell", "15", "130.00", "1.95")
    await send(producer, codec, book.deposit("5000.00"), b1, b2, sale)
    await publish(producer, codec, PRICES, symbol, price_record(symbol, "140.00", book._at(), 7))

    async def priced() -> Any:
        r = await api.get(f"/v1/portfolios/{book.owner}/positions", headers=support)
        if r.status_code == 200 and r.json()["positions"][0]["price"] is not None:
            return r.json()
        return None

    s = await summary_after(api, support, book.owner, 4)
    assert s["cash"] == [{"asset": "USD", "amount": "4745.85"}]
    positions = await eventually(priced, "the position is priced")
    (p,) = positions["positions"]
    assert {k: p[k] for k in ("symbol", "quantity", "cost_basis", "realized_pnl")} == {
        "symbol": symbol,
        "quantity": "5",
        "cost_basis": "600.60",
        "realized_pnl": "346.45",
    }
    assert (p["market_value"], p["unrealized_pnl"]) == ("700.00", "99.40")
    assert p["price"]["price"] == "140"
    assert (p["price"]["source_topic"], p["price"]["source_partition"]) == (
        "marketdata.ticks.v1",
        2,
    )
    assert p["price"]["source_offset"] == 7

    average = (
        await api.get(
            f"/v1/portfolios/{book.owner}/positions", params={"method": "average"}, headers=support
        )
    ).json()["positions"][0]
    assert (average["cost_basis"], average["realized_pnl"], average["unrealized_pnl"]) == (
        "550.55",
        "296.40",
        "149.45",
    )

    s = await summary_after(api, support, book.owner, 4)
    assert s["totals"]["total_value"] == "5445.85"

    lots = (await api.get(f"/v1/portfolios/{book.owner}/lots", headers=support)).json()["lots"]
    assert [(x["transfer_id"], x["quantity"], x["cost"], x["fees"]) for x in lots] == [
        (b2["transfer_id"], "5", "600.60", "0.60")
    ]

    realized = (await api.get(f"/v1/portfolios/{book.owner}/realized", headers=support)).json()
    (entry,) = realized["entries"]
    assert (entry["sale_transfer_id"], entry["pnl"], entry["proceeds"], entry["cost"]) == (
        sale["transfer_id"],
        "346.45",
        "1948.05",
        "1601.60",
    )
    assert [(u["transfer_id"], u["quantity"], u["cost"]) for u in entry["lots"]] == [
        (b1["transfer_id"], "10", "1001.00"),
        (b2["transfer_id"], "5", "600.60"),
    ]
    assert realized["total"] == {"USD": "346.45"}


async def test_duplicates_out_of_order_and_a_reversal(api, support, producer, codec) -> None:
    book, symbol = Book(), new_symbol()
    deposit = book.deposit("5000.00")
    b1 = book.trade(symbol, "buy", "10", "100.00", "1.00")
    b2 = book.trade(symbol, "buy", "10", "120.00", "1.20")
    sale = book.trade(symbol, "sell", "5", "130.00", "0.65")
    # out of order, the same event twice, the same transfer again under a new event id
    await send(producer, codec, sale, b2, deposit, sale, b1)
    await send(producer, codec, {**b1, "event_id": new_id()})
    s = await summary_after(api, support, book.owner, 4)
    assert s["cash"] == [{"asset": "USD", "amount": "3447.15"}]
    assert s["totals"]["realized_pnl"] == "148.85"  # FIFO: 649.35 - 500.50

    await send(producer, codec, book.reversal(b1))
    s = await summary_after(api, support, book.owner, 3)  # b1 and its reversal count for none
    assert s["cash"] == [{"asset": "USD", "amount": "4448.15"}]
    assert s["totals"]["realized_pnl"] == "48.75"  # the sale now takes lot 2: 649.35 - 600.60
    assert s["totals"]["cost_basis"] == "600.60"


async def test_out_of_order_prices_keep_the_newest(api, support, producer, codec, db) -> None:
    book, symbol = Book(), new_symbol()
    await send(
        producer, codec, book.deposit("1000.00"), book.trade(symbol, "buy", "2", "10.00", "0")
    )
    now = datetime.now(UTC)
    newer = price_record(symbol, "12.50", now, 2)
    older = price_record(symbol, "11.00", now - timedelta(seconds=5), 1)
    await publish(producer, codec, PRICES, symbol, newer)
    await publish(producer, codec, PRICES, symbol, older)
    await publish(producer, codec, PRICES, symbol, newer)  # redelivered

    async def settled() -> Any:
        r = await api.get(f"/v1/portfolios/{book.owner}/positions", headers=support)
        p = r.json()["positions"][0] if r.status_code == 200 and r.json()["positions"] else None
        return p if p and p["price"] and p["price"]["source_offset"] == 2 else None

    await eventually(settled, "the newest price applied")

    async def claimed() -> bool:  # the older one, published after it, is seen and left out
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM portfolio.inbox WHERE consumer = 'prices' AND event_id = $1",
                uuid.UUID(older["event_id"]),
            )
        )

    await eventually(claimed, "the older price consumed")
    p = (await api.get(f"/v1/portfolios/{book.owner}/positions", headers=support)).json()
    assert p["positions"][0]["price"]["price"] == "12.5"
    assert p["positions"][0]["market_value"] == "25.00"


async def test_updates_are_coalesced_and_carry_the_latest_state(
    api, support, producer, codec, updates
) -> None:
    book, symbol = Book(), new_symbol()
    records = [book.deposit("1000.00")] + [
        book.trade(symbol, "buy", "1", f"{10 + i}.00", "0") for i in range(8)
    ]
    await send(producer, codec, *records)
    await publish(producer, codec, PRICES, symbol, price_record(symbol, "20.00", book._at(), 5))

    def final(u: dict[str, Any]) -> bool:
        return (
            bool(u["positions"])
            and u["positions"][0]["price"] is not None
            and (u["positions"][0]["quantity"] == 8)
        )

    last = await updates.until(book.owner, final, "an update with the 8 shares priced")
    (position,) = last["positions"]
    assert (position["symbol"], position["currency"]) == (symbol, "USD")
    assert position["cost_basis"] == D("108.00")  # 10 + 11 + ... + 17
    assert position["market_value"] == D("160.00")
    assert position["unrealized_pnl"] == D("52.00")
    assert position["cost_basis_average"] == D("108.00")
    assert (position["price_source_partition"], position["price_source_offset"]) == (2, 5)
    assert last["cash"] == [{"asset": "USD", "amount": D("892.00")}]
    assert last["totals"]["total_value"] == D("1052.00")
    assert {s["topic"] for s in last["source_offsets"]} == {TRANSFERS, PRICES}
    mine = updates.seen[book.owner]
    # coalesced: fewer updates than inputs, at least the interval apart (250 ms; 20 ms slack
    # for the two clocks involved: the database's for the interval, Python's for occurred_at)
    assert len(mine) < len(records) + 1
    gaps = [(b["occurred_at"] - a["occurred_at"]).total_seconds() for a, b in pairwise(mine)]
    assert all(gap >= 0.23 for gap in gaps), gaps

    metrics = (await api.get("/metrics")).text
    for name in (
        "tickertap_portfolio_updates_published_total",
        "tickertap_portfolio_recompute_transfers_count",
    ):
        (value,) = [line.split()[-1] for line in metrics.splitlines() if line.startswith(name)]
        assert float(value) > 0, name


async def test_api_errors(api, support, mint_token, producer, codec) -> None:
    book = Book()
    await send(producer, codec, book.deposit("10.00"))
    await summary_after(api, support, book.owner, 1)
    own = {"Authorization": f"Bearer {mint_token(book.owner, ('customer',))}"}
    other = {"Authorization": f"Bearer {mint_token(new_id(), ('customer',))}"}
    base = f"/v1/portfolios/{book.owner}"

    r = await api.get(base, headers=own)
    assert r.status_code == 200
    assert r.json()["cash"] == [{"asset": "USD", "amount": "10.00"}]
    for path in ("", "/positions", "/lots", "/realized", "/valuations"):
        r = await api.get(base + path)
        assert (r.status_code, r.json()["code"]) == (401, "invalid_token"), path
        r = await api.get(base + path, headers=other)
        assert (r.status_code, r.json()["code"]) == (403, "not_your_portfolio"), path
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await api.get(f"/v1/portfolios/{new_id()}{path}", headers=support)
        assert (r.status_code, r.json()["code"]) == (404, "portfolio_not_found"), path
    r = await api.get(
        base + "/realized", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=own
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_range")
    r = await api.get(
        base + "/valuations", params={"from": "2020-01-01", "to": "2026-01-01"}, headers=own
    )
    assert (r.status_code, r.json()["code"]) == (422, "range_too_large")
    r = await api.get(base + "/realized", params={"method": "lifo"}, headers=own)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")
    r = await api.get(base + "/realized", params={"from": "yesterday"}, headers=own)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")
    r = await api.get("/v1/portfolios/not-a-uuid", headers=own)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")

    before = datetime.now(UTC).date().isoformat()
    r = await api.get(base + "/valuations", headers=own)
    after = datetime.now(UTC).date().isoformat()
    assert r.status_code == 200
    (today,) = r.json()["valuations"]
    assert today["date"] in {before, after}  # the service's today, midnight or not
    assert today["total_value"] == "10.00"
    r = await api.get(
        base + "/valuations", params={"from": "2026-01-01", "to": "2026-01-31"}, headers=own
    )
    assert r.json()["valuations"] == []


async def test_an_invalid_transfer_is_dead_lettered_and_the_stream_goes_on(
    api, support, producer, codec, stack
) -> None:
    book = Book()
    bad = book.record("trade", [(book.owner, "USD", D("-1.00")), (HOUSE, "USD", D("1.00"))])
    await send(producer, codec, bad, book.deposit("3.00"))
    s = await summary_after(api, support, book.owner, 1)
    assert s["cash"] == [{"asset": "USD", "amount": "3.00"}]

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"t-{new_id()}"})
    try:
        consumer.assign([TopicPartition(TRANSFERS_DLQ, 0, OFFSET_BEGINNING)])

        async def dead_letter() -> Any:
            for m in await asyncio.to_thread(consumer.consume, 500, 0.5):
                if m.error() is None and m.key() == bad["transfer_id"].encode():
                    return dict(m.headers() or [])
            return None

        headers = await eventually(dead_letter, "the invalid transfer in the dead-letter topic")
    finally:
        consumer.close()
    assert headers["x-dlq-reason"] == b"invalid_event"
    assert headers["x-dlq-source-topic"] == TRANSFERS.encode()


async def test_day_change_from_the_previous_close(api, support, producer, codec) -> None:
    book, symbol = Book(), new_symbol()
    await send(
        producer, codec, book.deposit("100.00"), book.trade(symbol, "buy", "3", "10.00", "0")
    )
    now = datetime.now(UTC)
    midnight = today_starts(now)
    yesterday = midnight - timedelta(hours=1)  # whatever the time of day, an earlier day
    for record in (
        price_record(symbol, "9.50", yesterday - timedelta(minutes=5), 1),
        price_record(symbol, "10.20", yesterday, 2),  # the close
        # today's two prices stay on today's UTC day even a moment after midnight
        price_record(symbol, "11.00", max(now - timedelta(seconds=1), midnight), 3),
        price_record(symbol, "11.10", max(now, midnight + timedelta(milliseconds=1)), 4),
    ):
        await publish(producer, codec, PRICES, symbol, record)

    async def settled() -> Any:
        r = await api.get(f"/v1/portfolios/{book.owner}/positions", headers=support)
        p = r.json()["positions"][0] if r.status_code == 200 and r.json()["positions"] else None
        return p if p and p["price"] and p["price"]["source_offset"] == 4 else None

    p = await eventually(settled, "the last price applied")
    assert (p["price"]["previous_close"], p["day_change"]) == ("10.2", "2.70")  # 33.30 - 30.60
    s = await summary_after(api, support, book.owner, 2)
    assert s["totals"]["day_change"] == "2.70"


async def test_realized_by_day_range_and_pages(api, support, producer, codec) -> None:
    book, symbol = Book(), new_symbol()
    now = datetime.now(UTC)
    today, midnight = now.date().isoformat(), today_starts(now)
    book.t0 = now - timedelta(days=3)
    records = [book.deposit("1000.00"), book.trade(symbol, "buy", "3", "10.00", "0")]
    records.append(book.trade(symbol, "sell", "1", "12.00", "0"))  # three days ago: +2.00
    late = [
        book.trade(symbol, "sell", "1", "13.00", "0"),
        book.trade(symbol, "sell", "1", "15.00", "0"),
    ]
    for i, r in enumerate(late):  # today (on `today`'s UTC day even just after midnight)
        r["occurred_at"] = max(now - timedelta(seconds=10 - i), midnight + timedelta(seconds=i))
    await send(producer, codec, *records, *late)
    await summary_after(api, support, book.owner, 5)
    path = f"/v1/portfolios/{book.owner}/realized"

    r = (await api.get(path, headers=support)).json()
    assert [e["pnl"] for e in r["entries"]] == ["2.00", "3.00", "5.00"]
    assert (r["total"], r["next_cursor"]) == ({"USD": "10.00"}, None)
    r = (await api.get(path, params={"from": today}, headers=support)).json()
    assert [e["pnl"] for e in r["entries"]] == ["3.00", "5.00"]
    assert r["total"] == {"USD": "8.00"}
    r = (await api.get(path, params={"cursor": 0}, headers=support)).json()
    assert [e["pnl"] for e in r["entries"]] == ["3.00", "5.00"]  # after the first entry
    r = await api.get(path, params={"cursor": -1}, headers=support)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")


async def test_a_price_from_the_future_is_dead_lettered(
    api, support, producer, codec, stack
) -> None:
    book, symbol = Book(), new_symbol()
    await send(
        producer, codec, book.deposit("100.00"), book.trade(symbol, "buy", "1", "10.00", "0")
    )
    future = price_record(symbol, "99.00", datetime.now(UTC) + timedelta(hours=1), 1)
    await publish(producer, codec, PRICES, symbol, future)
    await publish(
        producer, codec, PRICES, symbol, price_record(symbol, "11.00", datetime.now(UTC), 2)
    )

    async def priced() -> Any:
        r = await api.get(f"/v1/portfolios/{book.owner}/positions", headers=support)
        p = r.json()["positions"][0] if r.status_code == 200 and r.json()["positions"] else None
        return p if p and p["price"] else None

    p = await eventually(priced, "the position priced")
    assert p["price"]["price"] == "11"  # the later real price, not the one from the future

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"t-{new_id()}"})
    try:
        consumer.assign([TopicPartition("marketdata.prices.dlq.v1", 0, OFFSET_BEGINNING)])

        async def dead_letter() -> Any:
            for m in await asyncio.to_thread(consumer.consume, 500, 0.5):
                headers = dict(m.headers() or []) if m.error() is None else {}
                if (
                    m.error() is None
                    and m.key() == symbol.encode()
                    and headers.get("x-dlq-consumer-group") == b"portfolio-calculation.prices"
                ):
                    return headers
            return None

        headers = await eventually(dead_letter, "the future price dead-lettered")
    finally:
        consumer.close()
    assert headers["x-dlq-reason"] == b"exchange_ts_in_future"


async def test_extreme_days_and_cursors_are_4xx_never_500(api, support, producer, codec) -> None:
    """Days at the ends of the calendar, with or without a time zone offset, and cursors
    beyond the column's integer: a problem with a code, not an overflow."""
    book = Book()
    await send(producer, codec, book.deposit("10.00"))
    await summary_after(api, support, book.owner, 1)
    base = f"/v1/portfolios/{book.owner}"

    for path, params in [
        ("/realized", {"to": "9999-12-31"}),  # its end, the next midnight, overflows
        ("/realized", {"from": "9999-12-31"}),
        ("/realized", {"to": "9999-12-31T00:00:00-01:00"}),
        ("/realized", {"from": "2026-01-01", "to": "9999-12-31T00:00:00+14:00"}),
        ("/valuations", {"from": "9999-12-31", "to": "9999-12-31"}),
        ("/valuations", {"to": "9999-12-31T00:00:00-05:00"}),
    ]:
        r = await api.get(base + path, params=params, headers=support)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_range"), (path, params)
    for path, params in [
        ("/realized", {"from": "0000-12-31"}),
        ("/realized", {"to": "10000-01-01"}),
        ("/realized", {"to": "99999999999999999999"}),
        ("/realized", {"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-01T23:00:00Z"}),
        ("/valuations", {"from": "-0001-01-01"}),
        ("/realized", {"cursor": str(2**31)}),
        ("/realized", {"cursor": str(10**40)}),
    ]:
        r = await api.get(base + path, params=params, headers=support)
        assert (r.status_code, r.json()["code"]) == (422, "validation_error"), (path, params)
    for path, params in [
        ("/realized", {"from": "0001-01-01", "to": "9999-12-30"}),
        ("/realized", {"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-01"}),
        ("/realized", {"to": "9999-12-30T00:00:00-01:00", "cursor": str(2**31 - 1)}),
        ("/valuations", {"from": "0001-01-01", "to": "0001-01-01"}),
        ("/valuations", {"from": "9999-12-30", "to": "9999-12-30"}),
    ]:
        r = await api.get(base + path, params=params, headers=support)
        assert r.status_code == 200, (path, params, r.text)
        body = r.json()
        assert body.get("entries", body.get("valuations")) == [], (path, params)


async def test_amounts_beyond_the_default_scale_are_shown_exactly(
    api, support, producer, codec
) -> None:
    """USDC has no configured scale (default 2) and shares moved in without a trade are
    cash: their balances are shown as they are, never rounded to 2 places."""
    book, symbol = Book(), new_symbol()
    shares_in = book.record(
        "transfer", [(book.owner, symbol, D("0.125")), (HOUSE, symbol, D("-0.125"))]
    )
    await send(producer, codec, book.deposit("0.123456", "USDC"), shares_in, book.deposit("5"))
    s = await summary_after(api, support, book.owner, 3)
    assert s["cash"] == [
        {"asset": symbol, "amount": "0.125"},
        {"asset": "USD", "amount": "5.00"},
        {"asset": "USDC", "amount": "0.123456"},
    ]
