"""The periodic reconciliation (reconcile_job.py) against the real stack: the service's
settings as the launcher gives them, its machine client's token from auth's
client-credentials grant, the ledger's paged API, the advisory lock in Postgres.

The shared test stack holds portfolios other tests made drift on purpose, so the runs
here check only this test's portfolios (`only`), except where the walk of the ledger's
owners is the point; there the assertions name this test's owners only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import TRANSFERS, Book, eventually, new_id, publish
from prometheus_client import CollectorRegistry

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.money import install_context
from tickertap.portfolio.reconcile import (
    TokenUnavailable,
    ledger_client,
    machine_token,
    reconcile,
)
from tickertap.portfolio.reconcile_job import (
    LOCK_KEY,
    ReconcileMetrics,
    run_once,
    run_periodically,
)
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime.login import command_engine

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120
PAGED_ACCOUNTS = 205  # more than the largest page of the ledger's account list (200)
CONCURRENCY = 16


def stack_settings(stack: Any, secret_id_file: Path, **overrides: Any) -> PortfolioSettings:
    """The portfolio service's settings as the launcher builds its environment, with a
    fresh AppRole secret_id (a test that reruns the bootstrap, test_external_servers.py,
    destroys the ones the stack's files hold)."""
    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    from config import SERVICES, StackConfig
    from stack import service_env

    spec = next(svc for svc in SERVICES if svc.name == "portfolio-calculation")
    env = service_env(
        StackConfig.from_env(),
        spec,
        stack.role_id(spec.schema),
        secret_id_file,
    )
    fields: dict[str, Any] = {
        k.removeprefix("TICKERTAP_").lower(): v
        for k, v in env.items()
        if k.startswith("TICKERTAP_")
    }
    fields.update(db_host=stack.pg_host, db_port=stack.pg_port, **overrides)
    return PortfolioSettings(**fields)


@pytest.fixture
def secret_id_file(approle_secret_id, tmp_path) -> Path:
    path = tmp_path / "portfolio.secret_id"
    path.write_text(approle_secret_id("portfolio"))
    path.chmod(0o600)
    return path


@pytest.fixture
async def settings(stack, secret_id_file) -> PortfolioSettings:
    install_context()
    return stack_settings(stack, secret_id_file, reconcile_interval_s=1.0, reconcile_settle_s=0.2)


@pytest.fixture
async def engine(settings):
    async with command_engine(settings, "portfolio-reconcile-test", read_only=True) as engine:
        yield engine


@pytest.fixture
async def ledger_http(settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ledger's API with the machine client's token (as the job calls it)."""
    assert settings.reconcile_ledger_url is not None
    async with ledger_client(settings, settings.reconcile_ledger_url, machine_token(settings)) as c:
        yield c


@pytest.fixture
async def db(stack):
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()


class Ledger:
    def __init__(self, http: httpx.AsyncClient, ops: dict[str, str]) -> None:
        self.http = http
        self.ops = ops

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        r = await self.http.post(path, json=body, headers=self.ops)
        assert r.status_code in (200, 201), r.text
        return r.json()

    async def funded(self, owner: str, amount: str) -> str:
        cash = (await self.post("/v1/accounts", {"asset": "USD", "owner_id": owner}))["id"]
        await self.post(
            "/v1/deposits", {"transfer_id": new_id(), "account_id": cash, "amount": amount}
        )
        return str(cash)


@pytest.fixture
async def ledger(stack, mint_token) -> AsyncIterator[Ledger]:
    ops = {"Authorization": f"Bearer {mint_token(new_id(), ('ops',))}"}
    async with httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as http:
        yield Ledger(http, ops)


async def applied(db: asyncpg.Connection, owner: str, usd: str) -> None:
    async def has_it() -> bool:
        amount = await db.fetchval(
            "SELECT amount FROM portfolio.balances WHERE owner_id = $1 AND asset = 'USD'",
            uuid.UUID(owner),
        )
        return amount is not None and amount == Decimal(usd)

    await eventually(has_it, f"the portfolio of {owner} holds {usd} USD")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def run_cli(secret_id_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: through the launcher, with no token of its own
    (the service's machine client gives it one)."""
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "local" / "stack.py"),
            "exec",
            "portfolio-calculation",
            "--",
            "env",
            f"TICKERTAP_VAULT_SECRET_ID_FILE={secret_id_file}",
            "python",
            "-m",
            "tickertap.portfolio.reconcile",
            "--settle-s=0.2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "RECONCILE_LEDGER_TOKEN"},
    )


async def test_the_job_reports_no_drift_then_a_corrupted_portfolio(
    settings, secret_id_file, engine, ledger: Ledger, db, caplog
):
    owner = new_id()
    await ledger.funded(owner, "40.00")
    await applied(db, owner, "40")
    registry = CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    caplog.set_level(logging.INFO, logger="tickertap.portfolio")
    job = asyncio.create_task(run_periodically(engine, settings, metrics, only=[uuid.UUID(owner)]))
    try:

        async def runs(result: str) -> float:
            return value(registry, "portfolio_reconcile_runs_total", result=result)

        await eventually(lambda: runs("ok"), "a clean run")
        assert value(registry, "portfolio_reconcile_drift_portfolios") == 0
        assert value(registry, "portfolio_reconcile_last_success_timestamp_seconds") > 0
        assert await runs("error") == 0

        await db.execute(  # the portfolio's cash is off by a cent
            "UPDATE portfolio.balances SET amount = amount + 0.01 "
            "WHERE owner_id = $1 AND asset = 'USD'",
            uuid.UUID(owner),
        )
        try:
            await eventually(lambda: runs("drift"), "a run that sees the drift")
            assert value(registry, "portfolio_reconcile_drift_portfolios") == 1
            drifting = [
                r
                for r in caplog.records
                if r.getMessage() == "portfolio drifts from the ledger"
                and getattr(r, "portfolio_id", None) == owner
            ]
            assert drifting
            assert drifting[0].assets == ["USD"]  # type: ignore[attr-defined]
            summary = [r for r in caplog.records if r.getMessage() == "reconciliation finished"]
            assert any(getattr(r, "drifting", None) == 1 for r in summary)

            # the operator's command says the same, with exit 1
            done = await asyncio.to_thread(run_cli, secret_id_file, f"--portfolio={owner}")
            assert done.returncode == 1, done.stdout + done.stderr
            report = json.loads(done.stdout)
            assert report["drifting"] == 1
            assert report["items"] == [
                {
                    "portfolio_id": owner,
                    "balances": {"USD": {"portfolio": "40.010000000000000000", "ledger": "40.00"}},
                }
            ]
        finally:
            await db.execute(
                "UPDATE portfolio.balances SET amount = amount - 0.01 "
                "WHERE owner_id = $1 AND asset = 'USD'",
                uuid.UUID(owner),
            )
        ok_before = await runs("ok")

        async def clean_again() -> bool:
            return await runs("ok") > ok_before

        await eventually(clean_again, "a clean run after the repair")
        assert value(registry, "portfolio_reconcile_drift_portfolios") == 0
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


async def test_a_replica_skips_the_round_another_one_holds(settings, engine, ledger_http, db):
    registry = CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    only = [uuid.uuid4()]
    async with db.transaction():
        assert await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY)
        outcome = await run_once(engine, ledger_http, settings, metrics, only=only)
        assert not outcome.ran
    for result in ("ok", "drift", "error"):
        assert value(registry, "portfolio_reconcile_runs_total", result=result) == 0
    outcome = await run_once(engine, ledger_http, settings, metrics, only=only)
    assert outcome.ran
    assert value(registry, "portfolio_reconcile_runs_total", result="ok") == 1


async def test_the_lock_is_held_outside_any_transaction_during_a_run(
    stack, settings, engine, ledger_http, db
):
    """A run may outlast Postgres's idle-in-transaction timeout (20 s here): the lock's
    session must wait idle, not idle in a transaction, or the database ends it."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    fake = Book()  # a deposit the ledger never posted: this portfolio drifts
    record = fake.deposit("7.00")
    await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    await applied(db, fake.owner, "7")
    registry = CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    slow = settings.model_copy(update={"reconcile_settle_s": 2.0})  # the suspect waits
    run = asyncio.create_task(
        run_once(engine, ledger_http, slow, metrics, only=[uuid.UUID(fake.owner)])
    )
    low, high = LOCK_KEY & 0xFFFFFFFF, (LOCK_KEY >> 32) & 0xFFFFFFFF

    async def holder_state() -> str | None:
        state = await db.fetchval(
            "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid "
            "AND l.objid = $2::oid AND l.objsubid = 1",
            high,
            low,
        )
        return None if state is None else str(state)

    try:
        state = await eventually(holder_state, "the run holds the lock")
        assert state == "idle"
    finally:
        outcome = await asyncio.wait_for(run, RUN_TIMEOUT_S)
    assert outcome.ran
    assert value(registry, "portfolio_reconcile_drift_portfolios") == 1
    assert await holder_state() is None  # released at the end


async def test_a_refused_token_is_an_error_run(stack, secret_id_file, engine):
    wrong = stack_settings(
        stack,
        secret_id_file,
        reconcile_client_secret="not-the-secret",
        reconcile_client_secret_file=None,
    )
    registry = CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    assert wrong.reconcile_ledger_url is not None
    async with ledger_client(wrong, wrong.reconcile_ledger_url, machine_token(wrong)) as client:
        with pytest.raises(TokenUnavailable, match="401 \\(invalid_client\\)"):
            await run_once(engine, client, wrong, metrics, only=[uuid.uuid4()])
    assert value(registry, "portfolio_reconcile_runs_total", result="error") == 1
    assert value(registry, "portfolio_reconcile_last_success_timestamp_seconds") == 0


async def test_the_walk_covers_ledger_customers_without_a_portfolio_and_many_accounts(
    engine, ledger_http, ledger: Ledger, db
):
    # a customer with more accounts than one page of the ledger's list: no error, no drift
    many = new_id()
    codes = [f"PGT{i:04d}" for i in range(PAGED_ACCOUNTS)]
    for start in range(0, len(codes), CONCURRENCY):
        await asyncio.gather(
            *(
                ledger.post("/v1/assets", {"code": code, "scale": 8, "kind": "crypto"})
                for code in codes[start : start + CONCURRENCY]
            )
        )
        await asyncio.gather(
            *(
                ledger.post("/v1/accounts", {"asset": code, "owner_id": many})
                for code in codes[start : start + CONCURRENCY]
            )
        )
    await ledger.funded(many, "3.00")
    await applied(db, many, "3")
    # a customer the ledger knows and this service does not (its rows gone): drift
    unknown = new_id()
    await ledger.funded(unknown, "5.00")
    await applied(db, unknown, "5")
    for table in ("balances", "positions", "lots", "realized", "transfers", "portfolios"):
        await db.execute(f"DELETE FROM portfolio.{table} WHERE owner_id = $1", uuid.UUID(unknown))

    report = await reconcile(
        engine, ledger_http, settle_s=0.2, items_max=10_000, only=[uuid.UUID(many)]
    )
    assert (report.portfolios, report.drifting) == (1, 0)
    report = await reconcile(engine, ledger_http, settle_s=0.2, items_max=10_000)
    assert report.ledger_only >= 1
    items = {item["portfolio_id"]: item for item in report.items}
    assert many not in items
    assert items[unknown] == {
        "portfolio_id": unknown,
        "balances": {"USD": {"portfolio": "0", "ledger": "5.00"}},
        "known": False,
    }
