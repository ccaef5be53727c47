"""A unit of work over one database transaction, and bounded retries of whole units.

    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(...)
        await uow.commit()        # nothing is written unless commit() is called

Leaving the block without commit(), or by an exception, rolls back.

`with_retries` runs a whole unit again on serialization failures, deadlocks and
connections lost *before* COMMIT was sent. A connection lost during COMMIT
leaves the outcome unknown (the transaction may be durable): that raises
`CommitOutcomeUnknown`, which is never retried blindly; units that must
survive it carry a caller-chosen id and treat its unique violation as success.

`DriverTransaction` is the same unit straight on the asyncpg connection under a pooled
SQLAlchemy one, for the few hot paths where SQLAlchemy's per-statement work (about
0.2 ms of CPU each) is most of the cost: BEGIN and a setup statement go in one round
trip, statements are asyncpg's own prepared ones, and errors are asyncpg's (which
`is_retryable` classifies by SQLSTATE just the same).

`driver_statements` is the asyncpg connection outside any explicit transaction, for a
unit that is a single writing statement (which commits on its own); such a statement
lost in flight leaves its outcome unknown just the same (`statement_outcome`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
log = logging.getLogger(__name__)

# serialization_failure, deadlock_detected, and the server going away
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


class CommitOutcomeUnknown(Exception):
    """The connection failed while COMMIT was in flight: the work may or may not be durable."""


class UnitOfWork:
    """One transaction on a writer (or reader) engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._committed = False

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None, "use the unit of work inside `async with`"
        return self._connection

    async def __aenter__(self) -> Self:
        self._connection = await self._engine.connect()
        await self._connection.begin()
        self._committed = False
        return self

    async def commit(self) -> None:
        try:
            await self.connection.commit()
        except Exception as exc:
            if is_retryable(exc) and not _is_serialization_failure(exc):
                raise CommitOutcomeUnknown(type(exc).__name__) from exc
            raise
        self._committed = True

    async def rollback(self) -> None:
        await self.connection.rollback()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self.connection, None
        try:
            if not self._committed and connection.in_transaction():
                await connection.rollback()
        finally:
            await connection.close()


class DriverTransaction:
    """One transaction on the raw asyncpg connection of a pooled SQLAlchemy connection.

        async with DriverTransaction(engine, setup="SELECT set_config(...)") as tx:
            rows = await tx.pg.fetch("SELECT ... WHERE id = ANY($1)", ids)
            await tx.commit()

    Leaving without commit(), or by an exception, rolls back; a connection whose state is
    unknown (ROLLBACK failed) is invalidated, never returned to the pool. `setup` is SQL
    without parameters, sent in BEGIN's round trip (for example the row-level-security
    settings of the transaction).
    """

    def __init__(self, engine: AsyncEngine, *, setup: str | None = None) -> None:
        self._engine = engine
        self._begin = "BEGIN" if setup is None else f"BEGIN; {setup}"
        self._connection: AsyncConnection | None = None
        self._pg: Any = None
        self._open = False

    @property
    def pg(self) -> Any:
        """The asyncpg `Connection`, inside the transaction."""
        assert self._open, "use the transaction inside `async with`"
        return self._pg

    async def __aenter__(self) -> Self:
        connection = await self._engine.connect()
        try:
            raw = await connection.get_raw_connection()
            self._pg = raw.driver_connection
            await self._pg.execute(self._begin)
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        self._connection = connection
        self._open = True
        return self

    async def commit(self) -> None:
        self._open = False
        try:
            await self._pg.execute("COMMIT")
        except Exception as exc:
            if is_retryable(exc) and not _is_serialization_failure(exc):
                raise CommitOutcomeUnknown(type(exc).__name__) from exc
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        assert connection is not None
        try:
            if self._open or exc_type is not None:
                self._open = False
                try:
                    await self._pg.execute("ROLLBACK")  # also ends a failed COMMIT's block
                except BaseException as rollback_error:
                    await connection.invalidate()  # its state is unknown: never pooled again
                    if exc_type is None or not isinstance(rollback_error, Exception):
                        raise
                    # the error that ended the block (say CommitOutcomeUnknown) is the news
                    log.warning("ROLLBACK failed after %s: %r", exc_type.__name__, rollback_error)
        finally:
            self._pg = None
            await connection.close()


@contextlib.asynccontextmanager
async def driver_statements(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection of a pooled SQLAlchemy one, outside any transaction: each
    statement is its own. A connection whose state is unknown after an error (lost, or
    a statement cancelled in flight) is invalidated, never pooled again."""
    connection = await engine.connect()
    try:
        raw = await connection.get_raw_connection()
        pg: Any = raw.driver_connection
        try:
            yield pg
        except BaseException as exc:
            if (
                not isinstance(exc, Exception)
                or is_retryable(exc)
                or isinstance(exc, CommitOutcomeUnknown)
                or pg.is_closed()
                or pg.is_in_transaction()
            ):
                await connection.invalidate()
            raise
    finally:
        await connection.close()


def statement_outcome(exc: Exception) -> Exception:
    """What a failed single-statement unit (its own transaction) raises, as COMMIT does: a
    connection lost (or the server going away) while it was in flight leaves it perhaps
    committed (`CommitOutcomeUnknown`); a serialization failure, a deadlock or any other
    error means nothing was written (the error itself)."""
    if is_retryable(exc) and not _is_serialization_failure(exc):
        return CommitOutcomeUnknown(type(exc).__name__)
    return exc


@dataclass(frozen=True)
class RetryPolicy:
    attempts_max: int = 5
    backoff_s_base: float = 0.01
    backoff_s_max: float = 1.0


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    sqlstate = getattr(exc, "sqlstate", None)  # asyncpg's own errors (DriverTransaction)
    return sqlstate if isinstance(sqlstate, str) else None


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, from SQLAlchemy's wrapper or asyncpg itself."""
    return _sqlstate(exc)


def _is_serialization_failure(exc: BaseException) -> bool:
    # raised by the server at COMMIT under SERIALIZABLE: the transaction did not commit
    return _sqlstate(exc) in {"40001", "40P01"}


def is_retryable(exc: BaseException) -> bool:
    """Serialization failures, deadlocks and lost connections: safe to run the unit again."""
    state = _sqlstate(exc)
    if state in RETRYABLE_SQLSTATES or (state or "").startswith("08"):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, InterfaceError | OperationalError) and state is None:
            return True
    return isinstance(exc, ConnectionError | TimeoutError)


async def with_retries(unit: Callable[[], Awaitable[T]], policy: RetryPolicy = RetryPolicy()) -> T:
    """Run `unit` (a whole transaction) again on retryable errors, with jittered backoff."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await unit()
        except Exception as exc:
            if attempt >= policy.attempts_max or not is_retryable(exc):
                raise
            ceiling_s = min(policy.backoff_s_max, policy.backoff_s_base * 2**attempt)
            await asyncio.sleep(random.uniform(0, ceiling_s))  # noqa: S311 - jitter, not crypto  # nosec B311
