"""Units of work, retries and the reader engine, against the real Postgres and OpenBao."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tickertap.db import (
    CommitOutcomeUnknown,
    DatabaseSettings,
    DriverTransaction,
    RetryPolicy,
    UnitOfWork,
    create_engine,
    driver_statements,
    is_retryable,
    sqlstate,
    statement_outcome,
    with_retries,
)
from tickertap.secrets import AppRoleLogin, CredentialRotator, Vault


@pytest.fixture
async def engines(stack, approle_secret_id):
    vault = Vault(stack.vault_addr)
    await vault.login_approle(AppRoleLogin(stack.role_id("ledger"), approle_secret_id("ledger")))
    rotator = CredentialRotator(vault, "ledger")
    await rotator.start()
    settings = DatabaseSettings(
        host=stack.pg_host, port=stack.pg_port, name=stack.database, schema="ledger"
    )
    writer = create_engine(settings, rotator, application_name="db-test")
    reader = create_engine(settings, rotator, application_name="db-test-reader", read_only=True)
    table = f"uow_{uuid.uuid4().hex[:8]}"
    async with writer.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"))
        await conn.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))
    yield writer, reader, table
    async with writer.begin() as conn:
        await conn.execute(text(f"DROP TABLE {table}"))
    await writer.dispose()
    await reader.dispose()
    await rotator.stop()
    vault.close()


async def count(engine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


async def test_unit_of_work_writes_only_on_commit(engines):
    writer, _, table = engines
    async with UnitOfWork(writer) as uow:
        await uow.connection.execute(text(f"INSERT INTO {table} VALUES (2, 0)"))
    assert await count(writer, table) == 1  # left without commit: rolled back

    with pytest.raises(RuntimeError):
        async with UnitOfWork(writer) as uow:
            await uow.connection.execute(text(f"INSERT INTO {table} VALUES (3, 0)"))
            raise RuntimeError("handler failed")
    assert await count(writer, table) == 1

    async with UnitOfWork(writer) as uow:
        await uow.connection.execute(text(f"INSERT INTO {table} VALUES (4, 0)"))
        await uow.commit()
    assert await count(writer, table) == 2


async def test_serialization_failures_are_retried_until_each_unit_commits(engines):
    writer, _, table = engines
    attempts = 0

    async def increment() -> None:
        nonlocal attempts
        attempts += 1
        async with writer.connect() as conn:
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
            n = await conn.scalar(text(f"SELECT n FROM {table} WHERE id = 1"))
            await asyncio.sleep(0.01)  # let the others read the same row
            await conn.execute(text(f"UPDATE {table} SET n = :n WHERE id = 1"), {"n": n + 1})
            await conn.commit()

    policy = RetryPolicy(attempts_max=50, backoff_s_base=0.005, backoff_s_max=0.05)
    await asyncio.gather(*(with_retries(increment, policy) for _ in range(8)))
    async with writer.connect() as conn:
        assert await conn.scalar(text(f"SELECT n FROM {table} WHERE id = 1")) == 8
    assert attempts > 8  # some units really hit 40001 and ran again


async def test_errors_that_are_not_transient_are_not_retried(engines):
    writer, _, table = engines
    attempts = 0

    async def duplicate() -> None:
        nonlocal attempts
        attempts += 1
        async with writer.begin() as conn:
            await conn.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))

    with pytest.raises(DBAPIError):
        await with_retries(duplicate)
    assert attempts == 1


async def test_reader_engine_refuses_writes(engines):
    _, reader, table = engines
    async with reader.connect() as conn:
        assert await conn.scalar(text(f"SELECT n FROM {table} WHERE id = 1")) == 0
        with pytest.raises(DBAPIError) as refused:
            await conn.execute(text(f"UPDATE {table} SET n = 5"))
        assert getattr(refused.value.orig, "sqlstate", None) == "25006"


async def test_driver_transaction_writes_only_on_commit_and_returns_a_clean_connection(engines):
    writer, _, table = engines
    async with DriverTransaction(writer, setup="SET LOCAL lock_timeout = '5s'") as tx:
        await tx.pg.execute(f"INSERT INTO {table} VALUES (2, 0)")
        assert await tx.pg.fetchval("SHOW lock_timeout") == "5s"  # setup ran in the block
    assert await count(writer, table) == 1  # left without commit: rolled back

    with pytest.raises(asyncpg.UniqueViolationError) as failed:
        async with DriverTransaction(writer) as tx:
            await tx.pg.execute(f"INSERT INTO {table} VALUES (3, 0)")
            await tx.pg.execute(f"INSERT INTO {table} VALUES (1, 0)")
    assert sqlstate(failed.value) == "23505"
    assert not is_retryable(failed.value)
    assert await count(writer, table) == 1

    async with DriverTransaction(writer) as tx:
        await tx.pg.execute(f"INSERT INTO {table} VALUES (4, 0)")
        await tx.commit()
    assert await count(writer, table) == 2
    with pytest.raises(RuntimeError):
        async with DriverTransaction(writer) as tx:
            pg = tx.pg
            assert pg.is_in_transaction()
            raise RuntimeError("handler failed")
    assert not pg.is_in_transaction()  # back in the pool outside any transaction


async def test_driver_transaction_serialization_failures_are_retried(engines):
    writer, _, table = engines

    async def increment() -> None:
        async with DriverTransaction(
            writer, setup="SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        ) as tx:
            n = await tx.pg.fetchval(f"SELECT n FROM {table} WHERE id = 1")
            await asyncio.sleep(0.01)
            await tx.pg.execute(f"UPDATE {table} SET n = $1 WHERE id = 1", n + 1)
            await tx.commit()

    policy = RetryPolicy(attempts_max=50, backoff_s_base=0.005, backoff_s_max=0.05)
    await asyncio.gather(*(with_retries(increment, policy) for _ in range(8)))
    assert await count(writer, table) == 1
    async with writer.connect() as conn:
        assert await conn.scalar(text(f"SELECT n FROM {table} WHERE id = 1")) == 8


async def test_driver_statements_commit_one_by_one_and_name_a_lost_statements_outcome(
    engines, stack
):
    writer, _, table = engines
    with pytest.raises(asyncpg.UniqueViolationError) as failed:
        async with driver_statements(writer) as pg:
            await pg.execute(f"INSERT INTO {table} VALUES (5, 0)")  # its own transaction
            assert not pg.is_in_transaction()
            await pg.execute(f"INSERT INTO {table} VALUES (6, 0), (1, 0)")  # fails whole
    assert statement_outcome(failed.value) is failed.value  # the server said: not written
    async with writer.connect() as conn:
        ids = await conn.scalars(text(f"SELECT id FROM {table} ORDER BY id"))
        assert list(ids) == [1, 5]

    with pytest.raises(CommitOutcomeUnknown):  # its server went away: maybe written
        async with driver_statements(writer) as pg:
            lost = pg
            sleeping = asyncio.ensure_future(pg.execute("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.2)
            admin = await asyncpg.connect(stack.pg_admin_url)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", lost.get_server_pid())
            finally:
                await admin.close()
            try:
                await sleeping
            except Exception as exc:
                assert sqlstate(exc) in {"08003", "57P01"}, repr(exc)  # noqa: PT017
                raise statement_outcome(exc) from exc
    assert lost.is_closed()
    assert not is_retryable(CommitOutcomeUnknown("ConnectionDoesNotExistError"))
    assert (
        statement_outcome(asyncpg.SerializationError("x")).__class__ is asyncpg.SerializationError
    )

    with pytest.raises(TimeoutError):  # cancelled in flight: that connection is not reused
        async with driver_statements(writer) as pg:
            cancelled = pg
            await asyncio.wait_for(pg.execute("SELECT pg_sleep(5)"), 0.2)
    assert cancelled.is_closed()
    async with driver_statements(writer) as pg:
        assert pg is not cancelled
        assert await pg.fetchval("SELECT 1") == 1
