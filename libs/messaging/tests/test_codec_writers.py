"""The codec's direct writers: byte for byte what the path before them wrote (the strict
checker, then fastavro's writer), for random valid records of every shipped schema and of a
schema using every Avro type; the bytes decode back to the same values with fastavro and with
the Apache implementation; the writers' own cases (defaults, decimal cache, floats, errors)."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import uuid
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickertap.messaging.codec import (
    DECIMAL_CACHE_ENTRIES_MAX,
    UUID_CACHE_ENTRIES_MAX,
    AvroCodec,
    EncodeError,
    _compile_direct_writer,
    _compile_writer,
    _decimal_writer,
    _fastavro_writer,
    _uuid_writer,
    _Writer,
)
from tickertap.messaging.schemas import (
    AvroSchema,
    SchemaError,
    SchemaSet,
    find_schemas_dir,
    load_schemas,
    parse_schema,
)

SCHEMAS = load_schemas(find_schemas_dir(Path(__file__).parent, env={}))

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EPOCH_NAIVE = EPOCH.replace(tzinfo=None)
MS = dt.timedelta(milliseconds=1)
US_MIN, US_MAX = -62_135_596_800_000_000, 253_402_300_799_999_999  # year 1 to 9999
ZONES = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=-8)),
]


def _write(writer: _Writer, record: Any) -> bytes:
    chunks: list[bytes] = []
    writer(record, chunks.append)
    return b"".join(chunks)


def _old_bytes(schema: AvroSchema, record: Any) -> bytes:
    """What `AvroCodec.encode` wrote before the direct writers (without the header)."""
    return _write(_fastavro_writer(schema.parsed), record)


def _new_bytes(schema: AvroSchema, record: Any) -> bytes:
    return _write(_compile_direct_writer(schema.parsed), record)


def _fastavro_read(schema: AvroSchema, body: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(body), schema.parsed, None)


def _apache_read(schema: AvroSchema, body: bytes) -> Any:
    reader = avro.io.DatumReader(avro.schema.parse(schema.text))
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))


# Random valid records, generated from a (fastavro-parsed) schema


def _integers(bits: int) -> st.SearchStrategy[int]:
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _decimals(node: dict[str, Any]) -> st.SearchStrategy[Decimal]:
    precision, scale = int(node["precision"]), int(node.get("scale", 0))
    exact = st.integers(-(10**precision) + 1, 10**precision - 1).map(
        lambda unscaled: Decimal(f"{unscaled}E-{scale}")
    )
    # the same values written otherwise: trailing zeros dropped, or beyond the scale
    return st.one_of(
        exact,
        exact.map(lambda value: value.normalize(Context(prec=precision))),
        exact.map(
            lambda value: value.quantize(
                Decimal(1).scaleb(-scale - 2), context=Context(prec=precision + 2)
            )
        ),
    )


def _aware_datetimes() -> st.SearchStrategy[dt.datetime]:
    return st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.sampled_from(ZONES),
    )


def _uuids() -> st.SearchStrategy[Any]:
    return st.uuids().flatmap(
        lambda value: st.sampled_from([value, str(value), str(value).upper()])
    )


_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": _integers(32),
    "long": _integers(64),
    "float": st.floats(width=32, allow_nan=False) | _integers(24),
    "double": st.floats(allow_nan=False) | _integers(53),
    "string": st.text(max_size=20),
    "bytes": st.binary(max_size=20),
}


def _logical(node: dict[str, Any], kind: str) -> st.SearchStrategy[Any]:
    logical_type = node.get("logicalType")
    if logical_type == "decimal" and kind == "bytes":
        return _decimals(node)
    if logical_type in ("timestamp-millis", "timestamp-micros"):
        return _aware_datetimes() | st.integers(US_MIN // 1000, US_MAX // 1000)
    if logical_type in ("local-timestamp-millis", "local-timestamp-micros"):
        return st.datetimes() | _aware_datetimes() | st.integers(US_MIN // 1000, US_MAX // 1000)
    if logical_type == "date":
        return st.dates() | st.integers(-719_162, 2_932_896)
    if logical_type == "time-millis":
        return st.times() | st.integers(0, 86_399_999)
    if logical_type == "time-micros":
        return st.times() | st.integers(0, 86_399_999_999)
    if logical_type == "uuid":
        return _uuids()
    return _PRIMITIVES[kind]


def records(parsed: Any) -> st.SearchStrategy[Any]:
    named: dict[str, st.SearchStrategy[Any]] = {}

    def build(node: Any) -> st.SearchStrategy[Any]:
        if isinstance(node, str):
            return _PRIMITIVES[node] if node in _PRIMITIVES else named[node]
        if isinstance(node, list):
            return st.one_of([build(branch) for branch in node])
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return build(kind)
        strategy: st.SearchStrategy[Any]
        if kind == "record":
            required: dict[str, st.SearchStrategy[Any]] = {}
            optional: dict[str, st.SearchStrategy[Any]] = {}
            for f in node["fields"]:  # in order: a named type is defined where it first appears
                (optional if "default" in f else required)[f["name"]] = build(f["type"])
            strategy = st.fixed_dictionaries(required, optional=optional)
        elif kind == "enum":
            strategy = st.sampled_from(node["symbols"])
        elif kind == "fixed":
            size = int(node["size"])
            strategy = (
                _decimals(node)
                if node.get("logicalType") == "decimal"
                else st.binary(min_size=size, max_size=size)
            )
        elif kind == "array":
            return st.lists(build(node["items"]), max_size=4)
        elif kind == "map":
            return st.dictionaries(st.text(max_size=8), build(node["values"]), max_size=3)
        elif kind in _PRIMITIVES:
            return _logical(node, kind)
        else:
            return named[kind]
        named[node["name"]] = strategy
        return strategy

    return build(parsed)


# What a reader returns for a written value (the same for a value already read)


def expected(parsed: Any, value: Any) -> Any:
    named: dict[str, Any] = {}

    def walk(node: Any, value: Any) -> Any:
        if isinstance(node, str):
            if node in named:
                return walk(named[node], value)
            if node == "float":
                return struct.unpack("<f", struct.pack("<f", value))[0]
            if node == "double":
                return float(value)
            return bytes(value) if node == "bytes" else value
        if isinstance(node, list):
            if value is None:
                return None
            (branch,) = [branch for branch in node if branch != "null"]
            return walk(branch, value)
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return walk(kind, value)
        if kind == "record":
            return {
                f["name"]: walk(f["type"], value[f["name"]] if f["name"] in value else f["default"])
                for f in node["fields"]
            }
        if kind == "array":
            return [walk(node["items"], item) for item in value]
        if kind == "map":
            return {key: walk(node["values"], item) for key, item in value.items()}
        if kind == "fixed":
            if isinstance(value, str):  # a default: code points 0-255 are the bytes
                return value.encode("latin-1")
            return value if isinstance(value, Decimal) else bytes(value)
        return logical(node.get("logicalType"), kind, value)

    def logical(logical_type: str | None, kind: str, value: Any) -> Any:
        if logical_type in ("timestamp-micros", "timestamp-millis"):
            instant = EPOCH + dt.timedelta(microseconds=value) if isinstance(value, int) else value
            if logical_type == "timestamp-millis":
                if isinstance(value, int):
                    instant = EPOCH + value * MS
                instant = EPOCH + (instant - EPOCH) // MS * MS
            return instant.astimezone(dt.UTC)
        if logical_type in ("local-timestamp-micros", "local-timestamp-millis"):
            unit = MS if logical_type.endswith("millis") else dt.timedelta(microseconds=1)
            if isinstance(value, int):
                return EPOCH_NAIVE + value * unit
            wall = value.replace(tzinfo=None)
            return EPOCH_NAIVE + (wall - EPOCH_NAIVE) // unit * unit
        if logical_type == "date":
            return (
                dt.date.fromordinal(value + EPOCH.toordinal()) if isinstance(value, int) else value
            )
        if logical_type in ("time-millis", "time-micros"):
            if isinstance(value, int):
                value = (EPOCH_NAIVE + value * (MS if kind == "int" else MS / 1000)).time()
            if logical_type == "time-millis":
                value = value.replace(microsecond=value.microsecond // 1000 * 1000)
            return value.replace(tzinfo=None)
        if logical_type == "uuid":
            return uuid.UUID(str(value))
        if logical_type == "decimal" and kind == "bytes":
            return value  # Decimals compare by value
        return walk(kind, value)

    def define(node: Any) -> None:  # every named type, whether or not the value has one
        if isinstance(node, list):
            for branch in node:
                define(branch)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                named[node["name"]] = node
            for child in [node.get("type"), node.get("items"), node.get("values")]:
                define(child)
            for f in node.get("fields", []):
                define(f["type"])

    define(parsed)
    return walk(parsed, value)


# Every shipped schema: the same bytes as before, and back to the same values


@pytest.mark.parametrize("name", SCHEMAS.names)
def test_shipped_schemas_are_written_directly(name: str) -> None:
    _compile_direct_writer(SCHEMAS.get(name).parsed)  # no fallback to fastavro's writer


RECORDS = {schema.name: records(schema.parsed) for schema in SCHEMAS}


@pytest.mark.parametrize("name", SCHEMAS.names)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_shipped_schemas_write_the_old_bytes_and_read_back(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS.get(name)
    record = data.draw(RECORDS[name])

    body = _new_bytes(schema, record)

    assert body == _old_bytes(schema, record)
    want = expected(schema.parsed, record)
    assert _fastavro_read(schema, body) == want
    assert expected(schema.parsed, _apache_read(schema, body)) == want


def test_the_codec_frames_the_writers_bytes() -> None:
    codec = AvroCodec(SCHEMAS)
    schema = SCHEMAS.get("ledger.transfers.v1")
    record = sample_transfer()

    data = codec.encode(schema.name, record)

    assert data == b"\xc3\x01" + schema.fingerprint + _old_bytes(schema, record)


def sample_transfer() -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=ZONES[1]),
        "transfer_id": str(uuid.uuid4()),
        "kind": "transfer",
        "legs": [
            {
                "account_id": uuid.uuid4(),
                "owner_id": uuid.uuid4(),
                "asset": "USD",
                "amount": Decimal("-5.5"),
            },
            {
                "account_id": uuid.uuid4(),
                "owner_id": uuid.uuid4(),
                "asset": "USD",
                "amount": Decimal("5.50"),
            },
        ],
        "metadata": {"note": "ünïcode"},
    }


# Every Avro type and logical type

ALL_TYPES = {
    "type": "record",
    "name": "Everything",
    "namespace": "tickertap.test",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "exact_ratio", "type": "double"},
        {"name": "text", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "nothing", "type": "null"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {
            "name": "small_amount",
            "type": {
                "type": "fixed",
                "name": "SmallAmount",
                "size": 3,
                "logicalType": "decimal",
                "precision": 6,
                "scale": 2,
            },
        },
        {
            "name": "big_amount",
            "type": {
                "type": "fixed",
                "name": "BigAmount",
                "size": 16,
                "logicalType": "decimal",
                "precision": 38,
                "scale": 18,
            },
        },
        {
            "name": "whole_amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9},
        },
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "wall_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "wall_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "time_ms", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "time_us", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "key", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "unknown_logical", "type": {"type": "string", "logicalType": "nope"}},
        {"name": "again", "type": "Color"},
        {"name": "later", "type": ["Digest", "null"], "default": "\u00ab\u00cd\u0000\u00ff"},
        {
            "name": "nested",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Inner",
                    "fields": [
                        {
                            "name": "tags",
                            "type": {"type": "map", "values": {"type": "array", "items": "long"}},
                        },
                        {"name": "maybe", "type": ["null", "SmallAmount"], "default": None},
                    ],
                },
            ],
            "default": None,
        },
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
    ],
}
EVERYTHING = parse_schema(json.dumps(ALL_TYPES), name="test.everything.v1")


def sample_everything() -> dict[str, Any]:
    return {
        "flag": True,
        "small": -(2**31),
        "big": 2**63 - 1,
        "ratio": 0.1,
        "exact_ratio": -2.5e-300,
        "text": "€uro",
        "raw": bytearray(b"\x00\xff"),
        "nothing": None,
        "color": "GREEN",
        "digest": b"abcd",
        "small_amount": Decimal("-9999.99"),
        "big_amount": Decimal("-12345678901234567890.123456789012345678"),
        "whole_amount": Decimal("-999999999"),
        "at_ms": dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        "at_us": dt.datetime(1901, 2, 3, 4, 5, 6, 7, tzinfo=ZONES[2]),
        "wall_ms": dt.datetime(2030, 1, 1, 0, 0, 0, 1500),
        "wall_us": dt.datetime(1950, 6, 7, 8, 9, 10, 11, tzinfo=ZONES[1]),
        "day": dt.date(1969, 12, 31),
        "time_ms": dt.time(23, 59, 59, 999999),
        "time_us": dt.time(0, 0, 0, 1),
        "key": "6F1B0A5E-3C2D-4E8F-9A0B-1C2D3E4F5A6B",
        "unknown_logical": "x",
        "again": "RED",
        "later": b"wxyz",
        "nested": {"tags": {"a": [1, -1], "b": []}, "maybe": Decimal("0.01")},
        "inners": [{"tags": {}}, {"tags": {"z": [2**40]}, "maybe": None}],
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records(EVERYTHING.parsed))
def test_every_type_writes_the_old_bytes_and_reads_back(record: dict[str, Any]) -> None:
    body = _new_bytes(EVERYTHING, record)

    if "later" in record:  # fastavro cannot write a fixed default; see test below
        assert body == _old_bytes(EVERYTHING, record)
    want = expected(EVERYTHING.parsed, record)
    assert _fastavro_read(EVERYTHING, body) == want


def test_every_type_reads_back_with_apache() -> None:
    # Apache's reader knows no local-timestamp types: those fields are read as longs
    schema = EVERYTHING
    record = sample_everything()
    body = _new_bytes(schema, record)
    apache_text = json.loads(schema.text)
    for field in apache_text["fields"]:  # and warns of an unknown logical type
        if field["name"].startswith("wall_"):
            field["type"] = "long"
        if field["name"] == "unknown_logical":
            field["type"] = "string"
    apache = parse_schema(json.dumps(apache_text), name="test.apache.v1")

    read = expected(apache.parsed, _apache_read(apache, body))

    want = expected(schema.parsed, record)
    assert {k: v for k, v in read.items() if not k.startswith("wall_")} == {
        k: v for k, v in want.items() if not k.startswith("wall_")
    }


# Unions of several non-null branches keep the checker and fastavro's writer

SEVERAL = parse_schema(
    json.dumps(
        {
            "type": "record",
            "name": "Several",
            "namespace": "tickertap.test",
            "fields": [{"name": "value", "type": ["null", "string", "long", "double", "bytes"]}],
        }
    ),
    name="test.several.v1",
)


def test_unions_of_several_branches_fall_back_to_fastavro() -> None:
    writer = _compile_writer(SEVERAL.parsed)

    for value in [None, "x", 5, 2.5, b"\x01", 2**40]:
        assert _write(writer, {"value": value}) == _old_bytes(SEVERAL, {"value": value})
    with pytest.raises(EncodeError, match=r"test\.several\.v1\.value: fits no branch"):
        AvroCodec(SchemaSet([SEVERAL])).encode("test.several.v1", {"value": [1]})


# Defaults: encoded once, as the specification says (a union's default is its first branch's)


def _with_default(type_: Any, default: Any) -> AvroSchema:
    text = {
        "type": "record",
        "name": "Defaults",
        "namespace": "tickertap.test",
        "fields": [
            {"name": "given", "type": "int"},
            {"name": "a", "type": type_, "default": default},
        ],
    }
    return parse_schema(json.dumps(text), name="test.defaults.v1")


@pytest.mark.parametrize(
    ("type_", "default"),
    [
        ("int", 5),
        ("long", -3),
        ("string", "hé"),
        ("boolean", True),
        ("double", 1.5),
        ("float", "NaN"),
        ("double", 2),
        (["null", "string"], None),
        (["string", "null"], "x"),
        (["int", "long"], 7),
        ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, "B"),
        ({"type": "array", "items": "int"}, [1, 2]),
        ({"type": "array", "items": "int"}, []),
        ({"type": "map", "values": "int"}, {"k": 1}),
        (
            {"type": "record", "name": "S", "fields": [{"name": "x", "type": "int", "default": 3}]},
            {},
        ),
        ({"type": "long", "logicalType": "timestamp-micros"}, 5),
        ({"type": "string", "logicalType": "uuid"}, "not a uuid: logical types do not apply"),
        (["null", {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}], None),
    ],
)
def test_defaults_are_the_bytes_fastavro_wrote(type_: Any, default: Any) -> None:
    schema = _with_default(type_, default)
    writer = _compile_writer(schema.parsed)

    assert _write(writer, {"given": 1}) == _old_bytes(schema, {"given": 1})


@pytest.mark.parametrize(
    ("type_", "default", "read"),
    [
        ("bytes", "\u00ff\u0001", b"\xff\x01"),
        ({"type": "fixed", "name": "F", "size": 2}, "\u00ab\u00cd", b"\xab\xcd"),
        (
            {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
            "\u0001\u0000",
            Decimal("2.56"),
        ),
    ],
)
def test_bytes_defaults_are_their_code_points(type_: Any, default: str, read: Any) -> None:
    # fastavro failed to write these (a str where it wants bytes); the specification is clear
    schema = _with_default(type_, default)

    body = _write(_compile_writer(schema.parsed), {"given": 1})

    assert _fastavro_read(schema, body) == {"given": 1, "a": read}


def test_a_default_that_does_not_fit_is_a_schema_error() -> None:
    text = {
        "type": "record",
        "name": "Bad",
        "fields": [
            {"name": "a", "type": {"type": "fixed", "name": "F", "size": 2}, "default": "x"}
        ],
    }
    with pytest.raises(SchemaError, match="default of field 'a'"):
        _compile_writer(parse_schema(json.dumps(text), name="test.bad.v1").parsed)


# Decimals: the quick exact test, the cache, fixed sizes

DECIMAL_SCHEMA = SCHEMAS.get("marketdata.bars.v1")


@settings(max_examples=500, deadline=None)
@given(
    unscaled=st.integers(-(10**42), 10**42),
    exponent=st.integers(-24, 24),
    sign=st.booleans(),
)
def test_the_quick_decimal_test_accepts_exactly_what_the_checker_accepts(
    unscaled: int, exponent: int, sign: bool
) -> None:
    value = Decimal((int(sign), Decimal(abs(unscaled)).as_tuple().digits, exponent))
    codec = AvroCodec(SchemaSet([DECIMAL_SCHEMA]))  # a fresh cache
    record = _bar(volume=value)

    refusal: str | None = None
    try:
        old = _old_bytes(DECIMAL_SCHEMA, record)
    except Exception as exc:  # the checker refused it
        refusal = str(exc)
    if refusal is not None:
        with pytest.raises(EncodeError) as caught:
            codec.encode(DECIMAL_SCHEMA.name, record)
        assert caught.value.detail.endswith(refusal)
        return
    assert codec.encode(DECIMAL_SCHEMA.name, record)[10:] == old
    assert codec.encode(DECIMAL_SCHEMA.name, record)[10:] == old  # from the cache


def _bar(**change: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.UUID(int=1),
        "occurred_at": EPOCH,
        "symbol": "AAPL",
        "interval_s": 60,
        "window_start": EPOCH,
        "window_end": EPOCH,
        "open": Decimal("1"),
        "high": Decimal("1"),
        "low": Decimal("1"),
        "close": Decimal("1"),
        "volume": Decimal("1"),
        "tick_count": 1,
    } | change


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (10, "expected a Decimal, got int"),
        (1.0, "expected a Decimal, got float"),
        (Decimal("NaN"), "NaN is not a finite number"),
        (Decimal("sNaN"), "sNaN is not a finite number"),
        (Decimal("-Infinity"), "-Infinity is not a finite number"),
    ],
)
def test_a_cached_decimal_does_not_admit_equal_values_of_other_types(
    value: Any, problem: str
) -> None:
    codec = AvroCodec(SchemaSet([DECIMAL_SCHEMA]))
    codec.encode(DECIMAL_SCHEMA.name, _bar(volume=Decimal("10"), open=Decimal("1.0")))

    with pytest.raises(EncodeError, match=rf"marketdata\.bars\.v1\.volume: {problem}"):
        codec.encode(DECIMAL_SCHEMA.name, _bar(volume=value))


def test_the_decimal_cache_is_bounded() -> None:
    cache: dict[Decimal, bytes] = {}
    writer = _decimal_writer(38, 18, None, cache, b"")

    for step in range(DECIMAL_CACHE_ENTRIES_MAX * 2 + 10):
        _write(writer, Decimal(step).scaleb(-3))
        assert 0 < len(cache) <= DECIMAL_CACHE_ENTRIES_MAX
    raw = (-(10**15)).to_bytes(7, "big", signed=True)  # -0.001 at scale 18
    assert _write(writer, Decimal("-0.001")) == bytes([len(raw) * 2]) + raw


def test_negative_zero_on_a_fixed_is_zero() -> None:
    # fastavro wrote -0.00 on a fixed as FF..FE (that is -0.02); the specification's
    # two's complement of 0 is all zeros
    body = _new_bytes(EVERYTHING, sample_everything() | {"small_amount": Decimal("-0.00")})

    assert _fastavro_read(EVERYTHING, body)["small_amount"] == 0


def test_decimals_at_the_edges_of_a_fixed() -> None:
    text = {
        "type": "record",
        "name": "Tight",
        "fields": [
            {
                "name": "a",
                "type": {
                    "type": "fixed",
                    "name": "F",
                    "size": 1,
                    "logicalType": "decimal",
                    "precision": 2,
                },
            }
        ],
    }
    schema = parse_schema(json.dumps(text), name="test.tight.v1")

    for value, byte in [("99", b"\x63"), ("-99", b"\x9d"), ("-1", b"\xff"), ("0", b"\x00")]:
        assert _new_bytes(schema, {"a": Decimal(value)}) == byte
        assert _old_bytes(schema, {"a": Decimal(value)}) == byte
    with pytest.raises(EncodeError, match=r"test\.tight\.v1\.a: 100 needs more than 2 digits"):
        AvroCodec(SchemaSet([schema])).encode("test.tight.v1", {"a": Decimal("100")})


# Uuids: a bounded cache of their encodings


def test_uuids_encode_as_their_canonical_text_and_the_cache_is_bounded() -> None:
    cache: dict[uuid.UUID | str, bytes] = {}
    writer = _uuid_writer(cache)
    some = uuid.UUID("6f1b0a5e-3c2d-4e8f-9a0b-1c2d3e4f5a6b")
    canonical = b"\x48" + str(some).encode()

    for form in [some, str(some), str(some).upper(), f"{{{some}}}", some.hex]:
        assert _write(writer, form) == canonical
        assert _write(writer, form) == canonical  # from the cache
    for step in range(UUID_CACHE_ENTRIES_MAX * 2 + 10):
        _write(writer, uuid.UUID(int=step))
        assert 0 < len(cache) <= UUID_CACHE_ENTRIES_MAX


@pytest.mark.parametrize(("value", "problem"), [("not-a-uuid", "is not a UUID"), (7, "got int")])
def test_a_refused_uuid_stays_refused(value: Any, problem: str) -> None:
    codec = AvroCodec(SCHEMAS)
    event = {
        "event_id": uuid.uuid4(),
        "occurred_at": EPOCH,
        "user_id": uuid.uuid4(),
        "event_type": "user_deleted",
        "details": {},
    }

    for _ in range(2):
        with pytest.raises(EncodeError, match=rf"auth\.events\.v1\.user_id: .*{problem}"):
            codec.encode("auth.events.v1", event | {"user_id": value})


# Floats, strings and errors


@pytest.mark.parametrize(
    "value", [1e300, -1e300, 10**40, float("inf"), float("nan"), 3.4028235e38, 1e-50, -0.0]
)
def test_floats_are_the_bytes_fastavro_wrote(value: float) -> None:
    record = sample_everything() | {"ratio": value, "exact_ratio": value}

    assert _new_bytes(EVERYTHING, record) == _old_bytes(EVERYTHING, record)


def test_a_double_beyond_range_is_refused() -> None:
    record = sample_everything() | {"exact_ratio": 10**400}

    with pytest.raises(EncodeError, match=r"test\.everything\.v1\.exact_ratio: int too large"):
        AvroCodec(SchemaSet([EVERYTHING])).encode("test.everything.v1", record)


def test_unencodable_text_names_its_field_and_key() -> None:
    codec = AvroCodec(SCHEMAS)
    event = {
        "event_id": uuid.uuid4(),
        "occurred_at": EPOCH,
        "job_id": uuid.uuid4(),
        "portfolio_id": uuid.uuid4(),
        "kind": "revalue",
        "requested_at": EPOCH,
        "params": {},
    }

    with pytest.raises(EncodeError, match=r"portfolio\.jobs\.v1\.requested_by: .*surrogate"):
        codec.encode("portfolio.jobs.v1", event | {"requested_by": "\ud800"})
    with pytest.raises(EncodeError, match=r"portfolio\.jobs\.v1\.params\['\\ud800'\]: .*surrogate"):
        codec.encode("portfolio.jobs.v1", event | {"params": {"\ud800": "x"}})


def test_recursive_records() -> None:
    text = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "long"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    schema = parse_schema(json.dumps(text), name="test.node.v1")
    chain = {"value": 1, "next": {"value": -2, "next": {"value": 3}}}

    assert _new_bytes(schema, chain) == _old_bytes(schema, chain)
    with pytest.raises(EncodeError, match=r"test\.node\.v1\.next\.next\.value: expected an int"):
        AvroCodec(SchemaSet([schema])).encode(
            "test.node.v1", {"value": 1, "next": {"value": 2, "next": {"value": "3"}}}
        )
