"""SQL of the market schema: instruments, bars, prices and the ingest worker's state.

The worker's batch write (`persist_batch`) is a handful of set-based statements (unnest of
arrays), whatever the batch size, so a batch costs a few round trips.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.marketdata.domain import Bar, Instrument, PartitionState, Windows
from tickertap.messaging.outbox import notify_channel

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def to_us(ts: datetime) -> int:
    return (ts - EPOCH) // ONE_US


class Fenced(Exception):
    """The stored position of a partition is not the one this worker started from:
    another worker (or an earlier attempt of this one) moved it. Reload and start over."""


# -- instruments -------------------------------------------------------------------------

_INSTRUMENT_COLUMNS = "symbol, currency, price_scale, status, created_at, updated_at"


async def insert_instrument(
    conn: AsyncConnection, symbol: str, currency: str, price_scale: int
) -> tuple[dict[str, Any], bool]:
    """Add an instrument; returns its row and True when it was added (False: it existed,
    and the row is the existing one)."""
    row = (
        (
            await conn.execute(
                text(
                    "INSERT INTO market.instruments (symbol, currency, price_scale) "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
                    "VALUES (:symbol, :currency, :scale) ON CONFLICT (symbol) DO NOTHING "
                    f"RETURNING {_INSTRUMENT_COLUMNS}"
                ),
                {"symbol": symbol, "currency": currency, "scale": price_scale},
            )
        )
        .mappings()
        .first()
    )
    if row is not None:
        return dict(row), True
    existing = await get_instrument(conn, symbol)
    assert existing is not None
    return existing, False


async def get_instrument(conn: AsyncConnection, symbol: str) -> dict[str, Any] | None:
    row = (
        (
            await conn.execute(
                text(f"SELECT {_INSTRUMENT_COLUMNS} FROM market.instruments WHERE symbol = :s"),  # nosec B608  # constant column lists and clauses; every value is a bind parameter
                {"s": symbol},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


async def list_instruments(
    conn: AsyncConnection, after: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"SELECT {_INSTRUMENT_COLUMNS} FROM market.instruments "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            "WHERE CAST(:after AS text) IS NULL OR symbol > :after ORDER BY symbol LIMIT :limit"
        ),
        {"after": after, "limit": limit},
    )
    return [dict(row) for row in rows.mappings()]


async def set_instrument_status(
    conn: AsyncConnection, symbol: str, status: str
) -> dict[str, Any] | None:
    """Set the status; the row after, or None when there is no such instrument. Setting the
    status it already has changes nothing (not even updated_at)."""
    await conn.execute(
        text(
            "UPDATE market.instruments SET status = :status, updated_at = now() "
            "WHERE symbol = :s AND status <> :status"
        ),
        {"s": symbol, "status": status},
    )
    return await get_instrument(conn, symbol)


async def load_instruments(conn: AsyncConnection, limit: int) -> dict[str, Instrument]:
    rows = await conn.execute(
        text(
            "SELECT symbol, currency, price_scale, status FROM market.instruments "
            "ORDER BY symbol LIMIT :limit"
        ),
        {"limit": limit},
    )
    return {
        row.symbol: Instrument(row.symbol, row.currency, int(row.price_scale), row.status)
        for row in rows
    }


async def load_instruments_of(
    conn: AsyncConnection, symbols: Sequence[str]
) -> dict[str, Instrument]:
    rows = await conn.execute(
        text(
            "SELECT symbol, currency, price_scale, status FROM market.instruments "
            "WHERE symbol = ANY(CAST(:symbols AS text[]))"
        ),
        {"symbols": list(symbols)},
    )
    return {
        row.symbol: Instrument(row.symbol, row.currency, int(row.price_scale), row.status)
        for row in rows
    }


async def instruments_version(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """Changes when an instrument is added or changes status (count, latest update)."""
    row = (
        await conn.execute(text("SELECT count(*), max(updated_at) FROM market.instruments"))
    ).one()
    return int(row[0]), row[1]


# -- prices and bars (the API) -------------------------------------------------------------

_PRICE_COLUMNS = (
    "symbol, venue, price, bid, ask, exchange_ts, received_at, "
    "source_topic, source_partition, source_offset"
)


async def get_prices(conn: AsyncConnection, symbols: Sequence[str]) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"SELECT {_PRICE_COLUMNS} FROM market.prices "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            "WHERE symbol = ANY(CAST(:symbols AS text[])) ORDER BY symbol"
        ),
        {"symbols": list(symbols)},
    )
    return [dict(row) for row in rows.mappings()]


def _bar_from_row(row: Any) -> Bar:
    return Bar(
        row.symbol,
        to_us(row.window_start),
        60_000_000,
        row.open,
        row.high,
        row.low,
        row.close,
        row.volume,
        row.notional,
        int(row.tick_count),
        to_us(row.open_ts),
        to_us(row.close_ts),
        int(row.source_partition),
    )


async def get_bars_1m(
    conn: AsyncConnection, symbol: str, start: datetime, end: datetime, limit: int
) -> list[tuple[Bar, bool]]:
    """1-minute bars of `symbol` with start in [start, end), oldest first, with `closed`."""
    rows = await conn.execute(
        text(
            "SELECT symbol, window_start, open, high, low, close, volume, notional, tick_count,"
            " open_ts, close_ts, source_partition, closed FROM market.bars_1m "
            "WHERE symbol = :symbol AND window_start >= :start AND window_start < :end "
            "ORDER BY window_start LIMIT :limit"
        ),
        {"symbol": symbol, "start": start, "end": end, "limit": limit},
    )
    return [(_bar_from_row(row), bool(row.closed)) for row in rows]


# -- the worker's state ------------------------------------------------------------------


@dataclass
class IngestState:
    partitions: dict[int, PartitionState]
    windows: Windows


async def load_state(
    conn: AsyncConnection, topic: str, partitions: Sequence[int], topic_id: str | None
) -> IngestState:
    """The stored state of `topic`: every partition gets a row (so the fence in
    `persist_batch` has one to check), with its next offset, watermark, sequences, and
    the open bars fed from the topic with their symbols' watermarks: the exchange time of
    the symbol's latest price, which is the latest accepted tick's.

    When the broker's `topic_id` is not the stored one, the topic was created again (a
    broker that lost its topics): offsets and sequences are reset, so the new partitions
    are consumed from their start; watermarks and open bars stay (exchange time goes on).
    """
    await conn.execute(
        text(
            "INSERT INTO market.ingest_partitions (topic, partition, topic_id) "
            "SELECT :topic, p, :topic_id FROM unnest(CAST(:parts AS integer[])) AS p "
            "ON CONFLICT DO NOTHING"
        ),
        {"topic": topic, "parts": list(partitions), "topic_id": topic_id},
    )
    if topic_id is not None:
        reset = await conn.execute(
            text(
                "UPDATE market.ingest_partitions SET next_offset = NULL, topic_id = :topic_id,"
                " updated_at = now() WHERE topic = :topic "
                "AND topic_id IS DISTINCT FROM :topic_id RETURNING partition"
            ),
            {"topic": topic, "topic_id": topic_id},
        )
        if reset.first() is not None:
            log.warning("%s was created again (new topic id): consuming it from its start", topic)
            await conn.execute(
                text("DELETE FROM market.source_sequences WHERE topic = :topic"),
                {"topic": topic},
            )
    states: dict[int, PartitionState] = {}
    rows = await conn.execute(
        text("SELECT partition, next_offset FROM market.ingest_partitions WHERE topic = :topic"),
        {"topic": topic},
    )
    for row in rows:
        states[int(row.partition)] = PartitionState(
            int(row.partition),
            None if row.next_offset is None else int(row.next_offset),
        )
    rows = await conn.execute(
        text(
            "SELECT partition, source_id, last_seq FROM market.source_sequences "
            "WHERE topic = :topic"
        ),
        {"topic": topic},
    )
    for row in rows:
        state = states.get(int(row.partition))
        if state is not None:
            state.last_seq[row.source_id] = int(row.last_seq)
    rows = await conn.execute(
        text(
            "SELECT symbol, window_start, open, high, low, close, volume, notional, tick_count,"
            " open_ts, close_ts, source_partition FROM market.bars_1m "
            "WHERE source_topic = :topic AND NOT closed"
        ),
        {"topic": topic},
    )
    windows = Windows()
    for row in rows:
        bar = _bar_from_row(row)
        windows.open_bars[bar.key()] = bar
    rows = await conn.execute(
        text("SELECT symbol, exchange_ts FROM market.prices WHERE source_topic = :topic"),
        {"topic": topic},
    )
    for row in rows:
        windows.watermarks[row.symbol] = to_us(row.exchange_ts)
    return IngestState(states, windows)


@dataclass(frozen=True)
class PriceRow:
    symbol: str
    venue: str
    price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    exchange_us: int
    received_us: int
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetterRow:
    event_id: uuid.UUID
    topic: str
    key: bytes
    value: bytes | None
    headers: Mapping[str, str]


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    expected_offset: int | None  # what the stored next_offset must still be
    next_offset: int
    sequences: Mapping[str, int]  # the sources whose last_seq changed


async def persist_batch(
    conn: AsyncConnection,
    outbox: Table,
    *,
    topic: str,
    progress: Sequence[PartitionProgress],
    bars: Sequence[tuple[Bar, bool]],
    prices: Sequence[PriceRow],
    bar_events: Sequence[tuple[uuid.UUID, str, bytes]],
    dead_letters: Sequence[DeadLetterRow],
    bars_topic: str,
    bars_schema: str,
) -> None:
    """Write one batch in the caller's transaction; Fenced when a partition's stored
    position is not the expected one (nothing of the batch must then commit)."""
    if progress:
        result = await conn.execute(
            text(
                "UPDATE market.ingest_partitions AS p SET next_offset = v.next_offset, "
                "updated_at = now() "
                "FROM unnest(CAST(:parts AS integer[]), CAST(:expected AS bigint[]), "
                "CAST(:next AS bigint[])) AS v(partition, expected, next_offset) "
                "WHERE p.topic = :topic AND p.partition = v.partition "
                "AND p.next_offset IS NOT DISTINCT FROM v.expected"
            ),
            {
                "topic": topic,
                "parts": [p.partition for p in progress],
                "expected": [p.expected_offset for p in progress],
                "next": [p.next_offset for p in progress],
            },
        )
        if getattr(result, "rowcount", -1) != len(progress):
            raise Fenced(f"the stored position of {topic} moved under this worker")
        sequences = [(p.partition, s, n) for p in progress for s, n in p.sequences.items()]
        if sequences:
            await conn.execute(
                text(
                    "INSERT INTO market.source_sequences (topic, partition, source_id, last_seq)"
                    " SELECT :topic, v.p, v.s, v.n FROM unnest(CAST(:parts AS integer[]), "
                    "CAST(:sources AS text[]), CAST(:seqs AS bigint[])) AS v(p, s, n) "
                    "ON CONFLICT (topic, partition, source_id) DO UPDATE "
                    "SET last_seq = excluded.last_seq, updated_at = now()"
                ),
                {
                    "topic": topic,
                    "parts": [p for p, _, _ in sequences],
                    "sources": [s for _, s, _ in sequences],
                    "seqs": [n for _, _, n in sequences],
                },
            )
    if bars:
        await conn.execute(
            text(
                "INSERT INTO market.bars_1m AS b (symbol, window_start, open, high, low, close,"
                " volume, notional, tick_count, open_ts, close_ts, closed, source_topic,"
                " source_partition) "
                "SELECT v.symbol, v.window_start, v.open, v.high, v.low, v.close, v.volume,"
                " v.notional, v.tick_count, v.open_ts, v.close_ts, v.closed, :topic,"
                " v.partition FROM unnest(CAST(:symbols AS text[]), "
                "CAST(:starts AS timestamptz[]), CAST(:opens AS numeric[]), "
                "CAST(:highs AS numeric[]), CAST(:lows AS numeric[]), "
                "CAST(:closes AS numeric[]), CAST(:volumes AS numeric[]), "
                "CAST(:notionals AS numeric[]), CAST(:counts AS bigint[]), "
                "CAST(:open_ts AS timestamptz[]), CAST(:close_ts AS timestamptz[]), "
                "CAST(:closed AS boolean[]), CAST(:partitions AS integer[])) "
                "AS v(symbol, window_start, open, high, low, close, volume, notional,"
                " tick_count, open_ts, close_ts, closed, partition) "
                "ON CONFLICT (symbol, window_start) DO UPDATE SET open = excluded.open,"
                " high = excluded.high, low = excluded.low, close = excluded.close,"
                " volume = excluded.volume, notional = excluded.notional,"
                " tick_count = excluded.tick_count, open_ts = excluded.open_ts,"
                " close_ts = excluded.close_ts, closed = excluded.closed,"
                " source_topic = excluded.source_topic,"
                " source_partition = excluded.source_partition, updated_at = now() "
                "WHERE NOT b.closed"  # a closed bar never changes
            ),
            {
                "topic": topic,
                "symbols": [b.symbol for b, _ in bars],
                "starts": [to_datetime(b.start_us) for b, _ in bars],
                "opens": [b.open for b, _ in bars],
                "highs": [b.high for b, _ in bars],
                "lows": [b.low for b, _ in bars],
                "closes": [b.close for b, _ in bars],
                "volumes": [b.volume for b, _ in bars],
                "notionals": [b.notional for b, _ in bars],
                "counts": [b.tick_count for b, _ in bars],
                "open_ts": [to_datetime(b.open_us) for b, _ in bars],
                "close_ts": [to_datetime(b.close_us) for b, _ in bars],
                "closed": [closed for _, closed in bars],
                "partitions": [b.partition for b, _ in bars],
            },
        )
    if prices:
        await conn.execute(
            text(
                "INSERT INTO market.prices AS p (symbol, venue, price, bid, ask, exchange_ts,"
                " received_at, source_topic, source_partition, source_offset) "
                "SELECT v.symbol, v.venue, v.price, v.bid, v.ask, v.exchange_ts, v.received_at,"
                " :topic, v.partition, v.source_offset FROM unnest(CAST(:symbols AS text[]),"
                " CAST(:venues AS text[]), CAST(:prices AS numeric[]), CAST(:bids AS numeric[]),"
                " CAST(:asks AS numeric[]), CAST(:exchange_ts AS timestamptz[]),"
                " CAST(:received AS timestamptz[]), CAST(:partitions AS integer[]),"
                " CAST(:offsets AS bigint[])) AS v(symbol, venue, price, bid, ask, exchange_ts,"
                " received_at, partition, source_offset) "
                "ON CONFLICT (symbol) DO UPDATE SET venue = excluded.venue,"
                " price = excluded.price, bid = excluded.bid, ask = excluded.ask,"
                " exchange_ts = excluded.exchange_ts, received_at = excluded.received_at,"
                " source_topic = excluded.source_topic,"
                " source_partition = excluded.source_partition,"
                " source_offset = excluded.source_offset, updated_at = now() "
                "WHERE excluded.exchange_ts >= p.exchange_ts"  # never back in time
            ),
            {
                "topic": topic,
                "symbols": [p.symbol for p in prices],
                "venues": [p.venue for p in prices],
                "prices": [p.price for p in prices],
                "bids": [p.bid for p in prices],
                "asks": [p.ask for p in prices],
                "exchange_ts": [to_datetime(p.exchange_us) for p in prices],
                "received": [to_datetime(p.received_us) for p in prices],
                "partitions": [p.partition for p in prices],
                "offsets": [p.offset for p in prices],
            },
        )
    rows = [
        {
            "event_id": event_id,
            "topic": bars_topic,
            "key": key.encode(),
            "value": value,
            "headers": {"x-event-id": str(event_id), "x-schema": bars_schema},
        }
        for event_id, key, value in bar_events
    ]
    rows.extend(
        {
            "event_id": d.event_id,
            "topic": d.topic,
            "key": d.key,
            "value": d.value,
            "headers": dict(d.headers),
        }
        for d in dead_letters
    )
    if rows:
        # no per-key advisory locks (add_events takes them): this worker is the only writer
        # of these keys, so its rows' ids already follow its commit order
        # an event id already there is the same event (ids derive from positions)
        await conn.execute(insert(outbox).on_conflict_do_nothing(), rows)
        await conn.execute(select(func.pg_notify(notify_channel(outbox), "")))
