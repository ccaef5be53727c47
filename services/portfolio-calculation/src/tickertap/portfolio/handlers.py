"""Use cases of the portfolio service, each inside the caller's transaction.

    apply_transfer   a ledger transfer: record it in the history of each portfolio it
                     concerns, recompute that portfolio's state from its history
    apply_price      a market price: keep it if newer, mark the portfolios holding it
    apply_prices     a batch of prices: the same, for the latest price of each symbol
    snapshot         a portfolio's valuation and where its inputs came from
    publish_due      portfolio.updates.v1 events of the portfolios due, through the outbox

The consumer calls the first two in the transaction that claims the event in the
inbox, so each event is applied exactly once; the publisher calls the last in its own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.messaging import OutboxEvent, add_events
from tickertap.messaging.outbox import Encoder
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo

log = logging.getLogger(__name__)

UPDATES_TOPIC = "portfolio.updates.v1"
# valuing and encoding a portfolio costs about a millisecond of CPU: a batch of them gives
# the event loop back this often, so the consumers sharing it are not held up for a batch
YIELD_EVERY = 20


async def recompute(conn: AsyncConnection, owner_id: uuid.UUID, scales: d.Scales) -> d.Holdings:
    """The portfolio's state from its whole history, saved over the derived rows."""
    await repo.lock_portfolio(conn, owner_id)
    holdings = d.compute(await repo.history(conn, owner_id), scales)
    await repo.save_holdings(conn, owner_id, holdings)
    return holdings


async def apply_transfer(
    conn: AsyncConnection,
    transfers: Mapping[uuid.UUID, d.PortfolioTransfer],
    source: repo.Source,
    scales: d.Scales,
) -> list[tuple[d.Holdings, int]]:
    """Apply one ledger transfer (split per portfolio); the portfolios' new states, each
    with the number of transfers replayed to get it (1 when appended).

    A transfer later than all others of its portfolio (the usual case: one owner's
    transfers arrive in order) is applied on top of the saved state; any other (late,
    a reversal, reversed already, the first trade of an asset already held) makes the
    portfolio recompute from its whole history. Both give the same rows, which the
    rebuild command checks.
    """
    await repo.see_all(conn)
    changed = []
    for owner_id in sorted(transfers):  # one lock order, so concurrent appliers never deadlock
        t = transfers[owner_id]
        if not await repo.add_transfer(conn, owner_id, t, source):
            continue
        await repo.lock_portfolio(conn, owner_id)
        if await repo.is_latest(conn, owner_id, t):
            loaded = await repo.load_for_append(conn, owner_id, t)
            if d.appendable(loaded.holdings, t):
                d.apply(loaded.holdings, t, loaded.currency_of, scales)
                await repo.save_append(conn, owner_id, loaded, t, source)
                changed.append((loaded.holdings, 1))
                continue
        holdings = await recompute(conn, owner_id, scales)
        changed.append((holdings, holdings.transfers_applied))
    return changed


async def apply_price(conn: AsyncConnection, price: repo.PriceUpdate) -> int:
    """Keep a newer price; how many portfolios holding the symbol are marked for an update."""
    return await apply_prices(conn, [price])


def latest_per_symbol(prices: Sequence[repo.PriceUpdate]) -> list[repo.SymbolPrices]:
    """What applying `prices` one by one (in their order) would do to each symbol, ordered
    by symbol: the price left stored, the newest by (exchange time, receipt), the first of
    equals (a later equal one is not newer); and the last price of an earlier UTC day that
    was stored on the way, which the later day's price makes the previous close. A price
    older than the one kept before it changes nothing, as it would not one by one."""
    kept: dict[str, repo.SymbolPrices] = {}
    for p in prices:
        symbol = p.quote.symbol
        before = kept.get(symbol)
        if before is None:
            kept[symbol] = repo.SymbolPrices(p)
            continue
        top = before.latest
        if (p.quote.exchange_ts, p.received_at) <= (top.quote.exchange_ts, top.received_at):
            continue
        later_day = _utc_day(p.quote.exchange_ts) > _utc_day(top.quote.exchange_ts)
        kept[symbol] = repo.SymbolPrices(p, top if later_day else before.close)
    return [kept[s] for s in sorted(kept)]


def _utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


async def apply_prices(conn: AsyncConnection, prices: Sequence[repo.PriceUpdate]) -> int:
    """Keep the latest of `prices` per symbol where newer than the stored one, and mark the
    holders of every symbol whose price moved, in a few statements for the whole batch;
    how many portfolios were marked for an update.

    The symbols' price locks are held until commit, so the publisher never values a
    portfolio with such a symbol while its price is half applied (see `publish_due`).
    Older prices in the batch change nothing, as they would one by one: a price only
    replaces an older one.
    """
    latest = latest_per_symbol(prices)
    if not latest:
        return 0
    await repo.see_all(conn)
    await repo.lock_prices(conn, [b.latest.quote.symbol for b in latest])
    moved = await repo.record_prices(conn, latest)
    return await repo.mark_holders(conn, moved)


@dataclass(frozen=True, slots=True)
class Snapshot:
    owner_id: uuid.UUID
    portfolio: repo.PortfolioRow
    fifo: d.Valuation
    average: d.Valuation
    prices: Mapping[str, repo.StoredPrice]

    @property
    def transfer_sources(self) -> list[repo.Source]:
        return self.portfolio.sources


async def snapshots(
    conn: AsyncConnection,
    owner_ids: Sequence[uuid.UUID],
    base_currency: str,
    scales: d.Scales,
    *,
    skip_busy_prices: bool = False,
) -> dict[uuid.UUID, Snapshot]:
    """The portfolios valued at the latest prices under both methods, a few queries for
    all of them; unknown portfolios are left out, and with `skip_busy_prices` those
    holding a symbol whose price is being applied (see `publish_due`)."""
    rows = await repo.portfolios(conn, owner_ids)
    figures = await repo.positions_of(conn, list(rows))
    symbols = {f.symbol for fs in figures.values() for f in fs}
    busy = await repo.busy_prices(conn, symbols) if skip_busy_prices else set()
    ready = [o for o in rows if not busy.intersection(f.symbol for f in figures[o])]
    cash = await repo.cash_of(conn, ready)
    stored = await repo.prices(conn, symbols)
    quotes = {s: p.quote for s, p in stored.items()}
    found = {}
    for n, o in enumerate(ready, 1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        fs = figures[o]
        found[o] = Snapshot(
            o,
            rows[o],
            d.valuate_figures(fs, cash[o], quotes, d.Method.FIFO, base_currency, scales),
            d.valuate_figures(fs, cash[o], quotes, d.Method.AVERAGE, base_currency, scales),
            {f.symbol: stored[f.symbol] for f in fs if f.symbol in stored},
        )
    return found


async def snapshot(
    conn: AsyncConnection, owner_id: uuid.UUID, base_currency: str, scales: d.Scales
) -> Snapshot | None:
    """One portfolio's snapshot; None if unknown."""
    return (await snapshots(conn, [owner_id], base_currency, scales)).get(owner_id)


def as_of(s: Snapshot) -> datetime:
    """The latest transfer or price time the snapshot reflects."""
    times = [p.quote.exchange_ts for p in s.prices.values()]
    if s.portfolio.last_transfer_at is not None:
        times.append(s.portfolio.last_transfer_at)
    return max(times, default=s.portfolio.updated_at)


def update_record(s: Snapshot, now: datetime) -> dict[str, Any]:
    """The portfolio.updates.v1 record of a snapshot (FIFO figures plus the average ones)."""
    average = {v.symbol: v for v in s.average.positions}
    positions = []
    for v in s.fifo.positions:
        a = average[v.symbol]
        q = v.quote
        positions.append(
            {
                "symbol": v.symbol,
                "quantity": v.quantity,
                "cost_basis": v.cost_basis,
                "average_cost": v.average_cost,
                "price": q.price if q else None,
                "price_as_of": q.exchange_ts if q else None,
                "market_value": v.market_value,
                "unrealized_pnl": v.unrealized_pnl,
                "realized_pnl": v.realized_pnl,
                "currency": v.currency,
                "cost_basis_average": a.cost_basis,
                "unrealized_pnl_average": a.unrealized_pnl,
                "realized_pnl_average": a.realized_pnl,
                "price_source_topic": q.source_topic if q else None,
                "price_source_partition": q.source_partition if q else None,
                "price_source_offset": q.source_offset if q else None,
                "previous_close": q.previous_close if q else None,
                "day_change": v.day_change,
            }
        )
    sources = {(x.topic, x.partition): x.offset for x in s.transfer_sources}
    for p in s.prices.values():
        key = (p.event.topic, p.event.partition)
        sources[key] = max(sources.get(key, -1), p.event.offset)
    f = s.fifo
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now,
        "portfolio_id": str(s.owner_id),
        "owner_id": str(s.owner_id),
        "base_currency": f.base_currency,
        "as_of": as_of(s),
        "positions": positions,
        "cash": [{"asset": a, "amount": v} for a, v in f.cash.items()],
        "totals": {
            "market_value": f.market_value,
            "cost_basis": f.cost_basis,
            "unrealized_pnl": f.unrealized_pnl,
            "realized_pnl": f.realized_pnl,
            "cash_value": f.cash_value,
            "total_value": f.total_value,
            "cost_basis_average": s.average.cost_basis,
            "unrealized_pnl_average": s.average.unrealized_pnl,
            "realized_pnl_average": s.average.realized_pnl,
            "day_change": f.day_change,
        },
        "source_offsets": [
            {"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(sources.items())
        ],
    }


class _Encoded:
    """An outbox Encoder handing back records encoded earlier, by event id: the publisher
    encodes before its write transaction, so that transaction stays short."""

    def __init__(self, values: Mapping[str, bytes]) -> None:
        self._values = values

    def encode(self, schema_name: str, record: Mapping[str, Any], /) -> bytes:
        return self._values[str(record["event_id"])]


async def publish_due(
    engine: AsyncEngine,
    outbox: Table,
    codec: Encoder,
    *,
    interval_ms: int,
    batch_max: int,
    base_currency: str,
    scales: d.Scales,
) -> int:
    """Add an update event for each dirty portfolio whose last one is `interval_ms` old,
    computed from the current state (so always the latest); how many were published.

    Two transactions, so that no lock is held while portfolios are valued and encoded
    (the price consumer waits for none of that):

    1. read (repeatable read, read only: one consistent snapshot, no locks): the due
       portfolios, their positions, cash and prices; then, outside any transaction,
       their values and encoded update events;
    2. write (short): lock the rows of those still due (skip locked: a transfer being
       applied), keep those whose state did not change since the read (`updated_at`,
       which every transfer sets), add their events to the outbox and clear their flag,
       unless a price of a symbol they hold moved since the read or is being applied:
       such a portfolio is published with what was read and stays marked, so its next
       update (one interval later) carries the newer price.

    Why no change is lost: a transfer locks the portfolio's row, so it waits for step 2
    and sets the flag again, or commits before it and is seen by the `updated_at` check.
    A price marks holders only where the flag is clear, so a price committed after the
    read would be lost if the flag were cleared: step 2 shares the price locks of the
    symbols (try-lock, never wait: no deadlock) BEFORE it compares the stored prices with
    the ones read, so a price is either committed and seen, or being applied (busy), or
    waits for step 2's commit and then finds the flag cleared and sets it.
    """
    async with engine.connect() as reader:
        reader = await reader.execution_options(isolation_level="REPEATABLE READ")
        async with reader.begin():
            await repo.see_all(reader)
            due = await repo.due_for_update(reader, interval_ms, batch_max, lock=False)
            if not due:
                return 0
            found = await snapshots(reader, due, base_currency, scales)
    if not found:
        return 0
    now = datetime.now(UTC)
    records: dict[uuid.UUID, dict[str, Any]] = {}
    values: dict[str, bytes] = {}
    for n, (owner_id, s) in enumerate(found.items(), 1):
        records[owner_id] = record = update_record(s, now)
        values[str(record["event_id"])] = codec.encode(UPDATES_TOPIC, record)
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    encoded = _Encoded(values)
    async with engine.begin() as conn:
        await repo.see_all(conn)
        current = await repo.lock_due(conn, list(found), interval_ms)
        ready = [o for o in found if o in current and current[o] == found[o].portfolio.updated_at]
        if not ready:
            return 0
        read_prices = {symbol: p.event for o in ready for symbol, p in found[o].prices.items()}
        held = {o: [f.symbol for f in found[o].fifo.positions] for o in ready}
        symbols = {symbol for symbols in held.values() for symbol in symbols}
        busy = await repo.busy_prices(conn, symbols)  # first: see the docstring
        moved = busy | await repo.prices_moved(conn, symbols, read_prices)
        events = [OutboxEvent(UPDATES_TOPIC, records[o], str(o)) for o in ready]
        await add_events(conn, outbox, encoded, events, notify=True)
        await repo.mark_published(conn, {o: not moved.intersection(held[o]) for o in ready})
    return len(ready)


async def snapshot_valuations(
    engine: AsyncEngine, base_currency: str, scales: d.Scales, *, batch_max: int
) -> int:
    """Store today's valuation (both methods) of every portfolio, a batch per transaction;
    the last snapshot of a UTC day stands for that day. How many portfolios were stored."""
    after: uuid.UUID | None = None
    stored = 0
    while True:
        async with engine.begin() as conn:
            await repo.see_all(conn)
            owners = await repo.owners_after(conn, after, batch_max)
            if not owners:
                return stored
            day = datetime.now(UTC).date()
            for owner_id, s in (await snapshots(conn, owners, base_currency, scales)).items():
                for v in (s.fifo, s.average):
                    await repo.save_valuation(conn, owner_id, day, v, as_of(s))
                stored += 1
            after = owners[-1]
