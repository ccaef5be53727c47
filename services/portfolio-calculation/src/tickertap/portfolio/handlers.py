"""Use cases of the portfolio service, each inside the caller's transaction.

    apply_transfer   a ledger transfer: record it in the history of each portfolio it
                     concerns, recompute that portfolio's state from its history
    apply_price      a market price: keep it if newer
    apply_prices     a batch of prices: the same, for the latest price of each symbol
    snapshot         a portfolio's valuation and where its inputs came from
    update_record    a snapshot as a portfolio.updates.v1 record

The consumer calls the first three in the transaction that claims the event in the
inbox, so each event is applied exactly once; each announces what it changed at commit
(`repo.notify_changes`), which the live publisher (live.py) follows.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo

log = logging.getLogger(__name__)

UPDATES_TOPIC = "portfolio.updates.v1"
# valuing many portfolios gives the event loop back this often, so the consumers sharing
# it are not held up for a whole batch
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
    touched = []
    for owner_id in sorted(transfers):  # one lock order, so concurrent appliers never deadlock
        t = transfers[owner_id]
        if not await repo.add_transfer(conn, owner_id, t, source):
            continue
        touched.append(owner_id)
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
    await repo.notify_changes(conn, owners=touched)
    return changed


async def apply_price(conn: AsyncConnection, price: repo.PriceUpdate) -> int:
    """Keep a newer price; 1 if it was kept, else 0."""
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
    """Keep the latest of `prices` per symbol where newer than the stored one, in one
    statement for the whole batch, and announce the prices that moved; how many
    moved. Older prices in the batch change nothing, as they would one by one: a price only
    replaces an older one."""
    latest = latest_per_symbol(prices)
    if not latest:
        return 0
    await repo.see_all(conn)
    moved = await repo.record_prices(conn, latest)
    await repo.notify_changes(conn, prices=moved)
    return len(moved)


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
) -> dict[uuid.UUID, Snapshot]:
    """The portfolios valued at the latest prices under both methods, a few queries for
    all of them; unknown portfolios are left out."""
    rows = await repo.portfolios(conn, owner_ids)
    figures = await repo.positions_of(conn, list(rows))
    symbols = {f.symbol for fs in figures.values() for f in fs}
    ready = list(rows)
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
