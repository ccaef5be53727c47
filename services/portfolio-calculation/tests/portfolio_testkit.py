"""What the portfolio service's stack tests share: ledger events made by hand (encoded
with the project's AvroCodec, as the ledger's outbox encodes them), a producer that
waits for the broker's acknowledgement, bounded polling, an updates reader."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tickertap.messaging import AvroCodec

TRANSFERS = "ledger.transfers.v1"
PRICES = "marketdata.prices.v1"
UPDATES = "portfolio.updates.v1"
HOUSE = "00000000-0000-0000-0000-000000000000"
WAIT_S_MAX = 20.0
D = Decimal


def new_id() -> str:
    return str(uuid.uuid4())


def new_symbol() -> str:
    return "P" + uuid.uuid4().hex[:9].upper()


@dataclass
class Book:
    """Ledger transfer records of one customer, with increasing posting times."""

    owner: str = field(default_factory=new_id)
    t0: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=1))
    step: int = 0

    def _at(self) -> datetime:
        self.step += 1
        return self.t0 + timedelta(seconds=self.step)

    def record(
        self,
        kind: str,
        legs: list[tuple[str, str, Decimal]],
        trade: dict[str, Any] | None = None,
        reverses: str | None = None,
    ) -> dict[str, Any]:
        return {
            "event_id": new_id(),
            "occurred_at": self._at(),
            "transfer_id": new_id(),
            "kind": kind,
            "legs": [
                {"account_id": new_id(), "owner_id": o, "asset": a, "amount": x} for o, a, x in legs
            ],
            "trade": trade,
            "reverses_transfer_id": reverses,
            "metadata": {},
        }

    def deposit(self, amount: str, currency: str = "USD") -> dict[str, Any]:
        return self.record(
            "deposit", [(self.owner, currency, D(amount)), (HOUSE, currency, -D(amount))]
        )

    def trade(self, symbol: str, side: str, quantity: str, price: str, fee: str) -> dict[str, Any]:
        q, p, f = D(quantity), D(price), D(fee)
        notional = (q * p).quantize(D("0.01"))
        sign = 1 if side == "buy" else -1
        legs = [
            (self.owner, "USD", -sign * notional - f),
            (HOUSE, "USD", sign * notional),
            (self.owner, symbol, sign * q),
            (HOUSE, symbol, -sign * q),
        ]
        if f:
            legs.append((HOUSE, "USD", f))
        details = {
            "symbol": symbol,
            "side": side,
            "quantity": q,
            "price": p,
            "notional": notional,
            "fee": f,
            "currency": "USD",
        }
        return self.record("trade", legs, details)

    def reversal(self, original: dict[str, Any]) -> dict[str, Any]:
        legs = [(leg["owner_id"], leg["asset"], -leg["amount"]) for leg in original["legs"]]
        return self.record("reversal", legs, original["trade"], original["transfer_id"])


def produce(producer: Producer, topic: str, key: str, value: bytes) -> None:
    """Produce one message and wait until the broker has it."""
    errors: list[Any] = []
    producer.produce(
        topic, key=key.encode(), value=value, on_delivery=lambda err, _: errors.append(err)
    )
    assert producer.flush(10) == 0, "the broker did not acknowledge the message"
    assert errors == [None], errors


async def publish(producer: Producer, codec: AvroCodec, topic: str, key: str, record: Any) -> None:
    await asyncio.to_thread(produce, producer, topic, key, codec.encode(topic, record))


def price_record(
    symbol: str, price: str, exchange_ts: datetime, source_offset: int = 0
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "event_id": new_id(),
        "occurred_at": now,
        "symbol": symbol,
        "venue": "TEST",
        "price": D(price),
        "bid": None,
        "ask": None,
        "exchange_ts": exchange_ts,
        "received_at": now,
        "source_topic": "marketdata.ticks.v1",
        "source_partition": 2,
        "source_offset": source_offset,
    }


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


class UpdatesReader:
    """Reads every partition of portfolio.updates.v1 from the start by assignment (no
    consumer group to join: the local broker's group join can take many seconds)."""

    def __init__(self, bootstrap: str, codec: AvroCodec) -> None:
        self.codec = codec
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"portfolio-test-{new_id()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        partitions = self.consumer.list_topics(UPDATES, timeout=10).topics[UPDATES].partitions
        self.consumer.assign([TopicPartition(UPDATES, p, OFFSET_BEGINNING) for p in partitions])
        self.seen: dict[str, list[dict[str, Any]]] = {}

    def poll(self, timeout_s: float = 0.5) -> None:
        for message in self.consumer.consume(500, timeout_s):
            if message.error() is None and message.value() is not None:
                key = (message.key() or b"").decode()
                self.seen.setdefault(key, []).append(self.codec.decode(message.value(), UPDATES))

    async def until(self, owner: str, check: Callable[[dict[str, Any]], bool], what: str) -> Any:
        async def latest_matches() -> Any:
            await asyncio.to_thread(self.poll)
            updates = self.seen.get(owner, [])
            return updates[-1] if updates and check(updates[-1]) else None

        return await eventually(latest_matches, what)

    def close(self) -> None:
        self.consumer.close()
