#!/usr/bin/env python3
"""Publish ticks to tickerTap's `marketdata.ticks.v1`, with confluent-kafka and fastavro only.

A feed provider's starting point: it needs nothing of tickerTap but the schema file
`schemas/avro/marketdata.ticks.v1.avsc`. The wire format (README, "For feed providers") is
Avro single-object encoding:

    C3 01 | CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, 8 bytes,
            little-endian | the Avro binary body

and the Kafka key is the symbol (UTF-8), so one symbol's ticks stay in order.

    pip install confluent-kafka fastavro
    python examples/feed_producer.py --bootstrap-servers 127.0.0.1:25492 --symbol AAPL \
        --price 189.84 --count 5

Prices, sizes, bid and ask are `decimal.Decimal` (the schema's `decimal(38, 18)`), never
float; timestamps are microseconds since the Unix epoch, UTC. `source_seq` must increase by
one per tick within a `source_id`: keep the counter across restarts, or start a new source id.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import fastavro
from confluent_kafka import Producer

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas/avro/marketdata.ticks.v1.avsc"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
FLUSH_TIMEOUT_S = 30
COUNT_MAX = 100_000


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint of the Avro specification ("Schema Fingerprints")."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


class TickEncoder:
    """Encodes tick dicts into single-object-encoded Avro bytes."""

    def __init__(self, schema_file: Path) -> None:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        self._parsed = fastavro.parse_schema(schema)
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        self.header = SINGLE_OBJECT_MAGIC + struct.pack("<Q", crc64_avro(canonical.encode()))

    def encode(self, tick: dict) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        fastavro.schemaless_writer(out, self._parsed, tick)
        return out.getvalue()


def make_ticks(symbol: str, price: Decimal, count: int, source_id: str) -> list[dict]:
    """`count` ticks one cent apart around `price` (a stand-in for a real feed)."""
    now_us = time.time_ns() // 1000
    ticks = []
    for seq in range(1, count + 1):
        trade = price + Decimal(seq % 3 - 1) / 100
        ticks.append(
            {
                "event_id": str(uuid.uuid4()),
                "occurred_at": now_us,
                "symbol": symbol,
                "venue": "XNAS",
                "price": trade,
                "size": Decimal(100),
                "bid": trade - Decimal("0.01"),
                "ask": trade + Decimal("0.01"),
                "exchange_ts": now_us,
                "source_id": source_id,
                "source_seq": seq,
            }
        )
    return ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:25492")
    parser.add_argument("--topic", default="marketdata.ticks.v1")
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--price", type=Decimal, default=Decimal("189.84"))
    parser.add_argument(
        "--count", type=int, default=5, choices=range(1, COUNT_MAX + 1), metavar=f"1..{COUNT_MAX}"
    )
    parser.add_argument("--source-id", default=f"example-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()

    encoder = TickEncoder(SCHEMA_FILE)
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # the Java client's key hashing
        }
    )
    failures = []

    def on_delivery(error, _message):
        if error is not None:
            failures.append(str(error))

    ticks = make_ticks(args.symbol, args.price, args.count, args.source_id)
    for tick in ticks:
        producer.produce(
            args.topic, encoder.encode(tick), tick["symbol"].encode(), on_delivery=on_delivery
        )
        producer.poll(0)
    left = producer.flush(FLUSH_TIMEOUT_S)
    if failures or left:
        print(f"failed: {left} undelivered, errors: {failures[:3]}", file=sys.stderr)
        return 1
    print(f"sent {len(ticks)} ticks of {args.symbol} as source {args.source_id} to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
