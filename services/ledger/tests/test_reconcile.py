"""Reconciliation against the running local stack (real Postgres, OpenBao, the ledger service).

Other tests share this database, so assertions look at the accounts, transfers and
assets these tests make, and whatever a test corrupts (as the Postgres admin) it puts
back in a `finally` as soon as it has looked: the shared ledger is never left drifted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from tickertap.db import DatabaseSettings, create_engine
from tickertap.ledger.reconcile import (
    DriftKind,
    Reconciler,
    ReconciliationMetrics,
    Report,
    reconcile,
)
from tickertap.money import install_context
from tickertap.secrets import CredentialRotator, Vault

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[3]
K = DriftKind


def new_id() -> str:
    return str(uuid.uuid4())


class Books:
    """Accounts and transfers made through the ledger's HTTP API, as an operator."""

    def __init__(self, client: httpx.AsyncClient, mint: Any) -> None:
        self.client = client
        self.ops = {"Authorization": f"Bearer {mint(new_id(), ('ops',))}"}

    async def post(self, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = await self.client.post(path, json=body, headers={**self.ops, **headers})
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    async def asset(self) -> str:
        code = f"RC{secrets.token_hex(4).upper()}"  # an asset of this test alone
        await self.post("/v1/assets", {"code": code, "scale": 2, "kind": "crypto"})
        return code

    async def account(self, asset: str = "USD") -> uuid.UUID:
        body = {"asset": asset, "owner_id": new_id(), "overdraft_limit": "0"}
        return uuid.UUID((await self.post("/v1/accounts", body))["id"])

    async def deposit(self, account: uuid.UUID, amount: str) -> uuid.UUID:
        body = {"transfer_id": new_id(), "account_id": str(account), "amount": amount}
        return uuid.UUID((await self.post("/v1/deposits", body))["id"])

    async def transfer(self, *legs: tuple[uuid.UUID, str]) -> uuid.UUID:
        body = {
            "transfer_id": new_id(),
            "legs": [{"account_id": str(a), "amount": x} for a, x in legs],
        }
        created = await self.post("/v1/transfers", body, **{"Idempotency-Key": new_id()})
        return uuid.UUID(created["id"])

    async def reverse(self, transfer: uuid.UUID) -> uuid.UUID:
        body = {"reversal_id": new_id()}
        return uuid.UUID((await self.post(f"/v1/transfers/{transfer}/reversal", body))["id"])


@pytest.fixture
async def books(stack: Any, mint_token: Any) -> AsyncIterator[Books]:
    async with httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as client:
        yield Books(client, mint_token)


@pytest.fixture
async def db(stack: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def reader(stack: Any) -> AsyncIterator[Any]:
    """A read-only engine on the ledger's own short-lived credentials, as the service has."""
    install_context()
    vault = Vault(stack.vault_addr, token=stack.vault_root_token)
    rotator = CredentialRotator(vault, "ledger", grace_s=0)
    await rotator.start()
    engine = create_engine(
        DatabaseSettings(stack.pg_host, stack.pg_port, stack.database, "ledger"),
        rotator,
        application_name="test-reconcile",
        read_only=True,
    )
    yield engine
    await engine.dispose()
    await rotator.stop()
    vault.close()


async def run(engine: Any, **options: Any) -> Report:
    async with engine.connect() as conn:
        return await reconcile(conn, **options)


def about(
    report: Report,
    accounts: Iterable[uuid.UUID] = (),
    transfers: Iterable[uuid.UUID] = (),
    assets: Iterable[str] = (),
) -> set[tuple[DriftKind, str, str | None, str | None]]:
    """The report's items that concern these accounts, transfers or (asset-wide) assets."""
    accounts, transfers, assets = set(accounts), set(transfers), set(assets)
    found: set[tuple[DriftKind, str, str | None, str | None]] = set()
    for item in report.items:
        if item.account_id in accounts:
            found.add((item.kind, str(item.account_id), item.expected, item.actual))
        elif item.transfer_id in transfers:
            found.add((item.kind, str(item.transfer_id), item.expected, item.actual))
        elif item.account_id is None and item.transfer_id is None and item.asset in assets:
            found.add((item.kind, str(item.asset), item.expected, item.actual))
    return found


async def test_a_clean_ledger_reconciles_clean(books: Books, reader: Any) -> None:
    alice, bob = await books.account(), await books.account()
    transfers = [
        await books.deposit(alice, "100.00"),
        await books.transfer((alice, "-30.50"), (bob, "30.50")),
        await books.transfer((bob, "-0.50"), (alice, "0.50")),
    ]
    transfers.append(await books.reverse(transfers[2]))

    report = await run(reader)

    assert about(report, [alice, bob], transfers) == set()
    assert report.checked["accounts"] >= 2
    assert report.checked["postings"] >= 2 * len(transfers)
    assert report.checked["transfers_in_outbox_window"] >= len(transfers)
    assert set(report.counts) == set(DriftKind)
    assert report.to_json()["drift"] == {k.value: report.counts[k] for k in DriftKind}


async def test_a_corrupted_balance_and_postings_count_are_found(
    books: Books, db: asyncpg.Connection, reader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await books.account(), await books.account()
    await books.deposit(alice, "10.00")
    await books.transfer((alice, "-3.00"), (bob, "3.00"))
    registry = CollectorRegistry()
    metrics = ReconciliationMetrics(registry)

    await db.execute(
        "UPDATE ledger.accounts SET balance = balance + 1, postings_count = postings_count + 1 "
        "WHERE id = $1",
        alice,
    )
    try:
        report = await run(reader)
        job = await Reconciler(reader, metrics).run_once()
    finally:
        await db.execute(
            "UPDATE ledger.accounts SET balance = balance - 1, postings_count = postings_count - 1 "
            "WHERE id = $1",
            alice,
        )

    assert about(report, [alice, bob]) == {
        (K.ACCOUNT_BALANCE, str(alice), "7.00", "8.00"),
        (K.ACCOUNT_LAST_BALANCE_AFTER, str(alice), "7.00", "8.00"),
        (K.ACCOUNT_POSTINGS_COUNT, str(alice), "2", "3"),
    }
    assert report.counts[K.ACCOUNT_BALANCE] >= 1
    assert not report.clean
    # the periodic job saw it too, and says so in its gauges
    assert job is not None
    assert about(job, [alice]) == about(report, [alice])
    gauge = registry.get_sample_value
    assert gauge("tickertap_ledger_reconciliation_drift", {"kind": "account_balance"}) >= 1
    assert gauge("tickertap_ledger_reconciliation_last_run_success") == 1
    last_run = gauge("tickertap_ledger_reconciliation_last_run_timestamp_seconds")
    assert last_run == pytest.approx(time.time(), abs=60)
    # logged as an error, with counts and no ids
    [record] = [r for r in caplog.records if r.name == "tickertap.ledger.reconcile"]
    assert (record.levelname, record.getMessage()) == ("ERROR", "ledger drift found")
    assert record.__dict__["drift"]["account_balance"] >= 1
    assert str(alice) not in repr(record.__dict__)
    # put back: nothing about these accounts any more
    assert about(await run(reader), [alice, bob]) == set()


async def test_unbalanced_postings_are_found_per_asset_and_per_transfer(
    books: Books, db: asyncpg.Connection, reader: Any
) -> None:
    asset = await books.asset()
    alice, bob = await books.account(asset), await books.account(asset)
    deposit = await books.deposit(alice, "10.00")
    transfer = await books.transfer((alice, "-4.00"), (bob, "4.00"))

    posting = await db.fetchval(
        "UPDATE ledger.postings SET amount = amount + 1 WHERE transfer_id = $1 "
        "AND account_id = $2 RETURNING id",
        transfer,
        bob,
    )
    assert posting is not None
    try:
        report = await run(reader)
    finally:
        await db.execute("UPDATE ledger.postings SET amount = amount - 1 WHERE id = $1", posting)

    assert about(report, [alice, bob], [deposit, transfer], [asset]) == {
        (K.ASSET_POSTINGS_SUM, asset, "0", "1.00"),
        (K.TRANSFER_UNBALANCED, str(transfer), "0", "1.00"),
        (K.ACCOUNT_BALANCE, str(bob), "5.00", "4.00"),  # the postings say 5, the account 4
    }
    assert about(await run(reader), [alice, bob], [deposit, transfer], [asset]) == set()


async def test_a_transfer_without_its_outbox_event_is_found(
    books: Books, db: asyncpg.Connection, reader: Any
) -> None:
    alice, bob = await books.account(), await books.account()
    await books.deposit(alice, "1.00")
    transfer = await books.transfer((alice, "-1.00"), (bob, "1.00"))
    event_id = await db.fetchval("SELECT event_id FROM ledger.transfers WHERE id = $1", transfer)
    # wait for the relay to publish it, so taking the row away and back changes nothing
    deadline = time.monotonic() + 15
    while not await db.fetchval(
        "SELECT sent_at IS NOT NULL FROM ledger.outbox WHERE event_id = $1", event_id
    ):
        assert time.monotonic() < deadline, "the outbox relay did not publish the event"
        await asyncio.sleep(0.1)

    row = await db.fetchrow("DELETE FROM ledger.outbox WHERE event_id = $1 RETURNING *", event_id)
    try:
        report = await run(reader)
        await asyncio.sleep(0.05)
        outside_window = await run(reader, outbox_window_s=0.01)
    finally:
        columns = list(row.keys())
        await db.execute(
            f"INSERT INTO ledger.outbox ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
            *row.values(),
        )

    assert about(report, [alice, bob], [transfer]) == {
        (K.TRANSFER_EVENT_MISSING, str(transfer), str(event_id), None)
    }
    assert about(outside_window, [alice, bob], [transfer]) == set()  # purged by then: fine
    assert about(await run(reader), [alice, bob], [transfer]) == set()


async def reconcile_command(stack: Any, *args: str) -> tuple[int, str, str]:
    """`make reconcile`: the CLI in the environment the launcher gives the ledger."""
    env = {**os.environ, "TICKERTAP_PROFILE": stack.info["profile"]}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "deploy" / "local" / "stack.py"),
        "exec",
        "ledger",
        "--",
        "python",
        "-m",
        "tickertap.ledger.reconcile",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_command_exits_1_on_drift_and_0_when_clean(
    stack: Any, books: Books, db: asyncpg.Connection
) -> None:
    alice, bob = await books.account(), await books.account()
    await books.deposit(alice, "5.00")
    await books.transfer((alice, "-5.00"), (bob, "5.00"))

    await db.execute(
        "UPDATE ledger.accounts SET postings_count = postings_count + 1 WHERE id = $1", bob
    )
    try:
        drifted = await reconcile_command(stack)
    finally:
        await db.execute(
            "UPDATE ledger.accounts SET postings_count = postings_count - 1 WHERE id = $1", bob
        )
    # clean again; another test run may be inside its own short corruption window, so a
    # few tries: drift that stays (a real bug) still fails
    for _ in range(5):
        clean = await reconcile_command(stack)
        if clean[0] != 1:
            break
        await asyncio.sleep(1)

    code, stdout, stderr = drifted
    assert code == 1, stderr
    report = json.loads(stdout)
    assert report["clean"] is False
    assert report["drift"]["account_postings_count"] >= 1
    assert {
        "kind": "account_postings_count",
        "asset": "USD",
        "account_id": str(bob),
        "transfer_id": None,
        "expected": "1",
        "actual": "2",
    } in report["items"]
    code, stdout, stderr = clean
    assert code == 0, f"the shared ledger is not clean:\n{stdout}\n{stderr}"
    assert json.loads(stdout)["clean"] is True


async def test_the_command_exits_2_when_it_cannot_reconcile(stack: Any) -> None:
    without_settings = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickertap.ledger.reconcile",
        env=without_settings,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert stdout == b""
    assert b"TICKERTAP_" in stderr or b"db_host" in stderr

    code, stdout_text, _ = await reconcile_command(stack, "--items-max", "0")
    assert code == 2
    assert stdout_text == ""


async def test_the_service_reconciles_periodically_and_exports_gauges(stack: Any) -> None:
    """The running ledger's first run comes within ~30 s of its start."""
    deadline = time.monotonic() + 45
    async with httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=10) as client:
        while True:
            text = (await client.get("/metrics")).text
            assert "# TYPE tickertap_ledger_reconciliation_drift gauge" in text
            success = re.search(
                r"^tickertap_ledger_reconciliation_last_run_success (\S+)$", text, re.M
            )
            assert success is not None
            if float(success.group(1)) == 1.0:
                break
            assert time.monotonic() < deadline, "the ledger has not reconciled since it started"
            await asyncio.sleep(1)
    drift = dict(
        re.findall(r'^tickertap_ledger_reconciliation_drift\{kind="([a-z_]+)"\} (\S+)$', text, re.M)
    )
    assert set(drift) == {k.value for k in DriftKind}
    assert all(Decimal(v) >= 0 for v in drift.values())
    last_run = re.search(
        r"^tickertap_ledger_reconciliation_last_run_timestamp_seconds (\S+)$", text, re.M
    )
    assert last_run is not None
    assert float(last_run.group(1)) > 0
