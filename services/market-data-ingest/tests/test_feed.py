"""The simulated feed is deterministic, Decimal-exact and keeps its promises; no I/O."""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal

import pytest

from tickertap.marketdata.feed import (
    BAD_KINDS,
    FAR_FUTURE_OFFSET_US,
    UNKNOWN_SYMBOL,
    SymbolSpec,
    default_symbols,
    simulate,
    simulate_labeled,
)
from tickertap.messaging.schemas import find_schemas_dir, load_schemas

START_US = 1_790_000_000_000_000


def run(count: int = 2000, symbols=None, **overrides):
    args = dict(
        seed=42, source_id="sim-1", start_us=START_US, step_us=1000, count=count, bad_ratio=0
    )
    args.update(overrides)
    return list(simulate_labeled(symbols or default_symbols(25), **args))


def test_default_symbols_are_unique_usd_scale_2_and_stable():
    specs = default_symbols(120)
    assert len({s.symbol for s in specs}) == 120
    assert specs[0].symbol == "AAPL"
    assert specs[20].symbol == "SYM000"
    assert specs[119].symbol == "SYM099"
    assert all(s.scale == 2 and s.price > 0 for s in specs)
    assert all(s.price == s.price.quantize(Decimal("0.01")) for s in specs)
    assert default_symbols(120) == specs
    with pytest.raises(ValueError, match="n must be"):
        default_symbols(0)


def test_same_arguments_same_ticks_other_seed_other_ticks():
    assert run() == run()
    other = run(seed=43)
    assert [r for r, _ in other] != [r for r, _ in run()]


def test_good_ticks_keep_every_rule():
    symbols = {s.symbol: s for s in default_symbols(25)}
    ticks = run(count=5000)
    for i, (tick, kind) in enumerate(ticks):
        assert kind is None
        scale = symbols[tick["symbol"]].scale
        quantum = Decimal(1).scaleb(-scale)
        for field in ("price", "bid", "ask"):
            assert isinstance(tick[field], Decimal)
            assert tick[field] == tick[field].quantize(quantum)
            assert tick[field] > 0
        assert tick["bid"] < tick["price"] < tick["ask"]
        assert tick["size"] > 0
        assert tick["size"] == tick["size"].to_integral_value()
        assert tick["exchange_ts"] == START_US + i * 1000
        assert tick["source_seq"] == 1 + i
        assert tick["source_id"] == "sim-1"
        assert uuid.UUID(tick["event_id"])
    assert len({t["event_id"] for t, _ in ticks}) == len(ticks)
    # every symbol gets ticks, and prices move
    assert len({t["symbol"] for t, _ in ticks}) == 25
    aapl = [t["price"] for t, _ in ticks if t["symbol"] == "AAPL"]
    assert len(set(aapl)) > 10


def test_walk_stays_near_its_start_with_small_volatility():
    spec = SymbolSpec("KO", Decimal("63.45"), 2, Decimal("2"), Decimal("3"))
    ticks = run(count=3000, symbols=[spec])
    prices = [t["price"] for t, _ in ticks]
    assert Decimal("40") < min(prices)
    assert max(prices) < Decimal("95")


def test_first_seq_and_source_ids_give_other_event_ids():
    a = run(count=10)
    b = run(count=10, first_seq=101, source_id="sim-2")
    assert [t["source_seq"] for t, _ in b] == list(range(101, 111))
    assert {t["event_id"] for t, _ in a}.isdisjoint({t["event_id"] for t, _ in b})


def test_bad_ticks_are_bad_in_the_way_they_say():
    symbols = {s.symbol: s for s in default_symbols(25)}
    ticks = run(count=20_000, bad_ratio=Decimal("0.1"))
    kinds = Counter(kind for _, kind in ticks)
    bad_total = sum(n for kind, n in kinds.items() if kind is not None)
    assert 1500 < bad_total < 2500
    assert set(kinds) == {None, *BAD_KINDS}
    for i, (tick, kind) in enumerate(ticks):
        assert tick["source_seq"] == 1 + i  # bad ticks take their sequence number too
        if kind == "negative_price":
            assert tick["price"] < 0
        elif kind == "scale_exceeded":
            scale = symbols[tick["symbol"]].scale
            assert tick["price"] != tick["price"].quantize(Decimal(1).scaleb(-scale))
        elif kind == "bid_above_ask":
            assert tick["bid"] > tick["ask"]
        elif kind == "future_timestamp":
            assert tick["exchange_ts"] == START_US + i * 1000 + FAR_FUTURE_OFFSET_US
        elif kind == "unknown_symbol":
            assert tick["symbol"] == UNKNOWN_SYMBOL
        else:
            assert tick["symbol"] in symbols
            assert tick["bid"] < tick["price"] < tick["ask"]


def test_bad_ratio_one_makes_every_tick_bad_and_simulate_drops_labels():
    ticks = run(count=100, bad_ratio=1)
    assert all(kind is not None for _, kind in ticks)
    plain = list(
        simulate(
            default_symbols(25),
            seed=42,
            source_id="sim-1",
            start_us=START_US,
            step_us=1000,
            count=100,
            bad_ratio=1,
        )
    )
    assert plain == [t for t, _ in ticks]


def test_every_tick_encodes_with_the_schema():
    from tickertap.messaging import AvroCodec

    codec = AvroCodec(load_schemas(find_schemas_dir()))
    for tick, _ in run(count=500, bad_ratio=Decimal("0.2")):
        decoded = codec.decode(codec.encode("marketdata.ticks.v1", tick))
        assert decoded["price"] == tick["price"]
        assert decoded["source_seq"] == tick["source_seq"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price": Decimal("1.005")}, "more than 2 places"),
        ({"price": Decimal("-1")}, "positive"),
        ({"spread_bps": Decimal("0.001")}, "at most 2 decimals"),
        ({"scale": 9}, "scale"),
    ],
)
def test_symbol_spec_refuses_bad_values(kwargs, message):
    fields = dict(
        symbol="X",
        price=Decimal("1.00"),
        scale=2,
        volatility_bps=Decimal(1),
        spread_bps=Decimal(1),
    )
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SymbolSpec(**fields)


def test_symbol_spec_refuses_float():
    with pytest.raises(TypeError, match="Decimal"):
        SymbolSpec("X", 1.5, 2, Decimal(1), Decimal(1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [{"count": -1}, {"bad_ratio": Decimal("1.5")}, {"source_id": ""}, {"step_us": -1}],
)
def test_simulate_refuses_bad_arguments(overrides):
    with pytest.raises(ValueError):
        run(**overrides)
