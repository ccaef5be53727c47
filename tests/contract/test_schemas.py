"""The contracts between services: the Avro schemas of schemas/avro/.

Checks the project's rules for every schema (schemas/README.md) and, for every schema family
with more than one version, that each version can read what the version before it wrote
(backward compatibility), with Apache Avro's reference checker plus a check of logical types,
which that checker does not look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from tickertap.messaging.codec import AvroCodec
from tickertap.messaging.schemas import load_schemas

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "avro"
README = SCHEMAS_DIR.parent / "README.md"

FILE_NAME = re.compile(
    r"^(?P<domain>[a-z][a-z0-9_]*)\.(?P<name>[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)"
    r"\.v(?P<version>[1-9][0-9]*)\.avsc$"
)
DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 18}
LOGICAL_TYPES = {("string", "uuid"), ("long", "timestamp-micros"), ("bytes", "decimal")}
# Field names that hold money, prices or quantities, and so must be decimals.
DECIMAL_NAMES = re.compile(
    r"^(price|amount|quantity|size|volume|fee|notional|bid|ask|open|high|low|close"
    r"|cost_basis|average_cost|.*_pnl|market_value|cash_value|total_value)$"
)
# Field names that hold points in time, and so must be timestamp-micros.
TIME_NAMES = re.compile(r"^(.*_at|.*_ts|as_of|.*_as_of|window_start|window_end|.*_timestamp)$")


def schema_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.avsc"))


def families(directory: Path) -> dict[str, list[tuple[int, Path]]]:
    """`<domain>.<name>` -> its versions, oldest first."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in schema_files(directory):
        match = FILE_NAME.match(path.name)
        assert match is not None, f"{path.name} is not named <domain>.<name>.v<N>.avsc"
        family = f"{match['domain']}.{match['name']}"
        found.setdefault(family, []).append((int(match["version"]), path))
    return {family: sorted(versions) for family, versions in found.items()}


def consecutive_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """(v<N-1>, v<N>) for every family and every N > 1."""
    return [
        (older, newer)
        for versions in families(directory).values()
        for (_, older), (_, newer) in pairwise(versions)
    ]


def backward_incompatibilities(older: Path, newer: Path) -> list[str]:
    """Why `newer` cannot read data written with `older`; empty when it can."""
    writer = avro.schema.parse(older.read_text())
    reader = avro.schema.parse(newer.read_text())
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    new_raw = json.loads(newer.read_text())
    problems = []
    if result.compatibility is not SchemaCompatibilityType.compatible:
        where = ", ".join(sorted(_field_path(new_raw, pointer) for pointer in result.locations))
        problems += [f"{where}: {message}" for message in sorted(result.messages)]
        problems += [f"{where}: {kind}" for kind in result.incompatibilities if not result.messages]
    old_leaves = _leaves(json.loads(older.read_text()))
    new_leaves = _leaves(new_raw)
    for path in sorted(old_leaves.keys() & new_leaves.keys()):
        if old_leaves[path] != new_leaves[path]:
            problems.append(f"{path}: {old_leaves[path]} became {new_leaves[path]}")
    return problems


def _field_path(schema: Any, pointer: str) -> str:
    """The field names along a location of Apache's checker, e.g. /fields/10/type -> .source_seq"""
    node, names, previous = schema, [], ""
    for token in [token for token in pointer.split("/") if token]:
        if isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            break
        if previous == "fields" and isinstance(node, dict):
            names.append(node["name"])
        previous = token
    return "".join(f".{name}" for name in names) or pointer


def _leaves(schema: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The logical type, precision and scale of every primitive of a schema, by field path:
    changing those changes what the values mean, yet Avro's resolution rules ignore them
    (and allow bytes to be read as string)."""
    parsed = fastavro.parse_schema(schema, named_schemas={})
    named: dict[str, Any] = {}
    leaves: dict[str, tuple[Any, ...]] = {}

    def walk(node: Any, path: str, seen: frozenset[str]) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, path, seen)
        elif isinstance(node, str):
            if node in named:
                if node not in seen:
                    walk(named[node], path, seen | {node})
            elif node != "null":
                leaves[path] = (None, None, None)
        elif node["type"] in ("record", "enum", "fixed"):
            named[node["name"]] = node
            if node["type"] == "record" and node["name"] not in seen:
                for field in node["fields"]:
                    walk(field["type"], f"{path}.{field['name']}", seen | {node["name"]})
        elif node["type"] == "array":
            walk(node["items"], f"{path}[]", seen)
        elif node["type"] == "map":
            walk(node["values"], f"{path}{{}}", seen)
        elif node["type"] != "null":
            leaves[path] = tuple(node.get(k) for k in ("logicalType", "precision", "scale"))

    walk(parsed, "", frozenset())
    return leaves


def walk_fields(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record field of a raw (unparsed) schema, with its path."""
    if isinstance(node, list):
        for branch in node:
            yield from walk_fields(branch, path)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            for field in node["fields"]:
                field_path = f"{path}.{field['name']}"
                yield field_path, field
                yield from walk_fields(field["type"], field_path)
        elif node.get("type") == "array":
            yield from walk_fields(node["items"], f"{path}[]")
        elif node.get("type") == "map":
            yield from walk_fields(node["values"], f"{path}{{}}")
        elif isinstance(node.get("type"), (dict, list)):
            yield from walk_fields(node["type"], path)


def walk_types(node: Any) -> Iterator[Any]:
    """Every type node of a raw schema: names, unions, and type objects."""
    yield node
    if isinstance(node, list):
        for branch in node:
            yield from walk_types(branch)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            for field in node["fields"]:
                yield from walk_types(field["type"])
        elif node.get("type") == "array":
            yield from walk_types(node["items"])
        elif node.get("type") == "map":
            yield from walk_types(node["values"])
        elif isinstance(node.get("type"), (dict, list)):
            yield from walk_types(node["type"])


def _without_null(field_type: Any) -> Any:
    if isinstance(field_type, list) and len(field_type) == 2 and field_type[0] == "null":
        return field_type[1]
    return field_type


def _pascal_case(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[._]", name))


FILES = schema_files(SCHEMAS_DIR)
FILE_IDS = [path.name for path in FILES]


def _raw(path: Path) -> dict[str, Any]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


# The shipped schemas, one by one


def test_there_are_schemas() -> None:
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_parses_with_fastavro_and_apache_avro(path: Path) -> None:
    text = path.read_text(encoding="utf-8")

    fastavro.parse_schema(json.loads(text), named_schemas={})
    avro.schema.parse(text)


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_name_matches_the_file(path: Path) -> None:
    match = FILE_NAME.match(path.name)
    assert match is not None, "named <domain>.<name>.v<N>.avsc"
    raw = _raw(path)

    assert raw["type"] == "record"
    assert raw["namespace"] == f"tickertap.{match['domain']}"
    assert raw["name"] == _pascal_case(match["name"])
    for node in walk_types(raw):
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            assert "." not in node["name"], f"{node['name']}: nested types take the namespace"
            assert node.get("namespace", raw["namespace"]) == raw["namespace"]


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_event_envelope_fields(path: Path) -> None:
    raw = _raw(path)
    fields = {field["name"]: field for field in raw["fields"]}

    assert fields["event_id"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    aggregate = raw.get("aggregate_field")
    assert aggregate in fields, "aggregate_field names the aggregate id field (the Kafka key)"
    assert aggregate not in ("event_id", "occurred_at")
    assert fields[aggregate]["type"] in ("string", {"type": "string", "logicalType": "uuid"})


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_no_floating_point_anywhere(path: Path) -> None:
    for node in walk_types(_raw(path)):
        kind = node.get("type") if isinstance(node, dict) else node
        assert kind not in ("float", "double"), "money and quantities are decimals"


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_every_field_and_named_type_has_a_doc(path: Path) -> None:
    raw = _raw(path)
    for field_path, field in walk_fields(raw):
        assert isinstance(field.get("doc"), str), f"{field_path} has no doc"
        assert field["doc"].strip(), f"{field_path} has an empty doc"
    for node in walk_types(raw):
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            assert str(node.get("doc", "")).strip(), f"{node['name']} has no doc"


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_optional_fields_are_null_first_with_a_null_default(path: Path) -> None:
    raw = _raw(path)
    field_types = {id(field["type"]) for _, field in walk_fields(raw)}
    for field_path, field in walk_fields(raw):
        if isinstance(field["type"], list):
            assert len(field["type"]) == 2, f"{field_path}: unions are [null, <type>]"
            assert field["type"][0] == "null", f"{field_path}: null comes first"
            assert "default" in field, f"{field_path}: an optional field defaults to null"
            assert field["default"] is None, f"{field_path}: an optional field defaults to null"
    for node in walk_types(raw):
        if isinstance(node, list):
            assert id(node) in field_types, "unions appear only as a field's type"


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_logical_types(path: Path) -> None:
    raw = _raw(path)
    for node in walk_types(raw):
        if isinstance(node, dict) and "logicalType" in node:
            assert (node["type"], node["logicalType"]) in LOGICAL_TYPES, node
            if node["logicalType"] == "decimal":
                assert node == DECIMAL, "every decimal is bytes decimal(38, 18)"
    for field_path, field in walk_fields(raw):
        field_type = _without_null(field["type"])
        if DECIMAL_NAMES.match(field["name"]):
            assert field_type == DECIMAL, f"{field_path} holds money or a quantity"
        if TIME_NAMES.match(field["name"]) or field["name"] == "price_as_of":
            assert field_type == {"type": "long", "logicalType": "timestamp-micros"}, field_path


def test_readme_describes_every_schema() -> None:
    readme = README.read_text(encoding="utf-8")

    for path in FILES:
        assert path.name.removesuffix(".avsc") in readme, path.name


def test_the_codec_loads_them_all() -> None:
    schemas = load_schemas(SCHEMAS_DIR)

    AvroCodec(schemas)
    assert [schema.name + ".avsc" for schema in schemas] == FILE_IDS


# Versions: contiguous, and each backward compatible with the one before


@pytest.mark.parametrize("family", sorted(families(SCHEMAS_DIR)))
def test_versions_are_contiguous_from_one(family: str) -> None:
    versions = [version for version, _ in families(SCHEMAS_DIR)[family]]

    assert versions == list(range(1, len(versions) + 1))


@pytest.mark.parametrize(
    ("older", "newer"),
    consecutive_pairs(SCHEMAS_DIR)
    or [pytest.param(None, None, id="none-yet: every family is at v1")],
    ids=lambda path: path.name if isinstance(path, Path) else None,
)
def test_each_version_reads_data_of_the_previous_one(
    older: Path | None, newer: Path | None
) -> None:
    if older is None or newer is None:
        assert all(len(v) == 1 for v in families(SCHEMAS_DIR).values())
        return

    assert backward_incompatibilities(older, newer) == []


# The checks above would catch an incompatible version: shown on versions written to tmp_path

TICKS_V1 = SCHEMAS_DIR / "marketdata.ticks.v1.avsc"


def _write_v2(directory: Path, change: dict[str, Any] | None = None, **edits: Any) -> None:
    raw = _raw(TICKS_V1)
    if change is not None:
        raw["fields"].append(change)
    for field in raw["fields"]:
        if field["name"] in edits:
            field["type"] = edits[field["name"]]
    (directory / "marketdata.ticks.v1.avsc").write_text(TICKS_V1.read_text())
    (directory / "marketdata.ticks.v2.avsc").write_text(json.dumps(raw))


def test_pairs_are_found_in_every_family(tmp_path: Path) -> None:
    for name in ("a.b.v1", "a.b.v2", "a.b.v3", "a.c.v1", "a.c.dlq.v1", "a.c.dlq.v2"):
        (tmp_path / f"{name}.avsc").write_text("{}")

    pairs = {(old.name, new.name) for old, new in consecutive_pairs(tmp_path)}

    assert pairs == {
        ("a.b.v1.avsc", "a.b.v2.avsc"),
        ("a.b.v2.avsc", "a.b.v3.avsc"),
        ("a.c.dlq.v1.avsc", "a.c.dlq.v2.avsc"),
    }


def test_an_added_optional_field_is_compatible(tmp_path: Path) -> None:
    added = {"name": "trade_id", "type": ["null", "string"], "default": None, "doc": "Trade id."}
    _write_v2(tmp_path, added)

    ((older, newer),) = consecutive_pairs(tmp_path)

    assert backward_incompatibilities(older, newer) == []


@pytest.mark.parametrize(
    ("change", "edits", "problem"),
    [
        pytest.param(
            {"name": "trade_id", "type": "string", "doc": "Trade id."},
            {},
            "trade_id",
            id="new-field-without-default",
        ),
        pytest.param(None, {"source_seq": "string"}, "source_seq", id="type-change"),
        pytest.param(None, {"price": "string"}, ".price", id="decimal-to-string"),
        pytest.param(None, {"event_id": "string"}, ".event_id", id="logical-type-dropped"),
        pytest.param(
            None,
            {"price": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}},
            ".price",
            id="decimal-scale-change",
        ),
        pytest.param(
            None,
            {"exchange_ts": {"type": "long", "logicalType": "timestamp-millis"}},
            ".exchange_ts",
            id="time-unit-change",
        ),
    ],
)
def test_an_incompatible_version_is_caught(
    tmp_path: Path, change: dict[str, Any] | None, edits: dict[str, Any], problem: str
) -> None:
    _write_v2(tmp_path, change, **edits)

    ((older, newer),) = consecutive_pairs(tmp_path)
    problems = backward_incompatibilities(older, newer)

    assert problems
    assert any(problem in p for p in problems), problems


def test_apache_checker_alone_misses_a_scale_change(tmp_path: Path) -> None:
    """Why backward_incompatibilities also compares logical types."""
    scale_12 = {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}
    _write_v2(tmp_path, price=scale_12)
    ((older, newer),) = consecutive_pairs(tmp_path)

    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(
        avro.schema.parse(newer.read_text()), avro.schema.parse(older.read_text())
    )

    assert result.compatibility is SchemaCompatibilityType.compatible


def test_a_removed_enum_symbol_is_caught(tmp_path: Path) -> None:
    ledger_v1 = SCHEMAS_DIR / "ledger.transfers.v1.avsc"
    raw = _raw(ledger_v1)
    kind = next(field for field in raw["fields"] if field["name"] == "kind")
    kind["type"]["symbols"].remove("reversal")
    (tmp_path / "ledger.transfers.v1.avsc").write_text(ledger_v1.read_text())
    (tmp_path / "ledger.transfers.v2.avsc").write_text(json.dumps(raw))

    ((older, newer),) = consecutive_pairs(tmp_path)

    assert any("reversal" in p for p in backward_incompatibilities(older, newer))
