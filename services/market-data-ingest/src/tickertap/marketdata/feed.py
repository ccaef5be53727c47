"""A deterministic simulated upstream feed: ticks for `marketdata.ticks.v1`, pure.

The demo's upstream (`make run`), the benchmark's load and the tests' input. Nothing here does
I/O: `simulate` yields plain dict records for the schema `marketdata.ticks.v1`; the command
`tickertap-feed` (`tickertap.marketdata.feed_cli`) encodes and publishes them.

    specs = default_symbols(10)          # AAPL 189.84 … all USD at scale 2
    for record in simulate(specs, seed=7, source_id="sim-1", start_us=now_us,
                           step_us=50_000, count=1000, bad_ratio=Decimal("0.01")):
        ...

Prices are a random walk in integer minor units (cents at scale 2) with a per-symbol
volatility; bid and ask sit around the walk at the symbol's spread, and the trade price falls
strictly between them. The walk draws floats from `random.Random(seed)` internally but only
integers leave it, turned into Decimals exactly (`Decimal(minor).scaleb(-scale)`), so a price
never has more places than its symbol's scale and nothing is rounded from a float. The same
arguments always give the same ticks (same Python version): `event_id` is a UUIDv5 of the seed,
the source and the index.

Tick `i` (from 0) has `exchange_ts = start_us + i * step_us`, `occurred_at = exchange_ts` (the
CLI stamps the real publish time instead), `source_seq = first_seq + i`.

With `bad_ratio > 0` about that fraction of ticks is deliberately bad, one of `BAD_KINDS`:
a negative price, a price with one decimal place more than the symbol's scale, bid above ask,
an exchange timestamp far in the future (relative to the tick's own time, so "future" holds
when `start_us` is near now), or a symbol no instrument has. A bad tick still takes its
sequence number (the feed sent it) but does not move the walk. `simulate_labeled` says which
ticks are bad and why, for tests that count dead letters.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

__all__ = [
    "BAD_KINDS",
    "DEFAULT_VENUE",
    "FAR_FUTURE_OFFSET_US",
    "SYMBOLS_MAX",
    "TICK_COUNT_MAX",
    "UNKNOWN_SYMBOL",
    "BadKind",
    "SymbolSpec",
    "default_symbols",
    "simulate",
    "simulate_labeled",
]

BadKind = Literal[
    "negative_price", "scale_exceeded", "bid_above_ask", "future_timestamp", "unknown_symbol"
]
BAD_KINDS: Final[tuple[BadKind, ...]] = (
    "negative_price",
    "scale_exceeded",
    "bid_above_ask",
    "future_timestamp",
    "unknown_symbol",
)

SYMBOLS_MAX: Final = 1000  # SYM000 … SYM999 beyond the named tickers
TICK_COUNT_MAX: Final = 100_000_000  # a bound on one simulation, not a target
SCALE_MAX: Final = 8
BPS_PLACES_MAX: Final = 2  # volatility and spread in bps with at most 2 decimals
DEFAULT_VENUE: Final = "XNAS"
UNKNOWN_SYMBOL: Final = "NOSUCH"  # never in default_symbols, listed by no one
FAR_FUTURE_OFFSET_US: Final = 366 * 86_400 * 1_000_000  # beyond any sane clock skew bound
SIZE_SHARES_MAX: Final = 500  # sizes are whole shares, 1 … SIZE_SHARES_MAX
PRICE_FLOOR_DIVISOR: Final = 10  # the walk never goes below a tenth of the starting price

# UUIDv5 namespace of simulated tick ids (fixed: the ids must be reproducible).
EVENT_ID_NAMESPACE: Final = uuid.UUID("6f1d8f0e-4c1b-5d7a-9a55-7469636b6572")

# (symbol, price, venue, volatility_bps, spread_bps): real-looking US listings, USD at scale 2.
_NAMED: Final[tuple[tuple[str, str, str, str, str], ...]] = (
    ("AAPL", "189.84", "XNAS", "4", "2"),
    ("MSFT", "415.26", "XNAS", "4", "2"),
    ("NVDA", "118.11", "XNAS", "8", "3"),
    ("AMZN", "186.51", "XNAS", "5", "2"),
    ("GOOGL", "172.63", "XNAS", "5", "2"),
    ("META", "509.12", "XNAS", "6", "3"),
    ("TSLA", "248.50", "XNAS", "10", "4"),
    ("JPM", "205.48", "XNYS", "3", "2"),
    ("V", "276.03", "XNYS", "3", "2"),
    ("KO", "63.45", "XNYS", "2", "3"),
    ("XOM", "116.72", "XNYS", "4", "3"),
    ("JNJ", "154.33", "XNYS", "2", "2"),
    ("WMT", "79.91", "XNYS", "3", "3"),
    ("DIS", "98.64", "XNYS", "5", "3"),
    ("NFLX", "688.24", "XNAS", "7", "4"),
    ("AMD", "157.02", "XNAS", "9", "3"),
    ("INTC", "22.87", "XNAS", "8", "5"),
    ("PFE", "28.91", "XNYS", "4", "4"),
    ("BA", "171.40", "XNYS", "7", "4"),
    ("IBM", "214.15", "XNYS", "3", "3"),
)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One simulated instrument: starting price at its scale, per-tick volatility and spread.

    `volatility_bps` is the standard deviation of one tick's move of the mid price, and
    `spread_bps` the full bid-ask spread, both in basis points of the price (at most two
    decimals). The spread is at least one minor unit on each side, so bid < price < ask holds.
    """

    symbol: str
    price: Decimal
    scale: int
    volatility_bps: Decimal
    spread_bps: Decimal
    venue: str = DEFAULT_VENUE

    def __post_init__(self) -> None:
        if not self.symbol or len(self.symbol) > 32:
            raise ValueError(f"symbol {self.symbol!r} must have 1 to 32 characters")
        if not 0 <= self.scale <= SCALE_MAX:
            raise ValueError(f"{self.symbol}: scale {self.scale} not in 0..{SCALE_MAX}")
        for name in ("price", "volatility_bps", "spread_bps"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise TypeError(f"{self.symbol}: {name} must be a finite Decimal, got {value!r}")
        if self.price <= 0:
            raise ValueError(f"{self.symbol}: price {self.price} must be positive")
        if self.price != self.price.quantize(Decimal(1).scaleb(-self.scale)):
            raise ValueError(f"{self.symbol}: price {self.price} has more than {self.scale} places")
        for name in ("volatility_bps", "spread_bps"):
            value = getattr(self, name)
            exponent = value.as_tuple().exponent
            if value < 0 or (isinstance(exponent, int) and exponent < -BPS_PLACES_MAX):
                raise ValueError(
                    f"{self.symbol}: {name} {value} must be >= 0 with at most "
                    f"{BPS_PLACES_MAX} decimals"
                )

    @property
    def price_minor(self) -> int:
        """The starting price in minor units (cents at scale 2)."""
        return int(self.price.scaleb(self.scale))


def default_symbols(n: int) -> list[SymbolSpec]:
    """`n` instruments, USD at scale 2: twenty real-looking tickers, then SYM000, SYM001, …

    The generated ones get prices between 10 and 500 and volatilities from a fixed formula,
    so `default_symbols(n)` is the same list everywhere.
    """
    if not 1 <= n <= SYMBOLS_MAX:
        raise ValueError(f"n must be in 1..{SYMBOLS_MAX}, got {n}")
    specs = [
        SymbolSpec(sym, Decimal(price), 2, Decimal(vol), Decimal(spread), venue)
        for sym, price, venue, vol, spread in _NAMED[:n]
    ]
    for i in range(n - len(specs)):
        price_minor = 1000 + (i * 7919) % 49_000  # 10.00 … 499.99, spread out
        specs.append(
            SymbolSpec(
                symbol=f"SYM{i:03d}",
                price=Decimal(price_minor).scaleb(-2),
                scale=2,
                volatility_bps=Decimal(2 + i % 9),
                spread_bps=Decimal(2 + i % 4),
                venue="XNYS" if i % 3 == 0 else "XNAS",
            )
        )
    return specs


def simulate(
    symbols: Sequence[SymbolSpec],
    *,
    seed: int,
    source_id: str,
    start_us: int,
    step_us: int,
    count: int,
    bad_ratio: Decimal | int = 0,
    first_seq: int = 1,
) -> Iterator[dict[str, Any]]:
    """Yield `count` tick records for `marketdata.ticks.v1`; see the module docstring."""
    for record, _ in simulate_labeled(
        symbols,
        seed=seed,
        source_id=source_id,
        start_us=start_us,
        step_us=step_us,
        count=count,
        bad_ratio=bad_ratio,
        first_seq=first_seq,
    ):
        yield record


def simulate_labeled(
    symbols: Sequence[SymbolSpec],
    *,
    seed: int,
    source_id: str,
    start_us: int,
    step_us: int,
    count: int,
    bad_ratio: Decimal | int = 0,
    first_seq: int = 1,
) -> Iterator[tuple[dict[str, Any], BadKind | None]]:
    """Like `simulate`, with each record the kind of badness it carries (None: a good tick)."""
    if not symbols:
        raise ValueError("at least one symbol is needed")
    if len({spec.symbol for spec in symbols}) != len(symbols):
        raise ValueError("symbols must be unique")
    if UNKNOWN_SYMBOL in {spec.symbol for spec in symbols}:
        raise ValueError(f"{UNKNOWN_SYMBOL} is reserved for unknown-symbol ticks")
    if not 0 <= count <= TICK_COUNT_MAX:
        raise ValueError(f"count must be in 0..{TICK_COUNT_MAX}, got {count}")
    if step_us < 0 or start_us < 0:
        raise ValueError("start_us and step_us must be >= 0")
    if first_seq < 0:
        raise ValueError("first_seq must be >= 0")
    if not source_id:
        raise ValueError("source_id must not be empty")
    bad = Decimal(bad_ratio)
    if not 0 <= bad <= 1:
        raise ValueError(f"bad_ratio must be in 0..1, got {bad_ratio}")
    # Exact threshold on a 2**53 integer draw: no float in the decision.
    bad_threshold = int(bad * (1 << 53))

    rng = random.Random(seed)  # noqa: S311  # a reproducible simulation, not a secret  # nosec B311
    mids = [spec.price_minor for spec in symbols]
    floors = [max(1, m // PRICE_FLOOR_DIVISOR) for m in mids]
    # Per-tick standard deviation as a fraction of the price (float, only for the draw).
    sigmas = [float(spec.volatility_bps) / 10_000 for spec in symbols]
    spreads_centibps = [int(spec.spread_bps * 100) for spec in symbols]
    scales = [spec.scale for spec in symbols]
    id_prefix = f"{seed}/{source_id}/"

    for i in range(count):
        k = rng.randrange(len(symbols))
        spec = symbols[k]
        is_bad = bad_threshold > 0 and rng.getrandbits(53) < bad_threshold
        mid = mids[k]
        if not is_bad:
            mid = max(floors[k], mid + round(mid * sigmas[k] * rng.gauss(0.0, 1.0)))
            mids[k] = mid
        half = max(1, mid * spreads_centibps[k] // 2_000_000)
        bid_minor, ask_minor = mid - half, mid + half
        price_minor = rng.randint(bid_minor + 1, ask_minor - 1)
        scale = scales[k]
        exchange_ts = start_us + i * step_us
        record: dict[str, Any] = {
            "event_id": str(uuid.uuid5(EVENT_ID_NAMESPACE, id_prefix + str(i))),
            "occurred_at": exchange_ts,
            "symbol": spec.symbol,
            "venue": spec.venue,
            "price": Decimal(price_minor).scaleb(-scale),
            "size": Decimal(rng.randint(1, SIZE_SHARES_MAX)),
            "bid": Decimal(bid_minor).scaleb(-scale),
            "ask": Decimal(ask_minor).scaleb(-scale),
            "exchange_ts": exchange_ts,
            "source_id": source_id,
            "source_seq": first_seq + i,
        }
        kind: BadKind | None = None
        if is_bad:
            kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
            _spoil(record, kind, price_minor, scale)
        yield record, kind


def _spoil(record: dict[str, Any], kind: BadKind, price_minor: int, scale: int) -> None:
    """Make `record` bad in the way `kind` names; it still encodes (the schema allows it)."""
    if kind == "negative_price":
        record["price"] = -record["price"]
    elif kind == "scale_exceeded":
        record["price"] = Decimal(price_minor * 10 + 5).scaleb(-(scale + 1))
    elif kind == "bid_above_ask":
        record["bid"], record["ask"] = record["ask"], record["bid"]
    elif kind == "future_timestamp":
        record["exchange_ts"] += FAR_FUTURE_OFFSET_US
    else:
        record["symbol"] = UNKNOWN_SYMBOL


def main() -> None:
    """`python -m tickertap.marketdata.feed`: the `tickertap-feed` command."""
    import sys

    from tickertap.marketdata.feed_cli import main as cli_main  # the I/O lives there

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
