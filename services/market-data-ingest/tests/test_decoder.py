"""The worker's tick decoder, no I/O: the single-object fast path and the Confluent framing
(through the codec, with an in-memory registry) give the same ticks; bad bytes are refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tickertap.marketdata.feed import default_symbols, simulate
from tickertap.marketdata.worker import TICKS_SCHEMA, TickDecoder
from tickertap.messaging import AvroCodec, DecodeError, find_schemas_dir, load_schemas

START_US = 1_790_000_000_000_000


class MemoryRegistry:
    """A Confluent-compatible schema registry in memory (the codec's SchemaRegistry port)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def schema_id(self, subject: str, schema_str: str) -> int:
        return self.ids.setdefault(schema_str, len(self.ids) + 1)

    def schema_str(self, schema_id: int) -> str | None:
        return next((text for text, i in self.ids.items() if i == schema_id), None)


def records(count: int = 200) -> list[dict[str, Any]]:
    return list(
        simulate(
            default_symbols(5),
            seed=3,
            source_id="dec",
            start_us=START_US,
            step_us=1000,
            count=count,
            bad_ratio=Decimal("0.1"),
        )
    )


def test_both_framings_decode_to_the_same_ticks() -> None:
    schemas = load_schemas(find_schemas_dir())
    single = AvroCodec(schemas)
    confluent = AvroCodec(schemas, MemoryRegistry())
    decoder = TickDecoder(confluent)  # knows the registry, for the Confluent frames
    for i, record in enumerate(records()):
        fast = decoder.decode(single.encode(TICKS_SCHEMA, record), 1, i, START_US)
        slow_bytes = confluent.encode(TICKS_SCHEMA, record)
        assert slow_bytes[0] == 0  # Confluent framing
        slow = decoder.decode(slow_bytes, 1, i, START_US)
        assert fast == slow
        assert fast.price == record["price"]
        assert fast.exchange_us == record["exchange_ts"]
        assert fast.bid == record["bid"]


def test_repeated_values_share_one_decimal_and_stay_exact() -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    decoder = TickDecoder(codec)
    record = records(1)[0]
    big = {**record, "price": Decimal("99999999999999999999.999999999999999999")}
    first = decoder.decode(codec.encode(TICKS_SCHEMA, big), 0, 0, START_US)
    second = decoder.decode(codec.encode(TICKS_SCHEMA, big), 0, 1, START_US)
    assert first.price == big["price"]  # 38 digits, nothing rounded
    assert first.price is second.price


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:12], "truncated"),
        (lambda b: b + b"\x00", "invalid_avro"),
        (lambda b: b"\x07" + b[1:], "bad_magic"),
        (lambda b: b[:2] + bytes(8) + b[10:], "unknown_schema"),
        (lambda b: b"", "truncated"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(mutate: Any, reason: str) -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    good = codec.encode(TICKS_SCHEMA, records(1)[0])
    with pytest.raises(DecodeError) as caught:
        TickDecoder(codec).decode(mutate(good), 0, 0, START_US)
    assert caught.value.reason == reason


def test_a_tombstone_is_refused() -> None:
    with pytest.raises(DecodeError):
        TickDecoder(AvroCodec(load_schemas(find_schemas_dir()))).decode(None, 0, 0, START_US)
