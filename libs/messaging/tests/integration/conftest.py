"""The real Postgres (schema `ledger`, Vault-issued login), the real broker and fresh names.

Every table a test makes is called `<prefix>_<name>` with a prefix unique to the run and is
dropped at the end; every topic is `msgtest.<name>_<hex>.v1` (and its `.dlq.v1`), created
explicitly with AdminClient and deleted at the end.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tickertap.messaging.consumer import inbox_table
from tickertap.messaging.outbox import outbox_table

# the tests and kill_consumer.py share messaging_testkit.py, next to this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

from messaging_testkit import SCHEMA, create_topics, effects_table


@dataclass(frozen=True)
class Database:
    url: str
    engine: AsyncEngine
    prefix: str


@pytest.fixture(scope="session")
async def database(stack: Any, vault_root: Any) -> AsyncIterator[Database]:
    secret = vault_root.secrets.database.generate_credentials("ledger")
    creds = secret["data"]
    url = (
        f"postgresql+asyncpg://{creds['username']}:{creds['password']}"
        f"@{stack.pg_host}:{stack.pg_port}/{stack.database}"
    )
    engine = create_async_engine(url, pool_size=10, max_overflow=10)
    prefix = f"msgt_{uuid.uuid4().hex[:8]}"
    yield Database(url, engine, prefix)
    async with engine.begin() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = :schema "
                    "AND tablename LIKE :pattern"
                ),
                {"schema": SCHEMA, "pattern": f"{prefix}%"},
            )
        ).scalars()
        for name in names:
            await conn.execute(text(f'DROP TABLE IF EXISTS {SCHEMA}."{name}"'))
    await engine.dispose()
    vault_root.sys.revoke_lease(secret["lease_id"])


@dataclass(frozen=True)
class Tables:
    outbox: Table
    inbox: Table
    effects: Table


@pytest.fixture
async def tables(database: Database) -> Tables:
    """A fresh outbox, inbox and effects table for one test."""
    metadata = MetaData()
    base = f"{database.prefix}_{uuid.uuid4().hex[:6]}"
    made = Tables(
        outbox_table(metadata, SCHEMA, f"{base}_outbox"),
        inbox_table(metadata, SCHEMA, f"{base}_inbox"),
        effects_table(metadata, f"{base}_effects"),
    )
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return made


@pytest.fixture(scope="session")
def admin(stack: Any) -> Iterator[AdminClient]:
    client = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    created: list[str] = []
    client._tickertap_created = created  # type: ignore[attr-defined]
    yield client
    if created:
        for future in client.delete_topics(created, operation_timeout=10).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=15)


@pytest.fixture
def topic(admin: AdminClient) -> Callable[..., str]:
    """`topic("orders", partitions=3)` -> a fresh `msgtest.orders_<hex>.v1` and its DLQ."""

    def make(name: str = "events", partitions: int = 3, *, dlq: bool = True) -> str:
        base = f"msgtest.{name}_{uuid.uuid4().hex[:8]}"
        names = {f"{base}.v1": partitions}
        if dlq:
            names[f"{base}.dlq.v1"] = 1
        create_topics(admin, names)
        return f"{base}.v1"

    return make
