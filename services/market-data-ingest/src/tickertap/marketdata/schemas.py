"""HTTP bodies of market-data ingest. Prices and volumes travel as strings, never floats."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tickertap.marketdata import domain as d

Symbol = Annotated[str, StringConstraints(pattern=d.SYMBOL_PATTERN)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3,12}$")]
VWAP_EXTRA_PLACES = 4  # vwap is an average: shown at the price scale plus these places


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstrumentCreate(Strict):
    symbol: Symbol
    currency: Currency
    price_scale: int = Field(ge=0, le=d.PRICE_SCALE_MAX, strict=True)


class InstrumentPublic(Strict):
    symbol: str
    currency: str
    price_scale: int
    status: Literal["active", "halted"]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> InstrumentPublic:
        return cls(
            symbol=row["symbol"],
            currency=row["currency"],
            price_scale=int(row["price_scale"]),
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class InstrumentPage(Strict):
    items: list[InstrumentPublic]
    next_cursor: str | None


def at_scale(value: Decimal, scale: int) -> str:
    """`value` (stored at scale 18) at `scale` places: exact, since it was checked on entry."""
    return str(value.quantize(Decimal((0, (1,), -scale))))


def plain(value: Decimal) -> str:
    """Without trailing zeros and never in exponent notation (`100`, `0.5`)."""
    text = format(value.normalize(), "f")
    return text


class PricePublic(Strict):
    symbol: str
    venue: str
    price: str
    bid: str | None
    ask: str | None
    exchange_ts: datetime
    received_at: datetime
    source_topic: str
    source_partition: int
    source_offset: int

    @classmethod
    def of(cls, row: dict[str, Any], scale: int) -> PricePublic:
        return cls(
            symbol=row["symbol"],
            venue=row["venue"],
            price=at_scale(row["price"], scale),
            bid=None if row["bid"] is None else at_scale(row["bid"], scale),
            ask=None if row["ask"] is None else at_scale(row["ask"], scale),
            exchange_ts=row["exchange_ts"],
            received_at=row["received_at"],
            source_topic=row["source_topic"],
            source_partition=int(row["source_partition"]),
            source_offset=int(row["source_offset"]),
        )


class PriceList(Strict):
    items: list[PricePublic]
    missing: list[str] = Field(description="Symbols asked for that have no price (yet).")


class BarPublic(Strict):
    symbol: str
    interval: str
    window_start: datetime
    window_end: datetime
    open: str
    high: str
    low: str
    close: str
    volume: str
    vwap: str | None = Field(
        description="Volume-weighted average price at the price scale plus 4 places "
        "(half-even); null when the volume is zero."
    )
    tick_count: int
    closed: bool = Field(description="False while the bar may still change.")

    @classmethod
    def of(cls, bar: d.Bar, interval: str, scale: int, closed: bool) -> BarPublic:
        from tickertap.marketdata.repository import to_datetime

        vwap = bar.vwap
        return cls(
            symbol=bar.symbol,
            interval=interval,
            window_start=to_datetime(bar.start_us),
            window_end=to_datetime(bar.end_us),
            open=at_scale(bar.open, scale),
            high=at_scale(bar.high, scale),
            low=at_scale(bar.low, scale),
            close=at_scale(bar.close, scale),
            volume=plain(bar.volume),
            vwap=None
            if vwap is None
            else str(
                vwap.quantize(Decimal((0, (1,), -(scale + VWAP_EXTRA_PLACES))), ROUND_HALF_EVEN)
            ),
            tick_count=bar.tick_count,
            closed=closed,
        )


class BarPage(Strict):
    items: list[BarPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")
