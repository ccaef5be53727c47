"""Loading the schemas the codec uses: finding the folder, file names, namespaces, lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tickertap.messaging.codec import AvroCodec
from tickertap.messaging.schemas import (
    SCHEMAS_DIR_ENV,
    SchemaError,
    SchemaSet,
    find_schemas_dir,
    load_schemas,
    parse_schema,
)

REPO_SCHEMAS = Path(__file__).resolve().parents[3] / "schemas" / "avro"


def _record(namespace: str, name: str = "Things", **extra: object) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "namespace": namespace,
            "fields": [{"name": "thing_id", "type": "string"}],
            **extra,
        }
    )


def test_walks_up_to_the_repository_folder() -> None:
    assert find_schemas_dir(Path(__file__).parent, env={}) == REPO_SCHEMAS


def test_default_start_is_the_package_itself() -> None:
    assert find_schemas_dir(env={}) == REPO_SCHEMAS  # an editable install of this checkout


def test_environment_variable_wins(tmp_path: Path) -> None:
    assert find_schemas_dir(Path(__file__).parent, env={SCHEMAS_DIR_ENV: str(tmp_path)}) == tmp_path


def test_environment_variable_must_name_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=SCHEMAS_DIR_ENV):
        find_schemas_dir(env={SCHEMAS_DIR_ENV: str(tmp_path / "missing")})


def test_no_folder_found(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no schemas/avro folder"):
        find_schemas_dir(tmp_path, env={})


def test_loads_by_file_stem(tmp_path: Path) -> None:
    (tmp_path / "stock.things.v1.avsc").write_text(_record("tickertap.stock"))
    (tmp_path / "stock.things.dlq.v2.avsc").write_text(_record("tickertap.stock"))
    (tmp_path / "README.md").write_text("not a schema")

    schemas = load_schemas(tmp_path)

    assert schemas.names == ["stock.things.dlq.v2", "stock.things.v1"]
    assert schemas.get("stock.things.v1").fullname == "tickertap.stock.Things"
    assert "stock.things.v1" in schemas
    assert len(schemas) == 2


@pytest.mark.parametrize(
    "file_name", ["stock.things.avsc", "Stock.things.v1.avsc", "stock.v1.avsc", "stock.x.v0.avsc"]
)
def test_misnamed_files_are_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_text(_record("tickertap.stock"))

    with pytest.raises(SchemaError, match="not named"):
        load_schemas(tmp_path)


def test_namespace_must_match_the_domain(tmp_path: Path) -> None:
    (tmp_path / "stock.things.v1.avsc").write_text(_record("tickertap.other"))

    with pytest.raises(SchemaError, match="namespace"):
        load_schemas(tmp_path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ('"string"', "must be a record"),
        ('{"type": "record", "name": "A", "fields": [{"name": "a", "type": "nope"}]}', "valid"),
        (_record("tickertap.stock", aggregate_field="missing_id"), "aggregate_field"),
    ],
)
def test_broken_schemas_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "stock.things.v1.avsc").write_text(text)

    with pytest.raises(SchemaError, match=problem):
        load_schemas(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_schemas(tmp_path / "nowhere")


def test_aggregate_field_is_exposed() -> None:
    schema = parse_schema(_record("tickertap.stock", aggregate_field="thing_id"), name="x")

    assert schema.aggregate_field == "thing_id"


def test_every_shipped_schema_declares_its_aggregate() -> None:
    for schema in load_schemas(REPO_SCHEMAS):
        assert schema.aggregate_field is not None, schema.name


def test_duplicate_names_are_refused() -> None:
    schema = parse_schema(_record("tickertap.stock"), name="stock.things.v1")

    with pytest.raises(SchemaError, match="two schemas"):
        SchemaSet([schema, schema])


def test_same_canonical_form_under_two_names_is_allowed() -> None:
    v1 = parse_schema(_record("tickertap.stock"), name="stock.things.v1")
    v2 = parse_schema(
        _record("tickertap.stock", doc="Only the docs changed."), name="stock.things.v2"
    )

    schemas = SchemaSet([v1, v2])

    assert v1.fingerprint == v2.fingerprint
    assert schemas.by_fingerprint(v1.fingerprint) is v1


def test_unknown_name_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="no schema named"):
        SchemaSet([]).get("stock.things.v1")


def test_codec_refuses_unions_it_cannot_check() -> None:
    text = json.dumps(
        {
            "type": "record",
            "name": "Things",
            "namespace": "tickertap.stock",
            "fields": [
                {
                    "name": "amount",
                    "type": [
                        "null",
                        "string",
                        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
                    ],
                }
            ],
        }
    )
    schema = parse_schema(text, name="stock.things.v1")

    with pytest.raises(SchemaError, match="union holding a decimal"):
        AvroCodec(SchemaSet([schema]))
