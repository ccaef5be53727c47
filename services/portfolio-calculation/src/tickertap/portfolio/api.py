"""The portfolio HTTP API: read-only views of a portfolio (id = the customer's user id).

Who may read what (roles from the access token): a `customer` reads the portfolio
whose id is their own subject; `support`, `ops` and `admin` read every portfolio.
Row-level security in Postgres holds the same line (a customer's transaction
sees only their rows).

Numbers are strings: money at its currency's scale (exactly, with more places, when
an amount has more than its scale: nothing is rounded here), quantities and prices as
exact decimals. Errors are problem details with a `code`:

    401 invalid_token, 403 insufficient_scope        (libs/authn)
    403 not_your_portfolio                           a customer asking for another's
    404 portfolio_not_found                          no transfer of it has been applied
    422 validation_error, invalid_range, range_too_large
"""

# No `from __future__ import annotations`: FastAPI must read the annotations of the
# routes built inside `build_router`, and they name local aliases (Reader, Method).

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.authn import BearerAuth, Principal
from tickertap.portfolio import domain as d
from tickertap.portfolio import handlers, schemas
from tickertap.portfolio import repository as repo
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime import Forbidden, NotFound, Unprocessable

READ_ALL = frozenset({"support", "ops", "admin"})
# A day range ends at the next UTC midnight (`repo.day_bounds`): the last day whose end
# is still a datetime is the one before date.max; a later one would overflow (a 500).
DAY_MIN = date.min
DAY_MAX = date.max - timedelta(days=1)


class NotYourPortfolio(Forbidden):
    code = "not_your_portfolio"


class PortfolioNotFound(NotFound):
    code = "portfolio_not_found"


class InvalidRange(Unprocessable):
    code = "invalid_range"


class RangeTooLarge(Unprocessable):
    code = "range_too_large"


def money(value: Decimal | None, currency: str, scales: d.Scales) -> str | None:
    """An amount at its currency's scale ("10.00"), never rounded: one with more places
    than the scale (an asset missing from the configured scales, such as USDC or shares
    transferred in but never traded, takes the default of 2) is shown exactly."""
    if value is None:
        return None
    at_scale = d.round_to(value, scales.of(currency))
    return repo.plain(at_scale) if at_scale == value else exact(value)


def exact(value: Decimal | None) -> str | None:
    """An exact decimal without trailing zeros or exponent (quantities, prices)."""
    if value is None:
        return None
    return repo.plain(value.normalize()) if value else "0"


def check_range(start: date | None, end: date | None, days_max: int | None = None) -> None:
    """Days within DAY_MIN..DAY_MAX, from not after to, at most `days_max` days."""
    for day in (start, end):
        if day is not None and not DAY_MIN <= day <= DAY_MAX:
            raise InvalidRange(f"days run from {DAY_MIN.isoformat()} to {DAY_MAX.isoformat()}")
    if start is not None and end is not None:
        if start > end:
            raise InvalidRange("from is after to")
        if days_max is not None and (end - start).days + 1 > days_max:
            raise RangeTooLarge(f"at most {days_max} days at once")


def build_router(auth: BearerAuth, settings: PortfolioSettings) -> APIRouter:
    router = APIRouter(prefix="/v1/portfolios", tags=["portfolios"])
    Anyone = Annotated[Principal, Depends(auth.require())]
    scales = settings.scales()
    base = settings.base_currency

    async def reader(request: Request) -> AsyncEngine:
        engine = request.app.state.runtime.reader
        assert isinstance(engine, AsyncEngine)
        return engine

    Reader = Annotated[AsyncEngine, Depends(reader)]
    MethodQuery = Annotated[d.Method, Query(description="cost-basis method")]

    async def scoped(conn: AsyncConnection, principal: Principal, owner_id: uuid.UUID) -> None:
        """Allow the read (or 403) and scope the transaction's row-level security."""
        if not READ_ALL.isdisjoint(principal.roles):
            await repo.see_all(conn)
            return
        if principal.subject != str(owner_id):
            raise NotYourPortfolio("customers read their own portfolio only")
        await repo.see_owner(conn, owner_id)

    async def snapshot(
        conn: AsyncConnection, principal: Principal, owner_id: uuid.UUID
    ) -> handlers.Snapshot:
        await scoped(conn, principal, owner_id)
        s = await handlers.snapshot(conn, owner_id, base, scales)
        if s is None:
            raise PortfolioNotFound(f"no transfer of portfolio {owner_id} has been applied")
        return s

    def totals(v: d.Valuation) -> dict[str, Any]:
        return {
            "market_value": money(v.market_value, base, scales),
            "cost_basis": money(v.cost_basis, base, scales),
            "unrealized_pnl": money(v.unrealized_pnl, base, scales),
            "realized_pnl": money(v.realized_pnl, base, scales),
            "cash_value": money(v.cash_value, base, scales),
            "total_value": money(v.total_value, base, scales),
            "day_change": money(v.day_change, base, scales),
        }

    def position(v: d.PositionValue, stored: repo.StoredPrice | None) -> dict[str, Any]:
        q = v.quote
        c = v.currency
        return {
            "symbol": v.symbol,
            "currency": c,
            "quantity": exact(v.quantity),
            "cost_basis": money(v.cost_basis, c, scales),
            "average_cost": exact(v.average_cost),
            "realized_pnl": money(v.realized_pnl, c, scales),
            "market_value": money(v.market_value, c, scales),
            "unrealized_pnl": money(v.unrealized_pnl, c, scales),
            "day_change": money(v.day_change, c, scales),
            "price": None
            if q is None
            else {
                "price": exact(q.price),
                "exchange_ts": q.exchange_ts.isoformat(),
                "source_topic": q.source_topic,
                "source_partition": q.source_partition,
                "source_offset": q.source_offset,
                "event_partition": stored.event.partition if stored else None,
                "event_offset": stored.event.offset if stored else None,
                "previous_close": exact(q.previous_close),
                "previous_close_ts": q.previous_close_ts.isoformat()
                if q.previous_close_ts
                else None,
            },
        }

    @router.get(
        "/{portfolio_id}", response_model=schemas.PortfolioPublic, response_model_by_alias=True
    )
    async def get_portfolio(
        portfolio_id: uuid.UUID,
        engine: Reader,
        principal: Anyone,
        method: MethodQuery = d.Method.FIFO,
    ) -> dict[str, Any]:
        """Summary: cash, totals in the base currency, how up to date it is."""
        async with engine.begin() as conn:
            s = await snapshot(conn, principal, portfolio_id)
        v = s.fifo if method is d.Method.FIFO else s.average
        return {
            "id": str(portfolio_id),
            "owner_id": str(portfolio_id),
            "base_currency": base,
            "method": method.value,
            "as_of": handlers.as_of(s).isoformat(),
            "transfers_applied": s.portfolio.transfers_applied,
            "positions_count": sum(1 for p in v.positions if p.quantity),
            "cash": [{"asset": a, "amount": money(x, a, scales)} for a, x in v.cash.items()],
            "totals": totals(v),
        }

    @router.get(
        "/{portfolio_id}/positions",
        response_model=schemas.PositionList,
        response_model_by_alias=True,
    )
    async def get_positions(
        portfolio_id: uuid.UUID,
        engine: Reader,
        principal: Anyone,
        method: MethodQuery = d.Method.FIFO,
    ) -> dict[str, Any]:
        """Positions at the latest prices, each with the price's source (topic, partition,
        offset of the tick, exchange time); closed positions stay listed with their P&L."""
        async with engine.begin() as conn:
            s = await snapshot(conn, principal, portfolio_id)
        v = s.fifo if method is d.Method.FIFO else s.average
        return {
            "method": method.value,
            "positions": [position(p, s.prices.get(p.symbol)) for p in v.positions],
        }

    @router.get(
        "/{portfolio_id}/lots", response_model=schemas.LotList, response_model_by_alias=True
    )
    async def get_lots(
        portfolio_id: uuid.UUID, engine: Reader, principal: Anyone
    ) -> dict[str, Any]:
        """Open lots, first in first out per symbol: what is left of each buy."""
        async with engine.begin() as conn:
            await scoped(conn, principal, portfolio_id)
            if await repo.portfolio(conn, portfolio_id) is None:
                raise PortfolioNotFound(f"no transfer of portfolio {portfolio_id} has been applied")
            rows = await repo.lots(conn, portfolio_id, settings.lots_page_max)
            currencies = {f.symbol: f.currency for f in await repo.positions(conn, portfolio_id)}
        return {
            "lots": [
                {
                    "symbol": r["symbol"],
                    "transfer_id": str(r["transfer_id"]),
                    "acquired_at": r["acquired_at"].isoformat(),
                    "quantity_acquired": exact(r["quantity_acquired"]),
                    "quantity": exact(r["quantity"]),
                    "price": exact(r["price"]),
                    "fees": money(r["fees"], currencies[r["symbol"]], scales),
                    "cost": money(r["cost"], currencies[r["symbol"]], scales),
                    "currency": currencies[r["symbol"]],
                }
                for r in rows
            ],
            "truncated": len(rows) >= settings.lots_page_max,
        }

    @router.get(
        "/{portfolio_id}/realized",
        response_model=schemas.RealizedList,
        response_model_by_alias=True,
    )
    async def get_realized(
        portfolio_id: uuid.UUID,
        engine: Reader,
        principal: Anyone,
        start: Annotated[date | None, Query(alias="from")] = None,
        end: Annotated[date | None, Query(alias="to")] = None,
        method: MethodQuery = d.Method.FIFO,
        cursor: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    ) -> dict[str, Any]:
        """Realized P&L of the sales on UTC days from..to (both included), oldest first, each
        entry naming the lots it consumed (the average method takes the same quantities at
        the pool's average cost). `total` covers the whole range; entries come in pages:
        pass `next_cursor` back as `cursor` (a late transfer or a reversal renumbers them)."""
        check_range(start, end)
        lo, hi = repo.day_bounds(start, end)
        page_max = settings.realized_page_max
        async with engine.begin() as conn:
            await scoped(conn, principal, portfolio_id)
            if await repo.portfolio(conn, portfolio_id) is None:
                raise PortfolioNotFound(f"no transfer of portfolio {portfolio_id} has been applied")
            rows = await repo.realized(conn, portfolio_id, method, lo, hi, page_max, cursor)
            total = await repo.realized_totals(conn, portfolio_id, method, lo, hi)
        entries = []
        for r in rows:
            c = r["currency"]
            entries.append(
                {
                    "symbol": r["symbol"],
                    "currency": c,
                    "sale_transfer_id": str(r["sale_transfer_id"]),
                    "occurred_at": r["occurred_at"].isoformat(),
                    "quantity": exact(r["quantity"]),
                    "proceeds": money(r["proceeds"], c, scales),
                    "cost": money(r["cost"], c, scales),
                    "pnl": money(r["pnl"], c, scales),
                    "uncovered_quantity": exact(r["uncovered_quantity"]),
                    "lots": [
                        {
                            "transfer_id": u["transfer_id"],
                            "quantity": exact(Decimal(u["quantity"])),
                            "cost": money(Decimal(u["cost"]), c, scales),
                        }
                        for u in r["lots"]
                    ],
                }
            )
        return {
            "method": method.value,
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
            "entries": entries,
            "total": {c: money(x, c, scales) for c, x in total.items()},
            "next_cursor": rows[-1]["seq"] if len(rows) >= page_max else None,
        }

    @router.get(
        "/{portfolio_id}/valuations",
        response_model=schemas.ValuationList,
        response_model_by_alias=True,
    )
    async def get_valuations(
        portfolio_id: uuid.UUID,
        engine: Reader,
        principal: Anyone,
        start: Annotated[date | None, Query(alias="from")] = None,
        end: Annotated[date | None, Query(alias="to")] = None,
        method: MethodQuery = d.Method.FIFO,
    ) -> dict[str, Any]:
        """Daily valuations from..to (UTC days, both included; default today): past days
        as stored by the snapshot job (its last snapshot of the day; a day without one is
        absent), today computed now at the latest prices (`final: false`)."""
        today = datetime.now(UTC).date()
        start = start or today
        end = end or today
        check_range(start, end, settings.valuations_range_days_max)
        async with engine.begin() as conn:
            s = await snapshot(conn, principal, portfolio_id)
            stored = await repo.valuations(conn, portfolio_id, method, start, end)
        v = s.fifo if method is d.Method.FIFO else s.average
        days = [
            {
                "date": r["day"].isoformat(),
                "final": True,
                "as_of": r["as_of"].isoformat(),
                **{
                    name: money(r[name], r["base_currency"], scales)
                    for name in (
                        "market_value",
                        "cost_basis",
                        "unrealized_pnl",
                        "realized_pnl",
                        "cash_value",
                        "total_value",
                        "day_change",
                    )
                },
            }
            for r in stored
            if r["day"] < today
        ]
        if start <= today <= end:
            as_of = handlers.as_of(s).isoformat()
            days.append({"date": today.isoformat(), "final": False, "as_of": as_of, **totals(v)})
        return {"method": method.value, "base_currency": base, "valuations": days}

    return router
