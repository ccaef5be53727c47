"""SQL of the portfolio projection (tables of migration 0002).

Every function takes the caller's `AsyncConnection` inside an open transaction;
row-level security needs `see_all` or `see_owner` first in that transaction.
Decimals go in and out as NUMERIC (asyncpg hands back Decimal); the JSON columns
hold decimals as strings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.money import to_decimal
from tickertap.portfolio import domain as d


def plain(value: Decimal) -> str:
    """A decimal as a string without exponent (what JSON columns and the API carry)."""
    return format(value, "f")


async def see_all(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT set_config('tickertap.scope', 'all', true)"))


async def see_owner(conn: AsyncConnection, owner_id: uuid.UUID) -> None:
    await conn.execute(
        text("SELECT set_config('tickertap.owner_id', :owner, true)"), {"owner": str(owner_id)}
    )


# -- the history -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input event was read: topic, partition, offset."""

    topic: str
    partition: int
    offset: int


def _trade_json(trade: d.Trade | None) -> str | None:
    if trade is None:
        return None
    return json.dumps(
        {
            "symbol": trade.symbol,
            "side": trade.side.value,
            "quantity": plain(trade.quantity),
            "price": plain(trade.price),
            "notional": plain(trade.notional),
            "fee": plain(trade.fee),
            "currency": trade.currency,
        }
    )


def _trade_of(data: Mapping[str, Any] | None) -> d.Trade | None:
    if data is None:
        return None
    return d.Trade(
        data["symbol"],
        d.Side(data["side"]),
        Decimal(data["quantity"]),
        Decimal(data["price"]),
        Decimal(data["notional"]),
        Decimal(data["fee"]),
        data["currency"],
    )


async def add_transfer(
    conn: AsyncConnection, owner_id: uuid.UUID, t: d.PortfolioTransfer, source: Source
) -> bool:
    """Record `t` in the portfolio's history; False when it is already there."""
    result = await conn.execute(
        text(
            "INSERT INTO portfolio.transfers (owner_id, transfer_id, occurred_at, kind, reverses,"
            " amounts, trade, source_topic, source_partition, source_offset)"
            " VALUES (:owner, :id, :at, :kind, :reverses, CAST(:amounts AS jsonb),"
            " CAST(:trade AS jsonb), :topic, :partition, :offset)"
            " ON CONFLICT DO NOTHING"
        ),
        {
            "owner": owner_id,
            "id": t.transfer_id,
            "at": t.occurred_at,
            "kind": t.kind,
            "reverses": t.reverses,
            "amounts": json.dumps({a: plain(v) for a, v in t.amounts.items()}),
            "trade": _trade_json(t.trade),
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
        },
    )
    return bool(result.rowcount)


async def history(conn: AsyncConnection, owner_id: uuid.UUID) -> list[d.PortfolioTransfer]:
    rows = await conn.execute(
        text(
            "SELECT transfer_id, occurred_at, kind, reverses, amounts, trade"
            " FROM portfolio.transfers WHERE owner_id = :owner ORDER BY occurred_at, transfer_id"
        ),
        {"owner": owner_id},
    )
    return [
        d.PortfolioTransfer(
            r.transfer_id,
            r.occurred_at,
            r.kind,
            {a: Decimal(v) for a, v in r.amounts.items()},
            _trade_of(r.trade),
            r.reverses,
        )
        for r in rows
    ]


async def owners(conn: AsyncConnection) -> list[uuid.UUID]:
    rows = await conn.execute(text("SELECT owner_id FROM portfolio.portfolios ORDER BY owner_id"))
    return [r.owner_id for r in rows]


# -- derived state ---------------------------------------------------------------------------


async def lock_portfolio(conn: AsyncConnection, owner_id: uuid.UUID) -> None:
    """Create the portfolio's row if new and lock it: one writer of its state at a time."""
    await conn.execute(
        text("INSERT INTO portfolio.portfolios (owner_id) VALUES (:owner) ON CONFLICT DO NOTHING"),
        {"owner": owner_id},
    )
    await conn.execute(
        text("SELECT 1 FROM portfolio.portfolios WHERE owner_id = :owner FOR UPDATE"),
        {"owner": owner_id},
    )


async def save_holdings(conn: AsyncConnection, owner_id: uuid.UUID, h: d.Holdings) -> None:
    """Replace the portfolio's derived rows with `h` and mark it for an update event."""
    for table in ("balances", "positions", "lots", "realized"):
        await conn.execute(
            text(f"DELETE FROM portfolio.{table} WHERE owner_id = :owner"),  # nosec B608
            {"owner": owner_id},
        )
    if h.balances:
        await conn.execute(
            text(
                "INSERT INTO portfolio.balances (owner_id, asset, amount)"
                " VALUES (:owner, :asset, :amount)"
            ),
            [{"owner": owner_id, "asset": a, "amount": v} for a, v in h.balances.items()],
        )
    figures = [d.PositionFigures.of(p) for p in h.positions.values()]
    if figures:
        await conn.execute(
            text(
                "INSERT INTO portfolio.positions (owner_id, symbol, currency, quantity, cost_fifo,"
                " cost_average, realized_fifo, realized_average) VALUES (:owner, :symbol,"
                " :currency, :quantity, :cost_fifo, :cost_average, :realized_fifo,"
                " :realized_average)"
            ),
            [
                {
                    "owner": owner_id,
                    "symbol": f.symbol,
                    "currency": f.currency,
                    "quantity": f.quantity,
                    "cost_fifo": f.cost_fifo,
                    "cost_average": f.cost_average,
                    "realized_fifo": f.realized_fifo,
                    "realized_average": f.realized_average,
                }
                for f in figures
            ],
        )
    await _insert_lots(conn, owner_id, list(h.positions.values()))
    realized = [(seq, r) for method in d.Method for seq, r in enumerate(h.realizations(method))]
    await _insert_realized(conn, owner_id, realized)
    await _update_portfolio(conn, owner_id, h)


async def _insert_lots(
    conn: AsyncConnection, owner_id: uuid.UUID, positions: Sequence[d.Position]
) -> None:
    lots = [
        (p.symbol, seq, lot) for p in positions for seq, lot in enumerate(p.lots) if lot.quantity
    ]
    if not lots:
        return
    await conn.execute(
        text(
            "INSERT INTO portfolio.lots (owner_id, symbol, seq, transfer_id, acquired_at,"
            " quantity_acquired, quantity, price, fees, cost) VALUES (:owner, :symbol, :seq,"
            " :transfer_id, :acquired_at, :quantity_acquired, :quantity, :price, :fees, :cost)"
        ),
        [
            {
                "owner": owner_id,
                "symbol": symbol,
                "seq": seq,
                "transfer_id": lot.transfer_id,
                "acquired_at": lot.acquired_at,
                "quantity_acquired": lot.quantity_acquired,
                "quantity": lot.quantity,
                "price": lot.price,
                "fees": lot.fees,
                "cost": lot.cost,
            }
            for symbol, seq, lot in lots
        ],
    )


async def _insert_realized(
    conn: AsyncConnection, owner_id: uuid.UUID, realized: Sequence[tuple[int, d.Realization]]
) -> None:
    if not realized:
        return
    await conn.execute(
        text(
            "INSERT INTO portfolio.realized (owner_id, method, seq, symbol, currency,"
            " sale_transfer_id, occurred_at, quantity, proceeds, cost, pnl,"
            " uncovered_quantity, lots) VALUES (:owner, :method, :seq, :symbol, :currency,"
            " :sale, :at, :quantity, :proceeds, :cost, :pnl, :uncovered,"
            " CAST(:lots AS jsonb))"
        ),
        [
            {
                "owner": owner_id,
                "method": r.method.value,
                "seq": seq,
                "symbol": r.symbol,
                "currency": r.currency,
                "sale": r.sale_transfer_id,
                "at": r.occurred_at,
                "quantity": r.quantity,
                "proceeds": r.proceeds,
                "cost": r.cost,
                "pnl": r.pnl,
                "uncovered": r.uncovered_quantity,
                "lots": json.dumps(
                    [
                        {
                            "transfer_id": str(u.transfer_id),
                            "quantity": plain(u.quantity),
                            "cost": plain(u.cost),
                        }
                        for u in r.lots
                    ]
                ),
            }
            for seq, r in realized
        ],
    )


async def _update_portfolio(
    conn: AsyncConnection, owner_id: uuid.UUID, h: d.Holdings, sources: list[Source] | None = None
) -> None:
    """Counters, the last offset per input partition (`sources`, else from the history),
    and the mark for an update event."""
    params: dict[str, Any] = {"owner": owner_id, "n": h.transfers_applied, "at": h.last_transfer_at}
    if sources is None:
        new_sources = (
            "coalesce((SELECT jsonb_agg(jsonb_build_array(topic, partition, last)"
            " ORDER BY topic, partition) FROM (SELECT source_topic AS topic, source_partition"
            " AS partition, max(source_offset) AS last FROM portfolio.transfers t"
            " WHERE t.owner_id = :owner GROUP BY 1, 2) AS s), '[]'::jsonb)"
        )
    else:
        new_sources = "CAST(:sources AS jsonb)"
        params["sources"] = json.dumps([[x.topic, x.partition, x.offset] for x in sources])
    await conn.execute(
        text(
            "UPDATE portfolio.portfolios SET transfers_applied = :n, last_transfer_at = :at,"  # nosec B608  # new_sources is one of two constant expressions
            " updated_at = now(),"
            f" sources = {new_sources} WHERE owner_id = :owner"
        ),
        params,
    )


# -- appending one transfer (the fast path) -------------------------------------------------


async def is_latest(conn: AsyncConnection, owner_id: uuid.UUID, t: d.PortfolioTransfer) -> bool:
    """Whether `t` (already recorded) is after every other transfer of the portfolio and
    no recorded reversal undoes it: then it can be applied on top of the saved state."""
    row = (
        await conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM portfolio.transfers WHERE owner_id = :owner"
                " AND (occurred_at, transfer_id) > (:at, :id))"
                " OR EXISTS (SELECT 1 FROM portfolio.transfers WHERE owner_id = :owner"
                " AND reverses = :id) AS later"
            ),
            {"owner": owner_id, "at": t.occurred_at, "id": t.transfer_id},
        )
    ).scalar()
    return not row


@dataclass(frozen=True, slots=True)
class Loaded:
    """The saved state needed to append a transfer: all balances, the positions it moves."""

    holdings: d.Holdings
    currency_of: dict[str, str]
    realized_count: dict[d.Method, int]
    sources: list[Source]


async def load_for_append(
    conn: AsyncConnection, owner_id: uuid.UUID, t: d.PortfolioTransfer
) -> Loaded:
    params = {"owner": owner_id, "assets": sorted(t.amounts)}
    row = await portfolio(conn, owner_id)
    holdings = d.Holdings(
        balances=await balances(conn, owner_id),
        transfers_applied=row.transfers_applied if row else 0,
        last_transfer_at=row.last_transfer_at if row else None,
    )
    positions_rows = await conn.execute(
        text(
            "SELECT symbol, currency, cost_average, realized_fifo, realized_average"
            " FROM portfolio.positions WHERE owner_id = :owner AND symbol = ANY(:assets)"
        ),
        params,
    )
    for r in positions_rows:
        holdings.positions[r.symbol] = d.Position(
            r.symbol,
            r.currency,
            average_cost_pool=r.cost_average,
            realized_carried={d.Method.FIFO: r.realized_fifo, d.Method.AVERAGE: r.realized_average},
        )
    lot_rows = await conn.execute(
        text(
            "SELECT symbol, transfer_id, acquired_at, quantity_acquired, quantity, price, fees,"
            " cost FROM portfolio.lots WHERE owner_id = :owner AND symbol = ANY(:assets)"
            " ORDER BY symbol, seq"
        ),
        params,
    )
    for r in lot_rows:
        holdings.positions[r.symbol].lots.append(
            d.Lot(
                r.transfer_id,
                r.acquired_at,
                r.quantity_acquired,
                r.quantity,
                r.price,
                r.fees,
                r.cost,
            )
        )
    counts = await conn.execute(
        text(
            "SELECT method, count(*) AS n FROM portfolio.realized WHERE owner_id = :owner"
            " GROUP BY method"
        ),
        params,
    )
    realized_count = {d.Method.FIFO: 0, d.Method.AVERAGE: 0}
    for r in counts:
        realized_count[d.Method(r.method)] = r.n
    currency_of = {symbol: p.currency for symbol, p in holdings.positions.items()}
    if t.trade is not None and t.trade.symbol in t.amounts:
        currency_of.setdefault(t.trade.symbol, t.trade.currency)
    return Loaded(holdings, currency_of, realized_count, row.sources if row else [])


async def save_append(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    loaded: Loaded,
    t: d.PortfolioTransfer,
    source: Source,
) -> None:
    """Write what appending `t` changed: its assets' balances, the positions it moved (their
    lots rewritten), its realized entries, the portfolio's counters."""
    h = loaded.holdings
    for asset in sorted(t.amounts):
        if asset in h.balances:
            await conn.execute(
                text(
                    "INSERT INTO portfolio.balances (owner_id, asset, amount)"
                    " VALUES (:owner, :asset, :amount) ON CONFLICT (owner_id, asset)"
                    " DO UPDATE SET amount = EXCLUDED.amount"
                ),
                {"owner": owner_id, "asset": asset, "amount": h.balances[asset]},
            )
        else:
            await conn.execute(
                text("DELETE FROM portfolio.balances WHERE owner_id = :owner AND asset = :asset"),
                {"owner": owner_id, "asset": asset},
            )
    moved = [h.positions[a] for a in sorted(t.amounts) if a in h.positions]
    for p in moved:
        f = d.PositionFigures.of(p)
        await conn.execute(
            text(
                "INSERT INTO portfolio.positions (owner_id, symbol, currency, quantity, cost_fifo,"
                " cost_average, realized_fifo, realized_average) VALUES (:owner, :symbol,"
                " :currency, :quantity, :cost_fifo, :cost_average, :realized_fifo,"
                " :realized_average) ON CONFLICT (owner_id, symbol) DO UPDATE SET"
                " quantity = EXCLUDED.quantity, cost_fifo = EXCLUDED.cost_fifo,"
                " cost_average = EXCLUDED.cost_average, realized_fifo = EXCLUDED.realized_fifo,"
                " realized_average = EXCLUDED.realized_average"
            ),
            {
                "owner": owner_id,
                "symbol": f.symbol,
                "currency": f.currency,
                "quantity": f.quantity,
                "cost_fifo": f.cost_fifo,
                "cost_average": f.cost_average,
                "realized_fifo": f.realized_fifo,
                "realized_average": f.realized_average,
            },
        )
        await conn.execute(
            text("DELETE FROM portfolio.lots WHERE owner_id = :owner AND symbol = :symbol"),
            {"owner": owner_id, "symbol": p.symbol},
        )
    await _insert_lots(conn, owner_id, moved)
    realized = [
        (loaded.realized_count[method] + i, r)
        for method in d.Method
        for i, r in enumerate(
            sorted(
                (r for p in moved for r in p.realized[method]),
                key=lambda r: (r.occurred_at, str(r.sale_transfer_id), r.symbol),
            )
        )
    ]
    await _insert_realized(conn, owner_id, realized)
    last = {(x.topic, x.partition): x.offset for x in loaded.sources}
    key = (source.topic, source.partition)
    last[key] = max(last.get(key, -1), source.offset)
    sources = [Source(topic, part, offset) for (topic, part), offset in sorted(last.items())]
    await _update_portfolio(conn, owner_id, h, sources)


# -- reading the state -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortfolioRow:
    owner_id: uuid.UUID
    transfers_applied: int
    last_transfer_at: datetime | None
    updated_at: datetime
    sources: list[Source]  # the last offset of each input partition of its transfers


async def portfolios(
    conn: AsyncConnection, owner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, PortfolioRow]:
    rows = await conn.execute(
        text(
            "SELECT owner_id, transfers_applied, last_transfer_at, updated_at, sources"
            " FROM portfolio.portfolios WHERE owner_id = ANY(:owners)"
        ),
        {"owners": list(owner_ids)},
    )
    return {
        r.owner_id: PortfolioRow(
            r.owner_id,
            r.transfers_applied,
            r.last_transfer_at,
            r.updated_at,
            [Source(t, p, o) for t, p, o in r.sources],
        )
        for r in rows
    }


async def portfolio(conn: AsyncConnection, owner_id: uuid.UUID) -> PortfolioRow | None:
    return (await portfolios(conn, [owner_id])).get(owner_id)


async def balances(conn: AsyncConnection, owner_id: uuid.UUID) -> dict[str, Decimal]:
    return (await balances_of(conn, [owner_id]))[owner_id]


async def balances_of(
    conn: AsyncConnection, owner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Decimal]]:
    """Each portfolio's balances (an empty dict for none), in one query."""
    rows = await conn.execute(
        text(
            "SELECT owner_id, asset, amount FROM portfolio.balances"
            " WHERE owner_id = ANY(:owners) ORDER BY 1, 2"
        ),
        {"owners": list(owner_ids)},
    )
    return _amounts_by_owner(rows, owner_ids)


def _amounts_by_owner(
    rows: Iterable[Any], owner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Decimal]]:
    """(owner_id, asset, amount) rows as each owner's amounts by asset (empty for none)."""
    found: dict[uuid.UUID, dict[str, Decimal]] = {o: {} for o in owner_ids}
    for r in rows:
        found[r.owner_id][r.asset] = r.amount
    return found


async def positions_of(
    conn: AsyncConnection, owner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[d.PositionFigures]]:
    """Each portfolio's positions, by symbol (an empty list for none)."""
    rows = await conn.execute(
        text(
            "SELECT owner_id, symbol, currency, quantity, cost_fifo, cost_average, realized_fifo,"
            " realized_average FROM portfolio.positions WHERE owner_id = ANY(:owners)"
            " ORDER BY owner_id, symbol"
        ),
        {"owners": list(owner_ids)},
    )
    found: dict[uuid.UUID, list[d.PositionFigures]] = {o: [] for o in owner_ids}
    for r in rows:
        found[r.owner_id].append(
            d.PositionFigures(
                r.symbol,
                r.currency,
                r.quantity,
                r.cost_fifo,
                r.cost_average,
                r.realized_fifo,
                r.realized_average,
            )
        )
    return found


async def positions(conn: AsyncConnection, owner_id: uuid.UUID) -> list[d.PositionFigures]:
    return (await positions_of(conn, [owner_id]))[owner_id]


async def cash_of(
    conn: AsyncConnection, owner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Decimal]]:
    """Each portfolio's balances of the assets that are not positions."""
    rows = await conn.execute(
        text(
            "SELECT b.owner_id, b.asset, b.amount FROM portfolio.balances b"
            " WHERE b.owner_id = ANY(:owners) AND NOT EXISTS (SELECT 1 FROM portfolio.positions p"
            " WHERE p.owner_id = b.owner_id AND p.symbol = b.asset) ORDER BY 1, 2"
        ),
        {"owners": list(owner_ids)},
    )
    return _amounts_by_owner(rows, owner_ids)


async def lots(conn: AsyncConnection, owner_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT symbol, seq, transfer_id, acquired_at, quantity_acquired, quantity, price,"
            " fees, cost FROM portfolio.lots WHERE owner_id = :owner ORDER BY symbol, seq"
            " LIMIT :limit"
        ),
        {"owner": owner_id, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]


async def realized(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    method: d.Method,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    after_seq: int | None = None,
) -> list[dict[str, Any]]:
    """Realized entries of sales in [start, end) under `method`, oldest first, after the
    entry numbered `after_seq` (a page's cursor)."""
    rows = await conn.execute(
        text(
            "SELECT seq, symbol, currency, sale_transfer_id, occurred_at, quantity, proceeds,"
            " cost, pnl, uncovered_quantity, lots FROM portfolio.realized"
            " WHERE owner_id = :owner AND method = :method"
            " AND (CAST(:start AS timestamptz) IS NULL OR occurred_at >= :start)"
            " AND (CAST(:end AS timestamptz) IS NULL OR occurred_at < :end)"
            " AND (CAST(:after AS integer) IS NULL OR seq > :after)"
            " ORDER BY seq LIMIT :limit"
        ),
        {
            "owner": owner_id,
            "method": method.value,
            "start": start,
            "end": end,
            "after": after_seq,
            "limit": limit,
        },
    )
    return [dict(r._mapping) for r in rows]


async def realized_totals(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    method: d.Method,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, Decimal]:
    """Realized P&L per currency of the sales in [start, end) under `method`."""
    rows = await conn.execute(
        text(
            "SELECT currency, sum(pnl) AS pnl FROM portfolio.realized"
            " WHERE owner_id = :owner AND method = :method"
            " AND (CAST(:start AS timestamptz) IS NULL OR occurred_at >= :start)"
            " AND (CAST(:end AS timestamptz) IS NULL OR occurred_at < :end)"
            " GROUP BY currency ORDER BY currency"
        ),
        {"owner": owner_id, "method": method.value, "start": start, "end": end},
    )
    return {r.currency: r.pnl for r in rows}


# -- prices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceUpdate:
    quote: d.Quote
    received_at: datetime
    event: Source


@dataclass(frozen=True, slots=True)
class SymbolPrices:
    """What a batch of prices of one symbol can change: `latest`, the one applying them one
    by one would leave stored, and `close`, the last price of an earlier UTC day that one
    by one would have been stored on the way to it (the close it would record), if any."""

    latest: PriceUpdate
    close: PriceUpdate | None = None


async def record_price(conn: AsyncConnection, p: PriceUpdate) -> bool:
    """Keep `p` if it is newer (exchange time, then receipt) than the stored price."""
    return bool(await record_prices(conn, [SymbolPrices(p)]))


async def record_prices(conn: AsyncConnection, batch: Sequence[SymbolPrices]) -> list[StoredPrice]:
    """Store each symbol's latest price of `batch` where newer (exchange time, then receipt)
    than the stored one, in one statement, with the previous close that applying the
    batch's prices one by one would leave; the prices stored (of the symbols that moved).

    The previous close: the batch's `close` when it is newer than the stored price (it
    would have been stored, then replaced by a later day's price); else the stored price
    when the latest is of a later UTC day; else the stored close stays."""
    assert len({b.latest.quote.symbol for b in batch}) == len(batch), "one entry per symbol"
    if not batch:
        return []
    latest = [b.latest for b in batch]
    result = await conn.execute(
        text(
            "WITH batch AS MATERIALIZED (SELECT * FROM unnest(CAST(:symbol AS text[]),"  # nosec B608  # _BATCH_CLOSE_NEWER is a constant
            " CAST(:price AS numeric[]), CAST(:exchange_ts AS timestamptz[]),"
            " CAST(:received_at AS timestamptz[]), CAST(:topic AS text[]),"
            " CAST(:partition AS integer[]), CAST(:offset AS bigint[]),"
            " CAST(:event_topic AS text[]), CAST(:event_partition AS integer[]),"
            " CAST(:event_offset AS bigint[]), CAST(:close AS numeric[]),"
            " CAST(:close_ts AS timestamptz[]), CAST(:close_received_at AS timestamptz[]))"
            ' AS b(symbol, price, exchange_ts, received_at, topic, partition, "offset",'
            " event_topic, event_partition, event_offset, close, close_ts, close_received_at))"
            " INSERT INTO portfolio.prices AS old (symbol, price, exchange_ts, received_at,"
            " source_topic, source_partition, source_offset, event_topic, event_partition,"
            " event_offset, previous_close, previous_close_ts)"
            ' SELECT symbol, price, exchange_ts, received_at, topic, partition, "offset",'
            " event_topic, event_partition, event_offset, close, close_ts FROM batch"
            " ON CONFLICT (symbol) DO UPDATE SET price = EXCLUDED.price,"
            " exchange_ts = EXCLUDED.exchange_ts, received_at = EXCLUDED.received_at,"
            " source_topic = EXCLUDED.source_topic, source_partition = EXCLUDED.source_partition,"
            " source_offset = EXCLUDED.source_offset, event_topic = EXCLUDED.event_topic,"
            " event_partition = EXCLUDED.event_partition, event_offset = EXCLUDED.event_offset,"
            " updated_at = now(),"
            # a price of a later UTC day makes the last one of the earlier day the close
            f" previous_close = CASE WHEN {_BATCH_CLOSE_NEWER} THEN EXCLUDED.previous_close"
            " WHEN (EXCLUDED.exchange_ts AT TIME ZONE 'UTC')::date"
            " > (old.exchange_ts AT TIME ZONE 'UTC')::date THEN old.price"
            " ELSE old.previous_close END,"
            f" previous_close_ts = CASE WHEN {_BATCH_CLOSE_NEWER} THEN EXCLUDED.previous_close_ts"
            " WHEN (EXCLUDED.exchange_ts AT TIME ZONE 'UTC')::date"
            " > (old.exchange_ts AT TIME ZONE 'UTC')::date THEN old.exchange_ts"
            " ELSE old.previous_close_ts END"
            " WHERE (EXCLUDED.exchange_ts, EXCLUDED.received_at)"
            " > (old.exchange_ts, old.received_at)"
            " RETURNING old.symbol, old.price, old.exchange_ts, old.received_at, old.source_topic,"
            " old.source_partition, old.source_offset, old.event_topic, old.event_partition,"
            " old.event_offset, old.previous_close, old.previous_close_ts"
        ),
        {
            "symbol": [p.quote.symbol for p in latest],
            "price": [p.quote.price for p in latest],
            "exchange_ts": [p.quote.exchange_ts for p in latest],
            "received_at": [p.received_at for p in latest],
            "topic": [p.quote.source_topic for p in latest],
            "partition": [p.quote.source_partition for p in latest],
            "offset": [p.quote.source_offset for p in latest],
            "event_topic": [p.event.topic for p in latest],
            "event_partition": [p.event.partition for p in latest],
            "event_offset": [p.event.offset for p in latest],
            "close": [b.close.quote.price if b.close else None for b in batch],
            "close_ts": [b.close.quote.exchange_ts if b.close else None for b in batch],
            "close_received_at": [b.close.received_at if b.close else None for b in batch],
        },
    )
    return [stored_price(r) for r in result]


# the batch's close candidate of the conflicting symbol is newer than the stored price
_BATCH_CLOSE_NEWER = (
    "EXCLUDED.previous_close_ts IS NOT NULL AND (EXCLUDED.previous_close_ts,"
    " (SELECT b.close_received_at FROM batch b WHERE b.symbol = EXCLUDED.symbol))"
    " > (old.exchange_ts, old.received_at)"
)


@dataclass(frozen=True, slots=True)
class StoredPrice:
    quote: d.Quote
    event: Source
    # when the service received it: with the exchange time, what orders a symbol's prices
    received_at: datetime | None = None

    def newer_than(self, other: StoredPrice) -> bool:
        """Whether the database would replace `other` by this price: a later exchange time,
        or the same one received later (unknown receipt: the same exchange time is not)."""
        if self.quote.exchange_ts != other.quote.exchange_ts:
            return self.quote.exchange_ts > other.quote.exchange_ts
        if self.received_at is None or other.received_at is None:
            return False
        return self.received_at > other.received_at


async def prices(conn: AsyncConnection, symbols: Iterable[str]) -> dict[str, StoredPrice]:
    wanted = sorted(set(symbols))
    if not wanted:
        return {}
    rows = await conn.execute(
        text(
            "SELECT symbol, price, exchange_ts, received_at, source_topic, source_partition,"
            " source_offset, event_topic, event_partition, event_offset, previous_close,"
            " previous_close_ts"
            " FROM portfolio.prices WHERE symbol = ANY(:symbols)"
        ),
        {"symbols": wanted},
    )
    return {r.symbol: stored_price(r) for r in rows}


def stored_price(r: Any) -> StoredPrice:
    """A row of portfolio.prices (its columns by name) as a StoredPrice."""
    return StoredPrice(
        d.Quote(
            r.symbol,
            r.price,
            r.exchange_ts,
            r.source_topic,
            r.source_partition,
            r.source_offset,
            r.previous_close,
            r.previous_close_ts,
        ),
        Source(r.event_topic, r.event_partition, r.event_offset),
        r.received_at,
    )


# -- change announcements -------------------------------------------------------------------

CHANGES_CHANNEL = "portfolio_changes"  # LISTEN/NOTIFY channel the live publisher follows
NOTIFY_ITEMS_MAX = 100  # ids per announcement
NOTIFY_BYTES_MAX = 7900  # Postgres refuses a payload of 8,000 bytes or more


async def notify_changes(
    conn: AsyncConnection,
    *,
    owners: Sequence[uuid.UUID] = (),
    symbols: Sequence[str] = (),
    prices: Sequence[StoredPrice] = (),
) -> None:
    """Announce, at the commit of the caller's transaction (never before, never if it rolls
    back), the portfolios and the prices it changed (`announcements`) on CHANGES_CHANNEL."""
    payloads = announcements(owners, symbols, prices)
    if payloads:
        await conn.execute(
            text(
                "SELECT count(pg_notify(:channel, p)) FROM unnest(CAST(:payloads AS text[])) AS p"
            ),
            {"channel": CHANGES_CHANNEL, "payloads": payloads},
        )


async def own_sessions(conn: AsyncConnection, pids: Iterable[int]) -> set[int]:
    """Those of the backends `pids` whose login role is a member of this session's role
    (the schema's owner role: every credential Vault issues this service is IN it)."""
    rows = await conn.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"
            " AND pg_has_role(usesysid, current_user, 'MEMBER')"
        ),
        {"pids": sorted(pids)},
    )
    return {r.pid for r in rows}


def announcements(
    owners: Sequence[uuid.UUID], symbols: Sequence[str], prices: Sequence[StoredPrice]
) -> list[str]:
    """JSON payloads of at most NOTIFY_ITEMS_MAX items and NOTIFY_BYTES_MAX bytes:
    {"owners": [...]}, {"symbols": [...]} (read their prices from the database) and
    {"prices": [...]} (the stored prices themselves, `price_payload`). A price too long
    for a payload is announced by its symbol, a symbol too long by {"all": true}."""
    too_long: list[str] = []
    payloads = _packed("owners", [(str(o), json.dumps(str(o))) for o in owners], too_long)
    by_name = list(symbols)
    priced = [(p.quote.symbol, json.dumps(price_payload(p))) for p in prices]
    payloads += _packed("prices", priced, by_name)
    payloads += _packed("symbols", [(s, json.dumps(s)) for s in by_name], too_long)
    if too_long:
        payloads.append(json.dumps({"all": True}))
    return payloads


def _packed(key: str, items: Sequence[tuple[str, str]], too_long: list[str]) -> list[str]:
    """Items (a name, its JSON text) in payloads {key: [...]}; the names of those that fit
    in none go to `too_long`."""
    room = NOTIFY_BYTES_MAX - len(json.dumps({key: []}))
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    for name, item in items:
        cost = len(item) + 2  # with its separator (", "); JSON text is ASCII: one byte each
        if cost > room:
            too_long.append(name)
            continue
        if batch and (size + cost > room or len(batch) == NOTIFY_ITEMS_MAX):
            payloads.append(f'{{"{key}": [{", ".join(batch)}]}}')
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        payloads.append(f'{{"{key}": [{", ".join(batch)}]}}')
    return payloads


PRICE_PAYLOAD_ITEMS = 12


def price_payload(p: StoredPrice) -> list[Any]:
    """A stored price as JSON values, exactly (decimals as plain digits, which `to_decimal`
    reads back; times as ISO 8601 text)."""
    q, close_ts = p.quote, p.quote.previous_close_ts
    return [
        q.symbol,
        format(q.price, "f"),
        q.exchange_ts.isoformat(),
        q.source_topic,
        q.source_partition,
        q.source_offset,
        p.event.topic,
        p.event.partition,
        p.event.offset,
        None if q.previous_close is None else format(q.previous_close, "f"),
        None if close_ts is None else close_ts.isoformat(),
        None if p.received_at is None else p.received_at.isoformat(),
    ]


def price_of_payload(item: Sequence[Any]) -> StoredPrice:
    """`price_payload` read back; ValueError or TypeError if it is not one."""
    if not isinstance(item, list) or len(item) != PRICE_PAYLOAD_ITEMS:
        raise TypeError("a price announcement is not a list of its fields")
    symbol, price, at, topic, partition, offset = item[:6]
    e_topic, e_partition, e_offset, close, close_at, received = item[6:]
    if not all(isinstance(v, str) for v in (symbol, price, at, topic, e_topic)):
        raise TypeError("a price announcement's text field is not text")
    if not all(type(v) is int for v in (partition, offset, e_partition, e_offset)):
        raise TypeError("a price announcement's number field is not an integer")
    stored = StoredPrice(
        d.Quote(
            symbol,
            to_decimal(price),
            datetime.fromisoformat(at),
            topic,
            partition,
            offset,
            None if close is None else to_decimal(close),
            None if close_at is None else datetime.fromisoformat(close_at),
        ),
        Source(e_topic, e_partition, e_offset),
        None if received is None else datetime.fromisoformat(received),
    )
    q = stored.quote
    times = (q.exchange_ts, q.previous_close_ts, stored.received_at)
    if any(t is not None and t.tzinfo is None for t in times):
        raise ValueError("a price announcement's time has no time zone")
    return stored


def day_bounds(start: date | None, end: date | None) -> tuple[datetime | None, datetime | None]:
    """[start 00:00 UTC, the day after end 00:00 UTC) for inclusive day ranges; `end` must
    come before date.max (the API's check_range rejects it), whose next day overflows."""
    lo = datetime.combine(start, time(), UTC) if start else None
    hi = datetime.combine(end + timedelta(days=1), time(), UTC) if end else None
    return lo, hi


# -- comparing stored state with a recomputation (the rebuild command) ------------------------

StateRows = dict[str, list[tuple[Any, ...]]]


def rows_of(h: d.Holdings) -> StateRows:
    """The derived rows `save_holdings` writes for `h`, in a comparable shape."""
    realized = [
        (
            r.method.value,
            seq,
            r.symbol,
            r.currency,
            r.sale_transfer_id,
            r.occurred_at,
            r.quantity,
            r.proceeds,
            r.cost,
            r.pnl,
            r.uncovered_quantity,
            tuple((u.transfer_id, u.quantity, u.cost) for u in r.lots),
        )
        for method in d.Method
        for seq, r in enumerate(h.realizations(method))
    ]
    return {
        "balances": sorted(h.balances.items()),
        "positions": [
            (
                f.symbol,
                f.currency,
                f.quantity,
                f.cost_fifo,
                f.cost_average,
                f.realized_fifo,
                f.realized_average,
            )
            for f in sorted(
                (d.PositionFigures.of(p) for p in h.positions.values()), key=lambda f: f.symbol
            )
        ],
        "lots": sorted(
            (
                p.symbol,
                seq,
                lot.transfer_id,
                lot.acquired_at,
                lot.quantity_acquired,
                lot.quantity,
                lot.price,
                lot.fees,
                lot.cost,
            )
            for p in h.positions.values()
            for seq, lot in enumerate(p.lots)
            if lot.quantity
        ),
        "realized": sorted(realized, key=lambda r: (r[0], r[1])),
    }


async def stored_rows(conn: AsyncConnection, owner_id: uuid.UUID) -> StateRows:
    """The portfolio's derived rows as stored, in the shape of `rows_of`."""
    params = {"owner": owner_id}

    async def fetch(sql: str) -> list[Any]:
        return list(await conn.execute(text(sql), params))

    balances = await fetch(
        "SELECT asset, amount FROM portfolio.balances WHERE owner_id = :owner ORDER BY asset"
    )
    positions = await fetch(
        "SELECT symbol, currency, quantity, cost_fifo, cost_average, realized_fifo,"
        " realized_average FROM portfolio.positions WHERE owner_id = :owner ORDER BY symbol"
    )
    lots = await fetch(
        "SELECT symbol, seq, transfer_id, acquired_at, quantity_acquired, quantity, price, fees,"
        " cost FROM portfolio.lots WHERE owner_id = :owner ORDER BY symbol, seq"
    )
    realized = await fetch(
        "SELECT method, seq, symbol, currency, sale_transfer_id, occurred_at, quantity, proceeds,"
        " cost, pnl, uncovered_quantity, lots FROM portfolio.realized WHERE owner_id = :owner"
        " ORDER BY method, seq"
    )
    return {
        "balances": [tuple(r) for r in balances],
        "positions": [tuple(r) for r in positions],
        "lots": [tuple(r) for r in lots],
        "realized": [
            (
                *tuple(r)[:11],
                tuple(
                    (uuid.UUID(u["transfer_id"]), Decimal(u["quantity"]), Decimal(u["cost"]))
                    for u in r.lots
                ),
            )
            for r in realized
        ],
    }


# -- daily valuation snapshots ---------------------------------------------------------------


async def owners_after(
    conn: AsyncConnection, after: uuid.UUID | None, batch_max: int
) -> list[uuid.UUID]:
    """Portfolio ids in order, the next `batch_max` after `after` (keyset pages)."""
    rows = await conn.execute(
        text(
            "SELECT owner_id FROM portfolio.portfolios"
            " WHERE CAST(:after AS uuid) IS NULL OR owner_id > :after"
            " ORDER BY owner_id LIMIT :batch"
        ),
        {"after": after, "batch": batch_max},
    )
    return [r.owner_id for r in rows]


async def save_valuation(
    conn: AsyncConnection, owner_id: uuid.UUID, day: date, v: d.Valuation, as_of: datetime
) -> None:
    """Store (or replace) the portfolio's valuation of `day` under `v.method`."""
    await conn.execute(
        text(
            "INSERT INTO portfolio.valuations (owner_id, day, method, base_currency, market_value,"
            " cost_basis, unrealized_pnl, realized_pnl, cash_value, total_value, day_change,"
            " as_of) VALUES (:owner, :day, :method, :base, :market_value, :cost_basis,"
            " :unrealized, :realized, :cash_value, :total_value, :day_change, :as_of)"
            " ON CONFLICT (owner_id, method, day) DO UPDATE SET"
            " base_currency = EXCLUDED.base_currency, market_value = EXCLUDED.market_value,"
            " cost_basis = EXCLUDED.cost_basis, unrealized_pnl = EXCLUDED.unrealized_pnl,"
            " realized_pnl = EXCLUDED.realized_pnl, cash_value = EXCLUDED.cash_value,"
            " total_value = EXCLUDED.total_value, day_change = EXCLUDED.day_change,"
            " as_of = EXCLUDED.as_of, taken_at = now()"
        ),
        {
            "owner": owner_id,
            "day": day,
            "method": v.method.value,
            "base": v.base_currency,
            "market_value": v.market_value,
            "cost_basis": v.cost_basis,
            "unrealized": v.unrealized_pnl,
            "realized": v.realized_pnl,
            "cash_value": v.cash_value,
            "total_value": v.total_value,
            "day_change": v.day_change,
            "as_of": as_of,
        },
    )


async def valuations(
    conn: AsyncConnection, owner_id: uuid.UUID, method: d.Method, start: date, end: date
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT day, base_currency, market_value, cost_basis, unrealized_pnl, realized_pnl,"
            " cash_value, total_value, day_change, as_of FROM portfolio.valuations"
            " WHERE owner_id = :owner AND method = :method AND day BETWEEN :start AND :end"
            " ORDER BY day"
        ),
        {"owner": owner_id, "method": method.value, "start": start, "end": end},
    )
    return [dict(r._mapping) for r in rows]
