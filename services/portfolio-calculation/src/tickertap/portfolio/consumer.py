"""Kafka entry of the portfolio service: ledger.transfers.v1 and marketdata.prices.v1.

Each event is applied once: the runtime's inbox consumer claims its event id in
the transaction that applies it; a transfer is also recorded at most once per
portfolio (its transfer id), and a price only replaces an older one (by exchange
time, then receipt), so duplicates and out-of-order redelivery change nothing.
An event that fails validation is dead-lettered to `<topic>.dlq.v1` with one of
these reasons in `x-dlq-reason`:

    invalid_event   a field is missing or has the wrong type, or the fields disagree
                    (a trade without details, a reversal without the transfer it undoes)
    invalid_trade   trade quantity, price or notional not positive, or a negative fee
    invalid_price   a price that is not greater than zero
    exchange_ts_in_future   a price whose exchange time is too far ahead of this
                    service's clock (it would shadow every real price after it)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.messaging import ConsumedEvent, InvalidEvent
from tickertap.messaging.consumer import BatchHandler, Handler
from tickertap.portfolio import domain as d
from tickertap.portfolio import handlers
from tickertap.portfolio import repository as repo
from tickertap.portfolio.metrics import PortfolioMetrics

TRANSFERS_TOPIC = "ledger.transfers.v1"
PRICES_TOPIC = "marketdata.prices.v1"


def _uuid(value: Any, name: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError as exc:
        raise InvalidEvent("invalid_event", f"{name} is not a uuid") from exc


def _decimal(record: Mapping[str, Any], name: str) -> Decimal:
    value = record.get(name)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidEvent("invalid_event", f"{name} is not a decimal")
    return value


def _time(record: Mapping[str, Any], name: str) -> datetime:
    value = record.get(name)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidEvent("invalid_event", f"{name} is not a UTC time")
    return value


def portfolio_transfers(record: Mapping[str, Any]) -> dict[uuid.UUID, d.PortfolioTransfer]:
    """The decoded ledger.transfers.v1 record split per portfolio; InvalidEvent if unusable."""
    kind = record.get("kind")
    legs = record.get("legs")
    if not isinstance(kind, str) or not isinstance(legs, list):
        raise InvalidEvent("invalid_event", "kind or legs is unusable")
    raw_trade = record.get("trade")
    trade = None
    if raw_trade is not None:
        side = raw_trade.get("side")
        if side not in ("buy", "sell") or not isinstance(raw_trade.get("symbol"), str):
            raise InvalidEvent("invalid_event", "trade side or symbol is unusable")
        if not isinstance(raw_trade.get("currency"), str):
            raise InvalidEvent("invalid_event", "trade currency is unusable")
        trade = d.Trade(
            raw_trade["symbol"],
            d.Side(side),
            _decimal(raw_trade, "quantity"),
            _decimal(raw_trade, "price"),
            _decimal(raw_trade, "notional"),
            _decimal(raw_trade, "fee"),
            raw_trade["currency"],
        )
    reverses = record.get("reverses_transfer_id")
    parsed_legs = []
    for leg in legs:
        if not isinstance(leg, Mapping) or not isinstance(leg.get("asset"), str):
            raise InvalidEvent("invalid_event", "a leg is unusable")
        parsed_legs.append(
            d.LedgerLeg(
                _uuid(leg.get("owner_id"), "owner_id"), leg["asset"], _decimal(leg, "amount")
            )
        )
    try:
        return d.split_transfer(
            _uuid(record.get("transfer_id"), "transfer_id"),
            _time(record, "occurred_at"),
            kind,
            parsed_legs,
            trade,
            None if reverses is None else _uuid(reverses, "reverses_transfer_id"),
        )
    except d.InvalidTransfer as exc:
        raise InvalidEvent(exc.reason, exc.detail) from exc


def transfer_handler(scales: d.Scales, metrics: PortfolioMetrics | None = None) -> Handler:
    async def apply(conn: AsyncConnection, event: ConsumedEvent) -> None:
        transfers = portfolio_transfers(event.record)
        source = repo.Source(event.topic, event.partition, event.offset)
        for _, replayed in await handlers.apply_transfer(conn, transfers, source, scales):
            if metrics is not None:
                metrics.recompute_transfers.observe(replayed)

    return apply


def transfer_batch_handler(
    scales: d.Scales, metrics: PortfolioMetrics | None = None
) -> BatchHandler:
    """Transfers a consumer batch at a time: each applied as `transfer_handler` does, in
    order, all in one transaction (one commit for the batch instead of one per transfer).
    An unusable transfer fails the batch, which the consumer then applies one transfer
    at a time (dead-lettering that one)."""
    one = transfer_handler(scales, metrics)

    async def apply(conn: AsyncConnection, events: Sequence[ConsumedEvent]) -> None:
        for event in events:
            await one(conn, event)

    return apply


def price_update(event: ConsumedEvent, skew_s_max: float) -> repo.PriceUpdate:
    """The decoded marketdata.prices.v1 record as a price; InvalidEvent if unusable."""
    record = event.record
    symbol = record.get("symbol")
    topic, partition = record.get("source_topic"), record.get("source_partition")
    offset = record.get("source_offset")
    if not (
        isinstance(symbol, str)
        and isinstance(topic, str)
        and isinstance(partition, int)
        and isinstance(offset, int)
    ):
        raise InvalidEvent("invalid_event", "symbol or source fields are unusable")
    price = _decimal(record, "price")
    if price <= 0:
        raise InvalidEvent("invalid_price", "the price must be greater than zero")
    exchange_ts = _time(record, "exchange_ts")
    ahead_s = (exchange_ts - datetime.now(UTC)).total_seconds()
    if ahead_s > skew_s_max:
        raise InvalidEvent("exchange_ts_in_future", f"exchange_ts is {ahead_s:.0f} s ahead")
    quote = d.Quote(symbol, price, exchange_ts, topic, partition, offset)
    return repo.PriceUpdate(
        quote,
        _time(record, "received_at"),
        repo.Source(event.topic, event.partition, event.offset),
    )


def price_handler(skew_s_max: float, metrics: PortfolioMetrics | None = None) -> Handler:
    async def apply(conn: AsyncConnection, event: ConsumedEvent) -> None:
        marked = await handlers.apply_price(conn, price_update(event, skew_s_max))
        if metrics is not None:
            metrics.prices_moved.inc(marked)

    return apply


def price_batch_handler(skew_s_max: float, metrics: PortfolioMetrics | None = None) -> BatchHandler:
    """Prices a consumer batch at a time (one transaction): only the latest price of each
    symbol is written and its holders marked once. One unusable price fails the batch,
    which the consumer then applies one price at a time (dead-lettering that one)."""

    async def apply(conn: AsyncConnection, events: Sequence[ConsumedEvent]) -> None:
        prices = [price_update(event, skew_s_max) for event in events]
        marked = await handlers.apply_prices(conn, prices)
        if metrics is not None:
            metrics.prices_moved.inc(marked)

    return apply
