"""What the ledger's HTTP tests share: a small client, fresh ids, a database snapshot."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import httpx


def new_id() -> str:
    return str(uuid.uuid4())


class LedgerClient:
    """A small HTTP client of the ledger for tests: every call returns the response."""

    def __init__(self, client: httpx.AsyncClient, mint: Any) -> None:
        self.client = client
        self.mint = mint
        self.ops = {"Authorization": f"Bearer {mint(new_id(), ('ops',))}"}

    def as_customer(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(owner, ('customer',))}"}

    async def account(self, owner: str, asset: str = "USD", overdraft: str = "0") -> str:
        r = await self.client.post(
            "/v1/accounts",
            json={"asset": asset, "owner_id": owner, "overdraft_limit": overdraft},
            headers=self.ops,
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    async def balance(self, account_id: str) -> Decimal:
        r = await self.client.get(f"/v1/accounts/{account_id}/balance", headers=self.ops)
        assert r.status_code == 200, r.text
        return Decimal(r.json()["balance"])


async def snapshot(db: asyncpg.Connection) -> tuple[Any, ...]:
    """What a rejected request must leave unchanged."""
    return (
        await db.fetchval("SELECT count(*) FROM ledger.transfers"),
        await db.fetchval("SELECT count(*) FROM ledger.postings"),
        await db.fetchval("SELECT count(*) FROM ledger.outbox"),
        await db.fetchval("SELECT count(*) FROM ledger.idempotency_keys"),
        await db.fetchval("SELECT coalesce(sum(balance), 0) FROM ledger.accounts"),
        await db.fetchval("SELECT count(*) FROM ledger.accounts"),
    )
