"""The rules of market-data ingest, pure: tick validation, sequences, 1-minute OHLCV windows.

Nothing here does I/O; the worker (worker.py) feeds decoded ticks in, persists what comes
out and publishes it. The same functions compute the expected bars offline in tests, so the
worker's output can be compared with them exactly.

A tick goes through, in order:

1. its source's sequence within its partition: a `source_seq` not above the last one seen
   from that source in that partition is a duplicate: dropped and counted, never dead-lettered
   (a replaying feed must not flood the dead-letter topic);
2. the validation rules, the first that fails gives the dead-letter reason
   (`REASONS`, in the order they are checked);
3. its 1-minute window: windows are tumbling, by exchange time, per symbol. Each symbol
   has a watermark, the latest exchange time of a tick accepted for it; a window closes
   when the watermark reaches its end plus the grace period. A tick whose window is closed
   by then is dead-lettered `late`. Per symbol, not per partition: feeds of other symbols
   (with other clocks) never make a symbol's ticks late; the price of it is that the last
   bar of a symbol that stops trading closes with its next tick.

Everything is decided by the tick, its partition's and its symbol's state and the
instruments, and the clock checks are made against the tick's receive time (the broker's
timestamp of the message), not the wall clock: feeding the same messages (a symbol's in
order) in any split into batches gives the same bars, dead letters and state.

Times are integers: microseconds since the Unix epoch (`*_us`). Prices, sizes and
volumes are Decimal; nothing is rounded (a price with more places than the instrument's
scale is refused, not rounded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any, Final, Literal

__all__ = [
    "DUPLICATE",
    "INTERVALS_S",
    "MINUTE_US",
    "REASONS",
    "SYMBOL_PATTERN",
    "US_PER_S",
    "Bar",
    "IngestPolicy",
    "IngestResult",
    "Instrument",
    "InstrumentStatus",
    "PartitionState",
    "SequenceGaps",
    "Tick",
    "Windows",
    "apply_tick",
    "check_tick",
    "close_windows",
    "derive_bars",
    "ingest",
    "valid_symbol",
    "window_start_us",
]

MINUTE_US: Final = 60_000_000
US_PER_S: Final = 1_000_000
INTERVALS_S: Final = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
SYMBOL_PATTERN: Final = r"^[A-Z0-9][A-Z0-9.\-]{0,19}$"
PRICE_SCALE_MAX: Final = 18  # the wire's scale (Avro decimal(38, 18))
SIZE_MAX: Final = Decimal(10) ** 12  # a bar's volume (numeric(38, 18)) then fits 10^8 ticks
TEXT_FIELD_CHARS_MAX: Final = 64  # source_id and venue

DUPLICATE: Final = "duplicate"
"""`apply_tick`'s answer for a tick dropped as a repeat of its source's sequence."""

REASONS: Final = (
    "undecodable",  # the bytes are not a marketdata.ticks.v1 record (decided by the worker)
    "invalid_field",  # source_id or venue empty, too long, or not printable (before sequences)
    "unknown_symbol",  # no instrument has the symbol
    "halted",  # the instrument is halted
    "price_not_positive",  # price <= 0
    "price_scale_exceeded",  # price, bid or ask has more places than the instrument's scale
    "size_negative",  # size < 0
    "size_too_large",  # size > SIZE_MAX
    "bid_above_ask",  # both given and bid > ask
    "future_timestamp",  # exchange time later than receive time + future bound
    "stale_timestamp",  # exchange time earlier than receive time - age bound
    "late",  # its window closed (watermark past window end + grace)
)
"""Dead-letter reasons (`x-dlq-reason`), one per rule, in the order they are checked."""

_SYMBOL = re.compile(SYMBOL_PATTERN)
InstrumentStatus = Literal["active", "halted"]


def valid_symbol(symbol: str) -> bool:
    return _SYMBOL.fullmatch(symbol) is not None


@dataclass(frozen=True, slots=True)
class Instrument:
    """Reference data of one tradable symbol; ticks are checked against it."""

    symbol: str
    currency: str
    price_scale: int
    status: InstrumentStatus = "active"
    # the smallest price step, 10**-price_scale: a price must be a multiple of it
    quantum: Decimal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert _SYMBOL.fullmatch(self.symbol), self.symbol
        assert 0 <= self.price_scale <= PRICE_SCALE_MAX, self.price_scale
        object.__setattr__(self, "quantum", Decimal((0, (1,), -self.price_scale)))


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """The bounds of validation and windowing (from settings)."""

    future_us_max: int  # exchange time may be this far after the receive time
    age_us_max: int  # and this far before it
    grace_us: int  # a window stays open this long after its end (watermark time)
    window_us: int = MINUTE_US

    def __post_init__(self) -> None:
        assert self.future_us_max >= 0
        assert self.age_us_max > 0
        assert self.grace_us >= 0
        assert self.window_us > 0


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to build, on the hot path
class Tick:
    """One decoded tick and where it came from (partition, offset, receive time).
    Treat it as immutable."""

    symbol: str
    venue: str
    price: Decimal
    size: Decimal
    bid: Decimal | None
    ask: Decimal | None
    exchange_us: int
    source_id: str
    source_seq: int
    partition: int
    offset: int
    received_us: int  # the broker's timestamp of the message


@dataclass(slots=True)
class Bar:
    """A 1-minute OHLCV bar (or a derived one), open while its window may still change.

    `open_us`/`close_us` are the exchange times of the ticks that set open and close:
    the first and last trade by exchange time (ties: the one consumed first opens, the
    one consumed last closes). `notional` is the sum of price x size, so vwap is
    `notional / volume`.
    """

    symbol: str
    start_us: int
    interval_us: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    notional: Decimal
    tick_count: int
    open_us: int
    close_us: int
    partition: int = 0  # of the ticks that feed it (informational)

    @property
    def end_us(self) -> int:
        return self.start_us + self.interval_us

    @property
    def vwap(self) -> Decimal | None:
        """Volume-weighted average price; None when the volume is zero."""
        return self.notional / self.volume if self.volume else None

    def key(self) -> tuple[str, int]:
        return (self.symbol, self.start_us)

    def values(self) -> tuple[Any, ...]:
        """Everything that makes two bars equal (not where they came from)."""
        return (
            self.symbol,
            self.start_us,
            self.interval_us,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.notional,
            self.tick_count,
        )


@dataclass(slots=True)
class PartitionState:
    """What ingest remembers of one partition of the ticks topic between messages.

    `next_offset` is the first offset not yet applied (None: nothing applied yet);
    `last_seq` the last sequence number seen per source.
    """

    partition: int
    next_offset: int | None = None
    last_seq: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Windows:
    """The open 1-minute bars, by (symbol, window start), and each symbol's watermark:
    the latest exchange time accepted for it."""

    open_bars: dict[tuple[str, int], Bar] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)


def window_start_us(exchange_us: int, window_us: int = MINUTE_US) -> int:
    """Start of the tumbling window holding `exchange_us` (floor, also before 1970)."""
    return exchange_us - exchange_us % window_us


# quantize in it fails instead of rounding: a price must already be at the instrument's scale
_EXACT: Final = Context(prec=38, traps=[Inexact, InvalidOperation])


# price (< 10^20, <= 18 places) x size (<= 10^12, <= 18 places), summed: exact with room
_NOTIONAL: Final = Context(prec=100, traps=[Inexact, InvalidOperation])


def _text_field(value: str) -> bool:
    return 0 < len(value) <= TEXT_FIELD_CHARS_MAX and value.isprintable()


def _at_scale(value: Decimal, quantum: Decimal) -> bool:
    """Whether `value` has no more places than the instrument's scale (nothing to round)."""
    try:
        return value.quantize(quantum, context=_EXACT) == value
    except (Inexact, InvalidOperation):
        return False


def check_tick(
    tick: Tick, instruments: Mapping[str, Instrument], policy: IngestPolicy
) -> str | None:
    """The first rule `tick` breaks (its reason), or None. Does not look at windows or
    sequences."""
    instrument = instruments.get(tick.symbol)
    if instrument is None:
        return "unknown_symbol"
    if instrument.status != "active":
        return "halted"
    price = tick.price
    if price <= 0:
        return "price_not_positive"
    quantum = instrument.quantum
    if not _at_scale(price, quantum):
        return "price_scale_exceeded"
    bid, ask = tick.bid, tick.ask
    if bid is not None and not _at_scale(bid, quantum):
        return "price_scale_exceeded"
    if ask is not None and not _at_scale(ask, quantum):
        return "price_scale_exceeded"
    if tick.size < 0:
        return "size_negative"
    if tick.size > SIZE_MAX:
        return "size_too_large"
    if bid is not None and ask is not None and bid > ask:
        return "bid_above_ask"
    if tick.exchange_us > tick.received_us + policy.future_us_max:
        return "future_timestamp"
    if tick.exchange_us < tick.received_us - policy.age_us_max:
        return "stale_timestamp"
    return None


def apply_tick(
    state: PartitionState,
    windows: Windows,
    tick: Tick,
    instruments: Mapping[str, Instrument],
    policy: IngestPolicy,
) -> str | None:
    """Apply one tick of `state`'s partition: None when it went into its bar, `DUPLICATE`
    when dropped, else the dead-letter reason.

    Updates the partition's sequence and next offset, the symbol's watermark and open bar.
    """
    assert tick.partition == state.partition
    state.next_offset = tick.offset + 1
    if not (_text_field(tick.source_id) and _text_field(tick.venue)):
        return "invalid_field"  # before the source's sequence: it is stored under its id
    last = state.last_seq.get(tick.source_id)
    if last is not None and tick.source_seq <= last:
        return DUPLICATE
    state.last_seq[tick.source_id] = tick.source_seq
    reason = check_tick(tick, instruments, policy)
    if reason is not None:
        return reason
    start = tick.exchange_us - tick.exchange_us % policy.window_us
    watermarks = windows.watermarks
    watermark = watermarks.get(tick.symbol)
    if watermark is not None and start + policy.window_us + policy.grace_us <= watermark:
        return "late"
    if watermark is None or tick.exchange_us > watermark:
        watermarks[tick.symbol] = tick.exchange_us
    open_bars = windows.open_bars
    key = (tick.symbol, start)
    bar = open_bars.get(key)
    price, size, ts = tick.price, tick.size, tick.exchange_us
    if bar is None:
        open_bars[key] = Bar(
            tick.symbol,
            start,
            policy.window_us,
            price,
            price,
            price,
            price,
            size,
            _NOTIONAL.multiply(price, size),
            1,
            ts,
            ts,
            tick.partition,
        )
        return None
    if price > bar.high:
        bar.high = price
    elif price < bar.low:
        bar.low = price
    if ts < bar.open_us:
        bar.open, bar.open_us = price, ts
    if ts >= bar.close_us:
        bar.close, bar.close_us = price, ts
    bar.volume += size
    bar.notional = _NOTIONAL.add(bar.notional, _NOTIONAL.multiply(price, size))
    bar.tick_count += 1
    return None


def close_windows(windows: Windows, symbols: Iterable[str], policy: IngestPolicy) -> list[Bar]:
    """Remove and return the open bars of `symbols` whose window is closed (the symbol's
    watermark >= window end + grace), in (window start, symbol) order."""
    cutoffs = {}
    for symbol in symbols:
        watermark = windows.watermarks.get(symbol)
        if watermark is not None:
            cutoffs[symbol] = watermark - policy.grace_us  # windows ending by then are closed
    done = [
        bar
        for bar in windows.open_bars.values()
        if bar.symbol in cutoffs and bar.start_us + bar.interval_us <= cutoffs[bar.symbol]
    ]
    for bar in done:
        del windows.open_bars[bar.key()]
    done.sort(key=lambda b: (b.start_us, b.symbol))
    return done


@dataclass
class IngestResult:
    """What `ingest` made of a stream: closed bars in closing order, the open windows, dead
    letters as (partition, offset, reason), duplicates as (partition, offset)."""

    closed: list[Bar] = field(default_factory=list)
    windows: Windows = field(default_factory=Windows)
    dead_letters: list[tuple[int, int, str]] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    states: dict[int, PartitionState] = field(default_factory=dict)


def ingest(
    batches: Iterable[Sequence[Tick]],
    instruments: Mapping[str, Instrument],
    policy: IngestPolicy,
    result: IngestResult | None = None,
) -> IngestResult:
    """Apply `batches` of ticks as the worker does, closing windows after each batch:
    the offline reference of what the worker persists."""
    out = result if result is not None else IngestResult()
    for batch in batches:
        touched: set[str] = set()
        for tick in batch:
            state = out.states.get(tick.partition)
            if state is None:
                state = out.states[tick.partition] = PartitionState(tick.partition)
            outcome = apply_tick(state, out.windows, tick, instruments, policy)
            if outcome is None:
                touched.add(tick.symbol)
            elif outcome == DUPLICATE:
                out.duplicates.append((tick.partition, tick.offset))
            else:
                out.dead_letters.append((tick.partition, tick.offset, outcome))
        out.closed.extend(close_windows(out.windows, touched, policy))
    return out


def derive_bars(bars: Iterable[Bar], interval_s: int) -> list[Bar]:
    """Bars of `interval_s` (a multiple of the bars' own interval) from finer bars of one
    symbol: windows aligned to the Unix epoch (UTC midnight for days); open of the
    earliest, close of the latest, high/low the extremes, volume, notional and tick count
    summed. Windows without bars give none. Sorted by window start."""
    interval_us = interval_s * US_PER_S
    out: dict[tuple[str, int], Bar] = {}
    for bar in sorted(bars, key=lambda b: (b.symbol, b.start_us)):
        assert interval_us % bar.interval_us == 0, "intervals must nest"
        start = bar.start_us - bar.start_us % interval_us
        key = (bar.symbol, start)
        agg = out.get(key)
        if agg is None:
            out[key] = Bar(
                bar.symbol,
                start,
                interval_us,
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                bar.notional,
                bar.tick_count,
                bar.open_us,
                bar.close_us,
                bar.partition,
            )
            continue
        agg.high = max(agg.high, bar.high)
        agg.low = min(agg.low, bar.low)
        agg.close, agg.close_us = bar.close, bar.close_us
        agg.volume += bar.volume
        agg.notional += bar.notional
        agg.tick_count += bar.tick_count
    return sorted(out.values(), key=lambda b: (b.start_us, b.symbol))


class SequenceGaps:
    """Missing sequence numbers per source, over all partitions (a metric only).

    A source's ticks are spread over partitions that are consumed at different paces, so
    holes open and fill while they are consumed. Per source this counts the numbers seen
    (`see`, once per tick that is not a duplicate) and knows the lowest and highest:
    `missing()` = (highest - lowest + 1) - seen, which settles at the true number of
    gaps once every partition is caught up. At most `sources_max` sources are tracked.
    """

    def __init__(self, sources_max: int) -> None:
        assert sources_max > 0
        self.sources_max = sources_max
        self._seen: dict[str, int] = {}
        self._low: dict[str, int] = {}
        self._high: dict[str, int] = {}

    def see(self, source_id: str, seq: int) -> None:
        seen = self._seen.get(source_id)
        if seen is None:
            if len(self._seen) >= self.sources_max:
                return
            self._seen[source_id] = 1
            self._low[source_id] = self._high[source_id] = seq
            return
        self._seen[source_id] = seen + 1
        if seq > self._high[source_id]:
            self._high[source_id] = seq
        elif seq < self._low[source_id]:
            self._low[source_id] = seq

    def missing(self) -> dict[str, int]:
        """Sequence numbers not seen between each source's lowest and highest."""
        return {
            source: self._high[source] - self._low[source] + 1 - seen
            for source, seen in self._seen.items()
        }
