"""The Avro codec: round trips, strict values, framing, and an independent implementation
(the Apache `avro` library) reading what we write and writing what we read."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.messaging.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_HEADER_BYTES,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    CodecError,
    ConfluentSchemaRegistry,
    DecodeError,
    EncodeError,
    RegistryError,
)
from tickertap.messaging.schemas import (
    AvroSchema,
    SchemaError,
    SchemaSet,
    crc64_avro,
    find_schemas_dir,
    load_schemas,
    parse_schema,
)

SCHEMAS_DIR = find_schemas_dir(Path(__file__).parent, env={})
SCALE = 18  # every decimal of the shipped schemas is decimal(38, 18)

T0 = dt.datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(microseconds=1)


def _id() -> uuid.UUID:
    return uuid.uuid4()


def sample_tick() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "symbol": "AAPL",
        "venue": "XNAS",
        "price": Decimal("189.1234"),
        "size": Decimal("0.000000000000000001"),
        "bid": Decimal("189.12"),
        "ask": None,
        "exchange_ts": T0,
        "source_id": "feed-1",
        "source_seq": 2**62,
    }


def sample_price() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "symbol": "BTC-USD",
        "venue": "COINBASE",
        "price": Decimal("67012.55"),
        "bid": None,
        "ask": Decimal("67012.56"),
        "exchange_ts": T0,
        "received_at": T1,
        "source_topic": "marketdata.ticks.v1",
        "source_partition": 3,
        "source_offset": 1234567,
    }


def sample_bar() -> dict[str, Any]:
    start = dt.datetime(2025, 3, 14, 15, 9, tzinfo=dt.UTC)
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "symbol": "AAPL",
        "interval_s": 60,
        "window_start": start,
        "window_end": start + dt.timedelta(seconds=60),
        "open": Decimal("189.10"),
        "high": Decimal("189.50"),
        "low": Decimal("188.95"),
        "close": Decimal("189.20"),
        "volume": Decimal("12345.5"),
        "tick_count": 42,
    }


def sample_dead_letter() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "source_topic": "marketdata.ticks.v1",
        "source_partition": 0,
        "source_offset": 17,
        "consumer_group": "market-data-ingest",
        "reason": "bad_magic",
        "detail": "first byte 7B starts no known framing",
        "original_key": b"AAPL",
        "original_value": b'{"not": "avro"}',
        "original_timestamp": T0,
        "original_headers": [
            {"key": "correlation-id", "value": b"abc"},
            {"key": "correlation-id", "value": None},
        ],
    }


def sample_transfer() -> dict[str, Any]:
    buyer, house = _id(), _id()
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "transfer_id": _id(),
        "kind": "trade",
        "legs": [
            {"account_id": _id(), "owner_id": buyer, "asset": "USD", "amount": Decimal("-1892.34")},
            {"account_id": _id(), "owner_id": house, "asset": "USD", "amount": Decimal("1892.34")},
            {"account_id": _id(), "owner_id": buyer, "asset": "AAPL", "amount": Decimal("10")},
            {"account_id": _id(), "owner_id": house, "asset": "AAPL", "amount": Decimal("-10")},
        ],
        "trade": {
            "symbol": "AAPL",
            "side": "buy",
            "quantity": Decimal("10"),
            "price": Decimal("189.1234"),
            "notional": Decimal("1891.23"),
            "fee": Decimal("1.11"),
            "currency": "USD",
        },
        "reverses_transfer_id": None,
        "metadata": {"external_ref": "ord-981"},
    }


def sample_portfolio_update() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "portfolio_id": _id(),
        "owner_id": _id(),
        "base_currency": "USD",
        "as_of": T0,
        "positions": [
            {
                "symbol": "AAPL",
                "quantity": Decimal("10"),
                "cost_basis": Decimal("1892.34"),
                "average_cost": Decimal("189.234"),
                "price": Decimal("190"),
                "price_as_of": T0,
                "market_value": Decimal("1900"),
                "unrealized_pnl": Decimal("7.66"),
                "realized_pnl": Decimal("0"),
                "currency": "USD",
                "cost_basis_average": Decimal("1892.34"),
                "unrealized_pnl_average": Decimal("7.66"),
                "realized_pnl_average": Decimal("0"),
                "price_source_topic": "marketdata.prices.v1",
                "price_source_partition": 0,
                "price_source_offset": 123456,
                "previous_close": Decimal("189.5"),
                "day_change": Decimal("5"),
            },
            {
                "symbol": "NEWCO",
                "quantity": Decimal("1"),
                "cost_basis": Decimal("5"),
                "average_cost": Decimal("5"),
                "price": None,
                "price_as_of": None,
                "market_value": None,
                "unrealized_pnl": None,
                "realized_pnl": Decimal("-0.5"),
                "currency": None,
                "cost_basis_average": None,
                "unrealized_pnl_average": None,
                "realized_pnl_average": None,
                "price_source_topic": None,
                "price_source_partition": None,
                "price_source_offset": None,
                "previous_close": None,
                "day_change": None,
            },
        ],
        "cash": [{"asset": "USD", "amount": Decimal("107.66")}],
        "totals": {
            "market_value": Decimal("1905"),
            "cost_basis": Decimal("1897.34"),
            "unrealized_pnl": Decimal("7.66"),
            "realized_pnl": Decimal("-0.5"),
            "cash_value": Decimal("107.66"),
            "total_value": Decimal("2012.66"),
            "cost_basis_average": Decimal("1897.34"),
            "unrealized_pnl_average": Decimal("7.66"),
            "realized_pnl_average": Decimal("-0.5"),
            "day_change": Decimal("5"),
        },
        "source_offsets": [
            {"topic": "ledger.transfers.v1", "partition": 1, "offset": 99},
            {"topic": "marketdata.prices.v1", "partition": 0, "offset": 123456},
        ],
    }


def sample_job() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "job_id": _id(),
        "portfolio_id": _id(),
        "kind": "rebuild_valuation_history",
        "requested_at": T0,
        "requested_by": "scheduler",
        "params": {"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"},
    }


def sample_auth_event() -> dict[str, Any]:
    return {
        "event_id": _id(),
        "occurred_at": T1,
        "user_id": _id(),
        "event_type": "refresh_token_reused",
        "session_id": _id(),
        "actor_id": None,
        "details": {"family_revoked": "true"},
    }


SAMPLES: dict[str, Callable[[], dict[str, Any]]] = {
    "marketdata.ticks.v1": sample_tick,
    "marketdata.prices.v1": sample_price,
    "marketdata.bars.v1": sample_bar,
    "deadletter.envelope.v1": sample_dead_letter,
    "ledger.transfers.v1": sample_transfer,
    "portfolio.updates.v1": sample_portfolio_update,
    "portfolio.jobs.v1": sample_job,
    "auth.events.v1": sample_auth_event,
}


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return load_schemas(SCHEMAS_DIR)


@pytest.fixture(scope="module")
def codec(schemas: SchemaSet) -> AvroCodec:
    return AvroCodec(schemas)


def _walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a decoded record with its path."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _walk(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in _walk(item, f"{path}[{i}]")]
    return [(path, value)]


def _as_apache_datum(value: Any) -> Any:
    """A record as the Apache library writes it: uuids as str, decimals at the schema scale
    (its writer does not rescale a Decimal, see schemas/README.md)."""
    if isinstance(value, dict):
        return {key: _as_apache_datum(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_apache_datum(item) for item in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return value.quantize(Decimal(1).scaleb(-SCALE))
    return value


def _as_decoded(value: Any) -> Any:
    """A record as our decoder returns it: uuid strings as uuid.UUID."""
    if isinstance(value, dict):
        return {key: _as_decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_decoded(item) for item in value]
    if isinstance(value, str):
        try:
            return uuid.UUID(value) if len(value) == 36 else value
        except ValueError:
            return value
    return value


# Round trips


def test_every_shipped_schema_has_a_sample(schemas: SchemaSet) -> None:
    assert set(SAMPLES) == set(schemas.names)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(codec: AvroCodec, name: str) -> None:
    record = SAMPLES[name]()

    data = codec.encode(name, record)
    decoded = codec.decode(data, name)

    assert decoded == record
    for path, value in _walk(decoded):
        if isinstance(value, Decimal):
            assert value.as_tuple().exponent == -SCALE, path
        if isinstance(value, dt.datetime):
            assert value.utcoffset() == dt.timedelta(0), path


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_single_object_header(codec: AvroCodec, schemas: SchemaSet, name: str) -> None:
    data = codec.encode(name, SAMPLES[name]())

    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == schemas.get(name).fingerprint
    assert codec.writer_schema(data) is schemas.get(name)


def test_decode_without_reader_schema_reads_as_written(codec: AvroCodec) -> None:
    record = sample_job()

    assert codec.decode(codec.encode("portfolio.jobs.v1", record)) == record


def test_omitted_optional_fields_decode_as_null(codec: AvroCodec) -> None:
    record = sample_tick()
    del record["bid"], record["ask"]

    decoded = codec.decode(codec.encode("marketdata.ticks.v1", record), "marketdata.ticks.v1")

    assert decoded["bid"] is None
    assert decoded["ask"] is None


def test_uuid_strings_are_accepted_and_canonicalized(codec: AvroCodec) -> None:
    event_id = uuid.uuid4()
    record = dict(sample_auth_event(), event_id=str(event_id).upper().replace("-", ""))

    decoded = codec.decode(codec.encode("auth.events.v1", record))

    assert decoded["event_id"] == event_id


def test_timestamps_in_other_zones_are_the_same_instant(codec: AvroCodec) -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    record = dict(sample_job(), requested_at=T0.astimezone(tokyo))

    decoded = codec.decode(codec.encode("portfolio.jobs.v1", record))

    assert decoded["requested_at"] == T0
    assert decoded["requested_at"].tzinfo == dt.UTC


# Decimals: exact, never rounded

places = st.integers(min_value=0, max_value=SCALE)
unscaled_38 = st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1)


@settings(max_examples=300, deadline=None)
@given(unscaled=unscaled_38, scale=places)
def test_decimals_round_trip_exactly(codec: AvroCodec, unscaled: int, scale: int) -> None:
    # At most 38 - (18 - scale) digits at `scale` places: at most 38 digits at scale 18.
    digits_max = 38 - (SCALE - scale)
    value = Decimal(f"{unscaled % 10**digits_max * (-1 if unscaled < 0 else 1)}E-{scale}")
    record = dict(sample_bar(), volume=value)

    decoded = codec.decode(codec.encode("marketdata.bars.v1", record), "marketdata.bars.v1")

    assert decoded["volume"] == value
    assert decoded["volume"].as_tuple().exponent == -SCALE


@settings(max_examples=300, deadline=None)
@given(value=st.decimals(allow_nan=False, allow_infinity=False, places=SCALE))
def test_hypothesis_decimals_at_schema_scale(codec: AvroCodec, value: Decimal) -> None:
    record = dict(sample_bar(), volume=value)
    if value.adjusted() >= 38 - SCALE:
        with pytest.raises(EncodeError, match="needs more than 38 digits"):
            codec.encode("marketdata.bars.v1", record)
        return

    decoded = codec.decode(codec.encode("marketdata.bars.v1", record), "marketdata.bars.v1")

    assert decoded["volume"] == value


@settings(max_examples=300, deadline=None)
@given(
    significant=st.integers(min_value=1, max_value=10**30).filter(lambda n: n % 10 != 0),
    extra_places=st.integers(min_value=1, max_value=20),
    negative=st.booleans(),
)
def test_more_places_than_the_scale_is_an_error_not_rounding(
    codec: AvroCodec, significant: int, extra_places: int, negative: bool
) -> None:
    # significant * 10**-(18 + extra) has a non-zero digit beyond the 18th place.
    value = Decimal(f"{'-' if negative else ''}{significant}E-{SCALE + extra_places}")
    record = dict(sample_tick(), price=value)

    with pytest.raises(EncodeError) as caught:
        codec.encode("marketdata.ticks.v1", record)

    assert caught.value.reason == "invalid_record"
    assert "marketdata.ticks.v1.price" in caught.value.detail
    assert "decimal places" in caught.value.detail


@settings(max_examples=200, deadline=None)
@given(unscaled=unscaled_38, zeros=st.integers(min_value=1, max_value=30))
def test_trailing_zeros_beyond_the_scale_change_nothing(
    codec: AvroCodec, unscaled: int, zeros: int
) -> None:
    value = Decimal(f"{unscaled}{'0' * zeros}E-{SCALE + zeros}")  # same value, more places
    record = dict(sample_tick(), price=value)

    decoded = codec.decode(codec.encode("marketdata.ticks.v1", record), "marketdata.ticks.v1")

    assert decoded["price"] == Decimal(f"{unscaled}E-{SCALE}")


@pytest.mark.parametrize(
    "value",
    [
        Decimal("100000000000000000000"),  # 21 integer digits: 39 at scale 18
        Decimal("-1E+20"),
        Decimal("1E+30"),
    ],
)
def test_more_digits_than_the_precision_is_an_error(codec: AvroCodec, value: Decimal) -> None:
    with pytest.raises(EncodeError, match="needs more than 38 digits"):
        codec.encode("marketdata.ticks.v1", dict(sample_tick(), size=value))


def test_largest_value_fits(codec: AvroCodec) -> None:
    # A literal: unary minus would round to the default context's 28 digits.
    smallest = Decimal("-99999999999999999999.999999999999999999")

    decoded = codec.decode(codec.encode("marketdata.ticks.v1", dict(sample_tick(), size=smallest)))

    assert decoded["size"] == smallest


@pytest.mark.parametrize(
    "value",
    [1.5, 2, "1.5", True, Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity")],
    ids=repr,
)
def test_decimal_fields_take_only_finite_decimals(codec: AvroCodec, value: Any) -> None:
    with pytest.raises(EncodeError, match=r"marketdata\.ticks\.v1\.price"):
        codec.encode("marketdata.ticks.v1", dict(sample_tick(), price=value))


# Strict records


@pytest.mark.parametrize(
    ("change", "where", "problem"),
    [
        ({"occurred_at": dt.datetime(2025, 1, 1)}, "ticks.v1.occurred_at", "naive datetime"),
        ({"occurred_at": "2025-01-01T00:00:00Z"}, "ticks.v1.occurred_at", "got str"),
        ({"event_id": "not-a-uuid"}, "ticks.v1.event_id", "is not a UUID"),
        ({"event_id": 7}, "ticks.v1.event_id", "got int"),
        ({"source_seq": 1.0}, "ticks.v1.source_seq", "got float"),
        ({"source_seq": True}, "ticks.v1.source_seq", "got bool"),
        ({"source_seq": 2**63}, "ticks.v1.source_seq", "64 bits"),
        ({"symbol": b"AAPL"}, "ticks.v1.symbol", "got bytes"),
        ({"venue": None}, "ticks.v1.venue", "got NoneType"),
        ({"surprise": 1}, "ticks.v1", "fields not in the schema: surprise"),
    ],
)
def test_encode_rejects(codec: AvroCodec, change: dict[str, Any], where: str, problem: str) -> None:
    with pytest.raises(EncodeError) as caught:
        codec.encode("marketdata.ticks.v1", sample_tick() | change)

    assert caught.value.reason == "invalid_record"
    assert f"marketdata.{where}: " in caught.value.detail
    assert problem in caught.value.detail


def test_encode_rejects_text_that_is_not_utf8_encodable(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="surrogate"):
        codec.encode("marketdata.ticks.v1", dict(sample_tick(), venue="\ud800"))


def test_encode_rejects_a_missing_field(codec: AvroCodec) -> None:
    record = sample_tick()
    del record["venue"]

    with pytest.raises(EncodeError, match=r"marketdata\.ticks\.v1\.venue: missing"):
        codec.encode("marketdata.ticks.v1", record)


def test_encode_errors_name_nested_fields(codec: AvroCodec) -> None:
    record = sample_transfer()
    record["legs"][2]["amount"] = Decimal("0.0000000000000000001")
    record["trade"]["side"] = "hold"

    with pytest.raises(EncodeError, match=r"ledger\.transfers\.v1\.legs\[2\]\.amount: "):
        codec.encode("ledger.transfers.v1", record)
    record["legs"][2]["amount"] = Decimal("10")
    with pytest.raises(EncodeError, match=r"ledger\.transfers\.v1\.trade\.side: 'hold' is not"):
        codec.encode("ledger.transfers.v1", record)


def test_encode_rejects_non_string_map_values(codec: AvroCodec) -> None:
    record = dict(sample_auth_event(), details={"role": 3})

    with pytest.raises(EncodeError, match=r"auth\.events\.v1\.details\['role'\]: expected a str"):
        codec.encode("auth.events.v1", record)


def test_encode_rejects_a_non_mapping(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="mapping"):
        codec.encode("marketdata.ticks.v1", [1, 2])  # type: ignore[arg-type]


def test_encode_with_an_unknown_schema_name_is_a_schema_error(codec: AvroCodec) -> None:
    with pytest.raises(SchemaError, match=r"marketdata\.ticks\.v9"):
        codec.encode("marketdata.ticks.v9", sample_tick())


def test_encode_does_not_change_the_record(codec: AvroCodec) -> None:
    record = sample_transfer()
    before = json.dumps(record, default=str, sort_keys=True)

    codec.encode("ledger.transfers.v1", record)

    assert json.dumps(record, default=str, sort_keys=True) == before


# Fingerprints: CRC-64-AVRO of the Parsing Canonical Form

# Published vectors of Apache Avro's share/test/data/schema-tests.txt (signed 64-bit values).
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    (
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
]


@pytest.mark.parametrize(("canonical", "signed"), SPEC_VECTORS)
def test_crc64_avro_matches_the_specification_vectors(canonical: str, signed: int) -> None:
    ours = crc64_avro(canonical.encode())

    assert ours == signed % 2**64
    assert ours.to_bytes(8, "little") == avro.schema.parse(canonical).fingerprint("CRC-64-AVRO")
    assert ours.to_bytes(8, "little").hex() == fastavro_fingerprint(canonical, "CRC-64-AVRO")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fingerprints_agree_with_fastavro_and_apache(schemas: SchemaSet, name: str) -> None:
    schema = schemas.get(name)
    apache = avro.schema.parse(schema.text)

    # The canonical form comes from fastavro; our CRC of it is fastavro's fingerprint.
    assert schema.fingerprint.hex() == fastavro_fingerprint(schema.canonical_form, "CRC-64-AVRO")
    # Apache's Python library keeps a primitive with a logical type as {"type": "long"} in its
    # canonical form where the specification (and Java, and fastavro) write "long", so its
    # fingerprint of these schemas differs. Our CRC agrees with its CRC of its own form...
    assert crc64_avro(apache.canonical_form.encode()).to_bytes(8, "little") == apache.fingerprint()
    # ...and its form is ours once such primitives are written simply.
    assert _simplify_primitives(json.loads(apache.canonical_form)) == json.loads(
        schema.canonical_form
    )


def _simplify_primitives(node: Any) -> Any:
    if isinstance(node, list):
        return [_simplify_primitives(item) for item in node]
    if isinstance(node, dict):
        if set(node) == {"type"} and isinstance(node["type"], str):
            return node["type"]
        return {key: _simplify_primitives(value) for key, value in node.items()}
    return node


def test_fingerprint_ignores_docs_but_not_structure() -> None:
    text = '{"type": "record", "name": "A", "namespace": "tickertap.x", "fields": [%s]}'
    plain = parse_schema(text % '{"name": "a", "type": "long"}', name="a")
    documented = parse_schema(text % '{"name": "a", "type": "long", "doc": "hi"}', name="b")
    changed = parse_schema(text % '{"name": "a", "type": "int"}', name="c")

    assert plain.fingerprint == documented.fingerprint
    assert plain.fingerprint != changed.fingerprint


# The independent implementation: Apache avro reads what we write, and the reverse


def _apache_read(schema: AvroSchema, body: bytes) -> Any:
    reader = avro.io.DatumReader(avro.schema.parse(schema.text))
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))


def _apache_write(schema: AvroSchema, datum: Any) -> bytes:
    out = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(schema.text)).write(datum, avro.io.BinaryEncoder(out))
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_apache_avro_reads_what_we_write(codec: AvroCodec, schemas: SchemaSet, name: str) -> None:
    record = SAMPLES[name]()
    data = codec.encode(name, record)

    read = _apache_read(schemas.get(name), data[SINGLE_OBJECT_HEADER_BYTES:])

    assert read == _as_apache_datum(record)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_we_read_what_apache_avro_writes(codec: AvroCodec, schemas: SchemaSet, name: str) -> None:
    schema = schemas.get(name)
    datum = _as_apache_datum(SAMPLES[name]())
    body = _apache_write(schema, datum)

    decoded = codec.decode(SINGLE_OBJECT_MAGIC + schema.fingerprint + body, name)

    assert decoded == _as_decoded(datum)


def test_apache_and_we_write_the_same_bytes(codec: AvroCodec, schemas: SchemaSet) -> None:
    record = sample_transfer()
    ours = codec.encode("ledger.transfers.v1", record)[SINGLE_OBJECT_HEADER_BYTES:]

    assert _apache_write(schemas.get("ledger.transfers.v1"), _as_apache_datum(record)) == ours


# Decoding failures carry a reason for the dead-letter headers


def _decode_reason(codec: AvroCodec, data: bytes, reader: str | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, reader)
    return caught.value.reason


def test_empty_message_is_truncated(codec: AvroCodec) -> None:
    assert _decode_reason(codec, b"") == "truncated"


@pytest.mark.parametrize("data", [b"{}", b"\x01abc", b"\xc3\x02" + bytes(20), b"Obj\x01"])
def test_unknown_framing_is_bad_magic(codec: AvroCodec, data: bytes) -> None:
    assert _decode_reason(codec, data) == "bad_magic"


def test_every_truncation_is_reported_as_truncated(codec: AvroCodec) -> None:
    data = codec.encode("ledger.transfers.v1", sample_transfer())

    for end in range(len(data)):
        assert _decode_reason(codec, data[:end]) == "truncated", end


def test_unknown_fingerprint_is_unknown_schema(codec: AvroCodec) -> None:
    data = codec.encode("marketdata.ticks.v1", sample_tick())
    forged = data[:2] + bytes(8) + data[10:]

    assert _decode_reason(codec, forged) == "unknown_schema"


def test_trailing_bytes_are_invalid(codec: AvroCodec) -> None:
    data = codec.encode("marketdata.ticks.v1", sample_tick())

    assert _decode_reason(codec, data + b"\x00") == "invalid_avro"


def test_out_of_range_enum_index_is_invalid(codec: AvroCodec) -> None:
    record = sample_auth_event()
    data = codec.encode("auth.events.v1", record)
    at = SINGLE_OBJECT_HEADER_BYTES + _body_bytes_before_event_type(record)
    corrupted = data[:at] + b"\x7e" + data[at + 1 :]  # enum index 63 of 7

    assert _decode_reason(codec, corrupted) == "invalid_avro"


TS_MICROS = "timestamp-micros"


def _body_bytes_before_event_type(record: dict[str, Any]) -> int:
    """Length of the fields before event_type: a record cut after user_id."""
    head = {k: record[k] for k in ("event_id", "occurred_at", "user_id")}
    partial = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Head",
            "fields": [
                {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
                {
                    "name": "occurred_at",
                    "type": {"type": "long", "logicalType": "timestamp-micros"},
                },
                {"name": "user_id", "type": {"type": "string", "logicalType": "uuid"}},
            ],
        }
    )
    out = io.BytesIO()
    fastavro.schemaless_writer(out, partial, head)
    return len(out.getvalue())


def test_invalid_utf8_is_invalid(codec: AvroCodec) -> None:
    data = bytearray(codec.encode("marketdata.ticks.v1", sample_tick()))
    data[11] = 0xFF  # first byte of the event_id string

    assert _decode_reason(codec, bytes(data)) == "invalid_avro"


def test_a_decimal_beyond_the_precision_is_invalid_not_rounded(
    codec: AvroCodec, schemas: SchemaSet
) -> None:
    # Another writer puts a 40-digit unscaled value into a decimal(38, 18) field; fastavro's
    # reader alone would silently round it to 38 digits.
    schema = schemas.get("marketdata.bars.v1")
    raw_volume = (10**39 + 7).to_bytes(17, "big", signed=True)  # fastavro writes bytes as given
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema.parsed, dict(sample_bar(), volume=raw_volume))
    data = SINGLE_OBJECT_MAGIC + schema.fingerprint + body.getvalue()

    with pytest.raises(DecodeError, match=r"marketdata\.bars\.v1\.volume") as caught:
        codec.decode(data)
    assert caught.value.reason == "invalid_avro"


def test_other_schema_family_is_a_schema_mismatch(codec: AvroCodec) -> None:
    data = codec.encode("marketdata.ticks.v1", sample_tick())

    assert _decode_reason(codec, data, "ledger.transfers.v1") == "schema_mismatch"


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_corrupted_bodies_decode_or_raise_decode_error(
    codec: AvroCodec, position: int, value: int
) -> None:
    data = bytearray(codec.encode("portfolio.updates.v1", sample_portfolio_update()))
    body_bytes = len(data) - SINGLE_OBJECT_HEADER_BYTES
    data[SINGLE_OBJECT_HEADER_BYTES + position % body_bytes] = value

    outcome: object
    try:
        outcome = codec.decode(bytes(data), "portfolio.updates.v1")
    except DecodeError as exc:
        outcome = exc.reason
    assert isinstance(outcome, dict) or outcome in {"truncated", "invalid_avro"}


def test_error_detail_is_bounded() -> None:
    error = DecodeError("invalid_avro", "x" * 5000)

    assert isinstance(error, CodecError)
    assert len(error.detail) == 1000
    assert str(error).startswith("invalid_avro: xxx")


# Schema evolution through the codec

TICKS_V2_EXTRA_FIELD = {
    "name": "trade_id",
    "type": ["null", "string"],
    "default": None,
    "doc": "Venue trade id.",
}


def _ticks_v2(schemas: SchemaSet) -> AvroSchema:
    raw = json.loads(schemas.get("marketdata.ticks.v1").text)
    raw["fields"].append(TICKS_V2_EXTRA_FIELD)
    return parse_schema(json.dumps(raw), name="marketdata.ticks.v2")


def test_new_reader_reads_old_data_and_old_reader_reads_new_data(schemas: SchemaSet) -> None:
    both = SchemaSet([*schemas, _ticks_v2(schemas)])
    codec = AvroCodec(both)
    old = sample_tick()
    new = dict(sample_tick(), trade_id="T-1")

    assert codec.decode(codec.encode("marketdata.ticks.v1", old), "marketdata.ticks.v2") == {
        **old,
        "trade_id": None,
    }
    read_by_old = codec.decode(codec.encode("marketdata.ticks.v2", new), "marketdata.ticks.v1")
    assert read_by_old == {k: v for k, v in new.items() if k != "trade_id"}


# Confluent framing


class FakeRegistry:
    """An in-process `SchemaRegistry`: ids from 1 up, one per distinct schema text."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.subjects: dict[str, set[int]] = {}
        self.calls = 0
        self.failing = False

    def schema_id(self, subject: str, schema_str: str) -> int:
        self.calls += 1
        if self.failing:
            raise ConnectionError("registry down")
        known = [schema_id for schema_id, text in self.texts.items() if text == schema_str]
        schema_id = known[0] if known else len(self.texts) + 1
        self.texts[schema_id] = schema_str
        self.subjects.setdefault(subject, set()).add(schema_id)
        return schema_id

    def schema_str(self, schema_id: int) -> str | None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("registry down")
        return self.texts.get(schema_id)


def test_confluent_framing_round_trip(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    codec = AvroCodec(schemas, registry)
    record = sample_price()

    data = codec.encode("marketdata.prices.v1", record)

    assert data[:1] == CONFLUENT_MAGIC
    assert int.from_bytes(data[1:5], "big") == 1
    assert registry.subjects == {"marketdata.prices.v1-value": {1}}
    assert codec.decode(data, "marketdata.prices.v1") == record
    assert codec.writer_schema(data) is schemas.get("marketdata.prices.v1")


def test_confluent_subject_follows_the_topic(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    codec = AvroCodec(schemas, registry)

    codec.encode("marketdata.prices.v1", sample_price(), topic="prices-replay")

    assert set(registry.subjects) == {"prices-replay-value"}


def test_registry_answers_are_cached(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    codec = AvroCodec(schemas, registry)

    frames = [codec.encode("marketdata.ticks.v1", sample_tick()) for _ in range(5)]
    for frame in frames:
        codec.decode(frame)

    assert registry.calls == 2  # one id lookup, one schema fetch


def test_decoding_a_hand_built_confluent_frame(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    registry.texts[7] = schemas.get("ledger.transfers.v1").text
    codec = AvroCodec(schemas, registry)
    record = sample_transfer()
    body = AvroCodec(schemas).encode("ledger.transfers.v1", record)[SINGLE_OBJECT_HEADER_BYTES:]

    decoded = codec.decode(b"\x00\x00\x00\x00\x07" + body, "ledger.transfers.v1")

    assert decoded == record


def test_confluent_frame_with_a_schema_only_the_registry_knows(schemas: SchemaSet) -> None:
    # A newer producer registered ticks v2; this reader only ships v1 and resolves into it.
    registry = FakeRegistry()
    registry.texts[42] = _ticks_v2(schemas).text
    producer = AvroCodec(SchemaSet([_ticks_v2(schemas)]))
    record = dict(sample_tick(), trade_id="T-9")
    body = producer.encode("marketdata.ticks.v2", record)[SINGLE_OBJECT_HEADER_BYTES:]
    codec = AvroCodec(schemas, registry)

    decoded = codec.decode(b"\x00" + (42).to_bytes(4, "big") + body, "marketdata.ticks.v1")

    assert decoded == {k: v for k, v in record.items() if k != "trade_id"}
    assert codec.writer_schema(b"\x00" + (42).to_bytes(4, "big")).name == "registry-id-42"


def test_codec_with_a_registry_still_reads_single_object_frames(schemas: SchemaSet) -> None:
    record = sample_bar()
    data = AvroCodec(schemas).encode("marketdata.bars.v1", record)

    assert AvroCodec(schemas, FakeRegistry()).decode(data) == record


def test_confluent_frame_without_a_registry_is_unknown_schema(codec: AvroCodec) -> None:
    assert _decode_reason(codec, b"\x00\x00\x00\x00\x01\x02") == "unknown_schema"


def test_unknown_registry_id_is_unknown_schema(schemas: SchemaSet) -> None:
    codec = AvroCodec(schemas, FakeRegistry())

    assert _decode_reason(codec, b"\x00\x00\x00\x03\x09\x00") == "unknown_schema"


def test_short_confluent_header_is_truncated(schemas: SchemaSet) -> None:
    assert _decode_reason(AvroCodec(schemas, FakeRegistry()), b"\x00\x00\x01") == "truncated"


def test_registry_schema_that_is_not_avro_is_unknown_schema(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    registry.texts[5] = '{"type": "object"}'
    codec = AvroCodec(schemas, registry)

    assert _decode_reason(codec, b"\x00\x00\x00\x00\x05\x00") == "unknown_schema"


def test_registry_outage_is_a_registry_error_not_a_decode_error(schemas: SchemaSet) -> None:
    registry = FakeRegistry()
    registry.failing = True
    codec = AvroCodec(schemas, registry)

    with pytest.raises(RegistryError) as on_encode:
        codec.encode("marketdata.ticks.v1", sample_tick())
    with pytest.raises(RegistryError) as on_decode:
        codec.decode(b"\x00\x00\x00\x00\x01\x00")

    assert on_encode.value.reason == on_decode.value.reason == "registry_error"
    assert "registry down" in on_decode.value.detail


class FakeConfluentClient:
    """Stands in for confluent_kafka.schema_registry.SchemaRegistryClient."""

    class NotFound(Exception):
        http_status_code = 404

    class Registered:
        def __init__(self, schema_str: str, schema_type: str = "AVRO") -> None:
            self.schema_str = schema_str
            self.schema_type = schema_type
            self.references: list[Any] = []

    class Lookup:
        schema_id = 11

    def __init__(self) -> None:
        self.schemas: dict[int, FakeConfluentClient.Registered] = {}
        self.registered: list[tuple[str, Any]] = []

    def get_schema(self, schema_id: int) -> FakeConfluentClient.Registered:
        if schema_id not in self.schemas:
            raise self.NotFound(schema_id)
        return self.schemas[schema_id]

    def register_schema(self, subject_name: str, schema: Any) -> int:
        self.registered.append((subject_name, schema))
        return 10

    def lookup_schema(self, subject_name: str, schema: Any) -> FakeConfluentClient.Lookup:
        return self.Lookup()


def test_confluent_adapter_fetches_avro_schemas_by_id() -> None:
    client = FakeConfluentClient()
    client.schemas[1] = FakeConfluentClient.Registered('"long"')
    client.schemas[2] = FakeConfluentClient.Registered("syntax = 'proto3';", "PROTOBUF")
    adapter = ConfluentSchemaRegistry(client)

    assert adapter.schema_str(1) == '"long"'
    assert adapter.schema_str(2) is None
    assert adapter.schema_str(3) is None


def test_confluent_adapter_registers_or_looks_up(schemas: SchemaSet) -> None:
    client = FakeConfluentClient()
    text = schemas.get("auth.events.v1").text
    try:
        import confluent_kafka.schema_registry  # noqa: F401
    except ImportError:  # the optional extra is not installed: say so, as a RegistryError
        codec = AvroCodec(schemas, ConfluentSchemaRegistry(client))
        with pytest.raises(RegistryError, match="ModuleNotFoundError"):
            codec.encode("auth.events.v1", sample_auth_event())
        return

    assert ConfluentSchemaRegistry(client).schema_id("auth.events.v1-value", text) == 10
    assert client.registered[0][0] == "auth.events.v1-value"
    assert client.registered[0][1].schema_str == text
    lookup_only = ConfluentSchemaRegistry(client, auto_register=False)
    assert lookup_only.schema_id("auth.events.v1-value", text) == 11
