"""A consumer batch of prices reduced to what applying them one by one would store (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.handlers import latest_per_symbol

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def price(
    symbol: str, value: str, at: datetime, offset: int, received_s: float = 0
) -> repo.PriceUpdate:
    quote = d.Quote(symbol, Decimal(value), at, "ticks", 0, offset)
    return repo.PriceUpdate(
        quote, at + timedelta(seconds=1 + received_s), repo.Source("prices", 0, offset)
    )


def offsets(kept: list[repo.SymbolPrices]) -> list[tuple[str, int, int | None]]:
    return [
        (k.latest.quote.symbol, k.latest.event.offset, k.close.event.offset if k.close else None)
        for k in kept
    ]


def test_the_newest_price_per_symbol_and_older_ones_ignored() -> None:
    batch = [
        price("B", "2", NOON, 1),
        price("A", "1", NOON, 2),
        price("A", "3", NOON + timedelta(seconds=2), 3),
        price("A", "2", NOON + timedelta(seconds=1), 4),  # out of order: older than 3
        price("B", "5", NOON - timedelta(seconds=1), 5),  # older than 1
    ]
    assert offsets(latest_per_symbol(batch)) == [("A", 3, None), ("B", 1, None)]


def test_of_equal_times_the_first_stays_and_receipt_breaks_ties() -> None:
    batch = [price("A", "1", NOON, 1), price("A", "2", NOON, 2)]
    assert offsets(latest_per_symbol(batch)) == [("A", 1, None)]
    later_receipt = [price("A", "1", NOON, 1), price("A", "2", NOON, 2, received_s=0.5)]
    assert offsets(latest_per_symbol(later_receipt)) == [("A", 2, None)]


def test_the_close_is_the_last_price_stored_of_an_earlier_day() -> None:
    yesterday = NOON - timedelta(days=1)
    batch = [
        price("A", "9", yesterday, 1),
        price("A", "10", yesterday + timedelta(hours=1), 2),  # the close
        price("A", "8", yesterday + timedelta(minutes=30), 3),  # late: never stored
        price("A", "11", NOON, 4),
        price("A", "12", NOON + timedelta(seconds=1), 5),
        price("A", "7", yesterday + timedelta(hours=2), 6),  # late, after today's: ignored
    ]
    assert offsets(latest_per_symbol(batch)) == [("A", 5, 2)]
    assert offsets(latest_per_symbol(batch[:2])) == [("A", 2, None)]
