"""The Avro schemas of tickerTap's events, loaded from the repository's `schemas/avro/` folder.

Each file is `<domain>.<name>.v<N>.avsc` and holds one self-contained record schema in
namespace `tickertap.<domain>` (no references to types of other files). A schema is known by
its file stem, e.g. `marketdata.ticks.v1`, which is also the name of the topic it is
published on.

Nothing here runs at import: `find_schemas_dir()` and `load_schemas()` do their I/O when
called. Both raise `SchemaError`, a deployment error (a missing folder, a broken or misnamed
file), never something a consumer should dead-letter.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

__all__ = [
    "SCHEMAS_DIR_ENV",
    "AvroSchema",
    "SchemaError",
    "SchemaSet",
    "crc64_avro",
    "find_schemas_dir",
    "load_schemas",
    "parse_schema",
]

SCHEMAS_DIR_ENV = "TICKERTAP_SCHEMAS_DIR"
"""Environment variable naming the folder of `.avsc` files (set it in images, where the
package is installed away from the repository)."""

SCHEMA_FILE_PATTERN = re.compile(
    r"^(?P<domain>[a-z][a-z0-9_]*)\.(?P<name>[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)"
    r"\.v(?P<version>[1-9][0-9]*)\.avsc$"
)
"""`<domain>.<name>.v<N>.avsc`; `<name>` may itself contain dots (e.g. `ticks.dlq`)."""

SCHEMA_FILE_BYTES_MAX = 1_000_000
SCHEMA_FILES_MAX = 1_000


class SchemaError(Exception):
    """A schema folder or file cannot be used: missing, unreadable, invalid Avro, misnamed,
    or a schema name that is not loaded."""


# CRC-64-AVRO, the Rabin fingerprint of the Avro specification ("Schema Fingerprints").
_CRC64_AVRO_EMPTY = 0xC15D213AA4D7A795


def _crc64_avro_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_AVRO_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_AVRO_TABLE = _crc64_avro_table()


def crc64_avro(data: bytes) -> int:
    """The CRC-64-AVRO fingerprint of `data`, as an unsigned 64-bit integer.

    Single-object encoding writes it as 8 little-endian bytes:
    `crc64_avro(pcf).to_bytes(8, "little")`.
    """
    fp = _CRC64_AVRO_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_AVRO_TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True, slots=True, eq=False)
class AvroSchema:
    """One parsed schema.

    `name` is the file stem (`marketdata.ticks.v1`) for schemas loaded from files, or a label
    such as `registry-id-42` for a writer schema fetched from a schema registry.
    `fingerprint` is the CRC-64-AVRO of the Parsing Canonical Form as 8 little-endian bytes,
    exactly as it appears in a single-object-encoded message.
    `aggregate_field` names the top-level field holding the aggregate id (the Kafka key),
    from the schema's `aggregate_field` attribute; None when the schema does not declare one.
    """

    name: str
    text: str = field(repr=False)
    parsed: dict[str, Any] = field(repr=False)
    fullname: str
    canonical_form: str = field(repr=False)
    fingerprint: bytes
    aggregate_field: str | None


def parse_schema(text: str, *, name: str) -> AvroSchema:
    """Parse one schema given as JSON text; the top level must be a record."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SchemaError(f"{name}: not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaError(f"{name}: the top level must be a record schema")
    try:
        parsed = fastavro.parse_schema(raw, named_schemas={})
        canonical_form = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several unrelated types for a bad schema
        raise SchemaError(f"{name}: not a valid Avro schema: {exc}") from exc
    assert isinstance(parsed, dict)  # a record stays a dict when parsed
    aggregate_field = raw.get("aggregate_field")
    field_names = {f["name"] for f in parsed["fields"]}
    if aggregate_field is not None and (
        not isinstance(aggregate_field, str) or aggregate_field not in field_names
    ):
        raise SchemaError(f"{name}: aggregate_field {aggregate_field!r} is not a top-level field")
    fingerprint = crc64_avro(canonical_form.encode("utf-8")).to_bytes(8, "little")
    return AvroSchema(
        name=name,
        text=text,
        parsed=parsed,
        fullname=str(parsed["name"]),
        canonical_form=canonical_form,
        fingerprint=fingerprint,
        aggregate_field=aggregate_field,
    )


class SchemaSet:
    """Schemas by name and by fingerprint. Several names may share a fingerprint (a new
    version that changes only docs); lookups by fingerprint then return the first loaded,
    which parses the same bytes."""

    def __init__(self, schemas: Iterable[AvroSchema]) -> None:
        self._by_name: dict[str, AvroSchema] = {}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        for schema in schemas:
            if schema.name in self._by_name:
                raise SchemaError(f"two schemas are named {schema.name}")
            self._by_name[schema.name] = schema
            self._by_fingerprint.setdefault(schema.fingerprint, schema)

    def get(self, name: str) -> AvroSchema:
        """The schema called `name`; raises SchemaError when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SchemaError(f"no schema named {name!r} is loaded") from None

    def by_fingerprint(self, fingerprint: bytes) -> AvroSchema | None:
        """The schema with this 8-byte little-endian CRC-64-AVRO fingerprint, if loaded."""
        return self._by_fingerprint.get(fingerprint)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[AvroSchema]:
        return iter([self._by_name[name] for name in self.names])

    def __len__(self) -> int:
        return len(self._by_name)


def load_schemas(directory: Path) -> SchemaSet:
    """Load every `*.avsc` file of `directory` (not recursive).

    Checks what decoding relies on: each file name matches `<domain>.<name>.v<N>.avsc`, the
    record's namespace is `tickertap.<domain>`, and the file parses. The project's other
    rules for schemas are checked by the contract tests (tests/contract/).
    """
    if not directory.is_dir():
        raise SchemaError(f"schema folder {directory} does not exist")
    paths = sorted(directory.glob("*.avsc"))
    if len(paths) > SCHEMA_FILES_MAX:
        raise SchemaError(f"{directory} holds more than {SCHEMA_FILES_MAX} schema files")
    schemas = []
    for path in paths:
        match = SCHEMA_FILE_PATTERN.match(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: not named <domain>.<name>.v<N>.avsc")
        if path.stat().st_size > SCHEMA_FILE_BYTES_MAX:
            raise SchemaError(f"{path.name}: larger than {SCHEMA_FILE_BYTES_MAX} bytes")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"{path.name}: cannot be read: {exc}") from exc
        schema = parse_schema(text, name=path.name.removesuffix(".avsc"))
        namespace = schema.fullname.rpartition(".")[0]
        if namespace != f"tickertap.{match['domain']}":
            raise SchemaError(
                f"{path.name}: namespace is {namespace!r}, expected 'tickertap.{match['domain']}'"
            )
        schemas.append(schema)
    return SchemaSet(schemas)


def find_schemas_dir(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Locate the folder of `.avsc` files.

    `$TICKERTAP_SCHEMAS_DIR` wins when set (it must then exist). Otherwise walk up from
    `start` (default: this file's folder) to the first ancestor holding `schemas/avro/`,
    which finds the repository's folder in a checkout or an editable install.
    """
    environ = os.environ if env is None else env
    configured = environ.get(SCHEMAS_DIR_ENV)
    if configured:
        path = Path(configured)
        if not path.is_dir():
            raise SchemaError(f"{SCHEMAS_DIR_ENV}={configured} is not a folder")
        return path
    origin = (start if start is not None else Path(__file__).parent).resolve()
    for folder in (origin, *origin.parents):
        candidate = folder / "schemas" / "avro"
        if candidate.is_dir():
            return candidate
    raise SchemaError(f"no schemas/avro folder above {origin}; set {SCHEMAS_DIR_ENV}")
