"""CPU cost of one `AvroCodec.encode`: the direct writers against the path before them.

The old path is the strict checker, then `fastavro.schemaless_writer` on its output, as
`AvroCodec.encode` did before the direct writers (kept in the codec for the schemas with a
union of several non-null branches). Both run in the same process, interleaved, on:

- `portfolio.updates.v1`: 3 positions with every optional field set, one cash balance,
  the totals, 2 source offsets (~45 decimals), as the portfolio service publishes;
- `ledger.transfers.v1`: a 2-leg transfer with its metadata, as the ledger's outbox holds.

"repeated" encodes the same record each time (equal decimals and uuids hit the writers' caches
of encodings); "distinct" gives every encode decimals and uuids not seen before (every one a
miss), the cost of a feed whose numbers and ids never repeat (real events sit in between:
account, owner and portfolio ids and many amounts recur). Each figure is the median over
`--runs` runs of `--encodes` encodes (µs per encode), then each run. No stack needed:

    .venv/bin/python tests/bench/codec_bench.py [--runs 5] [--encodes 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging.codec import _fastavro_writer

RUNS_MAX = 50
ENCODES_MAX = 1_000_000
NOW = dt.datetime(2026, 11, 26, 16, 0, 0, 123456, tzinfo=dt.UTC)

Record = dict[str, Any]
Encode = Callable[[Mapping[str, Any]], bytes]


def _varied(step: int) -> Callable[[str], Decimal]:
    """Decimals for record number `step`: as written for 0, else each shifted by its own
    amount (no two decimals of any two records alike)."""
    serial = iter(range(1, 1000))

    def varied(text: str) -> Decimal:
        if step == 0:
            return Decimal(text)
        return Decimal(text) + Decimal(step * 1000 + next(serial)).scaleb(-12)

    return varied


def portfolio_update(step: int) -> Record:
    """A portfolio update (record number `step`, see `_varied`)."""
    d = _varied(step)

    def position(symbol: str) -> Record:
        return {
            "symbol": symbol,
            "quantity": d("10"),
            "cost_basis": d("1000.50"),
            "average_cost": d("100.05"),
            "price": d("101.23"),
            "price_as_of": NOW,
            "market_value": d("1012.30"),
            "unrealized_pnl": d("11.80"),
            "realized_pnl": d("0"),
            "currency": "USD",
            "cost_basis_average": d("1000.50"),
            "unrealized_pnl_average": d("11.80"),
            "realized_pnl_average": d("0"),
            "price_source_topic": "marketdata.prices.v1",
            "price_source_partition": 3,
            "price_source_offset": 123456 + step,
            "previous_close": d("100.00"),
            "day_change": d("12.30"),
        }

    totals = [
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
    ]
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": NOW,
        "portfolio_id": str(uuid.uuid4()),
        "owner_id": str(uuid.uuid4()),
        "base_currency": "USD",
        "as_of": NOW,
        "positions": [position("PB001"), position("PB034"), position("PB067")],
        "cash": [{"asset": "USD", "amount": d("997000.00")}],
        "totals": {name: d("1234.56") for name in totals},
        "source_offsets": [
            {"topic": "ledger.transfers.v1", "partition": 1, "offset": 5},
            {"topic": "marketdata.prices.v1", "partition": 3, "offset": 123456},
        ],
    }


def ledger_transfer(step: int) -> Record:
    """A 2-leg transfer event (record number `step`, see `_varied`)."""
    amount = _varied(step)("250.00")
    return {
        "event_id": uuid.uuid4(),
        "occurred_at": NOW,
        "transfer_id": uuid.uuid4(),
        "kind": "transfer",
        "legs": [
            {
                "account_id": uuid.uuid4(),
                "owner_id": uuid.uuid4(),
                "asset": "USD",
                "amount": -amount,
            },
            {
                "account_id": uuid.uuid4(),
                "owner_id": uuid.uuid4(),
                "asset": "USD",
                "amount": amount,
            },
        ],
        "trade": None,
        "reverses_transfer_id": None,
        "metadata": {"idempotency_key": "bench-0001"},
    }


def direct_encoder(codec: AvroCodec, schema_name: str) -> Encode:
    def encode(record: Mapping[str, Any]) -> bytes:
        return codec.encode(schema_name, record)

    return encode


def old_encoder(codec: AvroCodec, schema_name: str) -> Encode:
    """`encode` as it was: the checker, then fastavro's writer, after the same header."""
    schema = codec.schemas.get(schema_name)
    write = _fastavro_writer(schema.parsed)
    header = codec.encode(schema_name, _SAMPLES[schema_name](0))[:10]

    def encode(record: Mapping[str, Any]) -> bytes:
        chunks = [header]
        write(record, chunks.append)
        return b"".join(chunks)

    return encode


_SAMPLES: dict[str, Callable[[int], Record]] = {
    "portfolio.updates.v1": portfolio_update,
    "ledger.transfers.v1": ledger_transfer,
}


def time_us(encode: Encode, records: list[Record]) -> float:
    started = time.perf_counter()
    for record in records:
        encode(record)
    return (time.perf_counter() - started) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--encodes", type=int, default=5000)
    args = parser.parse_args()
    runs = max(1, min(args.runs, RUNS_MAX))
    encodes = max(1, min(args.encodes, ENCODES_MAX))

    codec = AvroCodec(load_schemas(find_schemas_dir()))
    rows: list[tuple[str, list[float]]] = []
    for schema_name, sample in _SAMPLES.items():
        paths: dict[str, Encode] = {
            "direct": direct_encoder(codec, schema_name),
            "old (checker + fastavro)": old_encoder(codec, schema_name),
        }
        same = sample(0)
        for encode in paths.values():  # the same bytes, or the figures mean nothing
            assert encode(same) == paths["direct"](same), schema_name
        workloads = {
            "repeated": [same] * encodes,
            "distinct": [sample(step + 1) for step in range(encodes)],
        }
        results: dict[str, list[float]] = {
            f"{schema_name} {workload} {path}": [] for workload in workloads for path in paths
        }
        for _ in range(runs):  # interleaved, so a busy moment hurts both paths alike
            for workload, records in workloads.items():
                for path, encode in paths.items():
                    results[f"{schema_name} {workload} {path}"].append(time_us(encode, records))
        rows.extend(results.items())

    width = max(len(name) for name, _ in rows)
    print(f"µs per encode: median of {runs} runs of {encodes} encodes, then each run")
    for name, figures in rows:
        each = " ".join(f"{figure:7.1f}" for figure in figures)
        print(f"{name:<{width}}  {statistics.median(figures):7.1f}   [{each}]")


if __name__ == "__main__":
    main()
