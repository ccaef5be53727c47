"""Avro encoding and decoding of tickerTap events, framed so a reader finds the writer schema.

Wire formats (DESIGN.md, "Events"); decoding accepts both, whichever the codec encodes:

- Avro single-object encoding, the default: ``C3 01``, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
  The reader finds the writer schema by fingerprint among the schemas of ``schemas/avro/``.
- Confluent framing, when the codec is given a schema registry: ``00``, the writer schema's
  registry id as 4 big-endian bytes, then the body. Encoding registers (or looks up) the
  schema under the subject ``<topic>-value``; decoding fetches the schema by id.

Encoding writes the Avro binary encoding itself, with writers compiled once per schema that
check each value strictly as they write it (a schema with a union of several non-null branches
is checked, then written by fastavro); decoding reads with fastavro.

Values: ``decimal.Decimal`` for decimal fields (never float, int or str), timezone-aware
``datetime`` for timestamps, ``str`` or ``uuid.UUID`` for uuid fields. Decoding returns
Decimals at exactly the schema's scale, UTC datetimes and ``uuid.UUID`` objects.

Encoding is strict: a Decimal with more significant decimal places than the schema's scale,
or more digits than its precision, is an error, never rounded (trailing zeros beyond the
scale are dropped, which changes no value); a naive datetime, a malformed uuid, a missing
field without a default or a field the schema does not have is an error too.

Errors, one tree; each carries a machine-readable ``reason`` and a bounded ``detail``:

    CodecError            base class
    ├── EncodeError       the record does not fit its schema; reason "invalid_record"
    ├── DecodeError       the bytes cannot be decoded: dead-letter the message with its reason,
    │                     one of "bad_magic", "truncated", "unknown_schema", "invalid_avro",
    │                     "schema_mismatch" (the writer's schema cannot be read as the reader's)
    └── RegistryError     the schema registry failed or refused; reason "registry_error".
                          Usually transient: retry, do not dead-letter.

``SchemaError`` (from ``tickertap.messaging.schemas``) is not a CodecError: an unknown schema
name or an unusable schema is a deployment or programming error.
"""

from __future__ import annotations

import datetime as dt
import importlib
import io
import math
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation
from typing import Any, Literal, Protocol

import fastavro
from fastavro.read import SchemaResolutionError

from tickertap.messaging.schemas import AvroSchema, SchemaError, SchemaSet, parse_schema

__all__ = [
    "CONFLUENT_HEADER_BYTES",
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_HEADER_BYTES",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "CodecError",
    "ConfluentSchemaRegistry",
    "DecodeError",
    "DecodeReason",
    "EncodeError",
    "RegistryError",
    "SchemaRegistry",
    "long_bytes",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_BYTES = 10  # magic + 8-byte fingerprint
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_BYTES = 5  # magic + 4-byte schema id
CONFLUENT_SCHEMA_ID_MAX = 2**31 - 1

ERROR_DETAIL_CHARS_MAX = 1000
REGISTRY_CACHE_ENTRIES_MAX = 1000

DecodeReason = Literal[
    "bad_magic", "truncated", "unknown_schema", "invalid_avro", "schema_mismatch"
]


class CodecError(Exception):
    """Base of the codec's errors: `reason` is a stable code, `detail` a bounded explanation."""

    reason: str

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = _bounded(detail)
        super().__init__(f"{reason}: {self.detail}")


class EncodeError(CodecError):
    """A record does not fit its schema."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_record", detail)


class DecodeError(CodecError):
    """Bytes that cannot be decoded; `reason` goes into the dead-letter headers."""

    reason: DecodeReason

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(reason, detail)


class RegistryError(CodecError):
    """The schema registry could not be reached or refused a request."""

    def __init__(self, detail: str) -> None:
        super().__init__("registry_error", detail)


def _bounded(text: str) -> str:
    if len(text) <= ERROR_DETAIL_CHARS_MAX:
        return text
    return text[: ERROR_DETAIL_CHARS_MAX - 1] + "…"


class SchemaRegistry(Protocol):
    """What the codec needs of a Confluent-compatible schema registry (a port).

    `schema_id` returns the id of `schema_str` under `subject`, registering it if the
    implementation does so. `schema_str` returns the Avro schema text of an id, or None when
    the registry has no such id (or it is not a plain Avro schema). Any exception raised by
    either is reported as a RegistryError.
    """

    def schema_id(self, subject: str, schema_str: str) -> int: ...

    def schema_str(self, schema_id: int) -> str | None: ...


class ConfluentSchemaRegistry:
    """`SchemaRegistry` over `confluent_kafka.schema_registry.SchemaRegistryClient`.

    Needs the client's optional dependencies (``confluent-kafka[schemaregistry]``).
    With ``auto_register=False`` encoding only looks schemas up, for producers whose
    registry credentials may not register (schemas then get registered by CI or an operator).
    """

    def __init__(self, client: Any, *, auto_register: bool = True) -> None:
        self._client = client
        self._auto_register = auto_register

    def schema_id(self, subject: str, schema_str: str) -> int:
        # Imported here: it needs the optional extra, and only this adapter uses it.
        schema_class: Any = importlib.import_module("confluent_kafka.schema_registry").Schema
        schema = schema_class(schema_str, "AVRO")
        if self._auto_register:
            return int(self._client.register_schema(subject, schema))
        return int(self._client.lookup_schema(subject, schema).schema_id)

    def schema_str(self, schema_id: int) -> str | None:
        try:
            schema = self._client.get_schema(schema_id)
        except Exception as exc:
            if getattr(exc, "http_status_code", None) == 404:
                return None
            raise
        if schema.schema_type not in (None, "AVRO") or schema.references:
            return None
        return str(schema.schema_str)


# Compiled per schema. A writer checks one value strictly and appends its Avro binary encoding
# through `put` (a list's append), in one walk. A checker (the path before the writers, kept
# for the schemas the writers leave to fastavro) checks one value strictly and returns the value
# to hand to fastavro's writer. A decode check inspects one decoded value.
_Put = Callable[[bytes], object]
_Writer = Callable[[Any, _Put], None]
_Encoder = Callable[[Any], Any]
_DecodeCheck = Callable[[Any, str], None]


class AvroCodec:
    """Encodes dict records to framed Avro and decodes them back.

    `schemas` holds the schemas this process writes and reads (see `load_schemas`). With a
    `registry`, encoding uses the Confluent framing; without one, single-object encoding.
    Building the codec does no I/O; the registry is first called on the first encode (or the
    first decode of a Confluent frame) and its answers are cached.
    """

    def __init__(self, schemas: SchemaSet, registry: SchemaRegistry | None = None) -> None:
        self._schemas = schemas
        self._registry = registry
        self._writers: dict[str, _Writer] = {}
        self._decode_checks: dict[str, _DecodeCheck | None] = {}
        self._ids_by_subject: dict[tuple[str, bytes], int] = {}
        self._schemas_by_id: dict[int, AvroSchema] = {}
        for schema in schemas:  # fail fast on a schema the codec cannot handle
            self._compiled(schema)

    @property
    def schemas(self) -> SchemaSet:
        return self._schemas

    def encode(
        self, schema_name: str, record: Mapping[str, Any], *, topic: str | None = None
    ) -> bytes:
        """Encode `record` with the schema `schema_name` and frame it.

        `topic` names the registry subject (`<topic>-value`); it defaults to `schema_name`,
        which is also the topic name by convention. Raises EncodeError, RegistryError, or
        SchemaError for an unknown schema name.
        """
        schema = self._schemas.get(schema_name)
        if not isinstance(record, Mapping):
            raise EncodeError(f"a record must be a mapping, got {type(record).__name__}")
        writer, _ = self._compiled(schema)
        chunks = [b""]  # the header's place: an invalid record never reaches the registry
        try:
            writer(record, chunks.append)
        except _Invalid as exc:
            raise EncodeError(f"{_format_path(schema.name, exc.path)}: {exc.problem}") from None
        chunks[0] = self._header(schema, topic if topic is not None else schema_name)
        return b"".join(chunks)

    def decode(self, data: bytes, schema_name: str | None = None) -> dict[str, Any]:
        """Decode one framed message.

        `schema_name` is the reader schema the caller expects: data written with another
        schema (an older version) is resolved into it by Avro's rules. None reads the data
        as written. Raises DecodeError, RegistryError, or SchemaError for an unknown name.
        """
        reader = self._schemas.get(schema_name) if schema_name is not None else None
        writer, header_bytes = self._writer_schema(data)
        target = reader if reader is not None else writer
        resolve_into = None if target.fingerprint == writer.fingerprint else target.parsed
        body = io.BytesIO(data)
        body.seek(header_bytes)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, resolve_into)
        except EOFError as exc:
            raise DecodeError("truncated", f"{writer.name}: the body ends early: {exc}") from None
        except SchemaResolutionError as exc:
            raise DecodeError(
                "schema_mismatch", f"{writer.name} cannot be read as {target.name}: {exc}"
            ) from None
        except Exception as exc:  # bad bytes surface as many exception types
            # fastavro reports a varint cut short as an IndexError: ran out of bytes, truncated.
            reason: DecodeReason = "truncated" if body.tell() >= len(data) else "invalid_avro"
            raise DecodeError(reason, f"{writer.name}: {type(exc).__name__}: {exc}") from None
        trailing = len(data) - body.tell()
        if trailing:
            raise DecodeError(
                "invalid_avro", f"{writer.name}: {trailing} bytes after the end of the record"
            )
        if not isinstance(record, dict):
            raise DecodeError("invalid_avro", f"{writer.name}: the top level is not a record")
        _, decode_check = self._compiled(target)
        if decode_check is not None:
            decode_check(record, target.name)
        return record

    def writer_schema(self, data: bytes) -> AvroSchema:
        """The schema `data` was written with, found from its framing. Raises DecodeError."""
        return self._writer_schema(data)[0]

    # Framing

    def _header(self, schema: AvroSchema, topic: str) -> bytes:
        if self._registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint
        subject = f"{topic}-value"
        schema_id = self._ids_by_subject.get((subject, schema.fingerprint))
        if schema_id is None:
            try:
                schema_id = self._registry.schema_id(subject, schema.text)
            except Exception as exc:
                raise RegistryError(
                    f"cannot get the id of {schema.name} under {subject}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not 0 <= schema_id <= CONFLUENT_SCHEMA_ID_MAX:
                raise RegistryError(f"the registry answered an invalid schema id {schema_id}")
            if len(self._ids_by_subject) < REGISTRY_CACHE_ENTRIES_MAX:
                self._ids_by_subject[(subject, schema.fingerprint)] = schema_id
        return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")

    def _writer_schema(self, data: bytes) -> tuple[AvroSchema, int]:
        if not data:
            raise DecodeError("truncated", "empty message")
        if data[0] == SINGLE_OBJECT_MAGIC[0]:
            if len(data) >= 2 and data[1] != SINGLE_OBJECT_MAGIC[1]:
                raise DecodeError("bad_magic", f"single-object marker C3 {data[1]:02X}")
            if len(data) < SINGLE_OBJECT_HEADER_BYTES:
                raise DecodeError("truncated", f"{len(data)} bytes, shorter than the header")
            fingerprint = bytes(data[2:SINGLE_OBJECT_HEADER_BYTES])
            schema = self._schemas.by_fingerprint(fingerprint)
            if schema is None:
                raise DecodeError(
                    "unknown_schema", f"no loaded schema has fingerprint {fingerprint.hex()}"
                )
            return schema, SINGLE_OBJECT_HEADER_BYTES
        if data[0] == CONFLUENT_MAGIC[0]:
            if len(data) < CONFLUENT_HEADER_BYTES:
                raise DecodeError("truncated", f"{len(data)} bytes, shorter than the header")
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_BYTES], "big")
            return self._schema_by_id(schema_id), CONFLUENT_HEADER_BYTES
        raise DecodeError("bad_magic", f"first byte {data[0]:02X} starts no known framing")

    def _schema_by_id(self, schema_id: int) -> AvroSchema:
        cached = self._schemas_by_id.get(schema_id)
        if cached is not None:
            return cached
        if self._registry is None:
            raise DecodeError(
                "unknown_schema", f"Confluent-framed (schema id {schema_id}) but no registry"
            )
        try:
            text = self._registry.schema_str(schema_id)
        except Exception as exc:
            raise RegistryError(
                f"cannot fetch schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if text is None:
            raise DecodeError("unknown_schema", f"the registry has no Avro schema id {schema_id}")
        try:
            fetched = parse_schema(text, name=f"registry-id-{schema_id}")
            # Prefer the shipped schema with the same canonical form: it has a real name.
            schema = self._schemas.by_fingerprint(fetched.fingerprint) or fetched
            self._compiled(schema)
        except SchemaError as exc:
            raise DecodeError("unknown_schema", f"schema id {schema_id}: {exc}") from None
        if len(self._schemas_by_id) < REGISTRY_CACHE_ENTRIES_MAX:
            self._schemas_by_id[schema_id] = schema
        return schema

    # Strict values: compiled once per schema

    def _compiled(self, schema: AvroSchema) -> tuple[_Writer, _DecodeCheck | None]:
        writer = self._writers.get(schema.name)
        if writer is None:
            writer = _compile_writer(schema.parsed)
            self._decode_checks[schema.name] = _compile_decode_check(schema.parsed)
            self._writers[schema.name] = writer
        return writer, self._decode_checks[schema.name]


class _Invalid(Exception):
    """A value that does not fit its schema; `path` is filled in as the error unwinds."""

    def __init__(self, problem: str, path: list[str] | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = path if path is not None else []


def _format_path(schema_name: str, segments: list[str]) -> str:
    return schema_name + "".join(s if s.startswith("[") else f".{s}" for s in segments)


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _got(datum: Any) -> str:
    return type(datum).__name__


def _encode_null(datum: Any) -> Any:
    if datum is not None:
        raise _Invalid(f"expected null, got {_got(datum)}")
    return None


def _encode_boolean(datum: Any) -> Any:
    if not isinstance(datum, bool):
        raise _Invalid(f"expected a bool, got {_got(datum)}")
    return datum


def _encode_int(datum: Any) -> Any:
    if not isinstance(datum, int) or isinstance(datum, bool):
        raise _Invalid(f"expected an int, got {_got(datum)}")
    if not _INT_MIN <= datum <= _INT_MAX:
        raise _Invalid(f"{datum} does not fit in 32 bits")
    return datum


def _encode_long(datum: Any) -> Any:
    if not isinstance(datum, int) or isinstance(datum, bool):
        raise _Invalid(f"expected an int, got {_got(datum)}")
    if not _LONG_MIN <= datum <= _LONG_MAX:
        raise _Invalid(f"{datum} does not fit in 64 bits")
    return datum


def _encode_float(datum: Any) -> Any:
    if not isinstance(datum, (int, float)) or isinstance(datum, bool):
        raise _Invalid(f"expected a float, got {_got(datum)}")
    return datum


def _encode_string(datum: Any) -> Any:
    if not isinstance(datum, str):
        raise _Invalid(f"expected a str, got {_got(datum)}")
    return datum


def _encode_bytes(datum: Any) -> Any:
    if not isinstance(datum, (bytes, bytearray)):
        raise _Invalid(f"expected bytes, got {_got(datum)}")
    return datum


_PRIMITIVE_ENCODERS: dict[str, _Encoder] = {
    "null": _encode_null,
    "boolean": _encode_boolean,
    "int": _encode_int,
    "long": _encode_long,
    "float": _encode_float,
    "double": _encode_float,
    "string": _encode_string,
    "bytes": _encode_bytes,
}


def _decimal_encoder(precision: int, scale: int, *, as_bytes: bool = False) -> _Encoder:
    # Quantizing to the schema's scale in a context of the schema's precision that traps
    # Inexact and InvalidOperation rejects exactly the values that would need rounding (more
    # significant places than `scale`) or more digits than `precision`; trailing zeros beyond
    # the scale are dropped without changing the value.
    #
    # `as_bytes` (a bytes-backed decimal outside a union of several branches): hand fastavro
    # the two's-complement big-endian unscaled value, byte for byte what it writes itself for
    # the Decimal, made here at a fraction of its cost (a decimal(38, 18) is ~20 us in
    # fastavro; an update event of the portfolio service carries about fifty).
    context = Context(prec=precision, rounding=ROUND_HALF_EVEN, traps=[Inexact, InvalidOperation])
    quantum = Decimal((0, (1,), -scale))
    checked = _checked_decimal(precision, scale, context, quantum)
    if not as_bytes:
        return checked

    def encode_decimal_bytes(datum: Any) -> Any:
        unscaled = int(checked(datum).scaleb(scale, context))
        return unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)

    return encode_decimal_bytes


def _checked_decimal(
    precision: int, scale: int, context: Context, quantum: Decimal
) -> Callable[[Any], Decimal]:
    def encode_decimal(datum: Any) -> Decimal:
        if not isinstance(datum, Decimal):
            raise _Invalid(f"expected a Decimal, got {_got(datum)}")
        if not datum.is_finite():
            raise _Invalid(f"{datum} is not a finite number")
        try:
            return datum.quantize(quantum, context=context)
        except Inexact:
            raise _Invalid(
                f"{datum} has more than {scale} decimal places; round it first"
            ) from None
        except InvalidOperation:
            raise _Invalid(f"{datum} needs more than {precision} digits at scale {scale}") from None

    return encode_decimal


def _encode_timestamp(datum: Any) -> Any:
    if isinstance(datum, dt.datetime):
        if datum.utcoffset() is None:
            raise _Invalid("naive datetime; give it a timezone (UTC)")
        return datum
    if isinstance(datum, int) and not isinstance(datum, bool):
        return _encode_long(datum)
    raise _Invalid(f"expected an aware datetime, got {_got(datum)}")


def _encode_local_timestamp(datum: Any) -> Any:
    if isinstance(datum, dt.datetime):
        return datum
    return _encode_long(datum)


def _encode_date(datum: Any) -> Any:
    if isinstance(datum, dt.date) and not isinstance(datum, dt.datetime):
        return datum
    return _encode_int(datum)


def _time_encoder(integer: _Encoder) -> _Encoder:
    def encode_time(datum: Any) -> Any:
        return datum if isinstance(datum, dt.time) else integer(datum)

    return encode_time


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _encode_uuid(datum: Any) -> Any:
    if isinstance(datum, uuid.UUID):
        return str(datum)
    if not isinstance(datum, str):
        raise _Invalid(f"expected a UUID or str, got {_got(datum)}")
    if _CANONICAL_UUID.match(datum):
        return datum
    try:
        return str(uuid.UUID(datum))
    except ValueError:
        raise _Invalid(f"{datum[:40]!r} is not a UUID") from None


def _logical_encoder(node: dict[str, Any], kind: str) -> _Encoder:
    """The encoder of a primitive type with a logical type; unknown ones are ignored, as the
    Avro specification requires."""
    logical_type = node.get("logicalType")
    if logical_type == "decimal" and kind == "bytes":
        return _decimal_encoder(int(node["precision"]), int(node.get("scale", 0)), as_bytes=True)
    if logical_type in ("timestamp-millis", "timestamp-micros") and kind == "long":
        return _encode_timestamp
    if logical_type in ("local-timestamp-millis", "local-timestamp-micros") and kind == "long":
        return _encode_local_timestamp
    if logical_type == "date" and kind == "int":
        return _encode_date
    if logical_type == "time-millis" and kind == "int":
        return _time_encoder(_encode_int)
    if logical_type == "time-micros" and kind == "long":
        return _time_encoder(_encode_long)
    if logical_type == "uuid" and kind == "string":
        return _encode_uuid
    return _PRIMITIVE_ENCODERS[kind]


def _compile_checker(schema: Any) -> _Encoder:
    """A strict checker for `schema` (fastavro-parsed): it checks a value against the schema
    and returns what to hand to fastavro's writer, or raises `_Invalid`. The writers
    (`_compile_writer`) apply the same rules; this remains for the schemas they leave to
    fastavro and as the reference the writers' bytes are tested against."""
    named: dict[str, _Encoder] = {}

    def compile_node(node: Any) -> _Encoder:
        if isinstance(node, str):
            if node in _PRIMITIVE_ENCODERS:
                return _PRIMITIVE_ENCODERS[node]
            if node not in named:
                raise SchemaError(f"unknown type {node!r}")
            return named[node]
        if isinstance(node, list):
            return union(node)
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return compile_node(kind)
        if kind in ("record", "error"):
            return record(node)
        if kind == "enum":
            return enum(node)
        if kind == "fixed":
            return fixed(node)
        if kind == "array":
            return array(compile_node(node["items"]))
        if kind == "map":
            return mapping(compile_node(node["values"]))
        if kind in _PRIMITIVE_ENCODERS:
            return _logical_encoder(node, kind)
        return compile_node(kind)  # {"type": "<name of a defined type>"}

    def record(node: dict[str, Any]) -> _Encoder:
        name = node["name"]
        compiled: list[_Encoder] = []
        named[name] = lambda datum: compiled[0](datum)  # for recursive references
        fields = [(f["name"], compile_node(f["type"]), "default" in f) for f in node["fields"]]
        field_names = frozenset(field_name for field_name, _, _ in fields)

        def encode_record(datum: Any) -> Any:
            if not isinstance(datum, Mapping):
                raise _Invalid(f"expected a record (a mapping), got {_got(datum)}")
            out: dict[str, Any] = {}
            for field_name, encoder, has_default in fields:
                if field_name in datum:
                    try:
                        out[field_name] = encoder(datum[field_name])
                    except _Invalid as exc:
                        exc.path.insert(0, field_name)
                        raise
                elif not has_default:
                    raise _Invalid("missing, and the schema gives no default", [field_name])
            if len(datum) > len(out):
                extras = sorted(str(key) for key in datum if key not in field_names)
                if extras:
                    raise _Invalid(f"fields not in the schema: {', '.join(extras)}")
            return out

        compiled.append(encode_record)
        named[name] = encode_record
        return encode_record

    def enum(node: dict[str, Any]) -> _Encoder:
        symbols = frozenset(node["symbols"])

        def encode_enum(datum: Any) -> Any:
            if not isinstance(datum, str) or datum not in symbols:
                raise _Invalid(f"{str(datum)[:40]!r} is not one of {sorted(symbols)}")
            return datum

        named[node["name"]] = encode_enum
        return encode_enum

    def fixed(node: dict[str, Any]) -> _Encoder:
        size = int(node["size"])

        def encode_fixed(datum: Any) -> Any:
            if not isinstance(datum, (bytes, bytearray)) or len(datum) != size:
                raise _Invalid(f"expected {size} bytes, got {_got(datum)}")
            return datum

        encoder: _Encoder = encode_fixed
        if node.get("logicalType") == "decimal":
            encoder = _decimal_encoder(int(node["precision"]), int(node.get("scale", 0)))
        named[node["name"]] = encoder
        return encoder

    def union(branches: list[Any]) -> _Encoder:
        encoders = [compile_node(branch) for branch in branches]
        others = [e for branch, e in zip(branches, encoders, strict=True) if branch != "null"]
        if len(branches) > 2 or len(others) > 1:
            # fastavro picks the branch by the value's type: a decimal stays a Decimal here,
            # or bytes would fit a "bytes" branch as well
            encoders = [
                _decimal_encoder(int(b["precision"]), int(b.get("scale", 0)))
                if isinstance(b, dict)
                and b.get("logicalType") == "decimal"
                and b["type"] == "bytes"
                else e
                for b, e in zip(branches, encoders, strict=True)
            ]
        if len(others) == 1 and len(branches) == 2:
            (only,) = others

            def encode_optional(datum: Any) -> Any:
                return None if datum is None else only(datum)

            return encode_optional

        def encode_union(datum: Any) -> Any:
            problems = []
            for encoder in encoders:
                try:
                    return encoder(datum)
                except _Invalid as exc:
                    problems.append(exc.problem)
            raise _Invalid(f"fits no branch of the union: {'; '.join(problems)}")

        return encode_union

    def array(items: _Encoder) -> _Encoder:
        def encode_array(datum: Any) -> Any:
            if not isinstance(datum, (list, tuple)):
                raise _Invalid(f"expected a list, got {_got(datum)}")
            out = []
            for index, item in enumerate(datum):
                try:
                    out.append(items(item))
                except _Invalid as exc:
                    exc.path.insert(0, f"[{index}]")
                    raise
            return out

        return encode_array

    def mapping(values: _Encoder) -> _Encoder:
        def encode_map(datum: Any) -> Any:
            if not isinstance(datum, Mapping):
                raise _Invalid(f"expected a mapping, got {_got(datum)}")
            out = {}
            for key, value in datum.items():
                if not isinstance(key, str):
                    raise _Invalid(f"map keys must be str, got {_got(key)}")
                try:
                    out[key] = values(value)
                except _Invalid as exc:
                    exc.path.insert(0, f"[{key[:40]!r}]")
                    raise
            return out

        return encode_map

    return compile_node(schema)


# Direct writers: check strictly and write the Avro binary encoding in one walk (Avro 1.11
# specification, "Binary Encoding"), byte for byte what fastavro wrote for the checker's output.

# Encoded decimals kept per decimal type of a schema (optional or not), encoded uuids per
# schema; each cache is cleared when full.
DECIMAL_CACHE_ENTRIES_MAX = 4096
UUID_CACHE_ENTRIES_MAX = 4096

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_US_PER_S = 1_000_000
_MS_PER_S = 1_000
_S_PER_DAY = 86_400
_UUID_CHARS = 36

_ONE_BYTE_VARINTS = tuple(bytes((n,)) for n in range(0x80))
_FALSE_CHUNK = b"\x00"
_TRUE_CHUNK = b"\x01"
_END_OF_BLOCKS = b"\x00"
_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


class _NeedsFastavro(Exception):
    """A union of several non-null branches: fastavro picks the branch, so the schema keeps the
    checker and fastavro's writer."""


def _varint(n: int) -> bytes:
    """The variable-length encoding of a non-negative (already zig-zagged) integer."""
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def long_bytes(value: int) -> bytes:
    """An Avro int or long: zig-zag, then varint (a 32-bit value's zig-zag is the same);
    public for writers that assemble Avro bytes themselves (the portfolio's live updates)."""
    return _varint((value << 1) ^ (value >> 63))


_LENGTH_CHUNKS_MAX = 1024
_LENGTH_CHUNKS = tuple(_varint(length << 1) for length in range(_LENGTH_CHUNKS_MAX))


def _length_chunk(length: int) -> bytes:
    return _LENGTH_CHUNKS[length] if length < _LENGTH_CHUNKS_MAX else _varint(length << 1)


def _integer(datum: Any, low: int, high: int, bits: int) -> int:
    if datum.__class__ is not int and (not isinstance(datum, int) or isinstance(datum, bool)):
        raise _Invalid(f"expected an int, got {_got(datum)}")
    if not low <= datum <= high:
        raise _Invalid(f"{datum} does not fit in {bits} bits")
    return int(datum)


def _write_null(datum: Any, put: _Put) -> None:
    if datum is not None:
        raise _Invalid(f"expected null, got {_got(datum)}")


def _write_boolean(datum: Any, put: _Put) -> None:
    if datum is True:
        put(_TRUE_CHUNK)
    elif datum is False:
        put(_FALSE_CHUNK)
    else:
        raise _Invalid(f"expected a bool, got {_got(datum)}")


def _write_int(datum: Any, put: _Put) -> None:
    put(long_bytes(_integer(datum, _INT_MIN, _INT_MAX, 32)))


def _write_long(datum: Any, put: _Put) -> None:
    put(long_bytes(_integer(datum, _LONG_MIN, _LONG_MAX, 64)))


def _real(datum: Any) -> float:
    if not isinstance(datum, (int, float)) or isinstance(datum, bool):
        raise _Invalid(f"expected a float, got {_got(datum)}")
    try:
        return float(datum)
    except OverflowError as exc:
        raise _Invalid(str(exc)) from None


def _write_float(datum: Any, put: _Put) -> None:
    value = _real(datum)
    try:
        put(_pack_float(value))
    except OverflowError:  # beyond a float's range: IEEE rounding gives infinity, as fastavro
        put(_pack_float(math.copysign(math.inf, value)))


def _write_double(datum: Any, put: _Put) -> None:
    put(_pack_double(_real(datum)))


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise _Invalid(str(exc)) from None


def _write_string(datum: Any, put: _Put) -> None:
    if not isinstance(datum, str):
        raise _Invalid(f"expected a str, got {_got(datum)}")
    encoded = _utf8(datum)
    length = len(encoded)
    put(_LENGTH_CHUNKS[length] if length < _LENGTH_CHUNKS_MAX else _varint(length << 1))
    put(encoded)


def _write_bytes(datum: Any, put: _Put) -> None:
    if not isinstance(datum, (bytes, bytearray)):
        raise _Invalid(f"expected bytes, got {_got(datum)}")
    put(_length_chunk(len(datum)))
    put(bytes(datum))


_PRIMITIVE_WRITERS: dict[str, _Writer] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "string": _write_string,
    "bytes": _write_bytes,
}


def _decimal_writer(
    precision: int, scale: int, size: int | None, cache: dict[Decimal, bytes], prefix: bytes
) -> _Writer:
    """A decimal on bytes (`size` None: two's-complement big-endian unscaled value, as many
    bytes as fastavro writes, length-prefixed) or on a fixed of `size` bytes (sign-extended).

    `cache` maps Decimals to their encoding: equal Decimals quantize to the same value at the
    schema's scale, so they encode (or fail) identically. Only finite exact-type Decimals are
    cached (an int or float equal to a cached Decimal must still be refused). `prefix` comes
    first in each chunk: the branch index of an optional decimal, written in the same chunk."""
    context = Context(prec=precision, rounding=ROUND_HALF_EVEN, traps=[Inexact, InvalidOperation])
    quantum = Decimal((0, (1,), -scale))
    checked = _checked_decimal(precision, scale, context, quantum)

    adjusted_limit = precision - scale

    def chunk(unscaled: int) -> bytes:
        if size is None:
            raw = unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)
            return prefix + _length_chunk(len(raw)) + raw
        try:
            return prefix + unscaled.to_bytes(size, "big", signed=True)
        except OverflowError:
            raise _Invalid(f"{unscaled} does not fit in a fixed of {size} bytes") from None

    def checked_chunk(datum: Any) -> bytes:
        return chunk(int(checked(datum).scaleb(scale, context)))

    def uncached(datum: Decimal) -> bytes:
        # The quick test of what `checked`'s quantize accepts: finite, below 10**(precision -
        # scale) in magnitude, and an integer once scaled (the context traps a rounding that
        # would drop digits). What it leaves, `checked` accepts or refuses.
        if datum.is_finite() and datum.adjusted() < adjusted_limit:
            try:
                scaled = datum.scaleb(scale, context)
            except Inexact:
                pass
            else:
                unscaled = int(scaled)
                if unscaled == scaled:
                    return chunk(unscaled)
        return checked_chunk(datum)

    def write_decimal(datum: Any, put: _Put) -> None:
        if datum.__class__ is not Decimal:
            put(checked_chunk(datum))  # a subclass, or raises
            return
        try:
            encoded = cache.get(datum)
        except TypeError:  # a signaling NaN has no hash
            encoded = None
        if encoded is None:
            encoded = uncached(datum)
            if len(cache) >= DECIMAL_CACHE_ENTRIES_MAX:
                cache.clear()
            cache[datum] = encoded
        put(encoded)

    return write_decimal


def _timestamp_writer(units_per_s: int, *, local: bool) -> _Writer:
    """timestamp-millis/micros (an aware datetime, or an int taken as it is) and
    local-timestamp-millis/micros (any datetime, its wall clock taken as UTC, or an int)."""
    us_per_unit = _US_PER_S // units_per_s

    def write_timestamp(datum: Any, put: _Put) -> None:
        if isinstance(datum, dt.datetime):
            if local:
                delta = datum.replace(tzinfo=dt.UTC) - _EPOCH
            elif datum.utcoffset() is None:
                raise _Invalid("naive datetime; give it a timezone (UTC)")
            else:
                delta = datum - _EPOCH
            # exact integer arithmetic, as fastavro's conversion
            seconds = delta.days * _S_PER_DAY + delta.seconds
            put(long_bytes(seconds * units_per_s + delta.microseconds // us_per_unit))
            return
        if not local and (not isinstance(datum, int) or isinstance(datum, bool)):
            raise _Invalid(f"expected an aware datetime, got {_got(datum)}")
        put(long_bytes(_integer(datum, _LONG_MIN, _LONG_MAX, 64)))

    return write_timestamp


def _write_date(datum: Any, put: _Put) -> None:
    if isinstance(datum, dt.date) and not isinstance(datum, dt.datetime):
        put(long_bytes(datum.toordinal() - _EPOCH_ORDINAL))
    else:
        put(long_bytes(_integer(datum, _INT_MIN, _INT_MAX, 32)))


def _time_writer(units_per_s: int, low: int, high: int, bits: int) -> _Writer:
    us_per_unit = _US_PER_S // units_per_s

    def write_time(datum: Any, put: _Put) -> None:
        if isinstance(datum, dt.time):
            seconds = datum.hour * 3600 + datum.minute * 60 + datum.second
            put(long_bytes(seconds * units_per_s + datum.microsecond // us_per_unit))
        else:
            put(long_bytes(_integer(datum, low, high, bits)))

    return write_time


_UUID_LENGTH_CHUNK = _length_chunk(_UUID_CHARS)


def _uuid_writer(cache: dict[uuid.UUID | str, bytes]) -> _Writer:
    """A uuid (a `uuid.UUID` or its text), as its canonical text. `cache` maps the UUIDs and
    strings seen to their encoding (ids such as accounts and owners recur); only exact
    `uuid.UUID` and `str` values are cached."""

    def write_uuid(datum: Any, put: _Put) -> None:
        kind = datum.__class__
        if kind is not uuid.UUID and kind is not str:
            put(_UUID_LENGTH_CHUNK + _encode_uuid(datum).encode())  # a subclass, or raises
            return
        encoded = cache.get(datum)
        if encoded is None:
            encoded = _UUID_LENGTH_CHUNK + _encode_uuid(datum).encode()
            if len(cache) >= UUID_CACHE_ENTRIES_MAX:
                cache.clear()
            cache[datum] = encoded
        put(encoded)

    return write_uuid


def _compile_writer(schema: Any) -> _Writer:
    """The writer of `schema` (fastavro-parsed); a schema with a union of several non-null
    branches gets the checker and fastavro's writer instead."""
    try:
        return _compile_direct_writer(schema)
    except _NeedsFastavro:
        return _fastavro_writer(schema)


def _fastavro_writer(schema: Any) -> _Writer:
    """The checker, then fastavro's writer: the path before the direct writers."""
    check = _compile_checker(schema)

    def write_with_fastavro(datum: Any, put: _Put) -> None:
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(
                out, schema, check(datum), strict_allow_default=True, disable_tuple_notation=True
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise _Invalid(str(exc)) from None
        put(out.getvalue())

    return write_with_fastavro


def _compile_direct_writer(schema: Any) -> _Writer:
    """A strict writer for `schema` (fastavro-parsed), applying the checker's rules and
    messages, or raises `_NeedsFastavro`."""
    named: dict[str, _Writer] = {}
    named_nodes: dict[str, dict[str, Any]] = {}
    decimal_caches: dict[tuple[int, int, int | None, bytes], dict[Decimal, bytes]] = {}
    write_uuid = _uuid_writer({})

    def compile_node(node: Any) -> _Writer:
        if isinstance(node, str):
            if node in _PRIMITIVE_WRITERS:
                return _PRIMITIVE_WRITERS[node]
            if node not in named:
                raise SchemaError(f"unknown type {node!r}")
            return named[node]
        if isinstance(node, list):
            return union(node)
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return compile_node(kind)
        if kind in ("record", "error"):
            return record(node)
        if kind == "enum":
            return enum(node)
        if kind == "fixed":
            return fixed(node)
        if kind == "array":
            return array(compile_node(node["items"]))
        if kind == "map":
            return mapping(compile_node(node["values"]))
        if kind in _PRIMITIVE_WRITERS:
            return logical(node, kind)
        return compile_node(kind)  # {"type": "<name of a defined type>"}

    def decimal(node: dict[str, Any], size: int | None, prefix: bytes = b"") -> _Writer:
        precision, scale = int(node["precision"]), int(node.get("scale", 0))
        cache = decimal_caches.setdefault((precision, scale, size, prefix), {})
        return _decimal_writer(precision, scale, size, cache, prefix)

    def logical(node: dict[str, Any], kind: str) -> _Writer:
        # Unknown logical types are ignored, as the Avro specification requires.
        logical_type = node.get("logicalType")
        if logical_type == "decimal" and kind == "bytes":
            return decimal(node, None)
        if logical_type in ("timestamp-millis", "local-timestamp-millis") and kind == "long":
            return _timestamp_writer(_MS_PER_S, local=logical_type.startswith("local"))
        if logical_type in ("timestamp-micros", "local-timestamp-micros") and kind == "long":
            return _timestamp_writer(_US_PER_S, local=logical_type.startswith("local"))
        if logical_type == "date" and kind == "int":
            return _write_date
        if logical_type == "time-millis" and kind == "int":
            return _time_writer(_MS_PER_S, _INT_MIN, _INT_MAX, 32)
        if logical_type == "time-micros" and kind == "long":
            return _time_writer(_US_PER_S, _LONG_MIN, _LONG_MAX, 64)
        if logical_type == "uuid" and kind == "string":
            return write_uuid
        return _PRIMITIVE_WRITERS[kind]

    def record(node: dict[str, Any]) -> _Writer:
        name = node["name"]
        compiled: list[_Writer] = []
        named[name] = lambda datum, put: compiled[0](datum, put)  # for recursive references
        named_nodes[name] = node
        fields = [
            (
                f["name"],
                compile_node(f["type"]),
                default_chunk(f["type"], f["default"], f["name"]) if "default" in f else None,
            )
            for f in node["fields"]
        ]
        field_names = frozenset(field_name for field_name, _, _ in fields)
        fields_count = len(fields)
        missing = object()

        def write_record(datum: Any, put: _Put) -> None:
            if not isinstance(datum, Mapping):
                raise _Invalid(f"expected a record (a mapping), got {_got(datum)}")
            absent = 0
            get = datum.get
            for field_name, writer, default in fields:
                value = get(field_name, missing)
                if value is missing:
                    if default is None:
                        raise _Invalid("missing, and the schema gives no default", [field_name])
                    put(default)
                    absent += 1
                    continue
                try:
                    writer(value, put)
                except _Invalid as exc:
                    exc.path.insert(0, field_name)
                    raise
            if len(datum) > fields_count - absent:
                extras = sorted(str(key) for key in datum if key not in field_names)
                if extras:
                    raise _Invalid(f"fields not in the schema: {', '.join(extras)}")

        compiled.append(write_record)
        named[name] = write_record
        return write_record

    def enum(node: dict[str, Any]) -> _Writer:
        chunks = {symbol: long_bytes(index) for index, symbol in enumerate(node["symbols"])}
        symbols = sorted(chunks)

        def write_enum(datum: Any, put: _Put) -> None:
            chunk = chunks.get(datum) if isinstance(datum, str) else None
            if chunk is None:
                raise _Invalid(f"{str(datum)[:40]!r} is not one of {symbols}")
            put(chunk)

        named[node["name"]] = write_enum
        named_nodes[node["name"]] = node
        return write_enum

    def fixed(node: dict[str, Any]) -> _Writer:
        size = int(node["size"])

        def write_fixed(datum: Any, put: _Put) -> None:
            if not isinstance(datum, (bytes, bytearray)) or len(datum) != size:
                raise _Invalid(f"expected {size} bytes, got {_got(datum)}")
            put(bytes(datum))

        writer: _Writer = write_fixed
        if node.get("logicalType") == "decimal":
            writer = decimal(node, size)
        named[node["name"]] = writer
        named_nodes[node["name"]] = node
        return writer

    def union(branches: list[Any]) -> _Writer:
        if len(branches) != 2 or "null" not in branches:
            raise _NeedsFastavro
        null_index = branches.index("null")
        branch = branches[1 - null_index]
        null_chunk, value_chunk = long_bytes(null_index), long_bytes(1 - null_index)
        if (
            isinstance(branch, dict)
            and branch.get("logicalType") == "decimal"
            and branch["type"] == "bytes"
        ):  # the common optional decimal: one chunk a value, branch index included
            decimal_writer = decimal(branch, None, value_chunk)

            def write_optional_decimal(datum: Any, put: _Put) -> None:
                if datum is None:
                    put(null_chunk)
                else:
                    decimal_writer(datum, put)

            return write_optional_decimal
        only = compile_node(branch)

        def write_optional(datum: Any, put: _Put) -> None:
            if datum is None:
                put(null_chunk)
            else:
                put(value_chunk)
                only(datum, put)

        return write_optional

    def array(items: _Writer) -> _Writer:
        def write_array(datum: Any, put: _Put) -> None:
            if not isinstance(datum, (list, tuple)):
                raise _Invalid(f"expected a list, got {_got(datum)}")
            if datum:
                put(_length_chunk(len(datum)))  # one block: a positive count, then the items
                for index, item in enumerate(datum):
                    try:
                        items(item, put)
                    except _Invalid as exc:
                        exc.path.insert(0, f"[{index}]")
                        raise
            put(_END_OF_BLOCKS)

        return write_array

    def mapping(values: _Writer) -> _Writer:
        def write_map(datum: Any, put: _Put) -> None:
            if not isinstance(datum, Mapping):
                raise _Invalid(f"expected a mapping, got {_got(datum)}")
            if datum:
                put(_length_chunk(len(datum)))
                for key, value in datum.items():
                    if not isinstance(key, str):
                        raise _Invalid(f"map keys must be str, got {_got(key)}")
                    try:
                        encoded = _utf8(key)
                        put(_length_chunk(len(encoded)))
                        put(encoded)
                        values(value, put)
                    except _Invalid as exc:
                        exc.path.insert(0, f"[{key[:40]!r}]")
                        raise
            put(_END_OF_BLOCKS)

        return write_map

    def default_chunk(node: Any, value: Any, field_name: str) -> bytes:
        try:
            return _default_encoding(node, value, named_nodes)
        except (_Invalid, KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
            raise SchemaError(
                f"the default of field {field_name!r} does not fit its type: {exc}"
            ) from None

    return compile_node(schema)


def _default_encoding(node: Any, value: Any, named_nodes: Mapping[str, dict[str, Any]]) -> bytes:
    """The encoding of a field default, a JSON value of the type's underlying type (logical
    types do not apply): a union's default is for its first branch; bytes and fixed defaults
    are strings whose code points 0-255 are the bytes; a record default omitting a field
    with a default takes that one."""
    if isinstance(node, list):
        return long_bytes(0) + _default_encoding(node[0], value, named_nodes)
    if isinstance(node, str):
        if node in named_nodes:
            return _default_encoding(named_nodes[node], value, named_nodes)
        kind = node
    else:
        kind = node["type"]
        if isinstance(kind, (dict, list)) or (
            kind in named_nodes and kind not in ("record", "error", "enum", "fixed")
        ):
            return _default_encoding(kind, value, named_nodes)
    chunks: list[bytes] = []
    if kind == "null":
        if value is not None:
            raise ValueError(f"{value!r} is not null")
    elif kind in ("boolean", "int", "long", "float", "double", "string", "bytes"):
        if kind == "bytes":
            value = value.encode("latin-1")
        _PRIMITIVE_WRITERS[kind](
            float(value) if kind in ("float", "double") else value, chunks.append
        )
    elif kind in ("record", "error"):
        for field in node["fields"]:
            field_value = value[field["name"]] if field["name"] in value else field["default"]
            chunks.append(_default_encoding(field["type"], field_value, named_nodes))
    elif kind == "enum":
        chunks.append(long_bytes(node["symbols"].index(value)))
    elif kind == "fixed":
        raw = value.encode("latin-1")
        if len(raw) != int(node["size"]):
            raise ValueError(f"{len(raw)} bytes for a fixed of {node['size']}")
        chunks.append(raw)
    elif kind == "array":
        if value:
            chunks.append(_length_chunk(len(value)))
            chunks.extend(_default_encoding(node["items"], item, named_nodes) for item in value)
        chunks.append(_END_OF_BLOCKS)
    elif kind == "map":
        if value:
            chunks.append(_length_chunk(len(value)))
            for key, item in value.items():
                _write_string(key, chunks.append)
                chunks.append(_default_encoding(node["values"], item, named_nodes))
        chunks.append(_END_OF_BLOCKS)
    else:
        raise ValueError(f"unknown type {kind!r}")
    return b"".join(chunks)


def _compile_decode_check(schema: Any) -> _DecodeCheck | None:
    """A check of decoded decimals for `schema`, or None when it has none.

    fastavro builds a decoded Decimal in a context of the schema's precision, so an unscaled
    value with more digits (written by a lax writer) comes back silently rounded, with a
    larger exponent than -scale. The check turns that into a DecodeError.
    """
    named: dict[str, Any] = {}
    checks: dict[str, _DecodeCheck | None] = {}
    in_progress: set[str] = set()

    def walk(node: Any) -> _DecodeCheck | None:
        if isinstance(node, str):
            return by_name(node) if node in named else None
        if isinstance(node, list):
            return union(node)
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return walk(kind)
        if kind in ("record", "error", "enum", "fixed"):
            named[node["name"]] = node
            return by_name(node["name"])
        if kind == "array":
            return sequence(walk(node["items"]))
        if kind == "map":
            return values(walk(node["values"]))
        if node.get("logicalType") == "decimal" and kind == "bytes":
            return decimal(node)
        return None

    def by_name(name: str) -> _DecodeCheck | None:
        if name in checks:
            return checks[name]
        if name in in_progress:  # a recursive type: look the check up when called
            return lambda datum, path: _run_check(checks.get(name), datum, path)
        in_progress.add(name)
        node = named[name]
        if node["type"] in ("record", "error"):
            result = record(node)
        elif node["type"] == "fixed" and node.get("logicalType") == "decimal":
            result = decimal(node)
        else:
            result = None
        in_progress.discard(name)
        checks[name] = result
        return result

    def decimal(node: dict[str, Any]) -> _DecodeCheck:
        precision = int(node["precision"])
        # The most significant digit of a value of `precision` digits at the schema's scale.
        adjusted_max = precision - 1 - int(node.get("scale", 0))

        def check_decimal(datum: Any, path: str) -> None:
            if isinstance(datum, Decimal) and datum.adjusted() > adjusted_max:
                raise DecodeError(
                    "invalid_avro", f"{path}: decimal of more than {precision} digits"
                )

        return check_decimal

    def record(node: dict[str, Any]) -> _DecodeCheck | None:
        active = [(f["name"], c) for f in node["fields"] if (c := walk(f["type"])) is not None]
        if not active:
            return None

        def check_record(datum: Any, path: str) -> None:
            if isinstance(datum, dict):
                for name, check in active:
                    if name in datum:
                        check(datum[name], f"{path}.{name}")

        return check_record

    def union(branches: list[Any]) -> _DecodeCheck | None:
        active = [c for c in (walk(branch) for branch in branches) if c is not None]
        if not active:
            return None
        if len([branch for branch in branches if branch != "null"]) != 1:
            raise SchemaError("a union holding a decimal must be [null, <type>]")
        (check,) = active

        def check_optional(datum: Any, path: str) -> None:
            if datum is not None:
                check(datum, path)

        return check_optional

    def sequence(item_check: _DecodeCheck | None) -> _DecodeCheck | None:
        if item_check is None:
            return None

        def check_array(datum: Any, path: str) -> None:
            for index, item in enumerate(datum):
                item_check(item, f"{path}[{index}]")

        return check_array

    def values(value_check: _DecodeCheck | None) -> _DecodeCheck | None:
        if value_check is None:
            return None

        def check_map(datum: Any, path: str) -> None:
            for key, value in datum.items():
                value_check(value, f"{path}[{key[:40]!r}]")

        return check_map

    return walk(schema)


def _run_check(check: _DecodeCheck | None, datum: Any, path: str) -> None:
    if check is not None:
        check(datum, path)
