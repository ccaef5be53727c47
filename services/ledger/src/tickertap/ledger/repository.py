"""SQL for the ledger: accounts, assets, transfers, postings and prices, many at a time.

Every function takes the caller's `AsyncConnection` inside an open transaction;
row-level security needs `see_all` or `see_owner` first in that transaction.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.ledger import domain as d
from tickertap.messaging import EncodedEvents, notify_sql, outbox_ctes, outbox_params
from tickertap.money import Asset, AssetKind

ACCOUNT_COLUMNS = "id, owner_id, asset, kind, overdraft_limit, balance, created_at"
_KINDS = {kind.value: kind for kind in d.AccountKind}


async def see_all(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT set_config('tickertap.scope', 'all', true)"))


async def see_owner(conn: AsyncConnection, owner_id: uuid.UUID) -> None:
    await conn.execute(
        text("SELECT set_config('tickertap.owner_id', :owner, true)"), {"owner": str(owner_id)}
    )


# -- assets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetRow:
    asset: Asset
    quote_currency: str | None


async def load_assets(conn: AsyncConnection) -> dict[str, AssetRow]:
    rows = await conn.execute(text("SELECT code, scale, kind, quote_currency FROM ledger.assets"))
    return {
        r.code: AssetRow(Asset(r.code, r.scale, AssetKind(r.kind)), r.quote_currency) for r in rows
    }


async def insert_asset(conn: AsyncConnection, row: AssetRow) -> bool:
    result = await conn.execute(
        text(
            "INSERT INTO ledger.assets (code, scale, kind, quote_currency) "
            "VALUES (:code, :scale, :kind, :quote) ON CONFLICT (code) DO NOTHING"
        ),
        {
            "code": row.asset.code,
            "scale": row.asset.scale,
            "kind": row.asset.kind.value,
            "quote": row.quote_currency,
        },
    )
    return bool(result.rowcount)


# -- accounts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    account: d.Account
    balance: Decimal
    created_at: datetime


def _account_row(r: Any) -> AccountRow:
    return AccountRow(
        d.Account(r.id, r.owner_id, r.asset, d.AccountKind(r.kind), r.overdraft_limit),
        r.balance,
        r.created_at,
    )


async def insert_account(conn: AsyncConnection, account: d.Account, scale: int) -> AccountRow:
    """Insert, or return the existing account of this owner and asset (or system kind)."""
    conflict = (
        "(owner_id, asset) WHERE kind = 'customer'"
        if account.is_customer
        else "(kind, asset) WHERE kind <> 'customer'"
    )
    await conn.execute(
        text(
            "INSERT INTO ledger.accounts (id, owner_id, asset, scale, kind, overdraft_limit) "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            "VALUES (:id, :owner, :asset, :scale, :kind, :overdraft) "
            f"ON CONFLICT {conflict} DO NOTHING"
        ),
        {
            "id": account.id,
            "owner": account.owner_id,
            "asset": account.asset,
            "scale": scale,
            "kind": account.kind.value,
            "overdraft": account.overdraft_limit,
        },
    )
    if account.is_customer:
        found = await find_customer_account(conn, account.owner_id, account.asset)
    else:
        found = await find_system_account(conn, account.kind, account.asset)
    assert found is not None
    return found


async def find_customer_account(
    conn: AsyncConnection, owner_id: uuid.UUID | None, asset: str
) -> AccountRow | None:
    row = (
        await conn.execute(
            text(
                f"SELECT {ACCOUNT_COLUMNS} FROM ledger.accounts "
                "WHERE owner_id = :owner AND asset = :asset AND kind = 'customer'"  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            ),
            {"owner": owner_id, "asset": asset},
        )
    ).first()
    return _account_row(row) if row else None


async def find_system_account(
    conn: AsyncConnection, kind: d.AccountKind, asset: str
) -> AccountRow | None:
    row = (
        await conn.execute(
            text(
                f"SELECT {ACCOUNT_COLUMNS} FROM ledger.accounts "
                "WHERE kind = :kind AND asset = :asset"  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            ),
            {"kind": kind.value, "asset": asset},
        )
    ).first()
    return _account_row(row) if row else None


async def get_accounts(
    conn: AsyncConnection, ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, AccountRow]:
    """Accounts by id, not locked (`batch_context` locks those a transfer posts to)."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = await conn.execute(
        text(f"SELECT {ACCOUNT_COLUMNS} FROM ledger.accounts WHERE id = ANY(:ids)"),  # nosec B608  # constant column lists and clauses; every value is a bind parameter
        {"ids": wanted},
    )
    return {r.id: _account_row(r) for r in rows}


async def list_accounts(
    conn: AsyncConnection, owner_id: uuid.UUID, limit: int, after: AccountRow | None = None
) -> list[AccountRow]:
    """An owner's accounts, oldest first (created_at, then id), the page after `after`."""
    if after is None:
        where, params = "", {}
    else:
        where = "AND (created_at, id) > (:after_at, :after_id) "
        params = {"after_at": after.created_at, "after_id": after.account.id}
    rows = await conn.execute(
        text(
            f"SELECT {ACCOUNT_COLUMNS} FROM ledger.accounts WHERE owner_id = :owner "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            f"{where}ORDER BY created_at, id LIMIT :limit"
        ),
        {"owner": owner_id, "limit": limit, **params},
    )
    return [_account_row(r) for r in rows]


async def list_owners(
    conn: AsyncConnection, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """Owners of customer accounts in id order, the page after `after` (`kind = 'customer'`
    lets the partial unique index on (owner_id, asset) serve it)."""
    where, params = (
        ("owner_id IS NOT NULL", {}) if after is None else ("owner_id > :after", {"after": after})
    )
    rows = await conn.execute(
        text(
            f"SELECT DISTINCT owner_id FROM ledger.accounts WHERE kind = 'customer' AND {where} "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            "ORDER BY owner_id LIMIT :limit"
        ),
        {"limit": limit, **params},
    )
    return [r.owner_id for r in rows]


async def balance_as_of(
    conn: AsyncConnection, account_id: uuid.UUID, as_of: datetime
) -> Decimal | None:
    """The balance after the last posting at or before `as_of` (0 before the first)."""
    value = (
        await conn.execute(
            text(
                "SELECT balance_after FROM ledger.postings WHERE account_id = :id "
                "AND posted_at <= :as_of ORDER BY id DESC LIMIT 1"
            ),
            {"id": account_id, "as_of": as_of},
        )
    ).scalar()
    return value if value is not None else None


@dataclass(frozen=True, slots=True)
class PostingRow:
    id: int
    transfer_id: uuid.UUID
    amount: Decimal
    balance_after: Decimal
    posted_at: datetime


async def list_postings(
    conn: AsyncConnection, account_id: uuid.UUID, after_id: int | None, limit: int
) -> list[PostingRow]:
    rows = await conn.execute(
        text(
            "SELECT id, transfer_id, amount, balance_after, posted_at FROM ledger.postings "
            "WHERE account_id = :account AND id > :after ORDER BY id LIMIT :limit"
        ),
        {"account": account_id, "after": after_id or 0, "limit": limit},
    )
    return [PostingRow(r.id, r.transfer_id, r.amount, r.balance_after, r.posted_at) for r in rows]


# -- transfers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredTransfer:
    transfer: d.Transfer
    created_at: datetime


def _trade_json(trade: d.Trade | None) -> str | None:
    if trade is None:
        return None
    return json.dumps(
        {
            "symbol": trade.symbol,
            "side": trade.side.value,
            "quantity": f"{trade.quantity:f}",  # plain notation: never '1E-8'
            "price": f"{trade.price:f}",
            "notional": f"{trade.notional:f}",
            "fee": f"{trade.fee:f}",
            "currency": trade.currency,
        }
    )


def _trade_from(data: Mapping[str, str] | None) -> d.Trade | None:
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


async def get_transfers(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, StoredTransfer]:
    if not ids:
        return {}
    rows = (
        await conn.execute(
            text(
                "SELECT id, kind, reverses, trade, metadata, created_at FROM ledger.transfers "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        )
    ).all()
    postings = (
        await conn.execute(
            text(
                "SELECT transfer_id, account_id, asset, amount, balance_after "
                "FROM ledger.postings WHERE transfer_id = ANY(:ids) ORDER BY id"
            ),
            {"ids": [r.id for r in rows]},
        )
    ).all()
    by_transfer: dict[uuid.UUID, list[d.Posting]] = {r.id: [] for r in rows}
    for p in postings:
        by_transfer[p.transfer_id].append(
            d.Posting(p.transfer_id, p.account_id, p.asset, p.amount, p.balance_after)
        )
    return {
        r.id: StoredTransfer(
            d.Transfer(
                r.id,
                d.TransferKind(r.kind),
                tuple(by_transfer[r.id]),
                dict(r.metadata),
                _trade_from(r.trade),
                r.reverses,
            ),
            r.created_at,
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class NewTransfer:
    transfer: d.Transfer
    event_id: uuid.UUID
    owners: tuple[uuid.UUID, ...]


# -- idempotency ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request_hash: bytes
    transfer_id: uuid.UUID
    status: int


async def count_transfer_events(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> int:
    """How many transfers carry these event ids."""
    count = await conn.scalar(
        text("SELECT count(*) FROM ledger.transfers WHERE event_id = ANY(:ids)"),
        {"ids": list(event_ids)},
    )
    return int(count or 0)


async def get_idempotency(
    conn: AsyncConnection, keys: Sequence[str]
) -> dict[str, IdempotencyRecord]:
    if not keys:
        return {}
    rows = await conn.execute(
        text(
            "SELECT owner_key, request_hash, transfer_id, status FROM ledger.idempotency_keys "
            "WHERE owner_key = ANY(:keys)"
        ),
        {"keys": list(keys)},
    )
    return {r.owner_key: IdempotencyRecord(r.request_hash, r.transfer_id, r.status) for r in rows}


# -- prices ---------------------------------------------------------------------------


async def upsert_price(conn: AsyncConnection, price: d.MarketPrice) -> bool:
    """Store `price` unless the cache holds one with the same or a later exchange time.

    True when stored. Older updates (late or out of order) change nothing.
    """
    result = await conn.execute(
        text(
            "INSERT INTO ledger.prices (symbol, price, exchange_ts, received_at) "
            "VALUES (:symbol, :price, :exchange_ts, :received_at) "
            "ON CONFLICT (symbol) DO UPDATE SET price = excluded.price, "
            "  exchange_ts = excluded.exchange_ts, received_at = excluded.received_at, "
            "  updated_at = now() "
            "WHERE ledger.prices.exchange_ts < excluded.exchange_ts"
        ),
        {
            "symbol": price.symbol,
            "price": price.price,
            "exchange_ts": price.exchange_ts,
            "received_at": price.received_at,
        },
    )
    return bool(result.rowcount)


async def get_price(conn: AsyncConnection, symbol: str) -> d.MarketPrice | None:
    row = (
        await conn.execute(
            text(
                "SELECT symbol, price, exchange_ts, received_at FROM ledger.prices "
                "WHERE symbol = :symbol"
            ),
            {"symbol": symbol},
        )
    ).first()
    return d.MarketPrice(row.symbol, row.price, row.exchange_ts, row.received_at) if row else None


# -- the group commit's two statements, on the raw asyncpg connection ---------------------
# One batch of transfers is BEGIN, `batch_context`, `insert_batch`, the outbox and COMMIT:
# five round trips whatever the batch size (tickertap.db.DriverTransaction).

# A posting transaction's settings (in BEGIN's round trip): it sees every row, and its
# statements keep their generic plans. Postgres otherwise re-plans the batch context at
# every call (its custom plans look cheaper with the arrays' values known): ~220 us of
# planning a batch, measured with pg_stat_statements' track_planning, for the same plan.
# The same settings hold for the whole session of the posting engine's connections
# (`Ledger.poster`, POSTING_SESSION), whose batches run without explicit transactions:
# that pool serves nothing else.
POSTING_SESSION = {"tickertap.scope": "all", "plan_cache_mode": "force_generic_plan"}
POSTING_SETUP = "SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in POSTING_SESSION.items()
)
BALANCE_CHANGED = "40001"  # ledger.balance_changed(): a batch's optimistic check failed


@dataclass(frozen=True, slots=True)
class BatchContext:
    idempotency: dict[str, IdempotencyRecord]
    existing: set[uuid.UUID]  # transfer ids already taken
    reversed: set[uuid.UUID]  # transfers already reversed
    accounts: dict[uuid.UUID, d.Account]  # locked FOR UPDATE (if asked), in the global order
    balances: dict[uuid.UUID, Decimal]  # of those accounts, as read
    now: datetime  # its transfers' created_at: the reading transaction's `now()`, or later
    # (after what the process knows of the accounts), or from memory (handlers.Remembered)


def _batch_context_sql(lock: bool) -> str:
    locking = " ORDER BY id FOR UPDATE" if lock else ""
    return (
        "WITH locked AS MATERIALIZED ("  # nosec B608  # constant column lists and clauses; every value is a bind parameter
        "  SELECT id, owner_id, asset, kind, overdraft_limit, balance FROM ledger.accounts"
        f"  WHERE id = ANY($4::uuid[]){locking}"
        ") "
        "SELECT 'a' AS what, id, owner_id, asset, kind, overdraft_limit, balance,"
        "  NULL::text AS key, NULL::bytea AS hash, NULL::smallint AS status,"
        "  NULL::timestamptz AS now FROM locked "
        "UNION ALL SELECT 'k', transfer_id, NULL, NULL, NULL, NULL, NULL,"
        "  owner_key, request_hash, status, NULL FROM ledger.idempotency_keys"
        "  WHERE owner_key = ANY($1::text[]) "
        "UNION ALL SELECT 't', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
        "  FROM ledger.transfers WHERE id = ANY($2::uuid[]) "
        "UNION ALL SELECT 'r', reverses, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
        "  FROM ledger.transfers WHERE reverses = ANY($3::uuid[]) AND reverses IS NOT NULL "
        "UNION ALL SELECT 'n', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, now()"
    )


_BATCH_CONTEXT_SQL = {lock: _batch_context_sql(lock) for lock in (True, False)}


async def batch_context(
    pg: Any,
    keys: Sequence[str],
    transfer_ids: Sequence[uuid.UUID],
    reverses: Sequence[uuid.UUID],
    account_ids: Iterable[uuid.UUID],
    *,
    lock: bool = True,
) -> BatchContext:
    """Read what the batch's checks need (idempotency records, taken transfer ids,
    reversed transfers, the accounts and their balances) and the transaction's `now()`:
    one round trip. With `lock`, the accounts are locked (one global order: no
    deadlocks) until the transaction ends; without, `post_batch` checks their balances."""
    rows = await pg.fetch(
        _BATCH_CONTEXT_SQL[lock], list(keys), list(transfer_ids), list(reverses), list(account_ids)
    )
    idempotency: dict[str, IdempotencyRecord] = {}
    existing: set[uuid.UUID] = set()
    reversed_: set[uuid.UUID] = set()
    accounts: dict[uuid.UUID, d.Account] = {}
    balances: dict[uuid.UUID, Decimal] = {}
    kinds, account = _KINDS, d.Account
    now = None
    for r in rows:
        what = r[0]
        if what == "a":  # built from the record directly: up to 2,000 rows a batch
            what, id_, owner, asset, kind, limit, balance = r[:7]
            accounts[id_] = account(id_, owner, asset, kinds[kind], limit)
            balances[id_] = balance
        elif what == "k":
            idempotency[r["key"]] = IdempotencyRecord(bytes(r["hash"]), r["id"], r["status"])
        elif what == "t":
            existing.add(r["id"])
        elif what == "r":
            reversed_.add(r["id"])
        else:
            now = r["now"]
    assert now is not None, "the context names the transaction's time"
    return BatchContext(idempotency, existing, reversed_, accounts, balances, now)


@functools.cache  # one text per outbox table (and one without)
def _insert_batch_sql(outbox: Table | None) -> str:
    """Without `outbox`: the transfers, postings, balances and keys of a batch whose
    accounts its transaction has locked. With: the whole batch as one statement, its own
    transaction: it locks the accounts, writes only if each balance is still the one
    the batch read (else ledger.balance_changed() fails it whole), and adds the events."""
    gate = " WHERE (SELECT count(*) FROM l) >= 0" if outbox is not None else ""
    check, expected = "", ""
    if outbox is not None:  # $22 created_at, $23 expected balances, $24-$30 the outbox
        check = " AND a.balance = CAST(v.expected AS numeric) AND (SELECT count(*) FROM l) >= 0"
        expected = ", $23::text[]"
    locks = (
        "l AS MATERIALIZED (SELECT id FROM ledger.accounts"
        "  WHERE id = ANY($15::uuid[]) ORDER BY id FOR UPDATE), "
        if outbox is not None
        else ""
    )
    # Every fragment is a constant of this function; every value is a $n parameter.
    sql = (
        # amounts and balances travel as text: asyncpg's binary numeric encoder costs about
        # four times as much per value as the text one plus str(), and Postgres reads both
        # alike. Under `l` (accounts locked first, in id order) everything else waits.
        f"WITH {locks}t AS ("  # nosec B608  # see above
        "  INSERT INTO ledger.transfers"
        "    (id, kind, reverses, owner_ids, trade, metadata, event_id, created_at)"
        "  SELECT t.id, t.kind, t.reverses, CAST(t.owners AS uuid[]), CAST(t.trade AS jsonb),"
        "    CAST(t.metadata AS jsonb), t.event, $22::timestamptz"
        "  FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],"
        f"    $7::uuid[]) AS t(id, kind, reverses, owners, trade, metadata, event){gate}"
        "  RETURNING 1"
        "), p AS ("
        "  INSERT INTO ledger.postings"
        "    (transfer_id, account_id, owner_id, asset, scale, amount, balance_after, posted_at)"
        "  SELECT p.t, p.a, p.o, p.asset, p.scale, CAST(p.amount AS numeric),"
        "    CAST(p.after AS numeric), clock_timestamp()"
        "  FROM unnest($8::uuid[], $9::uuid[], $10::uuid[], $11::text[], $12::smallint[],"
        f"    $13::text[], $14::text[]) AS p(t, a, o, asset, scale, amount, after){gate}"
        "), a AS ("
        "  UPDATE ledger.accounts a SET balance = CAST(v.balance AS numeric),"
        "    postings_count = a.postings_count + v.n"
        f"  FROM unnest($15::uuid[], $16::text[], $17::bigint[]{expected})"
        f"    AS v(id, balance, n{', expected' if expected else ''})"
        f"  WHERE a.id = v.id{check}"
        "  RETURNING 1"
        "), k AS ("
        "  INSERT INTO ledger.idempotency_keys (owner_key, request_hash, transfer_id, status)"
        f"  SELECT * FROM unnest($18::text[], $19::bytea[], $20::uuid[], $21::smallint[]){gate}"
        "  RETURNING 1"
        ")"
    )
    if outbox is None:
        return f"{sql} SELECT (SELECT count(*) FROM t) AS transfers"  # nosec B608  # see above
    return (
        # the events' key locks come last, as in the locked path (insert, then events)
        f"{sql}, {outbox_ctes(outbox, 24, after=('l', 't', 'k'))}"  # nosec B608  # see above
        " SELECT (SELECT count(*) FROM t) AS transfers,"
        "  CASE WHEN (SELECT count(*) FROM a) = cardinality($15::uuid[]) THEN true"
        f"  ELSE ledger.balance_changed() END AS written, {notify_sql(outbox)}"
    )


def _batch_values(
    new: Sequence[NewTransfer],
    accounts: Mapping[uuid.UUID, d.Account],
    assets: Mapping[str, Asset],
    idempotency: Mapping[str, IdempotencyRecord],
    created_at: datetime,
) -> tuple[list[Any], dict[uuid.UUID, Decimal]]:
    """The values of `_insert_batch_sql` ($1 to $22), and each touched account's final
    balance (its last posting's)."""
    assert new, "a batch posts at least one transfer"
    transfers = [n.transfer for n in new]
    postings = [p for t in transfers for p in t.postings]
    final: dict[uuid.UUID, Decimal] = {}
    counts: dict[uuid.UUID, int] = {}
    for p in postings:  # in posting order: the last one holds the final balance
        final[p.account_id] = p.balance_after
        counts[p.account_id] = counts.get(p.account_id, 0) + 1
    values = [
        [t.id for t in transfers],
        [t.kind.value for t in transfers],
        [t.reverses for t in transfers],
        ["{" + ",".join(map(str, n.owners)) + "}" for n in new],
        [_trade_json(t.trade) for t in transfers],
        [orjson.dumps(dict(t.metadata)).decode() if t.metadata else "{}" for t in transfers],
        [n.event_id for n in new],
        [p.transfer_id for p in postings],
        [p.account_id for p in postings],
        [accounts[p.account_id].owner_id for p in postings],
        [p.asset for p in postings],
        [assets[p.asset].scale for p in postings],
        [str(p.amount) for p in postings],
        [str(p.balance_after) for p in postings],
        list(final),
        [str(b) for b in final.values()],
        [counts[i] for i in final],
        list(idempotency),
        [r.request_hash for r in idempotency.values()],
        [r.transfer_id for r in idempotency.values()],
        [r.status for r in idempotency.values()],
        created_at,
    ]
    return values, final


async def insert_batch(
    pg: Any,
    new: Sequence[NewTransfer],
    accounts: Mapping[uuid.UUID, d.Account],
    assets: Mapping[str, Asset],
    idempotency: Mapping[str, IdempotencyRecord],
    created_at: datetime,
) -> None:
    """Transfers, their postings, each touched account's new balance and the idempotency
    keys, in one statement (one round trip), inside the transaction that locked the
    accounts (`batch_context(lock=True)`); the transfers are `created_at`.

    A posting's `posted_at` is the clock when it is written, after its account's lock
    is held (not the transaction's start, `now()`): so one account's postings are in
    time order as they are in id order, and a balance as of any instant is exact."""
    values, _ = _batch_values(new, accounts, assets, idempotency, created_at)
    assert await pg.fetchval(_insert_batch_sql(None), *values) == len(new)


async def post_batch(
    pg: Any,
    new: Sequence[NewTransfer],
    ctx: BatchContext,
    assets: Mapping[str, Asset],
    idempotency: Mapping[str, IdempotencyRecord],
    outbox: Table,
    events: EncodedEvents,
) -> None:
    """The batch as one statement outside any transaction (it is its own): `insert_batch`
    plus the events, written only if every touched account still has the balance `ctx`
    read (`batch_context(lock=False)`); otherwise it raises SQLSTATE 40001
    (BALANCE_CHANGED) and writes nothing. The accounts are locked in the global order
    before anything is written, so concurrent batches never deadlock."""
    values, final = _batch_values(new, ctx.accounts, assets, idempotency, ctx.now)
    values.append([str(ctx.balances[i]) for i in final])
    values.extend(outbox_params(outbox, events))
    row = await pg.fetchrow(_insert_batch_sql(outbox), *values)
    assert row["transfers"] == len(new)
    assert row["written"]
