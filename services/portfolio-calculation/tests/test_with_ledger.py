"""The portfolio follows the real ledger: transfers posted through the ledger's HTTP API
arrive on ledger.transfers.v1 (its outbox) and the portfolio's balances equal the ledger's.
Row-level security keeps a customer's transaction to their own rows; the reconciliation
command compares portfolios with the ledger's API and names the one that drifts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import TRANSFERS, Book, eventually, new_id, new_symbol, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
D = Decimal
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120


@pytest.fixture
async def clients(stack):
    async with (
        httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as ledger,
        httpx.AsyncClient(
            base_url=stack.service_url("portfolio-calculation"), timeout=30
        ) as portfolio,
    ):
        yield ledger, portfolio


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: Any) -> Any:
    r = await client.post(path, json=body, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def test_trades_and_a_reversal_through_the_ledger(clients, mint_token) -> None:
    ledger, portfolio = clients
    ops = {"Authorization": f"Bearer {mint_token(new_id(), ('ops',))}"}
    owner, symbol = new_id(), new_symbol()
    me = {"Authorization": f"Bearer {mint_token(owner, ('customer',))}"}
    asset = {"code": symbol, "scale": 0, "kind": "share", "quote_currency": "USD"}
    await post(ledger, "/v1/assets", asset, ops)
    cash = (await post(ledger, "/v1/accounts", {"asset": "USD", "owner_id": owner}, ops))["id"]
    deposit = {"transfer_id": new_id(), "account_id": cash, "amount": "1000.00"}
    await post(ledger, "/v1/deposits", deposit, ops)

    def trade(side: str, quantity: str, price: str) -> dict[str, Any]:
        return {
            "trade_id": new_id(),
            "owner_id": owner,
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "price": price,
        }

    buy = (await post(ledger, "/v1/trades", trade("buy", "3", "187.1234"), ops))["trade"]
    sale = await post(ledger, "/v1/trades", trade("sell", "1", "190.00"), ops)
    paid = D(buy["notional"]) + D(buy["fee"])
    proceeds = D(sale["trade"]["notional"]) - D(sale["trade"]["fee"])
    cost_taken = (paid / 3).quantize(D("0.01"))

    async def applied(n: int) -> Any:
        r = await portfolio.get(f"/v1/portfolios/{owner}", headers=me)
        return r.json() if r.status_code == 200 and r.json()["transfers_applied"] == n else None

    s = await eventually(lambda: applied(3), "the deposit and both trades applied")
    assert s["cash"] == [{"asset": "USD", "amount": str(D("1000.00") - paid + proceeds)}]
    assert s["totals"]["realized_pnl"] == str(proceeds - cost_taken)

    await post(ledger, f"/v1/transfers/{sale['id']}/reversal", {"reversal_id": new_id()}, ops)
    s = await eventually(lambda: applied(2), "the sale reversed")
    assert s["cash"] == [{"asset": "USD", "amount": str(D("1000.00") - paid)}]
    assert s["totals"]["realized_pnl"] == "0.00"
    (position,) = (await portfolio.get(f"/v1/portfolios/{owner}/positions", headers=me)).json()[
        "positions"
    ]
    assert (position["quantity"], position["cost_basis"]) == ("3", str(paid))

    accounts = (await ledger.get(f"/v1/accounts?owner={owner}", headers=ops)).json()["items"]
    assert {a["asset"]: D(a["balance"]) for a in accounts} == {
        "USD": D("1000.00") - paid,
        symbol: D(3),
    }


async def test_row_level_security_shows_a_customer_only_their_rows(stack, clients, mint_token):
    """As the service's owner role (what its Vault credentials become), with the owner set
    the way the API sets it for a customer."""
    _, portfolio = clients
    support = {"Authorization": f"Bearer {mint_token(new_id(), ('support',))}"}
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    mine, theirs = Book(), Book()
    for book in (mine, theirs):
        record = book.deposit("1.00")
        await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    for book in (mine, theirs):

        async def applied(owner: str = book.owner) -> bool:
            r = await portfolio.get(f"/v1/portfolios/{owner}", headers=support)
            return r.status_code == 200

        await eventually(applied, "both deposits applied")
    db = await asyncpg.connect(stack.pg_admin_url)
    try:
        async with db.transaction():
            await db.execute("SET LOCAL ROLE portfolio_owner")
            await db.execute("SELECT set_config('tickertap.owner_id', $1, true)", mine.owner)
            for table in ("portfolios", "transfers", "balances"):
                owners = await db.fetch(f"SELECT DISTINCT owner_id FROM portfolio.{table}")
                assert [str(r["owner_id"]) for r in owners] == [mine.owner], table
            for table in ("positions", "lots", "realized"):
                owners = await db.fetch(f"SELECT DISTINCT owner_id FROM portfolio.{table}")
                assert {str(r["owner_id"]) for r in owners} <= {mine.owner}, table
        async with db.transaction():  # neither scope nor owner: nothing
            await db.execute("SET LOCAL ROLE portfolio_owner")
            assert await db.fetchval("SELECT count(*) FROM portfolio.portfolios") == 0
    finally:
        await db.close()


async def run_reconcile(stack, token: str, *owners: str) -> tuple[int, dict[str, Any]]:
    """The command as an operator runs it: through the launcher, as the service's role."""
    args = [f"--portfolio={o}" for o in owners]
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(ROOT / "deploy" / "local" / "stack.py"),
            "exec",
            "portfolio-calculation",
            "--",
            "python",
            "-m",
            "tickertap.portfolio.reconcile",
            f"--ledger-url={stack.service_url('ledger')}",
            "--settle-s=0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "RECONCILE_LEDGER_TOKEN": token},
    )
    assert done.returncode in (0, 1), done.stderr
    assert token not in done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


async def test_reconciliation_with_the_ledger_finds_drift(stack, clients, mint_token) -> None:
    ledger, portfolio = clients
    token = mint_token(new_id(), ("ops",))
    ops = {"Authorization": f"Bearer {token}"}
    real = new_id()
    cash = (await post(ledger, "/v1/accounts", {"asset": "USD", "owner_id": real}, ops))["id"]
    deposit = {"transfer_id": new_id(), "account_id": cash, "amount": "25.00"}
    await post(ledger, "/v1/deposits", deposit, ops)
    # a transfer the ledger never posted: this portfolio drifts from the ledger
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    fake = Book()
    record = fake.deposit("7.00")
    await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    for owner in (real, fake.owner):

        async def applied(owner: str = owner) -> bool:
            r = await portfolio.get(f"/v1/portfolios/{owner}", headers=ops)
            return r.status_code == 200

        await eventually(applied, "both portfolios known")

    code, report = await run_reconcile(stack, token, real)
    assert (code, report["portfolios"], report["drifting"]) == (0, 1, 0), report
    code, report = await run_reconcile(stack, token, real, fake.owner)
    assert (code, report["drifting"]) == (1, 1)
    assert report["items"] == [
        {
            "portfolio_id": fake.owner,
            "balances": {"USD": {"portfolio": "7.000000000000000000", "ledger": "0"}},
        }
    ]
