"""SQL for the ledger: accounts, assets, transfers, postings and prices, many at a time.

Every function takes the caller's `AsyncConnection` inside an open transaction;
row-level security needs `see_all` or `see_owner` first in that transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.ledger import domain as d
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
POSTING_SETUP = (
    "SELECT set_config('tickertap.scope', 'all', true),"
    " set_config('plan_cache_mode', 'force_generic_plan', true)"
)


@dataclass(frozen=True, slots=True)
class BatchContext:
    idempotency: dict[str, IdempotencyRecord]
    existing: set[uuid.UUID]  # transfer ids already taken
    reversed: set[uuid.UUID]  # transfers already reversed
    accounts: dict[uuid.UUID, d.Account]  # locked FOR UPDATE, in the global order
    balances: dict[uuid.UUID, Decimal]  # of the locked accounts
    now: datetime  # the transaction's `now()`: its transfers' created_at


_BATCH_CONTEXT_SQL = (
    "WITH locked AS MATERIALIZED ("  # nosec B608  # constant column lists and clauses; every value is a bind parameter
    "  SELECT id, owner_id, asset, kind, overdraft_limit, balance FROM ledger.accounts"
    "  WHERE id = ANY($4::uuid[]) ORDER BY id FOR UPDATE"
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


async def batch_context(
    pg: Any,
    keys: Sequence[str],
    transfer_ids: Sequence[uuid.UUID],
    reverses: Sequence[uuid.UUID],
    account_ids: Iterable[uuid.UUID],
) -> BatchContext:
    """Lock the accounts (one global order: no deadlocks) and read what the batch's checks
    need (idempotency records, taken transfer ids, reversed transfers) and the transaction's
    `now()`: one round trip."""
    rows = await pg.fetch(
        _BATCH_CONTEXT_SQL, list(keys), list(transfer_ids), list(reverses), list(account_ids)
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


_INSERT_BATCH_SQL = (
    # amounts and balances travel as text: asyncpg's binary numeric encoder costs about four
    # times as much per value as the text one plus str(), and Postgres reads both alike
    "WITH t AS ("
    "  INSERT INTO ledger.transfers (id, kind, reverses, owner_ids, trade, metadata, event_id)"
    "  SELECT t.id, t.kind, t.reverses, CAST(t.owners AS uuid[]), CAST(t.trade AS jsonb),"
    "    CAST(t.metadata AS jsonb), t.event"
    "  FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],"
    "    $7::uuid[]) AS t(id, kind, reverses, owners, trade, metadata, event)"
    "  RETURNING 1"
    "), p AS ("
    "  INSERT INTO ledger.postings"
    "    (transfer_id, account_id, owner_id, asset, scale, amount, balance_after, posted_at)"
    "  SELECT p.t, p.a, p.o, p.asset, p.scale, CAST(p.amount AS numeric),"
    "    CAST(p.after AS numeric), clock_timestamp()"
    "  FROM unnest($8::uuid[], $9::uuid[], $10::uuid[], $11::text[], $12::smallint[],"
    "    $13::text[], $14::text[]) AS p(t, a, o, asset, scale, amount, after)"
    "), a AS ("
    "  UPDATE ledger.accounts a SET balance = CAST(v.balance AS numeric),"
    "    postings_count = a.postings_count + v.n"
    "  FROM unnest($15::uuid[], $16::text[], $17::bigint[]) AS v(id, balance, n)"
    "  WHERE a.id = v.id"
    "), k AS ("
    "  INSERT INTO ledger.idempotency_keys (owner_key, request_hash, transfer_id, status)"
    "  SELECT * FROM unnest($18::text[], $19::bytea[], $20::uuid[], $21::smallint[])"
    ") SELECT now() AS created_at, (SELECT count(*) FROM t) AS transfers"
)


async def insert_batch(
    pg: Any,
    new: Sequence[NewTransfer],
    accounts: Mapping[uuid.UUID, d.Account],
    assets: Mapping[str, Asset],
    idempotency: Mapping[str, IdempotencyRecord],
) -> datetime:
    """Transfers, their postings, each touched account's new balance and the idempotency
    keys, in one statement (one round trip); returns the transfers' `created_at`, the
    transaction's start (`now()`), the same for all of them.

    A posting's `posted_at` is the clock when it is written, after its account's lock
    is held (not the transaction's start, `now()`): so one account's postings are in
    time order as they are in id order, and a balance as of any instant is exact."""
    assert new, "a batch posts at least one transfer"
    transfers = [n.transfer for n in new]
    postings = [p for t in transfers for p in t.postings]
    final: dict[uuid.UUID, Decimal] = {}
    counts: dict[uuid.UUID, int] = {}
    for p in postings:  # in posting order: the last one holds the final balance
        final[p.account_id] = p.balance_after
        counts[p.account_id] = counts.get(p.account_id, 0) + 1
    row = await pg.fetchrow(
        _INSERT_BATCH_SQL,
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
    )
    assert row["transfers"] == len(new)
    created_at: datetime = row["created_at"]
    return created_at
