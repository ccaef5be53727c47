"""The HTTP API's response bodies (what the OpenAPI document shows). Money is a string at
its currency's scale, with more places only when the amount has them (never rounded);
quantities and prices are exact decimal strings; never floats."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

Money = str
Exact = str


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CashPublic(Public):
    asset: str
    amount: Money


class TotalsPublic(Public):
    """In the base currency; positions and cash in other currencies are not counted."""

    market_value: Money = Field(description="positions without a price count at cost")
    cost_basis: Money
    unrealized_pnl: Money
    realized_pnl: Money
    cash_value: Money
    total_value: Money = Field(description="market_value + cash_value")
    day_change: Money = Field(description="quantity held valued now minus at previous close")


class PortfolioPublic(Public):
    id: uuid.UUID
    owner_id: uuid.UUID
    base_currency: str
    method: str = Field(description="cost-basis method of the figures: fifo or average")
    as_of: datetime = Field(description="latest transfer or price the figures reflect")
    transfers_applied: int
    positions_count: int
    cash: list[CashPublic]
    totals: TotalsPublic


class PricePublic(Public):
    """The price a position is valued at, and where it came from."""

    price: Exact
    exchange_ts: datetime
    source_topic: str = Field(description="the tick it comes from: topic, partition, offset")
    source_partition: int
    source_offset: int
    event_partition: int | None = Field(description="the marketdata.prices.v1 message")
    event_offset: int | None
    previous_close: Exact | None
    previous_close_ts: datetime | None


class PositionPublic(Public):
    symbol: str
    currency: str
    quantity: Exact
    cost_basis: Money
    average_cost: Exact = Field(description="cost_basis / quantity, for display")
    realized_pnl: Money
    market_value: Money | None
    unrealized_pnl: Money | None
    day_change: Money | None
    price: PricePublic | None


class PositionList(Public):
    method: str
    positions: list[PositionPublic]


class LotPublic(Public):
    symbol: str
    transfer_id: uuid.UUID = Field(description="the buy (or transfer in) that opened it")
    acquired_at: datetime
    quantity_acquired: Exact
    quantity: Exact = Field(description="what is left")
    price: Exact
    fees: Money = Field(description="fees allocated to what is left")
    cost: Money = Field(description="cost of what is left, fees included")
    currency: str


class LotList(Public):
    lots: list[LotPublic]
    truncated: bool


class LotUsePublic(Public):
    transfer_id: uuid.UUID
    quantity: Exact
    cost: Money


class RealizedPublic(Public):
    symbol: str
    currency: str
    sale_transfer_id: uuid.UUID
    occurred_at: datetime
    quantity: Exact
    proceeds: Money = Field(description="notional - fee")
    cost: Money
    pnl: Money
    uncovered_quantity: Exact = Field(description="sold beyond the lots held, at no cost")
    lots: list[LotUsePublic]


class RealizedList(Public):
    method: str
    from_: date | None = Field(alias="from", serialization_alias="from")
    to: date | None
    entries: list[RealizedPublic]
    total: dict[str, Money] = Field(description="per currency, over the whole range")
    next_cursor: int | None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ValuationPublic(Public):
    date: date
    final: bool = Field(description="false for today's, computed at request time")
    as_of: datetime
    market_value: Money
    cost_basis: Money
    unrealized_pnl: Money
    realized_pnl: Money
    cash_value: Money
    total_value: Money
    day_change: Money


class ValuationList(Public):
    method: str
    base_currency: str
    valuations: list[ValuationPublic]
