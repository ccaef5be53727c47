"""The periodic reconciliation with the ledger, run inside the service (see reconcile.py
for what is compared).

Every `TICKERTAP_RECONCILE_INTERVAL_S` (0: never) the service compares every portfolio,
and every customer the ledger lists, with the ledger's HTTP API. Runs are aligned to
multiples of the interval on the wall clock, so all replicas wake together, and each run
holds a Postgres advisory lock (session level, on a connection kept outside any
transaction, since a run may outlast the idle-in-transaction timeout): the replica that
takes it runs, the others skip that round (and report nothing). A replica that dies
mid-run leaves no lock behind: it goes with the session.

Outcome, for alerts:
- `portfolio_reconcile_drift_portfolios`: portfolios (and ledger customers without one)
  that drifted at the last run of this replica;
- `portfolio_reconcile_runs_total{result="ok"|"drift"|"error"}`;
- `portfolio_reconcile_last_success_timestamp_seconds`: the end of the last run that
  finished (with or without drift); an alert on its age catches a job that stopped.
One log line per drifting portfolio (ids and asset codes only) and one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.portfolio.reconcile import (
    ClientCredentialsToken,
    LedgerUnavailable,
    Report,
    TokenUnavailable,
    ledger_client,
    machine_token,
    reconcile,
)
from tickertap.portfolio.settings import PortfolioSettings

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "ttrecon1" as a big-endian int64; no other lock uses it
LOCK_KEY = int.from_bytes(b"ttrecon1", "big", signed=True)
ITEMS_MAX = 0  # the job logs every drifting portfolio; the report keeps no items


class ReconcileMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.drift_portfolios = Gauge(
            "portfolio_reconcile_drift_portfolios",
            "Portfolios (and ledger customers without one) that drifted at the last run.",
            registry=registry,
        )
        self.runs = Counter(
            "portfolio_reconcile_runs",
            "Reconciliation runs of this replica, by result (ok, drift, error).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "drift", "error"):
            self.runs.labels(result=result)  # exported at 0 before the first run
        self.last_success = Gauge(
            "portfolio_reconcile_last_success_timestamp_seconds",
            "Unix time at which the last finished reconciliation run ended.",
            registry=registry,
        )
        self.duration = Gauge(
            "portfolio_reconcile_last_duration_seconds",
            "How long the last finished reconciliation run took.",
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    ran: bool  # false: another replica held the lock
    report: Report | None = None


async def run_once(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    settings: PortfolioSettings,
    metrics: ReconcileMetrics,
    *,
    only: list[uuid.UUID] | None = None,
) -> Outcome:
    """One round: under the advisory lock, reconcile and record the outcome. Errors are
    counted, logged and raised (the loop goes on; a test sees them). `only`: these
    portfolios, not every one (a test on a shared stack)."""
    started = time.perf_counter()
    try:
        async with engine.connect() as lock_conn:
            held = (
                await lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
            ).scalar()
            # a session lock on a connection left outside any transaction: a run may take
            # longer than the database's idle-in-transaction timeout
            await lock_conn.commit()
            if not held:
                log.info("reconciliation skipped: another replica runs it")
                return Outcome(ran=False)
            try:
                report = await reconcile(
                    engine,
                    client,
                    settle_s=settings.reconcile_settle_s,
                    items_max=ITEMS_MAX,
                    concurrency_max=settings.reconcile_concurrency_max,
                    batch_max=settings.reconcile_batch_max,
                    only=only,
                )
            finally:
                await release(lock_conn)
    except Exception as exc:
        metrics.runs.labels(result="error").inc()
        # ours name a status, an OAuth error code or an owner id; others only their type
        detail = str(exc) if isinstance(exc, LedgerUnavailable | TokenUnavailable) else None
        log.error("reconciliation failed", extra={"error": type(exc).__name__, "detail": detail})
        raise
    duration_s = time.perf_counter() - started
    metrics.drift_portfolios.set(report.drifting)
    metrics.runs.labels(result="drift" if report.drifting else "ok").inc()
    metrics.last_success.set(time.time())
    metrics.duration.set(duration_s)
    (log.warning if report.drifting else log.info)(
        "reconciliation finished",
        extra={
            "portfolios": report.portfolios,
            "ledger_only": report.ledger_only,
            "drifting": report.drifting,
            "duration_s": round(duration_s, 3),
        },
    )
    return Outcome(ran=True, report=report)


async def release(conn: AsyncConnection) -> None:
    """Unlock; a connection that cannot (its session ended under it, for example when its
    credentials were revoked) is closed, which releases a lock it still held."""
    try:
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        await conn.commit()
    except Exception as exc:
        log.warning(
            "advisory unlock failed; closing its connection",
            extra={"error": type(exc).__name__},
        )
        await conn.invalidate()


def seconds_to_next_round(interval_s: float, now_s: float) -> float:
    """Until the next multiple of `interval_s` on the wall clock (never 0: a round that
    ends exactly on a boundary waits for the next one)."""
    return interval_s - (now_s % interval_s) or interval_s


async def run_periodically(
    engine: AsyncEngine,
    settings: PortfolioSettings,
    metrics: ReconcileMetrics,
    *,
    token: ClientCredentialsToken | None = None,
    only: list[uuid.UUID] | None = None,
) -> None:
    """The job's loop (a task of the service; cancelled at shutdown)."""
    assert settings.reconcile_ledger_url is not None
    interval_s = settings.reconcile_interval_s
    source = token or machine_token(settings)
    async with ledger_client(settings, settings.reconcile_ledger_url, source) as client:
        while True:
            await asyncio.sleep(seconds_to_next_round(interval_s, time.time()))
            # an error is counted and logged in run_once; the next round tries again
            with contextlib.suppress(Exception):
                await run_once(engine, client, settings, metrics, only=only)
