"""Live portfolio updates: every changed portfolio's latest state on portfolio.updates.v1,
at most one update per portfolio per interval.

Why in memory: under a busy feed nearly every portfolio changes within an interval, so
10,000 portfolios at the default 250 ms want up to 40,000 updates a second. Reading each
portfolio back from Postgres and writing each update through the outbox costs far more
than that allows on a small machine; so the leader keeps what valuation needs of every
portfolio in memory (`Book`: positions' figures, cash, the latest prices) and produces
the updates straight to Kafka (`LivePublisher`).

Postgres stays the only source of truth. The transactions that change a portfolio (a
transfer applied) or a price announce it at commit (`repo.notify_changes`: LISTEN/NOTIFY
delivers only committed changes, in commit order); the leader listens BEFORE it loads
the book, then reloads the portfolios each announcement names from the database, and
takes the prices it carries (the rows as stored: a price batch's announcement costs no
query). So the book only ever holds committed state, and no change between the load and
the first announcement is missed.

One leader at a time (a session advisory lock, like the outbox relay): the other
replicas stand by. A leader that loses its database session stops at once; the next one
loads the book afresh and publishes every portfolio's state once, so a consumer that
missed an update (a crash between production and delivery) gets the latest state then.
Updates are snapshots: each replaces the previous one of its portfolio; consumers
deduplicate on `event_id` and can order by `as_of`.

Shards: with `TICKERTAP_UPDATE_PUBLISHER_PROCESSES=N` (N > 0) each replica runs N child
processes (live_process.py), each shard with its own leader lock: on a machine with several
cores the encoding then runs on several. Shard i of N publishes the portfolios whose
partition of portfolio.updates.v1 is i modulo N (the partition every producer of the
project, and the Java client, puts the key on: `kafka.key_partition`). So each partition
has one producer, and its batches are as large as they can be: the local broker's cost
grows with the number of batches it keeps, not with the updates in them. Every replica
must be given the same N, and N should divide the topic's partition count (6 by default:
shards beyond it have nothing to publish). A leader that sees the partition count change
(checked every 30 s) loads its new share afresh; until every shard has, a portfolio can be
published by two shards or by none, so consumers order a portfolio's updates by `as_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.messaging import headers as h
from tickertap.messaging.codec import EncodeError
from tickertap.messaging.kafka import key_partition, producer_config
from tickertap.messaging.outbox import Encoder
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio import wire
from tickertap.portfolio.handlers import UPDATES_TOPIC, Snapshot, update_record
from tickertap.portfolio.metrics import PortfolioMetrics
from tickertap.portfolio.wire import Parts, UpdateWriter

log = logging.getLogger(__name__)

LEADER_LOCK = 0x50465550  # session advisory lock of the live publisher ("PFUP")
LOAD_CHUNK = 2000  # portfolios read per query when the book is loaded
PUBLISH_SLICE = 64  # updates built between two yields to the event loop
# a publishing round gives way to announced changes after this long (a round of
# update_batch_max updates takes ~50 ms under load; a reload per slice would cost more)
RELOAD_AFTER_S = 0.01
PRODUCE_RETRY_S = 0.05  # pause when librdkafka's local queue is full
LIVENESS_CHECK_S = 2.0  # how often the leader's session is checked
PARTITIONS_CHECK_S = 30.0  # how often the leader checks the topic's partition count
PARTITIONS_CHECK_TIMEOUT_S = 2.0  # publishing waits for it
METADATA_TIMEOUT_S = 10.0  # at the start of a leadership
TRUSTED_PIDS_TTL_S = 60.0  # how long announcing sessions found to be the service's are kept
STANDBY_POLL_S = 5.0  # how often a standby tries to become leader
GAUGE_INTERVAL_S = 1.0  # how often the backlog gauges are set while portfolios wait
RETRY_S_MAX = 10.0
PRODUCER_OVERRIDES = {
    "linger.ms": 20,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    # only failed deliveries call back (the producer's on_delivery, see _lead): tens of
    # thousands of successful ones a second would each cost a call into Python
    "delivery.report.only.error": True,
}


@dataclass(slots=True, eq=False)
class _Entry:
    """A portfolio in the book; the same object for as long as the portfolio is in it (its
    holders' sets and the due heap refer to it, so the busy paths hash no ids)."""

    row: repo.PortfolioRow
    figures: list[d.PositionFigures]
    cash: dict[str, Decimal]
    published_at: float = -math.inf  # monotonic seconds
    parts: Parts | None = None  # what its updates share, encoded on first use
    since: float | None = None  # waiting for an update since (monotonic seconds), or not
    ticket: int = -1  # its place in the due heap while it waits


@dataclass(slots=True)
class Backlog:
    dirty: int
    oldest_s: float  # how long the longest-waiting changed portfolio has waited


@dataclass
class Book:
    """What valuing every portfolio needs, and which ones changed since their last update.

    Pure: the caller hands in what it read and the time (monotonic seconds). A portfolio
    is due `interval_s` after its previous update, or at once; `take_due` hands out the
    due ones, longest waiting first.
    """

    interval_s: float
    _entries: dict[uuid.UUID, _Entry] = field(default_factory=dict)
    _holders: dict[str, set[_Entry]] = field(default_factory=dict)  # a non-zero quantity
    _listed: dict[str, int] = field(default_factory=dict)  # portfolios with a position
    _prices: dict[str, repo.StoredPrice] = field(default_factory=dict)
    _waiting: int = 0  # entries with `since` set
    _due: list[tuple[float, int, _Entry]] = field(default_factory=list)  # a heap
    _tickets: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._entries)

    def owners(self) -> list[uuid.UUID]:
        return list(self._entries)

    def symbols(self) -> set[str]:
        """The symbols of some portfolio's positions (their prices are needed)."""
        return set(self._listed)

    def put(
        self,
        row: repo.PortfolioRow,
        figures: list[d.PositionFigures],
        cash: dict[str, Decimal],
        now: float,
    ) -> None:
        """A portfolio's current state (new or changed); it is due for an update."""
        entry = self._entries.get(row.owner_id)
        if entry is None:
            entry = self._entries[row.owner_id] = _Entry(row, figures, cash)
        else:
            self._unhold(entry)
            entry.row, entry.figures, entry.cash, entry.parts = row, figures, cash, None
        for f in figures:
            self._listed[f.symbol] = self._listed.get(f.symbol, 0) + 1
            if f.quantity:
                self._holders.setdefault(f.symbol, set()).add(entry)
        self._mark(entry, now)

    def drop(self, owner: uuid.UUID) -> None:
        """A portfolio that is no longer in the database (a rebuild removed it)."""
        entry = self._entries.pop(owner, None)
        if entry is not None:
            self._unhold(entry)
            if entry.since is not None:
                entry.since = None
                self._waiting -= 1

    def set_prices(
        self, prices: Mapping[str, repo.StoredPrice], now: float, *, announced: bool = False
    ) -> int:
        """The stored prices of some symbols; the holders of each that moved are due.
        How many portfolios became due. `announced`: prices from announcements, which can
        come after a read of the database that saw a later one: a price the book's is newer
        than (`StoredPrice.newer_than`, the database's order) is left out."""
        marked = 0
        for symbol, price in prices.items():
            old = self._prices.get(symbol)
            if old == price:
                continue
            if announced and old is not None and old.newer_than(price):
                continue
            self._prices[symbol] = price
            for entry in self._holders.get(symbol, ()):
                if entry.since is None:  # most wait already, under a busy feed
                    marked += self._mark(entry, now)
        return marked

    def mark(self, owner: uuid.UUID, now: float) -> int:
        """Make a portfolio due (1), unless it is already waiting (0)."""
        entry = self._entries.get(owner)
        return 0 if entry is None else self._mark(entry, now)

    def _mark(self, entry: _Entry, now: float) -> int:
        if entry.since is not None:
            return 0
        entry.since = now
        entry.ticket = ticket = next(self._tickets)
        self._waiting += 1
        heapq.heappush(self._due, (max(now, entry.published_at + self.interval_s), ticket, entry))
        return 1

    def take_due(self, now: float, limit: int) -> list[uuid.UUID]:
        """Up to `limit` due portfolios, longest waiting first; each counts as published
        now (hand it back with `mark` if its update could not be sent)."""
        taken: list[uuid.UUID] = []
        due = self._due
        while due and len(taken) < limit and due[0][0] <= now:
            _, ticket, entry = heapq.heappop(due)
            if entry.since is None or entry.ticket != ticket:
                continue  # dropped since it took this place
            entry.since = None
            entry.published_at = now
            taken.append(entry.row.owner_id)
        self._waiting -= len(taken)
        return taken

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next portfolio is due (0 when one is); None when none waits."""
        due = self._due
        while due:
            at, ticket, entry = due[0]
            if entry.since is not None and entry.ticket == ticket:
                return max(0.0, at - now)
            heapq.heappop(due)
        return None

    @property
    def waiting(self) -> int:
        """How many portfolios changed since their last update."""
        return self._waiting

    def backlog(self, now: float) -> Backlog:
        if not self._waiting:
            return Backlog(0, 0.0)
        waits = [e.since for e in self._entries.values() if e.since is not None]
        return Backlog(len(waits), now - min(waits, default=now))

    def snapshot(self, owner: uuid.UUID, base_currency: str, scales: d.Scales) -> Snapshot:
        """The portfolio valued at the latest prices under both methods."""
        entry = self._entries[owner]
        held = {f.symbol: self._prices[f.symbol] for f in entry.figures if f.symbol in self._prices}
        quotes = {symbol: p.quote for symbol, p in held.items()}
        return Snapshot(
            owner,
            entry.row,
            d.valuate_figures(
                entry.figures, entry.cash, quotes, d.Method.FIFO, base_currency, scales
            ),
            d.valuate_figures(
                entry.figures, entry.cash, quotes, d.Method.AVERAGE, base_currency, scales
            ),
            held,
        )

    def encode(
        self, owner: uuid.UUID, writer: UpdateWriter, event_id: str, occurred_at_us: int
    ) -> tuple[bytes, bytes]:
        """The portfolio's update: its Kafka key and value, framed (see wire.py); WireError
        for a value the schema cannot carry."""
        entry = self._entries[owner]
        parts = entry.parts
        if parts is None:
            parts = entry.parts = writer.parts(entry.row, entry.figures, entry.cash)
        return parts.key, writer.encode(entry.row, parts, self._prices, event_id, occurred_at_us)

    def _unhold(self, entry: _Entry) -> None:
        for f in entry.figures:
            listed = self._listed[f.symbol] - 1
            if listed:
                self._listed[f.symbol] = listed
            else:
                del self._listed[f.symbol]
            holders = self._holders.get(f.symbol)
            if holders is not None:
                holders.discard(entry)
                if not holders:
                    del self._holders[f.symbol]


@dataclass
class _Changes:
    """What the announcements since the last look named: portfolios and symbols to read
    from the database, and stored prices as they came (a later announcement's price of a
    symbol replaces an earlier one's: they arrive in commit order)."""

    owners: set[uuid.UUID] = field(default_factory=set)
    symbols: set[str] = field(default_factory=set)
    # symbol -> the announced price and the announcing session (its backend's pid)
    prices: dict[str, tuple[repo.StoredPrice, int]] = field(default_factory=dict)
    everything: bool = False

    def take(self) -> _Changes:
        taken = _Changes(self.owners, self.symbols, self.prices, self.everything)
        self.owners, self.symbols, self.prices, self.everything = set(), set(), {}, False
        return taken

    def __bool__(self) -> bool:
        return bool(self.owners or self.symbols or self.prices or self.everything)

    def add(self, payload: str, pid: int = 0) -> None:
        try:
            change = json.loads(payload)
            self.owners.update(uuid.UUID(o) for o in change.get("owners", ()))
            self.symbols.update(str(s) for s in change.get("symbols", ()))
            for item in change.get("prices", ()):
                price = repo.price_of_payload(item)
                self.prices[price.quote.symbol] = (price, pid)
            self.everything = self.everything or bool(change.get("all"))
        except (ValueError, TypeError, AttributeError):
            log.warning("unreadable change announcement; reloading every portfolio")
            self.everything = True


class LivePublisher:
    """Runs for the life of the service: leads (see the module's docstring) or stands by."""

    def __init__(
        self,
        engine: AsyncEngine,
        codec: Encoder,
        *,
        bootstrap_servers: str,
        interval_ms: int,
        poll_interval_ms: int,
        batch_max: int,
        base_currency: str,
        scales: d.Scales,
        metrics: PortfolioMetrics,
        lock_key: int = LEADER_LOCK,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        assert 0 <= shard < shards
        self._engine = engine
        self._lock_key = lock_key
        self._shard, self._shards = shard, shards
        self._codec = codec
        self._producer_config = producer_config(bootstrap_servers, PRODUCER_OVERRIDES)
        self._interval_s = interval_ms / 1000
        self._poll_s = poll_interval_ms / 1000
        self._batch_max = batch_max
        self._base_currency = base_currency
        self._scales = scales
        self._metrics = metrics
        self._changes = _Changes()
        self._wake = asyncio.Event()
        self._failed: list[uuid.UUID] = []
        self._writer: UpdateWriter | None = None
        self._trusted_pids: set[int] = set()
        self._trusted_since = -math.inf
        self._partitions = 0  # of the updates topic, as the leadership found it
        self._partition_of: dict[bytes, int] = {}  # by key
        self.book = Book(self._interval_s)

    async def run(self) -> None:
        delay_s = 1.0
        while True:
            try:
                async with self._leadership() as lock_conn:
                    if lock_conn is None:
                        await asyncio.sleep(STANDBY_POLL_S)
                        continue
                    await self._lead(lock_conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "live updates: leadership ended (%s: %s); retrying in %.0f s",
                    type(exc).__name__,
                    str(exc)[:200],
                    delay_s,
                )
                self._metrics.live_leader.set(0)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_S_MAX)
                continue
            delay_s = 1.0

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[AsyncConnection | None]:
        conn = await self._engine.connect()
        try:
            lock = select(func.pg_try_advisory_lock(self._lock_key, self._shard))
            acquired = (await conn.execute(lock)).scalar()
            await conn.commit()
            yield conn if acquired else None
        finally:
            self._metrics.live_leader.set(0)
            # the lock and the LISTEN end with the session: never hand it back to the pool
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _lead(self, lock_conn: AsyncConnection) -> None:
        raw = await lock_conn.get_raw_connection()
        driver: Any = raw.driver_connection

        def announced(_conn: object, pid: int, _channel: str, payload: str) -> None:
            self._changes.add(payload, pid)
            self._wake.set()

        producer = Producer({**self._producer_config, "on_delivery": self._delivered})
        try:
            self._partitions = await self._partition_count(producer)
            self._partition_of = {}
            if self._shard >= self._partitions:
                log.warning(
                    "live updates: shard %d of %d has no partition of %s's %d to publish",
                    self._shard,
                    self._shards,
                    UPDATES_TOPIC,
                    self._partitions,
                )
            await driver.add_listener(repo.CHANGES_CHANNEL, announced)  # before the load
            log.info("live updates: leading; loading every portfolio")
            self.book = Book(self._interval_s)
            self._changes = _Changes()
            await self._reload(_Changes(everything=True))
            # the book is most of the process's objects and lives as long as the leadership:
            # out of the collector's sight, a full collection no longer stalls the updates
            gc.collect()
            gc.freeze()
            self._metrics.live_dirty.set(len(self.book))
            self._metrics.live_leader.set(1)  # leading, with every portfolio loaded
            log.info("live updates: %d portfolios loaded", len(self.book))
            await self._loop(driver, producer)
        finally:
            await asyncio.to_thread(producer.flush, 5.0)

    @staticmethod
    async def _partition_count(producer: Producer, timeout_s: float = METADATA_TIMEOUT_S) -> int:
        """The updates topic's partition count (KafkaException, or RuntimeError when the
        broker has no such topic)."""
        metadata = await asyncio.to_thread(producer.list_topics, UPDATES_TOPIC, timeout_s)
        topic = metadata.topics.get(UPDATES_TOPIC)
        if topic is None or topic.error is not None or not topic.partitions:
            why = "missing" if topic is None else topic.error
            raise RuntimeError(f"{UPDATES_TOPIC} is not on the broker: {why}")
        return len(topic.partitions)

    async def _partitions_changed(self, producer: Producer) -> bool:
        """Whether the updates topic's partition count differs from the leadership's. A
        failed look is logged and tells nothing: the producer rides out a broker's absence,
        the leadership need not end for it."""
        try:
            partitions = await self._partition_count(producer, PARTITIONS_CHECK_TIMEOUT_S)
        except (KafkaException, RuntimeError) as exc:
            log.warning("live updates: the partition count could not be checked: %s", exc)
            return False
        if partitions == self._partitions:
            return False
        log.info(
            "live updates: %s has %d partitions (was %d); loading afresh",
            UPDATES_TOPIC,
            partitions,
            self._partitions,
        )
        return True

    async def _loop(self, driver: Any, producer: Producer) -> None:
        """Publishes until the session is lost (raises) or the topic's partition count
        changes (returns: the shards' shares change with it)."""
        checked_at = gauged_at = partitions_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now - checked_at >= LIVENESS_CHECK_S:
                await driver.fetchval("SELECT 1")  # a lost session ends the leadership
                checked_at = now
            if now - partitions_at >= PARTITIONS_CHECK_S:
                if await self._partitions_changed(producer):
                    return
                partitions_at = now
            self._wake.clear()  # before the changes are read: a later one wakes the wait
            if self._changes:
                await self._reload(self._changes.take())
            for owner in self._failed:
                self.book.mark(owner, time.monotonic())
            self._failed = []
            await self._publish_due(producer)
            producer.poll(0)
            if time.monotonic() - gauged_at >= GAUGE_INTERVAL_S or not self.book.waiting:
                backlog = self.book.backlog(time.monotonic())
                self._metrics.live_dirty.set(backlog.dirty)
                self._metrics.live_oldest_dirty.set(backlog.oldest_s)
                gauged_at = time.monotonic()
            wait_s = self.book.next_due_in(time.monotonic())
            wait_s = self._poll_s if wait_s is None else min(max(wait_s, 0.001), self._poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _trusted(self, pids: set[int]) -> set[int]:
        """Those of `pids` that are sessions of this service's own database role: any
        session of the database can announce on the channel, but only the service's own
        prices are taken as stored (others' are read from the database). Known ones are
        kept for a while (a backend's pid is reused only after it ends)."""
        now = time.monotonic()
        if now - self._trusted_since >= TRUSTED_PIDS_TTL_S:
            self._trusted_pids, self._trusted_since = set(), now
        unknown = pids - self._trusted_pids
        if unknown:
            async with self._engine.connect() as conn:
                self._trusted_pids |= await repo.own_sessions(conn, unknown)
                await conn.rollback()
        return pids & self._trusted_pids

    def _partition(self, key: bytes) -> int:
        """A published portfolio's partition of the updates topic, by its key (the id's
        text), kept for its next updates."""
        partition = self._partition_of.get(key)
        if partition is None:
            partition = self._partition_of[key] = key_partition(key, self._partitions)
        return partition

    def _mine(self, owner: uuid.UUID) -> bool:
        partition = key_partition(str(owner).encode(), self._partitions)
        return partition % self._shards == self._shard

    async def _reload(self, changes: _Changes) -> None:
        """Put the prices `changes` carries into the book, then read what it names from the
        database (as new as those prices or newer: so they go first)."""
        owners = sorted(o for o in changes.owners if self._mine(o))
        symbols = set(changes.symbols)
        if changes.prices and not changes.everything:
            trusted = await self._trusted({pid for _, pid in changes.prices.values()})
            prices = {s: price for s, (price, pid) in changes.prices.items() if pid in trusted}
            self.book.set_prices(prices, time.monotonic(), announced=True)
            symbols |= changes.prices.keys() - prices.keys()  # read from the database instead
        if not (owners or symbols or changes.everything):
            return
        async with self._engine.connect() as conn:
            await repo.see_all(conn)
            if changes.everything:
                owners = [o for o in await repo.owners(conn) if self._mine(o)]
                for gone in set(self.book.owners()) - set(owners):
                    self.book.drop(gone)
                symbols = set()
            for start in range(0, len(owners), LOAD_CHUNK):
                chunk = owners[start : start + LOAD_CHUNK]
                rows = await repo.portfolios(conn, chunk)
                figures = await repo.positions_of(conn, chunk)
                cash = await repo.cash_of(conn, chunk)
                known = set(self.book.symbols())
                now = time.monotonic()
                for owner in chunk:
                    if owner in rows:
                        self.book.put(rows[owner], figures[owner], cash[owner], now)
                    else:
                        self.book.drop(owner)
                symbols |= self.book.symbols() - known  # newly held: their price too
                await asyncio.sleep(0)
            if changes.everything:
                symbols = self.book.symbols()
            if symbols:
                self.book.set_prices(await repo.prices(conn, symbols), time.monotonic())
            await conn.rollback()

    async def _publish_due(self, producer: Producer) -> None:
        if self._writer is None:
            header = wire.framing_header(self._codec)
            self._writer = UpdateWriter(header, self._base_currency, self._scales)
        writer = self._writer
        started = time.perf_counter()
        published = 0
        while published < self._batch_max:
            owners = self.book.take_due(time.monotonic(), PUBLISH_SLICE)
            if not owners:
                break
            occurred_at = datetime.now(UTC)
            occurred_at_us = wire.micros(occurred_at)
            for owner, event_id in zip(owners, wire.event_ids(len(owners)), strict=True):
                try:
                    key, value = self.book.encode(owner, writer, event_id, occurred_at_us)
                except wire.WireError:
                    encoded = self._encoded_by_codec(owner, event_id, occurred_at)
                    if encoded is None:
                        continue
                    key, value = str(owner).encode(), encoded
                partition = self._partition(key)
                headers: list[tuple[str, str | bytes | None]] = [
                    (h.EVENT_ID, event_id),
                    (h.SCHEMA, UPDATES_TOPIC),
                ]
                while True:
                    try:
                        producer.produce(UPDATES_TOPIC, value, key, partition, headers=headers)
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        producer.poll(0)
                        await asyncio.sleep(PRODUCE_RETRY_S)
            published += len(owners)
            producer.poll(0)
            await asyncio.sleep(0)
            if self._changes and time.perf_counter() - started >= RELOAD_AFTER_S:
                break  # read announced changes in (prices move the due times) before more
        if published:
            self._metrics.updates_published.inc(published)
            self._metrics.update_batch_duration.observe(time.perf_counter() - started)

    def _encoded_by_codec(
        self, owner: uuid.UUID, event_id: str, occurred_at: datetime
    ) -> bytes | None:
        """The codec's encoding, for its strict errors: an update the schema cannot carry
        is logged and left out (the next change of the portfolio tries again)."""
        snapshot = self.book.snapshot(owner, self._base_currency, self._scales)
        record = {**update_record(snapshot, occurred_at), "event_id": event_id}
        try:
            return self._codec.encode(UPDATES_TOPIC, record)
        except EncodeError as exc:
            log.error(
                "live updates: a portfolio's update does not fit the schema: %s",
                exc.detail,
                extra={"portfolio_id": str(owner)},
            )
            return None

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            log.warning("live updates: an update was not delivered: %s", error)
            key = message.key()
            if isinstance(key, bytes):
                self._failed.append(uuid.UUID(key.decode()))
