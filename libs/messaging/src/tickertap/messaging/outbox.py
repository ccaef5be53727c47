"""The transactional outbox: an event is a row written in the same transaction as the
state change it reports; `OutboxRelay` (relay.py) publishes committed rows in order.

    outbox_table(metadata, schema)      the Table, for the service's tables.py and migration
    create_statements(table)            its DDL, for an Alembic migration (`op.execute`)
    add_event(conn, table, codec, ...)  encode a record and add it: the usual entry point
    add_to_outbox(conn, table, ...)     add already-encoded bytes
    add_events(conn, table, codec, events), add_events_driver(pg, ...)   many, in one go
    encode_events(codec, events), then insert_events_driver(pg, table, encoded)
                                        the same in two steps: encode while the
                                        transaction waits on another statement

Order: the relay publishes rows by `id`. Rows of one key get ids in commit order because
`add_to_outbox` takes a transaction-scoped advisory lock on (outbox, key) before it inserts:
a second transaction adding an event for the same key waits until the first one ends.
Events of different keys are not ordered against each other (Kafka does not order them
either: they may sit on different partitions).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from tickertap.messaging import headers as h

__all__ = [
    "EVENT_KEY_BYTES_MAX",
    "Encoder",
    "add_event",
    "add_events",
    "add_events_driver",
    "add_to_outbox",
    "create_statements",
    "encode_events",
    "insert_events_driver",
    "lock_key",
    "notify_channel",
    "notify_sql",
    "outbox_ctes",
    "outbox_params",
    "outbox_table",
]

EVENT_KEY_BYTES_MAX = 1024
EVENT_VALUE_BYTES_MAX = 900_000  # under the broker's default 1 MiB message limit
HEADERS_MAX = 32


class Encoder(Protocol):
    """What `add_event` needs of a codec (tickertap.messaging.codec.AvroCodec fits)."""

    def encode(self, schema_name: str, record: Mapping[str, Any], /) -> bytes: ...


def outbox_table(metadata: MetaData, schema: str, name: str = "outbox") -> Table:
    """The outbox table `<schema>.<name>`:

    id          bigint identity, primary key: the publishing order
    event_id    uuid, unique
    topic       text
    key         bytea: the Kafka key, the aggregate id
    value       bytea, null for a tombstone: the encoded event
    headers     jsonb: {header: text}, with x-event-id, x-schema, x-correlation-id
    created_at  timestamptz, default now()
    sent_at     timestamptz, null until the broker acknowledged the row
    attempts    int: publish attempts so far
    last_error  text, null: why the last attempt failed

    Indexes: unsent rows by id (partial), sent rows by sent_at (partial, for retention).
    """
    assert schema, "an outbox lives in its service's schema"
    return Table(
        name,
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", Uuid(as_uuid=True), nullable=False, unique=True),
        Column("topic", Text, nullable=False),
        Column("key", LargeBinary, nullable=False),
        Column("value", LargeBinary, nullable=True),
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text, nullable=True),
        Index(f"ix_{name}_unsent", "id", postgresql_where=text("sent_at IS NULL")),
        Index(f"ix_{name}_sent_at", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
        schema=schema,
    )


def create_statements(table: Table) -> list[ExecutableDDLElement]:
    """CREATE TABLE and CREATE INDEX statements of `table`, in order, for a migration:
    `for stmt in create_statements(outbox_table(sa.MetaData(), "ledger")): op.execute(stmt)`.
    Works for `inbox_table` too."""
    statements: list[ExecutableDDLElement] = [CreateTable(table)]
    statements.extend(CreateIndex(index) for index in sorted(table.indexes, key=_index_name))
    return statements


def _index_name(index: Index) -> str:
    return str(index.name)


def _hash_int(data: str, nbytes: int) -> int:
    digest = hashlib.blake2b(data.encode(), digest_size=nbytes).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key(table: Table) -> int:
    """The bigint advisory lock key that makes one relay at a time the publisher of `table`."""
    return _hash_int(f"tickertap.outbox.relay:{table.fullname}", 8)


def notify_channel(table: Table) -> str:
    """The LISTEN/NOTIFY channel on which new rows of `table` are announced."""
    return f"outbox_{_hash_int(table.fullname, 8) & (2**64 - 1):016x}"


def _key_bytes(key: str | bytes | uuid.UUID) -> bytes:
    if isinstance(key, bytes):
        return key
    return str(key).encode()


async def add_to_outbox(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    *,
    topic: str,
    key: str | bytes | uuid.UUID,
    value: bytes | None,
    event_id: uuid.UUID,
    schema_name: str | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    notify: bool = False,
) -> int:
    """Add one encoded event to the outbox inside the caller's open transaction; returns
    the row id. Nothing is published unless that transaction commits.

    The correlation id defaults to the current one (`headers.correlation_id_var`).
    `notify=True` wakes a relay that listens (`OutboxRelay(listen=True)`) at commit.
    """
    key_bytes = _key_bytes(key)
    assert 0 < len(key_bytes) <= EVENT_KEY_BYTES_MAX, "the key is the aggregate id"
    assert value is None or len(value) <= EVENT_VALUE_BYTES_MAX, "event too large"
    assert topic, "topic"
    all_headers: dict[str, str] = dict(headers or {})
    all_headers[h.EVENT_ID] = str(event_id)
    if schema_name is not None:
        all_headers[h.SCHEMA] = schema_name
    correlation_id = correlation_id or h.correlation_id_var.get()
    if correlation_id:
        all_headers[h.CORRELATION_ID] = correlation_id
    assert len(all_headers) <= HEADERS_MAX, "too many headers"

    # Serialize writers of one key: the ids of one key's rows then follow commit order.
    table_lock = _key_lock_space(table)
    await conn.execute(
        select(func.pg_advisory_xact_lock(table_lock, _hash_int(key_bytes.hex(), 4)))
    )
    result = await conn.execute(
        table.insert()
        .values(
            event_id=event_id,
            topic=topic,
            key=key_bytes,
            value=value,
            headers=all_headers,
        )
        .returning(table.c.id)
    )
    row_id = int(result.scalar_one())
    if notify:
        await conn.execute(select(func.pg_notify(notify_channel(table), "")))
    return row_id


async def add_event(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    codec: Encoder,
    *,
    schema_name: str,
    record: Mapping[str, Any],
    key: str | bytes | uuid.UUID,
    topic: str | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    notify: bool = False,
) -> int:
    """Encode `record` with the writer schema `schema_name` and add it to the outbox in the
    caller's transaction; the event id is the record's `event_id`, the topic defaults to
    the schema name (`ledger.transfers.v1` is published on `ledger.transfers.v1`).
    Returns the row id."""
    event_id = record["event_id"]
    if not isinstance(event_id, uuid.UUID):
        event_id = uuid.UUID(str(event_id))
    return await add_to_outbox(
        conn,
        table,
        topic=topic or schema_name,
        key=key,
        value=codec.encode(schema_name, record),
        event_id=event_id,
        schema_name=schema_name,
        correlation_id=correlation_id,
        headers=headers,
        notify=notify,
    )


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event for `add_events`: a record to encode with `schema_name`, under `key`."""

    schema_name: str
    record: Mapping[str, Any]
    key: str | bytes | uuid.UUID
    topic: str | None = None
    correlation_id: str | None = None


async def add_events(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    codec: Encoder,
    events: Sequence[OutboxEvent],
    *,
    notify: bool = False,
) -> None:
    """`add_event` for many events in one round trip (group commit of many transfers).

    The advisory locks of all their keys are taken in one sorted statement, so
    concurrent writers never deadlock on them and each key's ids follow commit order.
    """
    if not events:
        return
    rows, locks = _event_rows(codec, events)
    await conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(:table_lock, k) "
            "FROM unnest(CAST(:keys AS integer[])) AS k ORDER BY k"
        ),
        {"table_lock": _key_lock_space(table), "keys": locks},
    )
    await conn.execute(table.insert(), rows)
    if notify:
        await conn.execute(select(func.pg_notify(notify_channel(table), "")))


async def add_events_driver(
    pg: Any, table: Table, codec: Encoder, events: Sequence[OutboxEvent], *, notify: bool = False
) -> None:
    """`add_events` on a raw asyncpg connection (`tickertap.db.DriverTransaction.pg`), in one
    round trip: the key locks, the rows and the notification are one statement."""
    await insert_events_driver(pg, table, encode_events(codec, events), notify=notify)


@dataclass(frozen=True, slots=True)
class EncodedEvents:
    """Events encoded as outbox rows (`encode_events`), for `insert_events_driver`."""

    locks: list[int]  # the keys' advisory locks, sorted
    event_ids: list[uuid.UUID]
    topics: list[str]
    keys: list[bytes]
    values: list[bytes]
    headers: list[str]  # JSON objects

    def __len__(self) -> int:
        return len(self.event_ids)


def encode_events(codec: Encoder, events: Sequence[OutboxEvent]) -> EncodedEvents:
    """`events` encoded and checked as `add_events` does, without touching the database:
    so a transaction can encode them while Postgres runs its previous statement."""
    rows, locks = _event_rows(codec, events)
    return EncodedEvents(
        locks,
        [r["event_id"] for r in rows],
        [r["topic"] for r in rows],
        [r["key"] for r in rows],
        [r["value"] for r in rows],
        [orjson.dumps(r["headers"]).decode() for r in rows],  # json.dumps: ~10x the time
    )


async def insert_events_driver(
    pg: Any, table: Table, encoded: EncodedEvents, *, notify: bool = False
) -> None:
    """The rows of `encode_events` into `table`, as `add_events_driver` writes them."""
    if not encoded:
        return
    notification = f", {notify_sql(table)}" if notify else ""
    await pg.fetchval(
        f"WITH {outbox_ctes(table, 1)} SELECT count(*){notification} FROM outbox_rows",  # noqa: S608  # nosec B608  # see outbox_ctes
        *outbox_params(table, encoded),
    )


def outbox_ctes(table: Table, first: int, *, after: Sequence[str] = ()) -> str:
    """Common table expressions `outbox_locks` and `outbox_rows` that insert `encoded`
    events into `table`, for a statement that writes them with its own changes (one round
    trip); their values are `outbox_params(table, encoded)`, bound as $first to $first+6.

    The key locks are an InitPlan of the INSERT's filter, so all are held (taken in sorted
    order: volatile functions run after the sort) before the first id is drawn. `after`
    names CTEs of the statement that must run before the key locks are taken: what they
    lock or wait for (row locks, unique keys) comes first in the statement's lock order,
    as it does in a transaction that writes its changes before its events."""
    # Identifiers come from the service's own Table, quoted; every value is a $n parameter.
    assert table.schema, "an outbox lives in its service's schema"
    name = ".".join('"' + part.replace('"', '""') + '"' for part in (table.schema, table.name))
    p = [f"${first + i}" for i in range(7)]
    counts = " + ".join(f"(SELECT count(*) FROM {cte})" for cte in after)  # noqa: S608  # nosec B608
    first_ = f" WHERE {counts} >= 0" if after else ""
    return (
        "outbox_locks AS MATERIALIZED ("  # noqa: S608 - see above  # nosec B608
        f"  SELECT pg_advisory_xact_lock({p[0]}::integer, k) FROM unnest({p[1]}::integer[]) AS k"
        f"{first_} ORDER BY k"
        "), outbox_rows AS ("
        f"  INSERT INTO {name} (event_id, topic, key, value, headers)"
        "  SELECT r.e, r.t, r.k, r.v, CAST(r.h AS jsonb)"
        f"  FROM unnest({p[2]}::uuid[], {p[3]}::text[], {p[4]}::bytea[], {p[5]}::bytea[],"
        f"    {p[6]}::text[]) AS r(e, t, k, v, h)"
        "  WHERE (SELECT count(*) FROM outbox_locks) >= 0"
        "  RETURNING 1"
        ")"
    )


def outbox_params(table: Table, encoded: EncodedEvents) -> list[Any]:
    """The values of `outbox_ctes`, in order."""
    return [
        _key_lock_space(table),
        encoded.locks,
        encoded.event_ids,
        encoded.topics,
        encoded.keys,
        encoded.values,
        encoded.headers,
    ]


def notify_sql(table: Table) -> str:
    """The SQL expression that announces new rows of `table` (see `notify_channel`)."""
    return f"pg_notify('{notify_channel(table)}', '')"


def _key_lock_space(table: Table) -> int:
    return _hash_int(f"tickertap.outbox.key:{table.fullname}", 4)


def _event_rows(
    codec: Encoder, events: Sequence[OutboxEvent]
) -> tuple[list[dict[str, Any]], list[int]]:
    """The outbox rows of `events` and their sorted key locks."""
    rows = []
    key_locks: set[int] = set()
    for event in events:
        key_bytes = _key_bytes(event.key)
        assert 0 < len(key_bytes) <= EVENT_KEY_BYTES_MAX, "the key is the aggregate id"
        value = codec.encode(event.schema_name, event.record)
        assert len(value) <= EVENT_VALUE_BYTES_MAX, "event too large"
        event_id = event.record["event_id"]
        if not isinstance(event_id, uuid.UUID):
            event_id = uuid.UUID(str(event_id))
        headers = {h.EVENT_ID: str(event_id), h.SCHEMA: event.schema_name}
        correlation_id = event.correlation_id or h.correlation_id_var.get()
        if correlation_id:
            headers[h.CORRELATION_ID] = correlation_id
        rows.append(
            {
                "event_id": event_id,
                "topic": event.topic or event.schema_name,
                "key": key_bytes,
                "value": value,
                "headers": headers,
            }
        )
        key_locks.add(_hash_int(key_bytes.hex(), 4))
    return rows, sorted(key_locks)
