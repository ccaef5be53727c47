"""The HTTP API of market-data ingest: instruments, latest prices, OHLCV bars.

Any authenticated caller may read; adding, halting and resuming instruments needs the
`admin` role. Errors are problem details with a `code`:

    400 invalid_cursor        the cursor is not one this API gave for this query
    401 invalid_token         no valid bearer token
    403 insufficient_scope    the token lacks the admin role
    404 instrument_not_found  no instrument has the symbol
    404 price_not_found       the instrument has no price yet
    409 instrument_exists     an instrument with the symbol exists with other attributes
    422 validation_error      a parameter or body field is malformed
    422 too_many_symbols      `symbols` lists more than `prices_symbols_max`
    422 invalid_symbol        an entry of `symbols` is not a symbol
    422 invalid_range         `from` is not before `to`, or a time has no timezone
    422 range_too_large       `to - from` spans more than `bars_range_intervals_max` intervals
"""

# No `from __future__ import annotations`: FastAPI must read the annotations of the
# routes built inside `build_router`, and they name local aliases (Reader, Admin).

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.authn import BearerAuth, Principal
from tickertap.marketdata import domain as d
from tickertap.marketdata import repository as repo
from tickertap.marketdata import schemas as s
from tickertap.marketdata.settings import MarketDataSettings
from tickertap.runtime import Conflict, NotFound, ServiceError, Unprocessable

ADMIN_ROLES = ("admin",)
SYMBOLS_TEXT_CHARS_MAX = 4096


class InstrumentExists(Conflict):
    code = "instrument_exists"


class InstrumentNotFound(NotFound):
    code = "instrument_not_found"


class PriceNotFound(NotFound):
    code = "price_not_found"


class TooManySymbols(Unprocessable):
    code = "too_many_symbols"


class InvalidSymbols(Unprocessable):
    code = "invalid_symbol"


class InvalidRange(Unprocessable):
    code = "invalid_range"


class RangeTooLarge(Unprocessable):
    code = "range_too_large"


class InvalidCursor(ServiceError):
    code = "invalid_cursor"


def _writer(request: Request) -> AsyncEngine:
    engine = request.app.state.runtime.writer
    assert isinstance(engine, AsyncEngine)
    return engine


def _reader(request: Request) -> AsyncEngine:
    engine = request.app.state.runtime.reader
    assert isinstance(engine, AsyncEngine)
    return engine


Writer = Annotated[AsyncEngine, Depends(_writer)]
ReaderDb = Annotated[AsyncEngine, Depends(_reader)]
SymbolPath = Annotated[str, Path(pattern=d.SYMBOL_PATTERN)]


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def _decode_cursor(cursor: str, **expected: Any) -> dict[str, Any]:
    """The cursor's payload; InvalidCursor unless it carries `expected` (the same query)."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursor("the cursor is malformed") from None
    if not isinstance(payload, dict) or any(payload.get(k) != v for k, v in expected.items()):
        raise InvalidCursor("the cursor belongs to another query")
    return payload


def _aware(ts: datetime, name: str) -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidRange(f"`{name}` needs a timezone (e.g. 2026-11-26T10:00:00Z)")
    return ts.astimezone(UTC)


def build_router(auth: BearerAuth, settings: MarketDataSettings) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Reader = Annotated[Principal, Depends(auth.require())]
    Admin = Annotated[Principal, Depends(auth.require(roles_any=ADMIN_ROLES))]

    # -- instruments ----------------------------------------------------------------------

    @router.post(
        "/instruments",
        status_code=201,
        response_model=s.InstrumentPublic,
        tags=["instruments"],
        summary="Add an instrument (admin); 200 when the same one exists",
    )
    async def add_instrument(
        body: s.InstrumentCreate, _: Admin, db: Writer, response: Response
    ) -> s.InstrumentPublic:
        async with db.begin() as conn:
            row, added = await repo.insert_instrument(
                conn, body.symbol, body.currency, body.price_scale
            )
        if not added:
            if (row["currency"], int(row["price_scale"])) != (body.currency, body.price_scale):
                raise InstrumentExists(
                    f"{body.symbol} exists with currency {row['currency']} and "
                    f"price scale {row['price_scale']}",
                    instrument=s.InstrumentPublic.of(row).model_dump(mode="json"),
                )
            response.status_code = 200
        return s.InstrumentPublic.of(row)

    @router.get("/instruments", response_model=s.InstrumentPage, tags=["instruments"])
    async def list_instruments(
        _: Reader,
        db: ReaderDb,
        limit: Annotated[int, Query(ge=1, le=settings.instruments_page_max)] = 100,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> s.InstrumentPage:
        after = None
        if cursor is not None:
            after = _decode_cursor(cursor).get("after")
            if not isinstance(after, str):
                raise InvalidCursor("the cursor is malformed")
        async with db.connect() as conn:
            rows = await repo.list_instruments(conn, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return s.InstrumentPage(
            items=[s.InstrumentPublic.of(row) for row in rows],
            next_cursor=_encode_cursor({"after": rows[-1]["symbol"]}) if more else None,
        )

    @router.get("/instruments/{symbol}", response_model=s.InstrumentPublic, tags=["instruments"])
    async def get_instrument(symbol: SymbolPath, _: Reader, db: ReaderDb) -> s.InstrumentPublic:
        async with db.connect() as conn:
            row = await repo.get_instrument(conn, symbol)
        if row is None:
            raise InstrumentNotFound(f"no instrument {symbol}")
        return s.InstrumentPublic.of(row)

    async def set_status(db: AsyncEngine, symbol: str, status: str) -> s.InstrumentPublic:
        async with db.begin() as conn:
            row = await repo.set_instrument_status(conn, symbol, status)
        if row is None:
            raise InstrumentNotFound(f"no instrument {symbol}")
        return s.InstrumentPublic.of(row)

    @router.post(
        "/instruments/{symbol}/halt",
        response_model=s.InstrumentPublic,
        tags=["instruments"],
        summary="Halt an instrument (admin): its ticks are dead-lettered `halted`",
    )
    async def halt_instrument(symbol: SymbolPath, _: Admin, db: Writer) -> s.InstrumentPublic:
        return await set_status(db, symbol, "halted")

    @router.post(
        "/instruments/{symbol}/resume",
        response_model=s.InstrumentPublic,
        tags=["instruments"],
        summary="Resume a halted instrument (admin)",
    )
    async def resume_instrument(symbol: SymbolPath, _: Admin, db: Writer) -> s.InstrumentPublic:
        return await set_status(db, symbol, "active")

    # -- prices -------------------------------------------------------------------------------

    async def prices_of(db: AsyncEngine, symbols: list[str]) -> list[s.PricePublic]:
        async with db.connect() as conn:
            rows = await repo.get_prices(conn, symbols)
            scales = {
                sym: int(i.price_scale)
                for sym, i in (await repo.load_instruments_of(conn, symbols)).items()
            }
        return [s.PricePublic.of(row, scales.get(row["symbol"], d.PRICE_SCALE_MAX)) for row in rows]

    @router.get("/prices/{symbol}", response_model=s.PricePublic, tags=["prices"])
    async def get_price(symbol: SymbolPath, _: Reader, db: ReaderDb) -> s.PricePublic:
        found = await prices_of(db, [symbol])
        if not found:
            raise PriceNotFound(f"no price for {symbol} yet")
        return found[0]

    @router.get("/prices", response_model=s.PriceList, tags=["prices"])
    async def list_prices(
        _: Reader,
        db: ReaderDb,
        symbols: Annotated[
            str,
            Query(
                min_length=1,
                max_length=SYMBOLS_TEXT_CHARS_MAX,
                description="Comma-separated symbols, at most `prices_symbols_max` (100).",
            ),
        ],
    ) -> s.PriceList:
        wanted = list(dict.fromkeys(part.strip() for part in symbols.split(",")))
        if len(wanted) > settings.prices_symbols_max:
            raise TooManySymbols(
                f"at most {settings.prices_symbols_max} symbols per request",
                symbols_max=settings.prices_symbols_max,
            )
        bad = [sym for sym in wanted if not d.valid_symbol(sym)]
        if bad:
            raise InvalidSymbols(
                "symbols must match " + d.SYMBOL_PATTERN, invalid=[b[:40] for b in bad[:10]]
            )
        found = await prices_of(db, wanted)
        have = {p.symbol for p in found}
        return s.PriceList(items=found, missing=[sym for sym in wanted if sym not in have])

    # -- bars --------------------------------------------------------------------------------

    @router.get("/bars/{symbol}", response_model=s.BarPage, tags=["bars"])
    async def get_bars(
        symbol: SymbolPath,
        _: Reader,
        db: ReaderDb,
        interval: Literal["1m", "5m", "1h", "1d"] = "1m",
        start: Annotated[
            datetime | None,
            Query(alias="from", description="Inclusive; default: `limit` intervals before `to`."),
        ] = None,
        end: Annotated[
            datetime | None, Query(alias="to", description="Exclusive; default now.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=settings.bars_page_max)] = 100,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> s.BarPage:
        interval_s = d.INTERVALS_S[interval]
        interval_us = interval_s * d.US_PER_S
        step = timedelta(seconds=interval_s)
        try:  # dates near year 1 or 9999, or a crafted cursor, must not overflow into a 500
            payload: dict[str, Any] = {}
            if cursor is not None:  # the query it continues: from/to may be left out
                payload = _decode_cursor(cursor, sym=symbol, i=interval)
                if not all(isinstance(payload.get(k), int) for k in ("f", "t", "n")):
                    raise InvalidCursor("the cursor is malformed")
                if end is None:
                    end = repo.to_datetime(payload["t"])
                if start is None:
                    start = repo.to_datetime(payload["f"])
            to = _aware(end, "to") if end is not None else datetime.now(UTC)
            frm = _aware(start, "from") if start is not None else to - step * limit
            if frm >= to:
                raise InvalidRange("`from` must be before `to`")
            if (to - frm) / step > settings.bars_range_intervals_max:
                raise RangeTooLarge(
                    f"at most {settings.bars_range_intervals_max} intervals per query",
                    intervals_max=settings.bars_range_intervals_max,
                )
            first_us = d.window_start_us(repo.to_us(frm), interval_us)
            to_us = repo.to_us(to)
            if payload:
                if (payload["f"], payload["t"]) != (first_us, to_us):
                    raise InvalidCursor("the cursor belongs to another query")
                if not first_us <= payload["n"] < to_us:
                    raise InvalidCursor("the cursor is malformed")
                first_us = payload["n"]
        except (OverflowError, ValueError):
            raise InvalidRange("the range is outside the dates this service handles") from None
        # a page reads at most bars_source_rows_max one-minute rows
        minutes = interval_s // 60
        page = max(1, min(limit, settings.bars_source_rows_max // minutes))
        rows_max = page * minutes
        async with db.connect() as conn:
            instrument = await repo.get_instrument(conn, symbol)
            if instrument is None:
                raise InstrumentNotFound(f"no instrument {symbol}")
            rows = await repo.get_bars_1m(
                conn, symbol, repo.to_datetime(first_us), to, rows_max + 1
            )
        extra = rows[rows_max][0] if len(rows) > rows_max else None  # there is more
        rows = rows[:rows_max]
        bars = d.derive_bars([bar for bar, _ in rows], interval_s)
        rest_us: int | None = None  # where the next page starts
        if len(bars) > page:
            rest_us = bars[page].start_us
            bars = bars[:page]
        elif extra is not None:
            rest_us = d.window_start_us(extra.start_us, interval_us)
            if bars and bars[-1].start_us == rest_us:  # its rows go on: the next page has it
                bars.pop()
        scale = int(instrument["price_scale"])
        open_starts = [bar.start_us for bar, closed in rows if not closed]
        now_us = repo.to_us(datetime.now(UTC))
        items = []
        for bar in bars:
            closed = bar.end_us <= now_us and not any(
                bar.start_us <= start_us < bar.end_us for start_us in open_starts
            )
            items.append(s.BarPublic.of(bar, interval, scale, closed))
        next_cursor = None
        if rest_us is not None:
            origin_us = d.window_start_us(repo.to_us(frm), interval_us)
            next_cursor = _encode_cursor(
                {"sym": symbol, "i": interval, "f": origin_us, "t": to_us, "n": rest_us}
            )
        return s.BarPage(items=items, next_cursor=next_cursor)

    return router
