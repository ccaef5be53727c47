"""The ledger's use cases; HTTP routes only translate to and from these.

Transfers go through a group commit: requests that arrive while a database
transaction is in flight are gathered (up to `batch_max`) and posted together in
the next one. Each keeps its own outcome: one failing transfer fails alone, and
its idempotency key, balance checks and event are its own.

A batch takes two round trips and no explicit transaction: one statement reads what
its checks need (accounts and balances, idempotency keys, taken ids), and one writes
it all (transfers, postings, balances, keys, outbox events) only if every balance is
still the one read. When one changed in between (another replica posted to the
account), nothing is written and the batch is posted again in a transaction that
locks its accounts first; a batch sharing an account with another batch of this
process in flight goes that way at once, and so does a large one (the batch
endpoint's). Both lock accounts in one global order, so concurrent batches never
deadlock.

Most batches skip the read: the process remembers each account it has read or written
(`Remembered`: accounts never change but for their balance) and its balance then, and a
batch whose accounts are all remembered is planned on those balances and written by the
same checking statement, one round trip; its transfers' `created_at` is Postgres' clock
as the process last saw it. What that plan cannot prove is then read after all: a
refusal (insufficient funds on a balance that may have grown since), a reversal (whether
it is taken), and a write the statement refused (a balance moved, or the key or transfer
id exists: unique, so nothing was written); the batch then takes the two round trips
above. Every batch is stamped after the last time the process knows of its accounts.

A trade becomes one transfer through the same group commit; its price is the one
given or the latest one `record_price` kept from marketdata.prices.v1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.schema import Table

from tickertap.db import (
    CommitOutcomeUnknown,
    DriverTransaction,
    RetryPolicy,
    UnitOfWork,
    driver_statements,
    sqlstate,
    statement_outcome,
    with_retries,
)
from tickertap.ledger import domain as d
from tickertap.ledger import repository as repo
from tickertap.messaging import (
    AvroCodec,
    EncodedEvents,
    OutboxEvent,
    encode_events,
    insert_events_driver,
)
from tickertap.money import Asset

log = logging.getLogger(__name__)

TOPIC = "ledger.transfers.v1"
DEFAULT_RETRY = RetryPolicy(attempts_max=5)
MANY_CHUNK = 250  # the batch endpoint's transfers per database transaction, at most
UNIQUE_VIOLATION = "23505"
# Larger batches (the batch endpoint's) go locked: there their events are encoded while
# Postgres runs the insert, which saves more than the three round trips cost (250 at a
# time: 14,000 postings/s locked against 12,000 optimistic, tests/bench/ledger_bench.py)
OPTIMISTIC_BATCH_MAX = 64
REMEMBERED_MAX = 100_000  # accounts whose last known balance a process keeps
# after a remembered balance is found moved, so many batches read theirs (doubling while
# it keeps happening: replicas posting to the same accounts)
REMEMBERED_BACKOFF_MAX = 64
# while fewer than this share of recent writes on remembered balances held (a moving
# average over about REMEMBERED_WINDOW of them), only every REMEMBERED_PROBE_EVERY-th
# batch tries memory, and the next ones while theirs hold: where replicas share most
# accounts, a write that finds a balance moved costs Postgres a whole statement for nothing
REMEMBERED_HELD_MIN = 0.5
REMEMBERED_WINDOW = 32
REMEMBERED_PROBE_EVERY = 32
_STILL = (0, 0)  # an account not seen moving
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class TransferRequest:
    cmd: d.PostTransfer
    idempotency_key: str | None  # scoped to the caller: "<subject>:<key>"
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class Posted:
    transfer: d.Transfer
    created_at: datetime
    replayed: bool  # the original result of an idempotent retry


Outcome = Posted | d.LedgerError


@dataclass(slots=True)
class _Plan:
    """What a batch does, decided against its context (`Ledger._plan`)."""

    assets: Mapping[str, Asset]
    outcomes: list[Outcome | None]  # refusals now; the rest once the batch is written
    replays: dict[int, uuid.UUID] = field(default_factory=dict)  # request -> its transfer
    same_key_as: dict[int, int] = field(default_factory=dict)  # request -> an earlier one
    posted: list[tuple[int, d.Transfer]] = field(default_factory=list)
    new: list[repo.NewTransfer] = field(default_factory=list)
    keys: dict[str, repo.IdempotencyRecord] = field(default_factory=dict)


class Remembered:
    """What this process last read or wrote of each account: the account (which never
    changes), its balance then, which may since have moved (another replica, the batch
    endpoint's lane: the writing statement checks it), and the time of that read or write.

    A batch planned from memory is stamped on Postgres' clock as this process last saw it
    (the last optimistic read's `now()`, plus the time this process's monotonic clock has
    counted since its reply came: never ahead of Postgres'), and every batch after the time
    remembered of each of its accounts: one account's transfers from this process keep in
    time the order they have in its postings. The accounts of a batch whose balance moved
    under it (which one, the statement does not say) are read for the next batches (1, 2,
    4... up to REMEMBERED_BACKOFF_MAX while they keep moving: another replica posting to
    them); where most writes from memory wrote nothing (`missed`), only every
    REMEMBERED_PROBE_EVERY-th batch tries memory (the next one that can, when that one
    cannot), and every batch again once a write from it holds; the longest unused are
    forgotten beyond `size_max`."""

    def __init__(self, size_max: int = REMEMBERED_MAX) -> None:
        self._size_max = size_max
        self._known: dict[uuid.UUID, tuple[d.Account, Decimal, datetime]] = {}
        # account -> (read until the context asked for this many times, its backoff)
        self._moving: dict[uuid.UUID, tuple[int, int]] = {}
        self._asked = 0
        self._held = 1.0  # the moving share of writes from memory that held
        self._holding = True  # the last write from memory held
        self._probing = False  # a probe is due while memory is held back
        # Postgres' `now()` at the last optimistic read, and time.monotonic() at its reply
        self._clock: tuple[datetime, float] | None = None

    def context(self, requests: Sequence[TransferRequest]) -> repo.BatchContext | None:
        """A context for `requests` from memory: None unless every account is remembered,
        none reverses a transfer (whether one is reversed already is not kept), none is
        being read after it moved, and memory is not held back (see the class)."""
        self._asked += 1
        if not self._holding and self._held < REMEMBERED_HELD_MIN:
            if not self._asked % REMEMBERED_PROBE_EVERY:
                self._probing = True
            if not self._probing:
                return None
        known = self._known
        accounts: dict[uuid.UUID, d.Account] = {}
        balances: dict[uuid.UUID, Decimal] = {}
        clock = self._clock
        if clock is None:
            now = datetime.now(UTC)
        else:
            now = clock[0] + timedelta(seconds=time.monotonic() - clock[1])
        for request in requests:
            if request.cmd.reverses is not None:
                return None
            for leg in request.cmd.legs:
                remembered = known.get(leg.account_id)
                if remembered is None:
                    return None
                account, balance, at = remembered
                accounts[account.id], balances[account.id] = account, balance
                if at >= now:
                    now = at + _MICROSECOND
        moving, asked = self._moving, self._asked
        if moving and any(moving.get(a, _STILL)[0] >= asked for a in accounts):
            return None
        self._probing = False
        return repo.BatchContext({}, set(), set(), accounts, balances, now)

    def read(self, ctx: repo.BatchContext, *, clock: bool) -> repo.BatchContext:
        """What a batch read, just now; the context with its time moved after the latest
        remembered of its accounts. `clock`: the read's `now()` is the statement's, so it
        sets the clock of batches from memory (not a locked transaction's, which may have
        waited for its locks since)."""
        if clock:
            self._clock = (ctx.now, time.monotonic())
        known = self._known
        latest = max((known[a][2] for a in ctx.accounts if a in known), default=ctx.now)
        if latest >= ctx.now:
            ctx = replace(ctx, now=latest + _MICROSECOND)
        self._put(((ctx.accounts[i], b) for i, b in ctx.balances.items()), ctx.now)
        return ctx

    def written(
        self,
        plan: _Plan,
        accounts: Mapping[uuid.UUID, d.Account],
        created_at: datetime,
        *,
        remembered: bool,
    ) -> None:
        """The balances a committed batch left (each account's last posting's) at
        `created_at`; it was planned on a `context` from memory when `remembered` (its
        accounts held still, then)."""
        balances = {p.account_id: p.balance_after for _, t in plan.posted for p in t.postings}
        if remembered:
            self._held += (1.0 - self._held) / REMEMBERED_WINDOW
            self._holding = True
            for account in balances if self._moving else ():
                self._moving.pop(account, None)
        self._put(((accounts[a], b) for a, b in balances.items()), created_at)

    def missed(self) -> None:
        """A write planned on a context from memory wrote nothing (a balance had moved, or
        a key or transfer id was taken)."""
        self._held -= self._held / REMEMBERED_WINDOW
        self._holding = False

    def moved(self, accounts: Iterable[uuid.UUID]) -> None:
        """Some of these accounts' balances were not the ones remembered."""
        moving, known = self._moving, self._known
        for account in accounts:
            known.pop(account, None)
            backoff = min(2 * moving.get(account, _STILL)[1], REMEMBERED_BACKOFF_MAX) or 1
            moving[account] = (self._asked + backoff, backoff)
        if len(moving) > self._size_max:
            moving.clear()

    def _put(self, items: Iterable[tuple[d.Account, Decimal]], at: datetime) -> None:
        known = self._known
        for account, balance in items:
            known.pop(account.id, None)  # to the end: the most recently used
            known[account.id] = (account, balance, at)
        while len(known) > self._size_max:  # 0: remember nothing
            del known[next(iter(known))]


class Batcher:
    """Gathers concurrent requests into batches for one `process` call at a time."""

    def __init__(
        self,
        process: Callable[[list[TransferRequest]], Awaitable[list[Outcome]]],
        *,
        batch_max: int,
        queue_max: int,
    ) -> None:
        self._process = process
        self._batch_max = batch_max
        self._queue: asyncio.Queue[tuple[TransferRequest, asyncio.Future[Outcome]]] = asyncio.Queue(
            queue_max
        )
        self.batches = 0
        self.items = 0

    async def submit(self, request: TransferRequest) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def submit_many(self, requests: Sequence[TransferRequest]) -> list[Outcome]:
        """`submit` for many: they join the queue in order (and may share a batch with
        other callers' requests); their outcomes in the same order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = []
        for request in requests:
            future: asyncio.Future[Outcome] = loop.create_future()
            await self._queue.put((request, future))
            futures.append(future)
        return [await future for future in futures]

    async def run(self, workers: int = 1) -> None:
        """`workers` batches may be in flight at once: while one waits on the database,
        the next gathers what arrived meanwhile. Their accounts are locked in one global
        order, so they never deadlock; on the same accounts they simply take turns."""
        assert workers >= 1
        await asyncio.gather(*(self._work() for _ in range(workers)))

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            requests = [r for r, _ in batch]
            try:
                outcomes = await self._process(requests)
            except Exception as exc:  # the batch failed as a whole: every caller hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)


class Ledger:
    def __init__(
        self,
        writer: AsyncEngine,
        reader: AsyncEngine,
        outbox: Table,
        codec: AvroCodec,
        *,
        batch_max: int = 64,
        batch_workers: int = 1,
        queue_max: int = 10_000,
        legs_max: int = d.LEGS_MAX,
        retry: RetryPolicy = DEFAULT_RETRY,
        trading: d.TradePolicy | None = None,
        poster: AsyncEngine | None = None,
        remembered_max: int = REMEMBERED_MAX,
    ) -> None:
        """`poster`: an engine whose sessions see every row with generic plans
        (`repo.POSTING_SESSION`), for batches posted without explicit transactions; without
        it, every batch locks its accounts in a transaction on the writer.
        `remembered_max`: how many accounts' balances to remember (`Remembered`; 0: none,
        every batch reads its context)."""
        self.writer = writer
        self.reader = reader
        self.poster = poster
        self._posting: Counter[uuid.UUID] = Counter()  # accounts of the batches in flight
        # batches written by one statement on remembered balances ("remembered") or on
        # balances read just before ("optimistic"), or under locks ("locked"); remembered
        # attempts then read because a balance moved ("remembered_moved"), a request was
        # refused ("remembered_refused") or a key or transfer id was taken
        # ("remembered_taken"), and optimistic ones that found a balance changed
        # ("balance_changed", then locked)
        self.batch_counts: Counter[str] = Counter()
        self.remembered = Remembered(remembered_max)
        self._outbox = outbox
        self._codec = codec
        self._legs_max = legs_max
        self._retry = retry
        self.trading = trading or d.TradePolicy()
        self._assets: dict[str, repo.AssetRow] = {}
        self._system: dict[tuple[d.AccountKind, str], d.Account] = {}
        self.batcher = Batcher(self._post_batch, batch_max=batch_max, queue_max=queue_max)
        # the batch endpoint's transfers: their own lane of larger batches, one at a time;
        # concurrent requests' transfers share transactions instead of queueing on each
        # other's account locks
        self.many = Batcher(self._post_batch, batch_max=MANY_CHUNK, queue_max=queue_max)
        self._batch_workers = batch_workers
        self._asset_map_of: tuple[object, Mapping[str, Asset]] = (None, {})

    # -- assets and system accounts -------------------------------------------------------

    async def assets(self, refresh: bool = False) -> dict[str, repo.AssetRow]:
        if refresh or not self._assets:
            async with self.reader.connect() as conn:
                self._assets = await repo.load_assets(conn)
        return self._assets

    async def asset(self, code: str) -> repo.AssetRow:
        assets = await self.assets()
        if code not in assets:
            assets = await self.assets(refresh=True)
        if code not in assets:
            raise d.UnknownAsset(f"no asset {code}", asset=code)
        return assets[code]

    async def _asset_map(self) -> Mapping[str, Asset]:
        """The assets by code, rebuilt only when they were reloaded (every batch asks)."""
        rows = await self.assets()
        if self._asset_map_of[0] is not rows:
            self._asset_map_of = (rows, {code: row.asset for code, row in rows.items()})
        return self._asset_map_of[1]

    async def create_asset(self, row: repo.AssetRow) -> repo.AssetRow:
        if row.quote_currency is not None:
            await self.asset(row.quote_currency)
        async with UnitOfWork(self.writer) as uow:
            await repo.insert_asset(uow.connection, row)
            await uow.commit()
        return await self.asset(row.asset.code)

    async def system_account(self, kind: d.AccountKind, asset: str) -> d.Account:
        """The system account of `kind` for `asset`, made on first use."""
        cached = self._system.get((kind, asset))
        if cached is not None:
            return cached
        scale = (await self.asset(asset)).asset.scale
        async with UnitOfWork(self.writer) as uow:
            await repo.see_all(uow.connection)
            row = await repo.insert_account(
                uow.connection, d.Account(uuid.uuid4(), None, asset, kind), scale
            )
            await uow.commit()
        self._system[(kind, asset)] = row.account
        return row.account

    # -- accounts -------------------------------------------------------------------------

    async def open_account(
        self, owner_id: uuid.UUID, asset: str, overdraft_limit: Decimal = d.ZERO
    ) -> tuple[repo.AccountRow, bool]:
        """The owner's account in `asset`: (account, created). One per owner and asset."""
        row = await self.asset(asset)
        limit = d.check_amount(overdraft_limit, row.asset)
        if limit < 0:
            raise d.AmountNotPositive("the overdraft limit cannot be negative")
        account = d.Account(uuid.uuid4(), owner_id, asset, d.AccountKind.CUSTOMER, limit)
        async with UnitOfWork(self.writer) as uow:
            await repo.see_all(uow.connection)
            stored = await repo.insert_account(uow.connection, account, row.asset.scale)
            await uow.commit()
        return stored, stored.account.id == account.id

    async def get_account(self, account_id: uuid.UUID) -> repo.AccountRow:
        async with self.reader.connect() as conn:
            await repo.see_all(conn)
            rows = await repo.get_accounts(conn, [account_id])
        if account_id not in rows:
            raise d.AccountNotFound(f"no account {account_id}")
        return rows[account_id]

    # -- transfers ------------------------------------------------------------------------

    async def post(self, request: TransferRequest) -> Posted:
        outcome = await self.batcher.submit(request)
        if isinstance(outcome, d.LedgerError):
            raise outcome
        return outcome

    async def post_many(self, requests: Sequence[TransferRequest]) -> list[Outcome]:
        """Up to thousands of transfers, each succeeding or failing on its own: in batches
        of up to MANY_CHUNK per database transaction, shared with other callers'."""
        return await self.many.submit_many(requests)

    async def get_transfer(self, transfer_id: uuid.UUID) -> repo.StoredTransfer:
        async with self.reader.connect() as conn:
            await repo.see_all(conn)
            found = await repo.get_transfers(conn, [transfer_id])
        if transfer_id not in found:
            raise d.TransferNotFound(f"no transfer {transfer_id}")
        return found[transfer_id]

    async def account_owners(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, d.Account]:
        """For authorization: read on the writer, never a replica that may lag behind."""
        async with self.writer.connect() as conn:
            await repo.see_all(conn)
            rows = await repo.get_accounts(conn, ids)
        return {i: r.account for i, r in rows.items()}

    async def _post_batch(self, requests: list[TransferRequest]) -> list[Outcome]:
        async def once() -> list[Outcome]:
            return await self._post_batch_once(requests)

        failure: Exception
        for attempt in range(2):
            try:
                return await with_retries(once, self._retry)
            except Exception as exc:
                failure = exc
                if attempt == 0 and sqlstate(exc) == UNIQUE_VIOLATION:
                    # a duplicate (same key, transfer id or reversal) committed concurrently
                    # by another batch or replica: run again, the reads now see it
                    continue
                break
        if len(requests) == 1:
            raise failure
        log.warning("batch failed; posting its transfers one by one", exc_info=failure)
        outcomes: list[Outcome] = []
        for request in requests:  # isolate the one that broke the batch
            outcomes.extend(await self._post_batch([request]))
        return outcomes

    async def _post_batch_once(self, requests: list[TransferRequest]) -> list[Outcome]:
        """One attempt at a batch: by one statement on remembered balances or, when that
        proves nothing, on balances read just before (`_post_optimistically`), or, when
        another batch of this process is posting to one of its accounts, a balance
        changed in between or the batch is large, in a transaction that locks the
        accounts first (`_post_locked`)."""
        accounts = {leg.account_id for r in requests for leg in r.cmd.legs}
        busy = self._posting
        optimistic = (
            self.poster is not None
            and len(requests) <= OPTIMISTIC_BATCH_MAX
            and busy.keys().isdisjoint(accounts)
        )
        busy.update(accounts)
        try:
            if optimistic:
                from_memory = self.remembered.context(requests)
                if from_memory is not None:
                    outcomes = await self._post_optimistically(requests, from_memory)
                    if outcomes is not None:
                        return outcomes
                outcomes = await self._post_optimistically(requests)
                if outcomes is not None:
                    return outcomes
            return await self._post_locked(requests)
        finally:
            busy.subtract(accounts)
            for account in accounts:
                if not busy[account]:
                    del busy[account]

    async def _post_optimistically(
        self, requests: list[TransferRequest], from_memory: repo.BatchContext | None = None
    ) -> list[Outcome] | None:
        """Two round trips, no explicit transaction: read the batch's context, then write
        it all (transfers, postings, balances, keys, events) in one statement that checks
        each balance is still the one read. None when one was not (nothing was written).

        With a context `from_memory` (`Remembered.context`), one round trip: the write
        alone. None also when its plan refuses a request or the statement finds a key or
        transfer id taken: what is remembered does not prove those (nothing was written).

        A connection lost while the write was in flight leaves it written whole or not at
        all: its transfers are looked up by their new event ids, and only when they are
        there is the batch known to be posted (else CommitOutcomeUnknown, as before)."""
        assert self.poster is not None
        writing: list[repo.NewTransfer] = []
        try:
            async with driver_statements(self.poster) as pg:
                if from_memory is None:
                    ctx = await self._context(pg, requests, lock=False)
                    ctx = self.remembered.read(ctx, clock=True)
                else:
                    ctx = from_memory
                plan = await self._plan(requests, ctx)
                if from_memory is not None and any(o is not None for o in plan.outcomes):
                    # refused on balances that may have grown since: read them
                    self.batch_counts["remembered_refused"] += 1
                    return None
                if plan.new:
                    events = self._events(plan, ctx)
                    writing = plan.new
                    try:
                        await repo.post_batch(
                            pg, plan.new, ctx, plan.assets, plan.keys, self._outbox, events
                        )
                    except Exception as exc:
                        state = sqlstate(exc)
                        if state == repo.BALANCE_CHANGED:
                            self.remembered.moved(ctx.accounts)
                            if from_memory is not None:
                                self.remembered.missed()
                            self.batch_counts[
                                "balance_changed" if from_memory is None else "remembered_moved"
                            ] += 1
                            return None
                        if from_memory is not None and state == UNIQUE_VIOLATION:
                            # a key or transfer id taken (nothing was written): read which
                            self.batch_counts["remembered_taken"] += 1
                            self.remembered.missed()
                            return None
                        outcome = statement_outcome(exc)
                        if outcome is exc:
                            raise
                        raise outcome from exc  # and the connection is not pooled again
        except CommitOutcomeUnknown:
            if not writing or not await self._stored(writing):
                raise
            log.warning("the connection was lost as a batch was written; it was written")
        self.remembered.written(plan, ctx.accounts, ctx.now, remembered=from_memory is not None)
        self.batch_counts["optimistic" if from_memory is None else "remembered"] += 1
        return await self._outcomes(requests, plan, ctx.now)

    async def _stored(self, new: list[repo.NewTransfer]) -> bool:
        """Whether these transfers are stored with the event ids this attempt gave them
        (unique to it): its single statement is then known to have committed."""
        with contextlib.suppress(Exception):
            async with self.writer.connect() as conn:
                await repo.see_all(conn)
                found = await repo.count_transfer_events(conn, [n.event_id for n in new])
                return found == len(new)
        return False

    async def _post_locked(self, requests: list[TransferRequest]) -> list[Outcome]:
        """Five round trips: BEGIN, read the context locking the accounts, insert, add the
        events (encoded while Postgres runs the insert), COMMIT."""
        async with DriverTransaction(self.writer, setup=repo.POSTING_SETUP) as tx:
            ctx = await self._context(tx.pg, requests, lock=True)
            ctx = self.remembered.read(ctx, clock=False)
            plan = await self._plan(requests, ctx)
            if plan.new:
                inserting = asyncio.create_task(
                    repo.insert_batch(
                        tx.pg, plan.new, ctx.accounts, plan.assets, plan.keys, ctx.now
                    )
                )
                try:  # the insert is awaited whatever happens: never left running
                    # one turn of the loop sends the statement; the events are encoded while
                    # Postgres runs it, not after (the accounts stay locked the shorter)
                    await asyncio.sleep(0)
                    events = self._events(plan, ctx)
                finally:
                    await inserting
                await insert_events_driver(tx.pg, self._outbox, events, notify=True)
            await tx.commit()
        self.remembered.written(plan, ctx.accounts, ctx.now, remembered=False)
        self.batch_counts["locked"] += 1
        return await self._outcomes(requests, plan, ctx.now)

    @staticmethod
    async def _context(
        pg: Any, requests: list[TransferRequest], *, lock: bool
    ) -> repo.BatchContext:
        commands = [r.cmd for r in requests]
        return await repo.batch_context(
            pg,
            [r.idempotency_key for r in requests if r.idempotency_key],
            [c.transfer_id for c in commands],
            [c.reverses for c in commands if c.reverses is not None],
            d.lock_order(leg.account_id for c in commands for leg in c.legs),
            lock=lock,
        )

    async def _plan(self, requests: list[TransferRequest], ctx: repo.BatchContext) -> _Plan:
        """Each request's fate against the context: refused, a replay, a repeat of an
        earlier one in the batch, or a transfer to post (each on the balances its
        predecessors left)."""
        assets = await self._asset_map()
        plan = _Plan(assets, [None] * len(requests))
        first_with_key: dict[str, int] = {}
        pending: list[int] = []
        for i, request in enumerate(requests):
            key = request.idempotency_key
            if key is not None:
                record = ctx.idempotency.get(key)
                if record is not None:
                    if record.request_hash != request.request_hash:
                        plan.outcomes[i] = _key_reused()
                    else:
                        plan.replays[i] = record.transfer_id
                    continue
                if key in first_with_key:
                    plan.same_key_as[i] = first_with_key[key]
                    continue
                first_with_key[key] = i
            pending.append(i)

        accounts, balances = ctx.accounts, dict(ctx.balances)  # ctx keeps the balances read
        if not {a.asset for a in accounts.values()} <= assets.keys():
            await self.assets(refresh=True)  # an asset made by another replica
            plan.assets = assets = await self._asset_map()
        exists, reversed_ = ctx.existing, ctx.reversed
        post, legs_max = d.post, self._legs_max
        for i in pending:
            cmd = requests[i].cmd
            try:
                if cmd.transfer_id in exists:
                    raise d.TransferExists(f"transfer {cmd.transfer_id} exists")
                if cmd.reverses is not None and cmd.reverses in reversed_:
                    raise d.AlreadyReversed(f"transfer {cmd.reverses} is already reversed")
                transfer = post(cmd, accounts, assets, balances, legs_max=legs_max)
            except d.LedgerError as error:
                plan.outcomes[i] = error
                continue
            for p in transfer.postings:
                balances[p.account_id] = p.balance_after
            exists.add(cmd.transfer_id)
            if cmd.reverses is not None:
                reversed_.add(cmd.reverses)
            plan.posted.append((i, transfer))
        if plan.posted:
            plan.new = [
                repo.NewTransfer(transfer, event_id, _owners(transfer, accounts))
                for (_, transfer), event_id in zip(
                    plan.posted, new_ids(len(plan.posted)), strict=True
                )
            ]
            plan.keys = {
                key: repo.IdempotencyRecord(requests[i].request_hash, transfer.id, 201)
                for i, transfer in plan.posted
                if (key := requests[i].idempotency_key) is not None
            }
        return plan

    def _events(self, plan: _Plan, ctx: repo.BatchContext) -> EncodedEvents:
        return encode_events(
            self._codec,
            [
                OutboxEvent(
                    TOPIC,
                    transfer_event(n, ctx.now, ctx.accounts),
                    d.event_key(n.transfer, ctx.accounts),
                )
                for n in plan.new
            ],
        )

    async def _outcomes(
        self, requests: list[TransferRequest], plan: _Plan, created_at: datetime
    ) -> list[Outcome]:
        """The outcomes of a committed batch, in the requests' order."""
        outcomes = plan.outcomes
        stored: dict[uuid.UUID, repo.StoredTransfer] = {}
        if plan.replays:  # committed before their key was: immutable, safe to read afterwards
            async with self.writer.connect() as conn:
                await repo.see_all(conn)
                stored = await repo.get_transfers(conn, list(set(plan.replays.values())))
        for i, transfer in plan.posted:
            outcomes[i] = Posted(transfer, created_at, replayed=False)
        for i, transfer_id in plan.replays.items():
            original = stored[transfer_id]
            outcomes[i] = Posted(original.transfer, original.created_at, replayed=True)
        for i, first in plan.same_key_as.items():
            outcomes[i] = _as_retry_of(requests[i], requests[first], outcomes[first])
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    # -- deposits, withdrawals, reversals ------------------------------------------------

    async def deposit_command(
        self,
        transfer_id: uuid.UUID,
        account_id: uuid.UUID,
        amount: Decimal,
        metadata: Mapping[str, str],
        *,
        withdraw: bool = False,
    ) -> d.PostTransfer:
        customer = (await self.get_account(account_id)).account
        omnibus = await self.system_account(d.AccountKind.OMNIBUS, customer.asset)
        make = d.withdrawal if withdraw else d.deposit
        return make(transfer_id, customer, omnibus, amount, metadata)

    async def reversal_command(
        self, original_id: uuid.UUID, reversal_id: uuid.UUID, metadata: Mapping[str, str]
    ) -> d.PostTransfer:
        original = await self.get_transfer(original_id)
        return d.reversal(original.transfer, reversal_id, metadata)

    # -- trades ---------------------------------------------------------------------------

    async def trade(
        self, cmd: d.ExecuteTrade, idempotency_key: str | None, request_hash: bytes
    ) -> Posted:
        """Buy or sell at the given or the latest market price: one balanced transfer.

        A retry with the same Idempotency-Key and body gets the original trade back,
        even when the price or the balances have moved since.
        """
        replayed = await self._replayed(idempotency_key, request_hash)
        if replayed is not None:
            return replayed
        transfer = await self.trade_command(cmd)
        return await self.post(TransferRequest(transfer, idempotency_key, request_hash))

    async def _replayed(self, key: str | None, request_hash: bytes) -> Posted | None:
        """The original result of a request already posted under `key`, before any work."""
        if key is None:
            return None
        async with self.writer.connect() as conn:
            await repo.see_all(conn)
            record = (await repo.get_idempotency(conn, [key])).get(key)
            if record is None:
                return None
            if record.request_hash != request_hash:
                raise _key_reused()
            stored = await repo.get_transfers(conn, [record.transfer_id])
        original = stored[record.transfer_id]
        return Posted(original.transfer, original.created_at, replayed=True)

    async def trade_command(self, cmd: d.ExecuteTrade) -> d.PostTransfer:
        """The transfer of a trade, tried on current balances before anything is made.

        The owner's cash account in the quote currency must exist (else 422
        unknown_account); a sell needs the account in the symbol (else 409
        insufficient_funds); a buy opens it. That and the system accounts are made
        only after a dry run of the posting passes, so a trade rejected for a reason
        known up front (input, price, funds) leaves nothing behind.
        """
        listed = await self.asset(cmd.symbol)
        instrument = listed.asset
        currency_code = d.quote_currency(instrument, listed.quote_currency, self.trading)
        currency = (await self.asset(currency_code)).asset
        quantity = d.check_amount(cmd.quantity, instrument)
        d.require_positive(quantity)
        given = None if cmd.price is None else d.check_price(cmd.price)
        async with self.writer.connect() as conn:  # the write path: no replica lag here
            await repo.see_all(conn)
            cached = await repo.get_price(conn, instrument.code) if given is None else None
            cash = await repo.find_customer_account(conn, cmd.owner_id, currency.code)
            securities = await repo.find_customer_account(conn, cmd.owner_id, instrument.code)
        if cash is None:
            raise d.UnknownAccount(
                f"the owner has no {currency.code} account to trade {instrument.code} with",
                asset=currency.code,
            )
        if given is not None:
            price = given
        else:
            now = datetime.now(UTC)
            price = d.usable_price(cached, instrument.code, now, self.trading.price_age_s_max)
        if securities is None and cmd.side is d.Side.SELL:
            raise d.InsufficientFunds(
                f"the owner holds no {instrument.code}", asset=instrument.code
            )
        assets = await self._asset_map()

        def command(accounts: d.TradeAccounts) -> d.PostTransfer:
            return d.trade(
                cmd.trade_id,
                cmd.side,
                quantity,
                price,
                accounts,
                assets,
                self.trading.fees,
                cmd.metadata,
            )

        def stand_in(owner: uuid.UUID | None, asset: str, kind: d.AccountKind) -> d.Account:
            return d.Account(uuid.uuid4(), owner, asset, kind)

        dry = d.TradeAccounts(
            cash=cash.account,
            securities=securities.account
            if securities is not None
            else stand_in(cmd.owner_id, instrument.code, d.AccountKind.CUSTOMER),
            omnibus=stand_in(None, currency.code, d.AccountKind.OMNIBUS),
            fees=stand_in(None, currency.code, d.AccountKind.FEES),
            custody=stand_in(None, instrument.code, d.AccountKind.CUSTODY),
        )
        dry_accounts = (dry.cash, dry.securities, dry.omnibus, dry.fees, dry.custody)
        balances = {a.id: d.ZERO for a in dry_accounts}
        balances[cash.account.id] = cash.balance
        if securities is not None:
            balances[securities.account.id] = securities.balance
        d.post(
            command(dry),
            {a.id: a for a in dry_accounts},
            assets,
            balances,
            legs_max=self._legs_max,
        )

        if securities is None:
            securities, _ = await self.open_account(cmd.owner_id, instrument.code)
        return command(
            d.TradeAccounts(
                cash=cash.account,
                securities=securities.account,
                omnibus=await self.system_account(d.AccountKind.OMNIBUS, currency.code),
                fees=await self.system_account(d.AccountKind.FEES, currency.code),
                custody=await self.system_account(d.AccountKind.CUSTODY, instrument.code),
            )
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(self.batcher.run(self._batch_workers), self.many.run(1))

    @contextlib.asynccontextmanager
    async def reading(self, owner_id: uuid.UUID | None) -> Any:
        """A read-only connection that sees one owner's rows, or all with owner None."""
        async with self.reader.connect() as conn:
            if owner_id is None:
                await repo.see_all(conn)
            else:
                await repo.see_owner(conn, owner_id)
            yield conn


async def record_price(conn: AsyncConnection, price: d.MarketPrice) -> bool:
    """Keep the latest price of a symbol (by exchange time) for trades at market.

    Runs in the consumer's transaction, with the inbox claim of the event. An update
    no newer than the cached one changes nothing; returns whether it was stored.
    """
    return await repo.upsert_price(conn, price)


def _key_reused() -> d.IdempotencyKeyReused:
    return d.IdempotencyKeyReused(
        "this Idempotency-Key was used with a different request; use a new key"
    )


def _as_retry_of(
    request: TransferRequest, first: TransferRequest, outcome: Outcome | None
) -> Outcome:
    """A second request with the same key in one batch: the first one's result, or a 409."""
    assert outcome is not None
    if request.request_hash != first.request_hash:
        return _key_reused()
    if isinstance(outcome, Posted):
        return Posted(outcome.transfer, outcome.created_at, replayed=True)
    return outcome


def new_ids(count: int) -> list[uuid.UUID]:
    """`count` time-ordered UUIDs (version 7, RFC 9562: the Unix time in milliseconds, then
    74 random bits), from one read of the operating system's random source: event ids,
    whose unique indexes (transfers, outbox) then grow at their right edge instead of at a
    random page of an ever larger tree."""
    stamp = (time.time_ns() // 1_000_000 & _MS_MASK) << 80 | _V7_BITS
    data = os.urandom(10 * count)
    ids = []
    for k in range(0, 10 * count, 10):
        bits = int.from_bytes(data[k : k + 10], "big")  # 80: rand_a (12), rand_b (62), spare
        ids.append(uuid.UUID(int=stamp | (bits >> 68) << 64 | bits & _RAND_B_MASK))
    return ids


_MS_MASK = (1 << 48) - 1
_V7_BITS = 7 << 76 | 0b10 << 62  # the version and the variant
_RAND_B_MASK = (1 << 62) - 1


def _owners(transfer: d.Transfer, accounts: Mapping[uuid.UUID, d.Account]) -> tuple[uuid.UUID, ...]:
    owners = {accounts[p.account_id].owner_id for p in transfer.postings}
    return tuple(sorted(o for o in owners if o is not None))


def transfer_event(
    new: repo.NewTransfer, occurred_at: datetime, accounts: Mapping[uuid.UUID, d.Account]
) -> dict[str, Any]:
    t = new.transfer
    return {
        "event_id": str(new.event_id),
        "occurred_at": occurred_at,
        "transfer_id": str(t.id),
        "kind": t.kind.value,
        "legs": [
            {
                "account_id": str(p.account_id),
                "owner_id": str(accounts[p.account_id].wire_owner),
                "asset": p.asset,
                "amount": p.amount,
            }
            for p in t.postings
        ],
        "trade": None
        if t.trade is None
        else {
            "symbol": t.trade.symbol,
            "side": t.trade.side.value,
            "quantity": t.trade.quantity,
            "price": t.trade.price,
            "notional": t.trade.notional,
            "fee": t.trade.fee,
            "currency": t.trade.currency,
        },
        "reverses_transfer_id": str(t.reverses) if t.reverses else None,
        "metadata": dict(t.metadata),
    }
