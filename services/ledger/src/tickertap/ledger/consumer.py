"""Kafka entry of the ledger: the price cache fed by marketdata.prices.v1.

The ledger keeps the latest price of every symbol it sees (by exchange time) in
`ledger.prices`, for trades at market. Each event is applied once (the runtime's
inbox consumer claims its id in the same transaction); an older or equally old
update than the cached one changes nothing, so out-of-order and replayed events
are harmless. An event that fails validation is dead-lettered to
marketdata.prices.dlq.v1 with one of these reasons in `x-dlq-reason`:

    invalid_event           a field is missing or has the wrong type
    invalid_symbol          the symbol is not an asset code
    invalid_price           the price is not greater than zero or has too many places
    exchange_ts_in_future   the exchange time is too far ahead of the ledger's clock
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.ledger import domain as d
from tickertap.ledger.handlers import record_price
from tickertap.messaging import ConsumedEvent, InvalidEvent
from tickertap.messaging.consumer import Handler

log = logging.getLogger(__name__)

PRICES_TOPIC = "marketdata.prices.v1"


def market_price(record: Mapping[str, Any]) -> d.MarketPrice:
    """The price in a decoded marketdata.prices.v1 record; InvalidEvent if it is not one."""
    symbol, price = record.get("symbol"), record.get("price")
    exchange_ts, received_at = record.get("exchange_ts"), record.get("received_at")
    if not (
        isinstance(symbol, str)
        and isinstance(price, Decimal)
        and isinstance(exchange_ts, datetime)
        and isinstance(received_at, datetime)
    ):
        raise InvalidEvent("invalid_event", "symbol, price, exchange_ts or received_at is unusable")
    return d.MarketPrice(symbol, price, exchange_ts, received_at)


def price_handler(exchange_ts_skew_s_max: float) -> Handler:
    """The consumer handler that keeps the price cache (see the module docstring)."""

    async def apply_price(conn: AsyncConnection, event: ConsumedEvent) -> None:
        try:
            price = d.check_market_price(
                market_price(event.record), datetime.now(UTC), exchange_ts_skew_s_max
            )
        except d.InvalidMarketPrice as exc:
            raise InvalidEvent(exc.reason, exc.detail) from exc
        stored = await record_price(conn, price)
        if not stored:
            log.debug("price of %s at %s is not newer; kept", price.symbol, price.exchange_ts)

    return apply_price
