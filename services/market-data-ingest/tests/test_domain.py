"""The ingest domain, pure: every validation rule, sequences, windows, derived bars; no I/O."""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import Context, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.marketdata import domain as d
from tickertap.marketdata.feed import default_symbols, simulate_labeled

T0 = 1_789_948_800_000_000  # a UTC midnight (µs)
M = d.MINUTE_US
S = d.US_PER_S
POLICY = d.IngestPolicy(future_us_max=5 * S, age_us_max=3600 * S, grace_us=5 * S)
INSTRUMENTS = {
    "AAPL": d.Instrument("AAPL", "USD", 2),
    "BTC-USD": d.Instrument("BTC-USD", "USD", 8),
    "HALT": d.Instrument("HALT", "USD", 2, "halted"),
}


def tick(
    symbol: str = "AAPL",
    price: str = "100.00",
    size: str = "10",
    *,
    at: int = T0,
    seq: int = 1,
    source: str = "s1",
    partition: int = 0,
    offset: int | None = None,
    received: int | None = None,
    bid: str | None = None,
    ask: str | None = None,
) -> d.Tick:
    return d.Tick(
        symbol,
        "XNAS",
        Decimal(price),
        Decimal(size),
        None if bid is None else Decimal(bid),
        None if ask is None else Decimal(ask),
        at,
        source,
        seq,
        partition,
        seq if offset is None else offset,
        at if received is None else received,
    )


def run(ticks: list[d.Tick]) -> d.IngestResult:
    return d.ingest([ticks], INSTRUMENTS, POLICY)


# -- validation: one reason per rule ------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "reason"),
    [
        (tick("NOPE"), "unknown_symbol"),
        (tick("HALT"), "halted"),
        (tick(price="0"), "price_not_positive"),
        (tick(price="-1.00"), "price_not_positive"),
        (tick(price="100.001"), "price_scale_exceeded"),
        (tick(bid="99.991", ask="100.01"), "price_scale_exceeded"),
        (tick(bid="99.99", ask="100.011"), "price_scale_exceeded"),
        (tick(size="-1"), "size_negative"),
        (tick(size="1000000000000.000000000000000001"), "size_too_large"),
        (tick(bid="100.02", ask="100.01"), "bid_above_ask"),
        (tick(at=T0 + 5 * S + 1, received=T0), "future_timestamp"),
        (tick(at=T0 - 3600 * S - 1, received=T0), "stale_timestamp"),
    ],
)
def test_each_rule_has_its_reason(t: d.Tick, reason: str) -> None:
    assert reason in d.REASONS
    result = run([t])
    assert result.dead_letters == [(0, t.offset, reason)]
    assert not result.windows.open_bars


@pytest.mark.parametrize("source", ["", "s" * 65, "feed\x00one", "feed\none"])
def test_a_source_id_that_cannot_be_stored_is_dead_lettered_before_its_sequence(
    source: str,
) -> None:
    bad = tick(source=source)
    result = run([bad])
    assert result.dead_letters == [(0, bad.offset, "invalid_field")]
    assert source not in result.states[0].last_seq


def test_notional_is_exact_beyond_38_digits() -> None:
    big = tick(price="123456789.12", size="999999999999.123456789012345678")
    result = run([big, tick(price="0.01", size="0.000000000000000001", seq=2)])
    (bar,) = result.windows.open_bars.values()
    wide = Context(prec=100)
    exact = wide.multiply(Decimal("123456789.12"), Decimal("999999999999.123456789012345678"))
    assert bar.notional == wide.add(exact, Decimal("0.00000000000000000001"))
    assert len(bar.notional.as_tuple().digits) > 38


def test_valid_edges_are_accepted() -> None:
    ok = [
        tick(price="100.10000", bid="100.00", ask="100.00", size="0"),  # zeros beyond the scale
        tick(at=T0 + 5 * S, received=T0, seq=2),  # exactly the future bound
        tick(at=T0 - 3600 * S, received=T0, seq=3),  # exactly the age bound
        tick("BTC-USD", "65000.12345678", "0.001", seq=4),
    ]
    for t in ok:  # each with windows of its own: no watermark makes it late
        assert d.apply_tick(d.PartitionState(0), d.Windows(), t, INSTRUMENTS, POLICY) is None


def test_duplicates_are_dropped_per_source_and_partition() -> None:
    result = run(
        [
            tick(seq=5, offset=0),
            tick(seq=5, offset=1),  # the same again: duplicate
            tick(seq=4, offset=2),  # older: duplicate
            tick(seq=5, offset=3, source="s2"),  # another source: fine
            tick(seq=5, offset=0, partition=1),  # another partition: its own sequence
            tick("NOPE", seq=6, offset=4),  # invalid, but it takes its number
            tick("NOPE", seq=6, offset=5),  # so its repeat is a duplicate, not a second DLQ
        ]
    )
    assert result.duplicates == [(0, 1), (0, 2), (0, 5)]
    assert result.dead_letters == [(0, 4, "unknown_symbol")]
    assert result.windows.open_bars[("AAPL", T0)].tick_count == 3


def test_missing_sequence_numbers_settle_when_partitions_catch_up() -> None:
    gaps = d.SequenceGaps(sources_max=2)
    for seq in (1, 4, 6):  # one partition ahead of the other
        gaps.see("a", seq)
    assert gaps.missing() == {"a": 3}  # 2, 3, 5: in flight or lost
    for seq in (2, 5):  # the other partition catches up; 3 never comes
        gaps.see("a", seq)
    assert gaps.missing() == {"a": 1}
    gaps.see("b", 1)
    gaps.see("c", 1)  # over sources_max: not tracked
    assert set(gaps.missing()) == {"a", "b"}


# -- windows ---------------------------------------------------------------------------------


def test_one_minute_ohlcv_by_exchange_time() -> None:
    result = run(
        [
            tick(price="10.00", size="1", at=T0 + 10 * S, seq=1),
            tick(price="12.00", size="2", at=T0 + 5 * S, seq=2),  # earlier: the new open
            tick(price="9.00", size="3", at=T0 + 50 * S, seq=3),
            tick(price="11.00", size="4", at=T0 + 30 * S, seq=4),  # not the close: earlier
            tick(price="20.00", size="1", at=T0 + M + 5 * S, seq=5),  # next minute, closes T0
        ]
    )
    (bar,) = result.closed
    assert (bar.start_us, bar.end_us) == (T0, T0 + M)
    assert (bar.open, bar.high, bar.low, bar.close) == (
        Decimal("12.00"),
        Decimal("12.00"),
        Decimal("9.00"),
        Decimal("9.00"),
    )
    assert bar.volume == Decimal(10)
    assert bar.tick_count == 4
    assert bar.vwap == Decimal("10.5")  # (10x1 + 12x2 + 9x3 + 11x4) / 10
    assert list(result.windows.open_bars) == [("AAPL", T0 + M)]


def test_grace_period_and_late_ticks() -> None:
    result = run(
        [
            tick(at=T0 + 59 * S, seq=1),
            tick(at=T0 + M + 4 * S, seq=2),  # watermark inside the grace: T0 still open
            tick(at=T0 + 30 * S, seq=3),  # in time
            tick(at=T0 + M + 5 * S, seq=4),  # watermark reaches end + grace: T0 closes
            tick(at=T0 + 30 * S, seq=5),  # late
        ]
    )
    assert result.dead_letters == [(0, 5, "late")]
    assert [b.tick_count for b in result.closed] == [2]
    assert result.windows.watermarks["AAPL"] == T0 + M + 5 * S


def test_watermarks_are_per_symbol() -> None:
    result = run(
        [
            tick("BTC-USD", "1", at=T0 + 10 * M, seq=1),  # another symbol far ahead
            tick(at=T0, seq=2),  # not late: AAPL's own watermark is what counts
        ]
    )
    assert result.dead_letters == []
    assert ("AAPL", T0) in result.windows.open_bars  # an idle symbol keeps its bar open


# -- derived bars --------------------------------------------------------------------------


def test_derived_bars_from_one_minute_bars() -> None:
    ticks = [tick(price=f"{100 + i}.00", size="1", at=T0 + i * M + S, seq=i + 1) for i in range(12)]
    result = run(ticks)
    minute_bars = result.closed + list(result.windows.open_bars.values())
    (first, second, third) = d.derive_bars(minute_bars, 300)
    assert first.start_us == T0 - T0 % (300 * S)
    assert sum(b.tick_count for b in (first, second, third)) == 12
    assert first.open == Decimal("100.00")
    assert third.close == Decimal("111.00")
    assert max(b.high for b in (first, second, third)) == Decimal("111.00")
    (hour,) = d.derive_bars(minute_bars, 3600)
    assert (hour.open, hour.close, hour.volume) == (Decimal("100.00"), Decimal("111.00"), 12)
    (day,) = d.derive_bars(minute_bars, 86_400)
    assert day.start_us % (86_400 * S) == 0


# -- properties ---------------------------------------------------------------------------

SPECS = default_symbols(5)
PROPERTY_INSTRUMENTS = {s.symbol: d.Instrument(s.symbol, "USD", s.scale) for s in SPECS}


def feed_ticks(seed: int, count: int, step_us: int, bad_ratio: str) -> list[d.Tick]:
    """Ticks from the feed simulator, over 2 partitions by symbol, some out of order."""
    out = []
    for i, (record, _) in enumerate(
        simulate_labeled(
            SPECS,
            seed=seed,
            source_id="prop",
            start_us=T0,
            step_us=step_us,
            count=count,
            bad_ratio=Decimal(bad_ratio),
        )
    ):
        jitter = (i * 7919 % 13) * S  # up to 12 s back in time: within and beyond the grace
        out.append(
            d.Tick(
                record["symbol"],
                record["venue"],
                record["price"],
                record["size"],
                record["bid"],
                record["ask"],
                record["exchange_ts"] - jitter,
                record["source_id"],
                record["source_seq"],
                sum(map(ord, record["symbol"])) % 2,
                i,
                T0 + i * step_us,
            )
        )
    return out


def outcome(result: d.IngestResult) -> tuple[object, ...]:
    return (
        sorted(b.values() for b in result.closed),
        sorted(b.values() for b in result.windows.open_bars.values()),
        sorted(result.dead_letters),
        sorted(result.duplicates),
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    step_us=st.sampled_from([100_000, 1_000_000, 3_000_000]),
)
def test_any_split_into_batches_gives_the_same_bars(
    seed: int, count: int, cuts: list[int], step_us: int
) -> None:
    ticks = feed_ticks(seed, count, step_us, "0.05")
    # a few ticks sent twice, as a reconnecting feed does
    ticks = ticks + [replace(t, offset=count + i) for i, t in enumerate(ticks[::7])]
    one = d.ingest([ticks], PROPERTY_INSTRUMENTS, POLICY)
    bounds = sorted({0, len(ticks), *(c for c in cuts if c < len(ticks))})
    batches = [ticks[a:b] for a, b in itertools.pairwise(bounds)]
    many = d.ingest(batches, PROPERTY_INSTRUMENTS, POLICY)
    assert outcome(one) == outcome(many)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 300))
def test_every_tick_is_in_one_bar_or_dead_lettered_or_a_duplicate(seed: int, count: int) -> None:
    ticks = feed_ticks(seed, count, 1_000_000, "0.1")
    result = d.ingest([ticks], PROPERTY_INSTRUMENTS, POLICY)
    in_bars = sum(b.tick_count for b in result.closed) + sum(
        b.tick_count for b in result.windows.open_bars.values()
    )
    assert in_bars + len(result.dead_letters) + len(result.duplicates) == len(ticks)
    bars = result.closed + list(result.windows.open_bars.values())
    assert len({b.key() for b in bars}) == len(bars)  # one bar per symbol and minute
    for bar in bars:
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 400))
def test_derived_bars_do_not_depend_on_grouping(seed: int, count: int) -> None:
    ticks = feed_ticks(seed, count, 2_000_000, "0")
    result = d.ingest([ticks], PROPERTY_INSTRUMENTS, POLICY)
    minutes = result.closed + list(result.windows.open_bars.values())
    hours_direct = d.derive_bars(minutes, 3600)
    hours_via_5m = d.derive_bars(d.derive_bars(minutes, 300), 3600)
    assert [b.values() for b in hours_direct] == [b.values() for b in hours_via_5m]
    assert sum(b.tick_count for b in hours_direct) == sum(b.tick_count for b in minutes)
