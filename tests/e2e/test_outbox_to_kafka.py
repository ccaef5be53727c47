"""A running service's relay publishes its outbox, and a client outside the project reads it.

An event written into the ledger's outbox (as a handler would, in a transaction)
reaches `ledger.transfers.v1`; a plain confluent-kafka consumer finds it and the
Apache Avro reference implementation decodes it from the schema file alone.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import avro.io
import avro.schema
import fastavro.schema
import pytest
from confluent_kafka import Consumer
from sqlalchemy.ext.asyncio import create_async_engine

from tickertap.messaging import AvroCodec, add_event, find_schemas_dir, load_schemas
from tickertap.runtime import messaging_tables

SCHEMA_FILE = Path(find_schemas_dir()) / "ledger.transfers.v1.avsc"
DEADLINE_S = 30


def transfer() -> dict:
    owner = str(uuid.uuid4())
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC),
        "transfer_id": str(uuid.uuid4()),
        "kind": "deposit",
        "legs": [
            {
                "account_id": str(uuid.uuid4()),
                "owner_id": owner,
                "asset": "USD",
                "amount": Decimal("100.25"),
            },
            {
                "account_id": str(uuid.uuid4()),
                "owner_id": owner,
                "asset": "USD",
                "amount": Decimal("-100.25"),
            },
        ],
        "trade": None,
        "reverses_transfer_id": None,
        "metadata": {},
    }


@pytest.mark.slow
async def test_ledger_outbox_event_reaches_kafka_and_the_reference_avro_reader(stack):
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    outbox, _ = messaging_tables("ledger")
    record = transfer()
    engine = create_async_engine(
        stack.pg_admin_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    try:
        async with engine.begin() as conn:
            await add_event(
                conn,
                outbox,
                codec,
                schema_name="ledger.transfers.v1",
                record=record,
                key=record["transfer_id"],
                notify=True,
            )
    finally:
        await engine.dispose()

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"e2e-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["ledger.transfers.v1"])
    found = None
    deadline = time.monotonic() + DEADLINE_S
    try:
        while found is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            headers = dict(message.headers() or [])
            if headers.get("x-event-id") == record["event_id"].encode():
                found = message
    finally:
        consumer.close()
    assert found is not None, "the relay did not publish the event in time"
    assert found.key() == record["transfer_id"].encode()

    value = found.value()
    assert value[:2] == b"\xc3\x01"  # Avro single-object encoding
    # the 8-byte fingerprint is CRC-64-AVRO of the schema's Parsing Canonical Form
    canonical = fastavro.schema.to_parsing_canonical_form(json.loads(SCHEMA_FILE.read_text()))
    fingerprint = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    assert value[2:10] == bytes.fromhex(fingerprint)  # fastavro prints it in wire order
    schema = avro.schema.parse(SCHEMA_FILE.read_text())
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(value[10:])))
    assert datum["event_id"] == record["event_id"]
    assert datum["transfer_id"] == record["transfer_id"]
    assert [leg["asset"] for leg in datum["legs"]] == ["USD", "USD"]
    # the reference reader returns decimals at the schema's scale; the value is exact
    assert Decimal(datum["legs"][0]["amount"]) == Decimal("100.25")
