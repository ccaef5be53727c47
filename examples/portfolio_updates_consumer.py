#!/usr/bin/env python3
"""Read tickerTap's `portfolio.updates.v1`, with confluent-kafka and fastavro only.

A downstream consumer's starting point: it needs nothing of tickerTap but the schema
file `schemas/avro/portfolio.updates.v1.avsc` (README, "For downstream consumers").
Each message is a full snapshot of one portfolio (key = portfolio id, UTF-8) that
replaces the previous one; the wire format is Avro single-object encoding:

    C3 01 | CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, 8 bytes,
            little-endian | the Avro binary body

    pip install confluent-kafka fastavro
    python examples/portfolio_updates_consumer.py --bootstrap-servers 127.0.0.1:25492 \
        --group my-app                                   # a consumer group, committed offsets
    python examples/portfolio_updates_consumer.py --from-beginning --exit-at-end \
        --portfolio 11111111-1111-4111-8111-111111111111  # one portfolio's history, then stop

Prints one JSON line per update: decimals as exact strings (never float), times in ISO 8601.
A message written with a schema this file does not match (a newer version whose
fingerprint differs) is reported on stderr and skipped: update your copy of the file.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas/avro/portfolio.updates.v1.avsc"
TOPIC = "portfolio.updates.v1"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HEADER_BYTES = 10
POLL_TIMEOUT_S = 1.0
BATCH_MAX = 500


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


class UpdateDecoder:
    """Decodes single-object-encoded portfolio updates written with the schema file's schema."""

    def __init__(self, schema_file: Path) -> None:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        self._parsed = fastavro.parse_schema(schema)
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        self.header = SINGLE_OBJECT_MAGIC + struct.pack("<Q", crc64_avro(canonical.encode()))

    def decode(self, data: bytes) -> dict[str, Any]:
        """The update; ValueError when the bytes are not this schema's single-object encoding."""
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise ValueError("not Avro single-object encoding")
        if data[:HEADER_BYTES] != self.header:
            raise ValueError("written with another schema (fingerprint differs)")
        record = fastavro.schemaless_reader(io.BytesIO(data[HEADER_BYTES:]), self._parsed, None)
        assert isinstance(record, dict)
        return record


def as_json(value: Any) -> Any:
    """Decimals as exact strings without trailing zeros (the wire carries 18 places), times
    in ISO 8601: JSON that loses nothing."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:25492")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--schema", type=Path, default=SCHEMA_FILE)
    parser.add_argument("--group", help="consumer group (offsets committed); none: assign all")
    parser.add_argument("--portfolio", help="print only this portfolio's updates")
    parser.add_argument("--from-beginning", action="store_true", help="without --group")
    parser.add_argument("--exit-at-end", action="store_true", help="stop at the end of the log")
    args = parser.parse_args()

    decoder = UpdateDecoder(args.schema)
    config: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group or f"example-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": args.group is not None,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        # updates come in a steady stream: see each within ~50 ms, and ask the broker about
        # that often (by default librdkafka fetches again as soon as an answer comes, which
        # costs the broker a request per answer; an empty fetch waits fetch.wait.max.ms)
        "fetch.wait.max.ms": 50,
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": 50,
    }
    consumer = Consumer(config)
    metadata = consumer.list_topics(args.topic, timeout=10).topics[args.topic]
    partitions = sorted(metadata.partitions)
    if args.group:
        consumer.subscribe([args.topic])
    else:
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(args.topic, p, start) for p in partitions])
    at_end: set[int] = set()
    last_event: dict[str, Any] = {}  # per portfolio: a redelivered update is printed once
    try:
        while not (args.exit_at_end and at_end >= set(partitions)):
            # what has arrived, else the next one to come: consume(BATCH_MAX, timeout) alone
            # would hold every update until BATCH_MAX came or the timeout passed
            messages = consumer.consume(BATCH_MAX, 0) or consumer.consume(1, POLL_TIMEOUT_S)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                        continue
                    print(f"kafka error: {error}", file=sys.stderr)
                    continue
                at_end.discard(message.partition())
                key = (message.key() or b"").decode()
                if args.portfolio and key != args.portfolio:
                    continue
                try:
                    update = decoder.decode(message.value() or b"")
                except ValueError as exc:
                    print(f"skipped offset {message.offset()}: {exc}", file=sys.stderr)
                    continue
                if last_event.get(key) == update["event_id"]:
                    continue
                last_event[key] = update["event_id"]
                print(json.dumps(as_json(update), sort_keys=True), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
