"""portfolio.updates.v1 bytes for the live publisher, without building a record first.

The bytes are exactly those of `codec.encode(UPDATES_TOPIC, update_record(snapshot, now))`
for the same event id and time (tests/test_wire.py checks this on random portfolios and
decodes them with fastavro), but most of them are encoded once rather than per update:

- what only a transfer changes (ids, cash, each position's quantity, costs and realized
  P&L, the totals of those) once per portfolio state (`Parts`, kept on the book's entry);
- what only a price sets (the price, its time and source, the previous close) once per
  price, shared by every holder of the symbol;
- per update, only what needs both: market values, unrealized P&L, day change and totals.

The arithmetic is the domain's (`domain.value_position`, `domain.valuate_figures`): the
same context, the same rounding, in the same order.

Avro binary encoding (specification 1.11): longs and ints as zigzag varints; strings as a
length and UTF-8; a decimal(38, 18) on bytes as the length and the two's-complement
big-endian unscaled value; an optional (["null", T]) as the branch index (0 or 1) and the
value; an array as one block (the count, the items) and a 0; a record as its fields in
order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import Any

from tickertap.messaging.codec import (
    CONFLUENT_HEADER_BYTES,
    SINGLE_OBJECT_HEADER_BYTES,
    SINGLE_OBJECT_MAGIC,
)
from tickertap.messaging.codec import long_bytes as avro_long
from tickertap.messaging.outbox import Encoder
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.handlers import UPDATES_TOPIC

SCALE = 18  # every decimal of portfolio.updates.v1 is a decimal(38, 18)
PRECISION = 38
_EXACT = Context(prec=PRECISION, traps=[Inexact, InvalidOperation])
_UNSCALED_LIMIT = 10**PRECISION
_SIZE_CHECKED = 16  # 10^38 takes 16 bytes: shorter values always fit
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NULL = b"\x00"
_SOME = b"\x02"  # branch 1 of ["null", T]
_END = b"\x00"  # the end of an array's blocks
_NO_PRICE = b"\x00" * 4  # price, price_as_of, market_value, unrealized_pnl
_NO_SOURCE = b"\x00" * 5  # price_source_topic, _partition, _offset, previous_close, day_change
PRICE_CACHE_MAX = 100_000
TOTALS = (
    "market_value",
    "cost_basis",
    "unrealized_pnl",
    "realized_pnl",
    "cash_value",
    "total_value",
    "cost_basis_average",
    "unrealized_pnl_average",
    "realized_pnl_average",
    "day_change",
)


class WireError(ValueError):
    """A value portfolio.updates.v1 cannot carry (the codec's path then says which)."""


_SMALL = 1024
_SMALL_LONGS = [avro_long(n) for n in range(_SMALL)]  # lengths, counts, partitions


def long_bytes(n: int) -> bytes:
    return _SMALL_LONGS[n] if 0 <= n < _SMALL else avro_long(n)


def string_bytes(s: str) -> bytes:
    b = s.encode()
    return long_bytes(len(b)) + b


def scaled(v: Decimal) -> int:
    """`v` as an integer count of 10^-18 (the wire's unscaled value), exactly; WireError
    when it has more than 18 decimal places or more than 38 digits at that scale."""
    try:
        unscaled = int(v.scaleb(SCALE, _EXACT).to_integral_exact(context=_EXACT))
    except (Inexact, InvalidOperation, ValueError, OverflowError):
        raise WireError(f"{v} does not fit a decimal({PRECISION}, {SCALE})") from None
    if not -_UNSCALED_LIMIT < unscaled < _UNSCALED_LIMIT:
        raise WireError(f"{v} does not fit a decimal({PRECISION}, {SCALE})")
    return unscaled


def unscaled_bytes(unscaled: int) -> bytes:
    """A decimal(38, 18) given as its unscaled value."""
    size = (abs(unscaled).bit_length() + 8) >> 3  # two's complement, with its sign bit
    if size >= _SIZE_CHECKED and not -_UNSCALED_LIMIT < unscaled < _UNSCALED_LIMIT:
        raise WireError(f"{unscaled}e-{SCALE} does not fit a decimal({PRECISION}, {SCALE})")
    return _SMALL_LONGS[size] + unscaled.to_bytes(size, "big", signed=True)


def some_unscaled_bytes(unscaled: int) -> bytes:
    """Branch 1 of an optional decimal(38, 18), given as its unscaled value."""
    return _SOME + unscaled_bytes(unscaled)


def decimal_bytes(v: Decimal) -> bytes:
    return unscaled_bytes(scaled(v))


def optional_decimal(v: Decimal | None) -> bytes:
    return _NULL if v is None else _SOME + decimal_bytes(v)


def micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_POWERS = [10**n for n in range(2 * SCALE + 1)]


def round_product(product: int, places: int) -> int:
    """A product of two unscaled values (10^-36 units) rounded half-even to `places`
    decimal places (`domain.round_to`), back in 10^-18 units: exact integer arithmetic."""
    divisor: int = _POWERS[2 * SCALE - places]
    q, r = divmod(product, divisor)  # floor division: 0 <= r < divisor
    twice = 2 * r
    if twice > divisor or (twice == divisor and q & 1):
        q += 1
    rounded: int = q * _POWERS[SCALE - places]
    return rounded


@dataclass(frozen=True, slots=True)
class _Position:
    symbol: str
    quantity: int  # unscaled (10^-18 units), like every int below
    places: int
    in_base: bool
    cost_fifo: int
    cost_average: int
    head: bytes  # symbol, quantity, cost_basis, average_cost
    middle: bytes  # realized_pnl, currency, cost_basis_average
    realized_average: bytes  # realized_pnl_average
    unpriced: bytes  # the whole position while its symbol has no price

    @classmethod
    def of(
        cls,
        f: d.PositionFigures,
        places: int,
        in_base: bool,
        cost_fifo: Decimal,
        cost_average: Decimal,
        average: Decimal,
    ) -> _Position:
        head = (
            string_bytes(f.symbol)
            + decimal_bytes(f.quantity)
            + decimal_bytes(cost_fifo)
            + decimal_bytes(average)
        )
        middle = (
            decimal_bytes(f.realized_fifo)
            + _SOME
            + string_bytes(f.currency)
            + _SOME
            + decimal_bytes(cost_average)
        )
        realized_average = _SOME + decimal_bytes(f.realized_average)
        return cls(
            f.symbol,
            scaled(f.quantity),
            places,
            in_base,
            scaled(cost_fifo),
            scaled(cost_average),
            head,
            middle,
            realized_average,
            head + _NO_PRICE + middle + _NULL + realized_average + _NO_SOURCE,
        )


@dataclass(frozen=True, slots=True)
class Parts:
    """What a portfolio's updates share until its next transfer."""

    key: bytes  # the Kafka key: the portfolio id
    ids: bytes  # portfolio_id, owner_id, base_currency
    positions: tuple[_Position, ...]  # by symbol, as valuate_figures orders them
    cash: bytes  # the whole cash array
    cost_fifo: bytes  # totals.cost_basis: of the positions in the base currency
    realized: bytes  # totals.realized_pnl
    cash_value: int
    cash_value_bytes: bytes  # totals.cash_value
    cost_average_total: bytes  # totals.cost_basis_average
    realized_average: bytes  # totals.realized_pnl_average
    # the transfers' input partitions: (topic, partition) -> (offset, its source_offsets item)
    sources: Mapping[tuple[str, int], tuple[int, bytes]]
    source_items: bytes  # those as the source_offsets array (while no price's is newer)
    as_of: tuple[int, bytes] | None  # the last transfer's time, micros and encoded


@dataclass(frozen=True, slots=True)
class _Quote:
    stored: repo.StoredPrice
    price: int
    previous_close: int | None
    head: bytes  # price, price_as_of
    tail: bytes  # price_source_topic, _partition, _offset, previous_close
    exchange_us: int
    exchange: bytes  # exchange_us encoded
    source: tuple[str, int]  # the price event's partition
    source_offset: tuple[int, bytes]  # its offset, and its source_offsets item


class UpdateWriter:
    """Encodes a book entry's update; `header` is the codec's framing of the schema.

    Values change only by exact operations (products rounded half-even to the currency's
    places, sums, differences), done on the unscaled integers of the wire's scale: the
    same numbers as the domain's Decimal arithmetic in its 80-digit context, in a fraction
    of the time (the test compares the bytes)."""

    def __init__(self, header: bytes, base_currency: str, scales: d.Scales) -> None:
        self._header = header
        self._base = base_currency
        self._scales = scales
        self._quotes: dict[str, _Quote] = {}
        self._occurred_at = (-1, b"")  # the last occurred_at, micros and encoded

    def parts(
        self,
        row: repo.PortfolioRow,
        figures: Sequence[d.PositionFigures],
        cash: Mapping[str, Decimal],
    ) -> Parts:
        base = self._base
        positions = []
        with localcontext(d.WORK):
            for f in sorted(figures, key=lambda f: f.symbol):
                places = self._scales.of(f.currency)
                cost_fifo = d.at_scale(f.cost_fifo, places)
                cost_average = d.at_scale(f.cost_average, places)
                average = (
                    d.round_to(cost_fifo / f.quantity, d.UNIT_COST_PLACES) if f.quantity else d.ZERO
                )
                positions.append(
                    _Position.of(f, places, f.currency == base, cost_fifo, cost_average, average)
                )
        in_base = [f for f in figures if f.currency == base]
        cash_value = scaled(cash.get(base, d.ZERO))
        owner = str(row.owner_id)
        latest = row.last_transfer_at
        sources = {(x.topic, x.partition): (x.offset, _source_item(x)) for x in row.sources}
        return Parts(
            owner.encode(),
            string_bytes(owner) + string_bytes(owner) + string_bytes(base),
            tuple(positions),
            _array([string_bytes(a) + decimal_bytes(v) for a, v in sorted(cash.items())]),
            unscaled_bytes(sum(p.cost_fifo for p in positions if p.in_base)),
            unscaled_bytes(sum(scaled(f.realized_fifo) for f in in_base)),
            cash_value,
            unscaled_bytes(cash_value),
            _SOME + unscaled_bytes(sum(p.cost_average for p in positions if p.in_base)),
            _SOME + unscaled_bytes(sum(scaled(f.realized_average) for f in in_base)),
            sources,
            _array([item for _, (_, item) in sorted(sources.items())]),
            None if latest is None else (micros(latest), long_bytes(micros(latest))),
        )

    def encode(
        self,
        row: repo.PortfolioRow,
        parts: Parts,
        prices: Mapping[str, repo.StoredPrice],
        event_id: str,
        occurred_at_us: int,
    ) -> bytes:
        """The framed update of a portfolio whose `parts` are current, at `prices` (those
        of its symbols that have one)."""
        if occurred_at_us != self._occurred_at[0]:
            self._occurred_at = (occurred_at_us, long_bytes(occurred_at_us))
        count = len(parts.positions)
        # the update's bytes in order, joined once; as_of (index 4) is known at the end
        out = [self._header, string_bytes(event_id), self._occurred_at[1], parts.ids, b""]
        add = out.append
        if count:
            add(long_bytes(count))
        sources = parts.sources
        changed: dict[tuple[str, int], tuple[int, bytes]] | None = None  # a copy, if any
        as_of = parts.as_of
        market = unrealized = unrealized_average = day_change = 0
        quotes = self._quotes
        for p in parts.positions:
            stored = prices.get(p.symbol)
            if stored is None:
                add(p.unpriced)
                if p.in_base:
                    market += p.cost_fifo
                continue
            q = quotes.get(p.symbol)
            if q is None or q.stored is not stored:
                q = self._quote(stored)
            if as_of is None or q.exchange_us > as_of[0]:
                as_of = (q.exchange_us, q.exchange)
            known = sources.get(q.source)
            if known is None or known[0] < q.source_offset[0]:
                if changed is None:
                    sources = changed = dict(sources)
                changed[q.source] = q.source_offset
            value = round_product(p.quantity * q.price, p.places)
            gain = value - p.cost_fifo
            gain_average = value - p.cost_average
            add(p.head)
            add(q.head)
            add(some_unscaled_bytes(value))
            add(some_unscaled_bytes(gain))
            add(p.middle)
            add(some_unscaled_bytes(gain_average))
            add(p.realized_average)
            add(q.tail)
            if q.previous_close is None:
                add(_NULL)
                change = 0
            else:
                change = value - round_product(p.quantity * q.previous_close, p.places)
                add(some_unscaled_bytes(change))
            if p.in_base:
                market += value
                unrealized += gain
                unrealized_average += gain_average
                day_change += change
        out[4] = (as_of or (0, long_bytes(micros(row.updated_at))))[1]
        out += (
            _END,
            parts.cash,
            unscaled_bytes(market),
            parts.cost_fifo,
            unscaled_bytes(unrealized),
            parts.realized,
            parts.cash_value_bytes,
            unscaled_bytes(market + parts.cash_value),
            parts.cost_average_total,
            some_unscaled_bytes(unrealized_average),
            parts.realized_average,
            some_unscaled_bytes(day_change),
            parts.source_items
            if changed is None
            else _array([item for _, (_, item) in sorted(changed.items())]),
        )
        return b"".join(out)

    def _quote(self, stored: repo.StoredPrice) -> _Quote:
        """A price's encoded parts, made once per price and kept by symbol (`encode` looks
        there first)."""
        symbol = stored.quote.symbol
        q = stored.quote
        close = q.previous_close
        made = _Quote(
            stored,
            scaled(q.price),
            None if close is None else scaled(close),
            _SOME + decimal_bytes(q.price) + _SOME + long_bytes(micros(q.exchange_ts)),
            _SOME
            + string_bytes(q.source_topic)
            + _SOME
            + long_bytes(q.source_partition)
            + _SOME
            + long_bytes(q.source_offset)
            + optional_decimal(close),
            micros(q.exchange_ts),
            long_bytes(micros(q.exchange_ts)),
            (stored.event.topic, stored.event.partition),
            (stored.event.offset, _source_item(stored.event)),
        )
        if len(self._quotes) >= PRICE_CACHE_MAX:
            self._quotes.clear()
        self._quotes[symbol] = made
        return made


def event_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs in their canonical text, from one read of the
    system's random source: uuid.uuid4() per update costs more than encoding its values."""
    random = os.urandom(16 * count)
    ids = []
    for start in range(0, 16 * count, 16):
        b = bytearray(random[start : start + 16])
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
        x = b.hex()
        ids.append(f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}")
    return ids


def framing_header(codec: Encoder) -> bytes:
    """The framing the codec puts before an update's Avro body (single-object encoding's
    marker and fingerprint, or Confluent's schema id), read off an empty update."""
    empty: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=0)),
        "occurred_at": _EPOCH,
        "portfolio_id": str(uuid.UUID(int=0)),
        "owner_id": str(uuid.UUID(int=0)),
        "base_currency": "",
        "as_of": _EPOCH,
        "positions": [],
        "cash": [],
        "totals": dict.fromkeys(TOTALS, d.ZERO),
        "source_offsets": [],
    }
    framed = codec.encode(UPDATES_TOPIC, empty)
    single_object = framed[:1] == SINGLE_OBJECT_MAGIC[:1]
    return framed[: SINGLE_OBJECT_HEADER_BYTES if single_object else CONFLUENT_HEADER_BYTES]


def _source_item(source: repo.Source) -> bytes:
    return string_bytes(source.topic) + long_bytes(source.partition) + long_bytes(source.offset)


def _array(items: Sequence[bytes]) -> bytes:
    return _array_joined(len(items), b"".join(items))


def _array_joined(count: int, body: bytes) -> bytes:
    return long_bytes(count) + body + _END if count else _END
