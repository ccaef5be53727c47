"""Reconciliation: does the ledger agree with itself?

    report = await reconcile(conn)              # one consistent, read-only snapshot
    python -m tickertap.ledger.reconcile        # the same from a shell: JSON, exit 0/1/2

Checked in one REPEATABLE READ transaction, so concurrent transfers never show as drift:

- per asset, the postings sum to zero (`asset_postings_sum`);
- every account's stored balance is the sum of its postings (`account_balance`), its
  `postings_count` their number (`account_postings_count`), and its last posting's
  `balance_after` its balance (`account_last_balance_after`);
- every transfer's postings sum to zero per asset (`transfer_unbalanced`) and it has
  postings at all (`transfer_without_postings`);
- every transfer created within the outbox window has its outbox event
  (`transfer_event_missing`). The relay deletes sent rows after its retention (7 days),
  so the window must not be longer than that.

Each check is one set-based statement (GROUP BY, anti-joins): about 2 s for a million
postings and half a million transfers on the 2-core machine of DESIGN.md. A report lists
at most `items_max` items per kind, and the full count of each kind. Expected is what
the postings (or the transfer) say, actual what the row under test holds.

The service's `start_reconciler` hook runs `Reconciler.run_every(reconcile_interval_s)`
on the reader engine (never when the interval is 0): counts go to
the logs (ERROR for money, WARNING for missing events; no ids, no owners) and to the
gauges `tickertap_ledger_reconciliation_*`. The command line logs in like the service:
AppRole from `TICKERTAP_VAULT_*`, then short-lived database credentials; it prints the
report and exits 0 when clean, 1 on drift, 2 when it could not reconcile.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.ledger.settings import LedgerSettings
from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.runtime import ServiceRuntime
from tickertap.runtime.login import command_engine

log = logging.getLogger(__name__)

OUTBOX_RETENTION_S: Final = 7 * 24 * 3600.0  # the relay's: sent rows are deleted after it
OUTBOX_WINDOW_S_DEFAULT: Final = OUTBOX_RETENTION_S - 3600.0  # an hour short, for safety
ITEMS_MAX_DEFAULT: Final = 100
ITEMS_MAX_MAX: Final = 10_000
STATEMENT_TIMEOUT_MS_DEFAULT: Final = 120_000  # each check is one scan; the service's is 15 s
FIRST_RUN_DELAY_S_MAX: Final = 30.0  # the service reconciles this soon after it starts
JITTER: Final = 0.1  # replicas drift apart instead of scanning together

EXIT_CLEAN: Final = 0
EXIT_DRIFT: Final = 1
EXIT_ERROR: Final = 2


class DriftKind(enum.StrEnum):
    ASSET_POSTINGS_SUM = "asset_postings_sum"
    ACCOUNT_BALANCE = "account_balance"
    ACCOUNT_POSTINGS_COUNT = "account_postings_count"
    ACCOUNT_LAST_BALANCE_AFTER = "account_last_balance_after"
    TRANSFER_UNBALANCED = "transfer_unbalanced"
    TRANSFER_WITHOUT_POSTINGS = "transfer_without_postings"
    TRANSFER_EVENT_MISSING = "transfer_event_missing"


MONEY_KINDS: Final = frozenset(DriftKind) - {DriftKind.TRANSFER_EVENT_MISSING}


@dataclass(frozen=True, slots=True)
class Drift:
    """One disagreement. `expected` is None where nothing was found (a missing posting)."""

    kind: DriftKind
    expected: str | None
    actual: str | None
    asset: str | None = None
    account_id: uuid.UUID | None = None
    transfer_id: uuid.UUID | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "asset": self.asset,
            "account_id": None if self.account_id is None else str(self.account_id),
            "transfer_id": None if self.transfer_id is None else str(self.transfer_id),
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass(frozen=True, slots=True)
class Report:
    at: datetime  # the snapshot's time (the database's now())
    duration_s: float
    outbox_window_s: float
    items_max: int
    checked: Mapping[str, int]  # rows seen: accounts, postings, transfers, ...
    counts: Mapping[DriftKind, int]  # every kind, zeros included
    items: tuple[Drift, ...]  # at most items_max of each kind

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    @property
    def drift_total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "at": self.at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "outbox_window_s": self.outbox_window_s,
            "items_max": self.items_max,
            "checked": dict(self.checked),
            "drift": {kind.value: self.counts[kind] for kind in DriftKind},
            "truncated": len(self.items) < self.drift_total,
            "items": [item.to_json() for item in self.items],
        }


# -- the checks --------------------------------------------------------------------------

_SNAPSHOT = text(
    "SELECT set_config('tickertap.scope', 'all', true), "
    "  set_config('statement_timeout', :timeout, true), "
    "  current_setting('transaction_isolation') AS isolation, "
    "  current_setting('transaction_read_only') AS read_only, now() AS at"
)

_CHECKED = text(
    "SELECT (SELECT count(*) FROM ledger.accounts) AS accounts, "
    "  (SELECT count(*) FROM ledger.transfers) AS transfers, "
    "  (SELECT count(*) FROM ledger.transfers "
    "   WHERE created_at >= now() - CAST(:window_s AS double precision) * interval '1 second') "
    "  AS transfers_in_outbox_window"
)

# (a) a few rows (one per asset), so all come back and Python keeps the nonzero ones
_ASSET_SUMS = text(
    "SELECT p.asset, s.scale, p.total, p.n FROM ("
    "  SELECT asset, sum(amount) AS total, count(*) AS n FROM ledger.postings GROUP BY asset"
    ") p LEFT JOIN ledger.assets s ON s.code = p.asset ORDER BY p.asset"
)

# (b) one pass over the postings per account, three comparisons per account
_ACCOUNTS = text(
    "WITH sums AS ("
    "  SELECT account_id, sum(amount) AS total, count(*) AS n, max(id) AS last_id "
    "  FROM ledger.postings GROUP BY account_id"
    "), drift AS ("
    "  SELECT c.kind, a.id AS account_id, a.asset, a.scale, c.expected, c.actual "
    "  FROM ledger.accounts a "
    "  LEFT JOIN sums s ON s.account_id = a.id "
    "  LEFT JOIN ledger.postings last ON last.id = s.last_id "
    "  CROSS JOIN LATERAL (VALUES "
    "    ('account_balance', coalesce(s.total, 0), a.balance), "
    "    ('account_postings_count', CAST(coalesce(s.n, 0) AS numeric), "
    "      CAST(a.postings_count AS numeric)), "
    "    ('account_last_balance_after', last.balance_after, a.balance)"  # no postings: NULL
    "  ) AS c(kind, expected, actual) "
    "  WHERE c.expected <> c.actual"
    ") "
    "SELECT kind, account_id, asset, scale, expected, actual, total FROM ("
    "  SELECT drift.*, count(*) OVER (PARTITION BY kind) AS total, "
    "    row_number() OVER (PARTITION BY kind ORDER BY account_id) AS rn FROM drift"
    ") ranked WHERE rn <= :limit ORDER BY kind, account_id"
)

# (d) postings of one transfer and one asset that do not sum to zero
_UNBALANCED = text(
    "SELECT transfer_id, asset, max(scale) AS scale, sum(amount) AS total, "
    "  count(*) OVER () AS drifted "
    "FROM ledger.postings GROUP BY transfer_id, asset HAVING sum(amount) <> 0 "
    "ORDER BY transfer_id, asset LIMIT :limit"
)

_WITHOUT_POSTINGS = text(
    "SELECT t.id, count(*) OVER () AS drifted FROM ledger.transfers t "
    "WHERE NOT EXISTS (SELECT FROM ledger.postings p WHERE p.transfer_id = t.id) "
    "ORDER BY t.id LIMIT :limit"
)

# (c) transfers young enough that the relay has not purged their event, without it
_EVENT_MISSING = text(
    "SELECT t.id, t.event_id, count(*) OVER () AS drifted FROM ledger.transfers t "
    "WHERE t.created_at >= now() - CAST(:window_s AS double precision) * interval '1 second' "
    "AND NOT EXISTS (SELECT FROM ledger.outbox o WHERE o.event_id = t.event_id) "
    "ORDER BY t.created_at, t.id LIMIT :limit"
)


async def reconcile(
    conn: AsyncConnection,
    *,
    outbox_window_s: float = OUTBOX_WINDOW_S_DEFAULT,
    items_max: int = ITEMS_MAX_DEFAULT,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS_DEFAULT,
) -> Report:
    """Check the ledger in one read-only REPEATABLE READ transaction of its own on `conn`."""
    assert 0 < outbox_window_s <= OUTBOX_RETENTION_S, outbox_window_s
    assert 1 <= items_max <= ITEMS_MAX_MAX, items_max
    assert statement_timeout_ms >= 100, statement_timeout_ms
    assert not conn.in_transaction(), "reconcile opens its own transaction"
    started = time.monotonic()
    counts = dict.fromkeys(DriftKind, 0)
    items: list[Drift] = []
    bounds = {"limit": items_max}
    async with conn.begin():
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        snapshot = (await conn.execute(_SNAPSHOT, {"timeout": str(statement_timeout_ms)})).one()
        assert snapshot.isolation == "repeatable read", snapshot.isolation
        assert snapshot.read_only == "on", snapshot.read_only
        window = {"window_s": outbox_window_s}
        checked = (await conn.execute(_CHECKED, window)).one()._asdict()

        postings = 0
        for r in await conn.execute(_ASSET_SUMS):
            postings += r.n
            if r.total != 0:
                counts[DriftKind.ASSET_POSTINGS_SUM] += 1
                if counts[DriftKind.ASSET_POSTINGS_SUM] <= items_max:
                    items.append(
                        Drift(DriftKind.ASSET_POSTINGS_SUM, "0", _shown(r.total, r.scale), r.asset)
                    )
        checked["postings"] = postings

        seen_account_kinds: set[DriftKind] = set()
        for r in await conn.execute(_ACCOUNTS, bounds):
            kind = DriftKind(r.kind)
            if kind not in seen_account_kinds:
                seen_account_kinds.add(kind)
                counts[kind] = r.total
            scale = 0 if kind is DriftKind.ACCOUNT_POSTINGS_COUNT else r.scale
            items.append(
                Drift(
                    kind,
                    _shown(r.expected, scale),
                    _shown(r.actual, scale),
                    r.asset,
                    account_id=r.account_id,
                )
            )

        for r in await conn.execute(_UNBALANCED, bounds):
            counts[DriftKind.TRANSFER_UNBALANCED] = r.drifted
            items.append(
                Drift(
                    DriftKind.TRANSFER_UNBALANCED,
                    "0",
                    _shown(r.total, r.scale),
                    r.asset,
                    transfer_id=r.transfer_id,
                )
            )

        for r in await conn.execute(_WITHOUT_POSTINGS, bounds):
            counts[DriftKind.TRANSFER_WITHOUT_POSTINGS] = r.drifted
            items.append(
                Drift(
                    DriftKind.TRANSFER_WITHOUT_POSTINGS, "2 or more postings", "0", transfer_id=r.id
                )
            )

        for r in await conn.execute(_EVENT_MISSING, {**bounds, **window}):
            counts[DriftKind.TRANSFER_EVENT_MISSING] = r.drifted
            items.append(
                Drift(DriftKind.TRANSFER_EVENT_MISSING, str(r.event_id), None, transfer_id=r.id)
            )
    return Report(
        at=snapshot.at,
        duration_s=time.monotonic() - started,
        outbox_window_s=outbox_window_s,
        items_max=items_max,
        checked=checked,
        counts=counts,
        items=tuple(items),
    )


def _shown(value: Decimal | int | None, scale: int | None) -> str | None:
    """An amount as a string at least at its asset's scale, exactly (never rounded)."""
    if value is None:
        return None
    digits = format(value, "f")
    if "." not in digits:
        digits += "."
    whole, fraction = digits.split(".")
    fraction = fraction.rstrip("0").ljust(scale or 0, "0")
    return f"{whole}.{fraction}" if fraction else whole


# -- in the service: every reconcile_interval_s, to logs and metrics ---------------------


class ReconciliationMetrics:
    """The gauges of the periodic job, on the service's registry."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "tickertap") -> None:
        self.drift = Gauge(
            "ledger_reconciliation_drift",
            "Disagreements found by the last successful reconciliation, by kind.",
            ["kind"],
            namespace=namespace,
            registry=registry,
        )
        self.last_run = Gauge(
            "ledger_reconciliation_last_run_timestamp_seconds",
            "Unix time the last reconciliation ended (successful or not); 0 before the first.",
            namespace=namespace,
            registry=registry,
        )
        self.last_run_success = Gauge(
            "ledger_reconciliation_last_run_success",
            "1: the last reconciliation completed (clean or not); 0: it failed, or none ran yet.",
            namespace=namespace,
            registry=registry,
        )
        self.duration = Gauge(
            "ledger_reconciliation_duration_seconds",
            "How long the last successful reconciliation took.",
            namespace=namespace,
            registry=registry,
        )

    def completed(self, report: Report) -> None:
        for kind in DriftKind:
            self.drift.labels(kind=kind.value).set(report.counts[kind])
        self.duration.set(report.duration_s)
        self.last_run_success.set(1)
        self.last_run.set(time.time())

    def failed(self) -> None:
        self.last_run_success.set(0)
        self.last_run.set(time.time())


def log_report(report: Report) -> None:
    """Counts only: no ids, no owners, no amounts."""
    fields: dict[str, Any] = {
        "duration_s": round(report.duration_s, 3),
        "checked": dict(report.checked),
    }
    if report.clean:
        log.info("ledger reconciled: no drift", extra=fields)
        return
    drift = {kind.value: n for kind, n in report.counts.items() if n}
    money = any(report.counts[kind] for kind in MONEY_KINDS)
    log.log(
        logging.ERROR if money else logging.WARNING,
        "ledger drift found" if money else "ledger transfers without their outbox event",
        extra={**fields, "drift": drift, "drift_total": report.drift_total},
    )


@dataclass(frozen=True, slots=True)
class Reconciler:
    engine: AsyncEngine
    metrics: ReconciliationMetrics
    outbox_window_s: float = OUTBOX_WINDOW_S_DEFAULT
    items_max: int = ITEMS_MAX_DEFAULT
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS_DEFAULT

    async def run_once(self) -> Report | None:
        """Reconcile, log and record; None when it failed (that is logged and recorded too)."""
        try:
            async with self.engine.connect() as conn:
                report = await reconcile(
                    conn,
                    outbox_window_s=self.outbox_window_s,
                    items_max=self.items_max,
                    statement_timeout_ms=self.statement_timeout_ms,
                )
        except Exception as exc:  # the next run may succeed; the job must not end
            self.metrics.failed()
            log.warning(
                "ledger reconciliation failed", extra={"error": type(exc).__name__}, exc_info=True
            )
            return None
        self.metrics.completed(report)
        log_report(report)
        return report

    async def run_every(self, interval_s: float) -> None:
        """Forever: a first run soon after start, then one every `interval_s` (with jitter)."""
        assert interval_s > 0, interval_s
        delay_s = min(interval_s, FIRST_RUN_DELAY_S_MAX)
        while True:
            await asyncio.sleep(delay_s * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311  # nosec B311  # schedule jitter, not crypto
            await self.run_once()
            delay_s = interval_s


def start_reconciler(
    settings: LedgerSettings,
) -> Callable[[ServiceRuntime], Awaitable[None]]:
    """The start hook of the periodic job (none when `reconcile_interval_s` is 0)."""

    async def start(runtime: ServiceRuntime) -> None:
        reconciler = Reconciler(
            runtime.reader,
            ReconciliationMetrics(runtime.metrics.registry),
            outbox_window_s=settings.reconcile_outbox_window_s,
            items_max=settings.reconcile_items_max,
            statement_timeout_ms=settings.reconcile_statement_timeout_ms,
        )
        runtime.state["reconciler"] = reconciler
        if settings.reconcile_interval_s > 0:
            runtime.spawn(
                reconciler.run_every(settings.reconcile_interval_s), "reconciler", graceful=False
            )

    return start


# -- the command line --------------------------------------------------------------------


async def reconcile_with_vault(
    settings: LedgerSettings,
    *,
    outbox_window_s: float,
    items_max: int,
    statement_timeout_ms: int,
) -> Report:
    """Log in as the service does (AppRole, then database credentials) and reconcile.

    Reads through the reader host when one is set; the database lease is revoked on the
    way out, so the short-lived login ends with the command.
    """
    async with (
        command_engine(settings, "ledger-reconcile", read_only=True) as engine,
        engine.connect() as conn,
    ):
        return await reconcile(
            conn,
            outbox_window_s=outbox_window_s,
            items_max=items_max,
            statement_timeout_ms=statement_timeout_ms,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.ledger.reconcile",
        description=(
            "Reconcile the ledger (settings from TICKERTAP_* like the service) and print "
            "the report as JSON. Exit 0: clean; 1: drift found; 2: could not reconcile."
        ),
    )
    parser.add_argument(
        "--outbox-window-s",
        type=float,
        help=f"transfers this young need their outbox event (at most {OUTBOX_RETENTION_S:.0f})",
    )
    parser.add_argument("--items-max", type=int, help="items listed per kind (1 to 10000)")
    args = parser.parse_args(argv)
    if args.outbox_window_s is not None and not 0 < args.outbox_window_s <= OUTBOX_RETENTION_S:
        parser.error(f"--outbox-window-s must be in (0, {OUTBOX_RETENTION_S:.0f}]")
    if args.items_max is not None and not 1 <= args.items_max <= ITEMS_MAX_MAX:
        parser.error(f"--items-max must be in [1, {ITEMS_MAX_MAX}]")

    install_context()
    try:
        settings = LedgerSettings()  # type: ignore[call-arg]  # from the environment
    except Exception as exc:  # pydantic's ValidationError names the missing variables
        print(f"reconcile: bad settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging("ledger-reconcile", settings.log_level)
    try:
        report = asyncio.run(
            reconcile_with_vault(
                settings,
                outbox_window_s=args.outbox_window_s or settings.reconcile_outbox_window_s,
                items_max=args.items_max or settings.reconcile_items_max,
                statement_timeout_ms=settings.reconcile_statement_timeout_ms,
            )
        )
    except Exception as exc:
        log.error("reconciliation failed", extra={"error": type(exc).__name__}, exc_info=True)
        print(f"reconcile: could not reconcile: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_CLEAN if report.clean else EXIT_DRIFT


if __name__ == "__main__":
    sys.exit(main())
