"""The outbox relay: publishes committed outbox rows to Kafka in id order, marks them sent
once the broker has acknowledged them, and deletes sent rows after a retention period.

    relay = OutboxRelay(engine, outbox, bootstrap_servers)
    task = asyncio.create_task(relay.run())     # in the service's lifespan
    ...
    relay.stop(); await task                    # finishes the batch in flight

One relay per outbox publishes at a time: `run()` first takes a session-level Postgres
advisory lock (`outbox.lock_key(table)`) on a connection it keeps, and does all its outbox
work on that connection, so replicas wait as hot standbys and take over when the holder's
session ends. A batch is fetched (up to `batch_max` rows, by id), produced, and only when
every delivery report has come back are the rows marked sent, in one UPDATE; the next
batch starts after that. When a delivery fails, the acknowledged prefix is marked sent and
the rest is retried, after a backoff doubling up to `retry_backoff_s_max`, from the first
unacknowledged row: delivery is at least once and a consumer's inbox drops the repeats.

Errors: a transient database error (lost connection, failover) makes the relay drop its
connection, back off and take the lock again; any other database error ends `run()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Table, delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from tickertap.messaging import kafka
from tickertap.messaging.headers import encode_headers
from tickertap.messaging.outbox import lock_key, notify_channel
from tickertap.messaging.retry import backoff_delay_s, is_transient_error

__all__ = [
    "OutboxRelay",
    "RelayStats",
    "outbox_backlog",
    "purge_sent",
    "replay",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
ERROR_CHARS_MAX = 1000


@dataclass
class RelayStats:
    """Counters since start, for metrics; `leader` tells whether this replica publishes."""

    published: int = 0
    batches: int = 0
    failed_batches: int = 0
    purged: int = 0
    leader: bool = False


class _DeliveryFailed(Exception):
    pass


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        bootstrap_servers: str,
        *,
        producer_overrides: Mapping[str, Any] | None = None,
        batch_max: int = 500,
        poll_interval_s: float = 0.2,
        delivery_timeout_s: float = 30.0,
        retry_backoff_s_min: float = 0.1,
        retry_backoff_s_max: float = 30.0,
        retention_s: float = 7 * 24 * 3600.0,
        purge_interval_s: float = 60.0,
        purge_batch_max: int = 10_000,
        standby_poll_interval_s: float = 1.0,
        listen: bool = False,
        linger_s: float = 0.0,
    ) -> None:
        assert 0 < batch_max <= 100_000
        assert 0 < poll_interval_s <= 60
        assert 0 <= linger_s <= 1
        assert 0 < delivery_timeout_s <= 600
        assert 0 < retry_backoff_s_min <= retry_backoff_s_max <= 3600
        assert retention_s >= 0
        assert purge_interval_s > 0
        assert purge_batch_max > 0
        self._engine = engine
        self._table = table
        self._sql = _relay_sql(table)
        self._producer = kafka.ProducerSlot(
            kafka.producer_config(
                bootstrap_servers,
                {
                    "message.timeout.ms": int(delivery_timeout_s * 1000),
                    **(producer_overrides or {}),
                },
            )
        )
        self.batch_max = batch_max
        self.poll_interval_s = poll_interval_s
        self.delivery_timeout_s = delivery_timeout_s
        self.retry_backoff_s_min = retry_backoff_s_min
        self.retry_backoff_s_max = retry_backoff_s_max
        self.retention_s = retention_s
        self.purge_interval_s = purge_interval_s
        self.purge_batch_max = purge_batch_max
        self.standby_poll_interval_s = standby_poll_interval_s
        # After a short batch, wait this long before the next fetch, so that the rows of
        # many small commits go out in one batch: a fetch, a flush and a mark per batch
        # cost more than the rows themselves. Events are later by up to this much.
        self.linger_s = linger_s
        self.listen = listen
        self.stats = RelayStats()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._database_failures = 0  # in a row: a batch that gets through resets it

    # -- public ----------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until `stop()`; returns after the batch in flight is marked."""
        assert self._executor is None, "run() is already running"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-relay")
        try:
            while not self._stopping.is_set():
                try:
                    async with self._leadership() as conn:
                        if conn is None:
                            return
                        await self._lead(conn)
                except Exception as exc:
                    if not is_transient_error(exc):
                        raise
                    self._database_failures += 1
                    delay_s = self._backoff_s(self._database_failures)
                    log.warning(
                        "outbox relay %s: database unavailable (%s); retrying in %.2f s",
                        self._table.fullname,
                        type(exc).__name__,
                        delay_s,
                    )
                    await self._pause(delay_s)
        finally:
            await self._in_thread(self._producer.close)
            self._executor.shutdown(wait=False)
            self._executor = None

    def stop(self) -> None:
        """Ask `run()` to return after the batch in flight; safe to call more than once."""
        self._stopping.set()
        self._wake.set()

    async def backlog(self) -> int:
        """How many rows wait to be published (for a gauge); any replica may ask."""
        async with self._engine.connect() as conn:
            return await outbox_backlog(conn, self._table)

    async def publish_batch(self, conn: AsyncConnection) -> int:
        """Publish the oldest unsent rows (at most `batch_max`) and mark them sent; returns
        how many. The caller holds the relay lock (`run()` does); tests may call it alone.

        The fetch and the marks are single statements on the raw asyncpg connection (each
        its own transaction): SQLAlchemy's compile of `id IN (...)` for every batch length
        cost more than the publishing itself."""
        driver = await _driver(conn)
        rows = await driver.fetch(self._sql["fetch"], self.batch_max)
        if not rows:
            return 0
        messages = [
            kafka.OutgoingMessage(
                row["topic"], row["key"], row["value"], encode_headers(json.loads(row["headers"]))
            )
            for row in rows
        ]
        deliveries = await self._in_thread(
            kafka.deliver, self._producer.get(), messages, self.delivery_timeout_s + 5
        )
        acked = 0
        while acked < len(deliveries) and deliveries[acked].ok:
            acked += 1
        failed_errors = [d.error for d in deliveries[acked:] if d.error is not None]
        await self._mark(
            driver,
            acked_ids=[int(row["id"]) for row in rows[:acked]],
            failed_ids=[int(row["id"]) for row in rows[acked:]],
            error=kafka.describe(failed_errors[0])[:ERROR_CHARS_MAX] if failed_errors else None,
        )
        self.stats.batches += 1
        self.stats.published += acked
        if acked < len(rows):
            self.stats.failed_batches += 1
            first_error = deliveries[acked].error
            assert first_error is not None
            if kafka.needs_new_producer(deliveries):
                await self._in_thread(self._producer.close, True)  # a new one next time
            raise _DeliveryFailed(
                f"{len(rows) - acked} of {len(rows)} rows not acknowledged, first from id "
                f"{rows[acked]['id']}: {kafka.describe(first_error)} "
                f"(failures by error: {dict(kafka.summarize(deliveries))})"
            )
        return acked

    # -- leadership --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[AsyncConnection | None]:
        """A connection holding the relay lock of this outbox, or None once stopping."""
        key = literal(lock_key(self._table), BigInteger)
        conn: AsyncConnection | None = None
        while conn is None:
            if self._stopping.is_set():
                yield None
                return
            candidate = await self._engine.connect()
            try:
                acquired = (
                    await candidate.execute(select(func.pg_try_advisory_lock(key)))
                ).scalar_one()
                await candidate.commit()
            except BaseException:
                await _discard(candidate)
                raise
            if acquired:
                conn = candidate
            else:
                await candidate.close()
                await self._pause(self.standby_poll_interval_s)
        log.info("outbox relay %s: publishing (lock held)", self._table.fullname)
        self.stats.leader = True
        try:
            if self.listen:
                await self._listen(conn)
            yield conn
        finally:
            self.stats.leader = False
            # the session ends with the connection: lock and LISTEN go with it
            await _discard(conn)

    async def _listen(self, conn: AsyncConnection) -> None:
        driver = await _driver(conn)
        add_listener = getattr(driver, "add_listener", None)
        if add_listener is None:
            log.warning("outbox relay: driver has no LISTEN support; polling only")
            return

        def wake(*_: object) -> None:
            self._wake.set()

        await add_listener(notify_channel(self._table), wake)

    async def _lead(self, conn: AsyncConnection) -> None:
        failures = 0
        purge_due = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() >= purge_due:
                self.stats.purged += await self._purge(conn)
                purge_due = time.monotonic() + self.purge_interval_s
            self._wake.clear()
            try:
                published = await self.publish_batch(conn)
            except _DeliveryFailed as exc:
                failures += 1
                delay_s = self._backoff_s(failures)
                log.warning(
                    "outbox relay %s: %s; retrying in %.2f s", self._table.fullname, exc, delay_s
                )
                await self._pause(delay_s)
                continue
            failures = 0
            self._database_failures = 0
            if published < self.batch_max:
                await self._wait_for_rows()
                if self.linger_s and self._wake.is_set():  # rows came: let more join them
                    await self._pause(self.linger_s)

    # -- database ------------------------------------------------------------------------

    async def _mark(
        self, driver: Any, *, acked_ids: list[int], failed_ids: list[int], error: str | None
    ) -> None:
        if acked_ids:
            await driver.execute(self._sql["sent"], acked_ids)
        if failed_ids:
            await driver.execute(self._sql["failed"], failed_ids, error)

    async def _purge(self, conn: AsyncConnection) -> int:
        async with conn.begin():
            return await purge_sent(
                conn, self._table, older_than_s=self.retention_s, batch_max=self.purge_batch_max
            )

    # -- producer and waiting -------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _backoff_s(self, attempt: int) -> float:
        return backoff_delay_s(
            attempt, delay_s_min=self.retry_backoff_s_min, delay_s_max=self.retry_backoff_s_max
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_rows(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)


def _relay_sql(table: Table) -> dict[str, str]:
    """The relay's hot statements, in asyncpg's $n style (identifiers quoted)."""
    assert table.schema, "an outbox lives in its service's schema"
    name = ".".join('"' + part.replace('"', '""') + '"' for part in (table.schema, table.name))
    return {
        "fetch": (
            f"SELECT id, topic, key, value, headers::text AS headers FROM {name} "  # noqa: S608  # nosec B608  # the quoted name of the service's own outbox table
            "WHERE sent_at IS NULL ORDER BY id LIMIT $1"
        ),
        "sent": (
            f"UPDATE {name} SET sent_at = now(), attempts = attempts + 1, "  # noqa: S608  # nosec B608  # as above
            "last_error = NULL WHERE id = ANY($1::bigint[])"
        ),
        "failed": (
            f"UPDATE {name} SET attempts = attempts + 1, last_error = $2 "  # noqa: S608  # nosec B608  # as above
            "WHERE id = ANY($1::bigint[])"
        ),
    }


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn` (which must not be inside a transaction)."""
    return (await conn.get_raw_connection()).driver_connection


async def _discard(conn: AsyncConnection) -> None:
    """Close a connection without returning its session (and advisory locks) to the pool."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


async def outbox_backlog(conn: AsyncConnection | AsyncSession, table: Table) -> int:
    """How many rows of `table` are not yet sent."""
    result = await conn.execute(
        select(func.count()).select_from(table).where(table.c.sent_at.is_(None))
    )
    return int(result.scalar_one())


async def replay(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    *,
    since_id: int | None = None,
    since_time: dt.datetime | None = None,
    topic: str | None = None,
) -> int:
    """Mark sent rows unsent again, from row `since_id` or those created at or after
    `since_time` (optionally one topic), in the caller's transaction; the relay publishes
    them again, in id order. Returns how many. Only rows still retained can be replayed."""
    assert (since_id is None) != (since_time is None), "give exactly one of since_id, since_time"
    statement = update(table).where(table.c.sent_at.is_not(None)).values(sent_at=None)
    if since_id is not None:
        statement = statement.where(table.c.id >= since_id)
    if since_time is not None:
        assert since_time.tzinfo is not None, "since_time must be timezone-aware"
        statement = statement.where(table.c.created_at >= since_time)
    if topic is not None:
        statement = statement.where(table.c.topic == topic)
    result = await conn.execute(statement)
    return int(getattr(result, "rowcount", 0))


async def purge_sent(
    conn: AsyncConnection | AsyncSession, table: Table, *, older_than_s: float, batch_max: int
) -> int:
    """Delete at most `batch_max` rows sent more than `older_than_s` seconds ago, oldest
    first, in the caller's transaction; returns how many."""
    cutoff = func.now() - dt.timedelta(seconds=older_than_s)
    doomed = (
        select(table.c.id)
        .where(table.c.sent_at.is_not(None), table.c.sent_at < cutoff)
        .order_by(table.c.sent_at)
        .limit(batch_max)
        .scalar_subquery()
    )
    result = await conn.execute(delete(table).where(table.c.id.in_(doomed)))
    return int(getattr(result, "rowcount", 0))
