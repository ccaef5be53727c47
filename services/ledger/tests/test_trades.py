"""Trades over HTTP and the price cache over Kafka, against the running local stack.

The stack's ledger runs with the default fee schedule: 5 bps of the notional, no
minimum, no maximum; a market price is usable for 60 s from its exchange time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from ledger_testkit import LedgerClient, new_id, snapshot

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack

PRICES = "marketdata.prices.v1"
PRICES_DLQ = "marketdata.prices.dlq.v1"
WAIT_S_MAX = 20.0


def new_symbol() -> str:
    return "T" + uuid.uuid4().hex[:9].upper()


class Ledger(LedgerClient):
    """The ledger client, with listings and trades."""

    async def listing(self, scale: int = 0, quote: str = "USD") -> str:
        symbol = new_symbol()
        r = await self.client.post(
            "/v1/assets",
            json={"code": symbol, "scale": scale, "kind": "share", "quote_currency": quote},
            headers=self.ops,
        )
        assert r.status_code == 201, r.text
        return symbol

    async def funded(self, amount: str) -> tuple[str, str]:
        """A new owner with a USD account holding `amount`: (owner, account)."""
        owner = new_id()
        cash = await self.account(owner)
        if Decimal(amount):
            r = await self.client.post(
                "/v1/deposits",
                json={"transfer_id": new_id(), "account_id": cash, "amount": amount},
                headers=self.ops,
            )
            assert r.status_code == 201, r.text
        return owner, cash

    async def trade(
        self,
        owner: str | None,
        symbol: str,
        side: str,
        quantity: str,
        price: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        trade_id: str | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "trade_id": trade_id or new_id(),
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
        }
        if owner is not None:
            body["owner_id"] = owner
        if price is not None:
            body["price"] = price
        extra = {"Idempotency-Key": key} if key else {}
        return await self.client.post(
            "/v1/trades", json=body, headers={**(headers or self.ops), **extra}
        )

    async def holding(self, owner: str, symbol: str) -> Decimal | None:
        """The owner's balance in `symbol`, None when there is no such account."""
        r = await self.client.get(f"/v1/accounts?owner={owner}", headers=self.ops)
        assert r.status_code == 200, r.text
        found = [a for a in r.json()["items"] if a["asset"] == symbol]
        return Decimal(found[0]["balance"]) if found else None


@pytest.fixture
async def ledger(stack, mint_token):
    async with httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as client:
        yield Ledger(client, mint_token)


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec(load_schemas(find_schemas_dir()))


@pytest.fixture(scope="session")
def producer(stack):
    p = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    yield p
    p.flush(10)


def produce(producer: Producer, key: str, value: bytes) -> None:
    """Produce one message and wait until the broker has it."""
    errors: list[Any] = []
    producer.produce(
        PRICES, key=key.encode(), value=value, on_delivery=lambda err, _: errors.append(err)
    )
    assert producer.flush(10) == 0, "the broker did not acknowledge the price"
    assert errors == [None], errors


def price_record(
    symbol: str, price: Decimal, exchange_ts: datetime, event_id: str | None = None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "event_id": event_id or new_id(),
        "occurred_at": now,
        "symbol": symbol,
        "venue": "TEST",
        "price": price,
        "bid": None,
        "ask": None,
        "exchange_ts": exchange_ts,
        "received_at": now,
        "source_topic": "marketdata.ticks.v1",
        "source_partition": 0,
        "source_offset": 0,
    }


async def publish_price(
    producer: Producer, codec: AvroCodec, symbol: str, price: str, exchange_ts: datetime
) -> str:
    record = price_record(symbol, Decimal(price), exchange_ts)
    await asyncio.to_thread(produce, producer, symbol, codec.encode(PRICES, record))
    return str(record["event_id"])


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check` until it returns something truthy, for at most WAIT_S_MAX."""
    deadline = time.monotonic() + WAIT_S_MAX
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S_MAX} s: {what}")
        await asyncio.sleep(0.1)


async def price_applied(db: asyncpg.Connection, event_id: str) -> None:
    """Wait until the ledger's price consumer has claimed (applied or ignored) the event."""

    async def claimed() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM ledger.inbox WHERE consumer = 'prices' AND event_id = $1",
                uuid.UUID(event_id),
            )
        )

    await eventually(claimed, f"the ledger consumed price event {event_id}")


def legs_by_account(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {leg["account_id"]: (leg["amount"], leg["balance_after"]) for leg in body["legs"]}


# -- trades at a given price -----------------------------------------------------------


async def test_a_buy_at_a_given_price_moves_cash_shares_and_the_fee_exactly(
    ledger: Ledger, db, codec: AvroCodec
):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("1000.00")
    r = await ledger.trade(owner, symbol, "buy", "3", "187.1234", key=f"k-{new_id()}")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "trade"
    assert body["trade"] == {
        "symbol": symbol,
        "side": "buy",
        "quantity": "3",
        "price": "187.1234",
        "notional": "561.37",  # 561.3702, half-even at 2 places
        "fee": "0.28",  # 5 bps: 0.280685
        "currency": "USD",
    }
    shares = await db.fetchval(
        "SELECT id FROM ledger.accounts WHERE owner_id = $1 AND asset = $2",
        uuid.UUID(owner),
        symbol,
    )
    assert shares is not None, "a buy opens the owner's account in the symbol"
    system = {
        r["kind"]: str(r["id"])
        for r in await db.fetch(
            "SELECT id, kind FROM ledger.accounts WHERE owner_id IS NULL "
            "AND ((asset = 'USD' AND kind IN ('omnibus', 'fees')) "
            "OR (asset = $1 AND kind = 'custody'))",
            symbol,
        )
    }
    legs = legs_by_account(body)
    assert set(legs) == {cash, str(shares), *system.values()}
    assert legs[cash] == ("-561.65", "438.35")
    assert legs[str(shares)] == ("3", "3")
    assert legs[system["omnibus"]][0] == "561.37"
    assert legs[system["fees"]][0] == "0.28"
    assert legs[system["custody"]] == ("-3", "-3")
    assert await ledger.balance(cash) == Decimal("438.35")
    assert await ledger.holding(owner, symbol) == Decimal(3)

    # the event carries every leg and the trade details; its key is the owner
    row = await db.fetchrow(
        "SELECT o.key, o.value FROM ledger.outbox o "
        "JOIN ledger.transfers t ON t.event_id = o.event_id WHERE t.id = $1",
        uuid.UUID(body["id"]),
    )
    assert row["key"] == owner.encode()
    event = codec.decode(row["value"], "ledger.transfers.v1")
    assert event["kind"] == "trade"
    assert str(event["transfer_id"]) == body["id"]
    assert event["trade"] == {
        "symbol": symbol,
        "side": "buy",
        "quantity": Decimal(3),
        "price": Decimal("187.1234"),
        "notional": Decimal("561.37"),
        "fee": Decimal("0.28"),
        "currency": "USD",
    }
    assert sorted((str(leg["account_id"]), leg["amount"]) for leg in event["legs"]) == sorted(
        (account, Decimal(amount)) for account, (amount, _) in legs.items()
    )
    assert sum(leg["amount"] for leg in event["legs"] if leg["asset"] == "USD") == 0
    assert sum(leg["amount"] for leg in event["legs"] if leg["asset"] == symbol) == 0


async def test_a_sell_credits_the_notional_less_the_fee(ledger: Ledger):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("1000.00")
    assert (await ledger.trade(owner, symbol, "buy", "3", "100")).status_code == 201  # 300.15
    r = await ledger.trade(owner, symbol, "sell", "2", "110.5")
    assert r.status_code == 201, r.text
    trade = r.json()["trade"]
    assert (trade["notional"], trade["fee"], trade["price"]) == ("221.00", "0.11", "110.5")
    assert legs_by_account(r.json())[cash] == ("220.89", "920.74")  # 699.85 + 221.00 - 0.11
    assert await ledger.balance(cash) == Decimal("920.74")
    assert await ledger.holding(owner, symbol) == Decimal(1)


async def test_fractional_shares_trade_where_the_listing_allows_them(ledger: Ledger):
    symbol = await ledger.listing(scale=4)
    owner, cash = await ledger.funded("100.00")
    r = await ledger.trade(owner, symbol, "buy", "0.125", "80")
    assert r.status_code == 201, r.text
    assert r.json()["trade"]["quantity"] == "0.1250"
    assert r.json()["trade"]["notional"] == "10.00"
    assert r.json()["trade"]["fee"] == "0.00"  # 0.005, half-even at 2 places
    assert await ledger.holding(owner, symbol) == Decimal("0.125")
    assert await ledger.balance(cash) == Decimal("90.00")


async def test_a_trade_can_be_reversed_and_the_reversal_carries_its_details(ledger: Ledger):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("100.00")
    bought = (await ledger.trade(owner, symbol, "buy", "2", "10")).json()
    undo = await ledger.client.post(
        f"/v1/transfers/{bought['id']}/reversal",
        json={"reversal_id": new_id()},
        headers=ledger.ops,
    )
    assert undo.status_code == 201, undo.text
    assert undo.json()["trade"] == bought["trade"]
    assert await ledger.balance(cash) == Decimal("100.00")
    assert await ledger.holding(owner, symbol) == Decimal(0)


async def test_the_same_idempotency_key_replays_the_trade_even_when_funds_are_gone(
    ledger: Ledger, db
):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("20.01")
    key, trade_id = f"k-{new_id()}", new_id()
    first = await ledger.trade(owner, symbol, "buy", "2", "10", key=key, trade_id=trade_id)
    assert first.status_code == 201, first.text
    assert await ledger.balance(cash) == Decimal("0.00")  # 20.00 + 0.01 fee
    before = await snapshot(db)
    again = await ledger.trade(owner, symbol, "buy", "2", "10", key=key, trade_id=trade_id)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    other = await ledger.trade(owner, symbol, "buy", "1", "10", key=key, trade_id=trade_id)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    same_id = await ledger.trade(owner, symbol, "sell", "1", "10", trade_id=trade_id)
    assert same_id.status_code == 409
    assert same_id.json()["code"] == "transfer_exists"
    assert await snapshot(db) == before


# -- rejected trades -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("fractional_share", 422, "scale_exceeded"),
        ("price_places", 422, "scale_exceeded"),
        ("zero_quantity", 422, "amount_not_positive"),
        ("negative_price", 422, "amount_not_positive"),
        ("huge_notional", 422, "invalid_amount"),
        ("exponent", 422, "validation_error"),
        ("unknown_symbol", 422, "unknown_asset"),
        ("not_tradable", 422, "unknown_asset"),
        ("no_cash_account", 422, "unknown_account"),
        ("insufficient_cash", 409, "insufficient_funds"),
        ("insufficient_shares", 409, "insufficient_funds"),
        ("no_shares_at_all", 409, "insufficient_funds"),
        ("no_price", 409, "no_price"),
        ("customer_gives_price", 403, "forbidden"),
        ("customer_for_another", 403, "forbidden"),
    ],
)
async def test_rejected_trades_get_their_code_and_change_nothing(
    ledger: Ledger, db, case: str, status: int, code: str
):
    symbol = await ledger.listing()
    owner, _ = await ledger.funded("100.00")
    assert (await ledger.trade(owner, symbol, "buy", "2", "10")).status_code == 201
    broke, _ = await ledger.funded("0")
    fresh = await ledger.listing()  # never traded: no price, no custody account
    args: dict[str, tuple[Any, ...]] = {
        "fractional_share": (owner, symbol, "buy", "1.5", "10"),
        "price_places": (owner, symbol, "buy", "1", "1." + "1" * 19),
        "zero_quantity": (owner, symbol, "buy", "0", "10"),
        "negative_price": (owner, symbol, "buy", "1", "-10"),
        "huge_notional": (owner, symbol, "buy", "9" * 20, "9" * 20),
        "exponent": (owner, symbol, "buy", "1e2", "10"),
        "unknown_symbol": (owner, new_symbol(), "buy", "1", "10"),
        "not_tradable": (owner, "EUR", "buy", "1", "10"),
        "no_cash_account": (new_id(), fresh, "buy", "1", "10"),
        "insufficient_cash": (broke, fresh, "buy", "1", "10"),
        "insufficient_shares": (owner, symbol, "sell", "3", "10"),
        "no_shares_at_all": (broke, symbol, "sell", "1", "10"),
        "no_price": (owner, fresh, "buy", "1"),
        "customer_gives_price": (owner, symbol, "buy", "1", "10"),
        "customer_for_another": (broke, symbol, "buy", "1"),
    }
    headers = ledger.as_customer(owner) if case.startswith("customer") else None
    before = await snapshot(db)
    r = await ledger.trade(*args[case], headers=headers, key=f"k-{new_id()}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    assert await snapshot(db) == before
    if case == "insufficient_cash":
        assert await ledger.holding(broke, fresh) is None  # no account opened for a failed buy


# -- the price cache, fed by marketdata.prices.v1 --------------------------------------


async def test_a_price_from_kafka_is_used_for_trades_at_market(
    ledger: Ledger, db, producer: Producer, codec: AvroCodec
):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("100.00")
    customer = ledger.as_customer(owner)
    assert (await ledger.trade(None, symbol, "buy", "1", headers=customer)).json()[
        "code"
    ] == "no_price"
    await publish_price(producer, codec, symbol, "42.5", datetime.now(UTC))

    async def bought() -> httpx.Response | None:
        r = await ledger.trade(None, symbol, "buy", "2", headers=customer)
        if r.status_code == 409 and r.json()["code"] == "no_price":
            return None
        return r

    r = await eventually(bought, "a trade at the market price published on Kafka")
    assert r.status_code == 201, r.text
    assert r.json()["trade"]["price"] == "42.5"
    assert r.json()["trade"]["notional"] == "85.00"
    assert r.json()["trade"]["fee"] == "0.04"  # 0.0425
    assert await ledger.balance(cash) == Decimal("14.96")
    stored = await db.fetchrow(
        "SELECT price, exchange_ts FROM ledger.prices WHERE symbol = $1", symbol
    )
    assert stored["price"] == Decimal("42.5")


async def test_an_older_price_does_not_replace_a_newer_one_and_a_stale_one_is_no_price(
    ledger: Ledger, db, producer: Producer, codec: AvroCodec
):
    symbol = await ledger.listing()
    owner, _ = await ledger.funded("1000.00")
    now = datetime.now(UTC)
    newer = await publish_price(producer, codec, symbol, "50", now)
    await price_applied(db, newer)
    older = await publish_price(producer, codec, symbol, "40", now - timedelta(seconds=5))
    await price_applied(db, older)
    stored = await db.fetchrow(
        "SELECT price, exchange_ts FROM ledger.prices WHERE symbol = $1", symbol
    )
    assert (stored["price"], stored["exchange_ts"]) == (Decimal(50), now)
    r = await ledger.trade(owner, symbol, "buy", "1")
    assert r.status_code == 201, r.text
    assert r.json()["trade"]["price"] == "50"

    stale = new_symbol()
    r = await ledger.client.post(
        "/v1/assets",
        json={"code": stale, "scale": 0, "kind": "share", "quote_currency": "USD"},
        headers=ledger.ops,
    )
    assert r.status_code == 201, r.text
    old = await publish_price(producer, codec, stale, "7", now - timedelta(minutes=10))
    await price_applied(db, old)
    before = await snapshot(db)
    r = await ledger.trade(owner, stale, "buy", "1")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_price"
    assert await snapshot(db) == before
    # a given execution price needs no market price
    assert (await ledger.trade(owner, stale, "buy", "1", "7")).status_code == 201


def read_dead_letters(bootstrap: str, keys: set[bytes]) -> dict[bytes, dict[str, str]]:
    """The x-* headers of the dead letters with these keys (from the ledger's consumer).

    Reads every partition from the beginning by assignment: no consumer group to join.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{new_id()}",
            "enable.auto.commit": False,
        }
    )
    found: dict[bytes, dict[str, str]] = {}
    try:
        partitions = consumer.list_topics(PRICES_DLQ, timeout=10).topics[PRICES_DLQ].partitions
        consumer.assign([TopicPartition(PRICES_DLQ, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + WAIT_S_MAX
        while time.monotonic() < deadline and set(found) != keys:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None or message.key() not in keys:
                continue
            headers = {k: v.decode() for k, v in message.headers() or []}
            if headers.get("x-dlq-consumer-group") == "ledger.prices":
                found[message.key()] = headers
    finally:
        consumer.close()
    return found


async def test_malformed_price_messages_are_dead_lettered_and_the_consumer_goes_on(
    stack, ledger: Ledger, db, producer: Producer, codec: AvroCodec
):
    symbol = await ledger.listing()
    owner, _ = await ledger.funded("100.00")
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    bad = {
        f"bad-bytes-{tag}": (b"not avro at all", "bad_magic"),
        f"bad-price-{tag}": (
            codec.encode(PRICES, price_record(symbol, Decimal(-1), now)),
            "invalid_price",
        ),
        f"bad-symbol-{tag}": (
            codec.encode(PRICES, price_record("no such symbol", Decimal(1), now)),
            "invalid_symbol",
        ),
        f"future-{tag}": (
            codec.encode(PRICES, price_record(symbol, Decimal(1), now + timedelta(hours=1))),
            "exchange_ts_in_future",
        ),
    }
    for key, (value, _) in bad.items():
        await asyncio.to_thread(produce, producer, key, value)
    good = await publish_price(producer, codec, symbol, "9.99", now)
    await price_applied(db, good)

    letters = await asyncio.to_thread(
        read_dead_letters, stack.kafka_bootstrap, {k.encode() for k in bad}
    )
    assert {k.decode(): h["x-dlq-reason"] for k, h in letters.items()} == {
        key: reason for key, (_, reason) in bad.items()
    }
    assert all(h["x-dlq-source-topic"] == PRICES for h in letters.values())
    assert await db.fetchval(
        "SELECT price FROM ledger.prices WHERE symbol = $1", symbol
    ) == Decimal("9.99")
    r = await ledger.trade(owner, symbol, "buy", "1")
    assert r.status_code == 201, r.text
    assert r.json()["trade"]["price"] == "9.99"


async def test_concurrent_buys_never_overdraw_the_cash_account(ledger: Ledger):
    symbol = await ledger.listing()
    owner, cash = await ledger.funded("100.00")
    responses = await asyncio.gather(
        *(ledger.trade(owner, symbol, "buy", "1", "10") for _ in range(40))  # fee 0.005 -> 0.00
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 10 + [409] * 30, statuses
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"insufficient_funds"}
    assert await ledger.balance(cash) == Decimal("0.00")
    assert await ledger.holding(owner, symbol) == Decimal(10)
