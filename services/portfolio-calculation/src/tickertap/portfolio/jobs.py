"""Background report jobs: submitted over HTTP, run by job workers (jobs_worker.py).

    submit        the job row and its portfolio.jobs.v1 event, in one transaction
    claim         a worker takes the job: queued, or running with an expired lease
    renew         a running attempt extends its lease (while it computes)
    finish        the result (or the error), only if the claim still holds
    sweep         re-queue jobs whose lease expired (or fail them after the last attempt)
                  and re-publish queued jobs whose event was never taken
    compute       the report itself, from the portfolio's whole stored transfer history

Why a job runs once and its result is written once: `claim` is one conditional UPDATE
(`attempts` + 1 where the job is queued or its lease has expired) and `finish` writes
only where status is still running and `attempts` still equals the claim's, so a worker
that lost its lease (killed, paused, partitioned away) can never overwrite the result of
the attempt that replaced it. Job state and results live in Postgres; the Kafka topic
only says "there is work": a lost, duplicated or redelivered event changes nothing.

The event: the portfolio.jobs.v1 schema's job kinds predate reports and a published
schema is never edited, so a report travels as kind `recompute_positions` (a
recomputation of realized P&L from the transfers, here read-only) with the params
`report` (`realized_pnl`), `method`, `from` and `to`. The job row is authoritative:
workers read what to compute from it, not from the event.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.messaging import add_event
from tickertap.messaging.outbox import Encoder
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo

log = logging.getLogger(__name__)

JOBS_TOPIC = "portfolio.jobs.v1"
EVENT_KIND = "recompute_positions"  # see the module docstring


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ReportKind(enum.StrEnum):
    REALIZED_PNL = "realized_pnl"


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """What to compute: realized P&L of sales on UTC days start..end under `method`."""

    kind: ReportKind
    method: d.Method
    start: date
    end: date

    def params(self) -> dict[str, str]:
        return {
            "method": self.method.value,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
        }

    @classmethod
    def of(cls, kind: str, params: Mapping[str, str]) -> ReportRequest:
        return cls(
            ReportKind(kind),
            d.Method(params["method"]),
            date.fromisoformat(params["from"]),
            date.fromisoformat(params["to"]),
        )


def request_hash(owner_id: uuid.UUID, request: ReportRequest) -> str:
    """What an Idempotency-Key is bound to: the portfolio and the request, canonically."""
    body = {"portfolio_id": str(owner_id), "kind": request.kind.value, **request.params()}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"POST /v1/portfolios/reports\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: uuid.UUID
    created: bool  # false: an earlier request with the same Idempotency-Key


class KeyReused(Exception):
    """The caller's Idempotency-Key was used for a different request."""


async def submit(
    conn: AsyncConnection,
    outbox: Table,
    codec: Encoder,
    owner_id: uuid.UUID,
    request: ReportRequest,
    *,
    requested_by: str,
    idempotency_key: str | None,
) -> Submitted:
    """Add the job and its event (one transaction: the caller's). With an idempotency key
    already used for the same request, the earlier job; for another request, KeyReused."""
    digest = request_hash(owner_id, request)
    job_id = uuid.uuid4()
    row = (
        await conn.execute(
            text(
                "INSERT INTO portfolio.jobs (job_id, owner_id, kind, params, requested_by,"
                " idempotency_key, request_hash)"
                " VALUES (:job, :owner, :kind, CAST(:params AS jsonb), :by, :key, :hash)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING created_at"
            ),
            {
                "job": job_id,
                "owner": owner_id,
                "kind": request.kind.value,
                "params": json.dumps(request.params()),
                "by": requested_by,
                "key": idempotency_key,
                "hash": digest,
            },
        )
    ).first()
    if row is None:  # the key was used before (only a non-null key conflicts)
        earlier = (
            await conn.execute(
                text(
                    "SELECT job_id, request_hash FROM portfolio.jobs WHERE idempotency_key = :key"
                ),
                {"key": idempotency_key},
            )
        ).one()
        if earlier.request_hash != digest:
            raise KeyReused("this Idempotency-Key was used for a different request")
        return Submitted(earlier.job_id, created=False)
    await _add_job_event(conn, outbox, codec, job_id, owner_id, request, requested_by, row[0])
    return Submitted(job_id, created=True)


async def _add_job_event(
    conn: AsyncConnection,
    outbox: Table,
    codec: Encoder,
    job_id: uuid.UUID,
    owner_id: uuid.UUID,
    request: ReportRequest,
    requested_by: str | None,
    requested_at: datetime,
) -> None:
    now = datetime.now(UTC)
    await add_event(
        conn,
        outbox,
        codec,
        schema_name=JOBS_TOPIC,
        record={
            "event_id": uuid.uuid4(),
            "occurred_at": now,
            "job_id": job_id,
            "portfolio_id": owner_id,
            "kind": EVENT_KIND,
            "requested_at": min(requested_at, now),
            "requested_by": requested_by,
            "params": {"report": request.kind.value, **request.params()},
        },
        key=str(owner_id),
        notify=True,
    )


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    params: dict[str, str]
    status: JobStatus
    attempts: int
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    result_attempt: int | None
    error_code: str | None
    error_detail: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


JOB_COLUMNS = (
    "job_id, owner_id, kind, params, status, attempts, lease_expires_at, result, result_attempt,"
    " error_code, error_detail, created_at, started_at, finished_at, updated_at"
)


async def get(conn: AsyncConnection, job_id: uuid.UUID) -> JobRow | None:
    """The job, if the transaction's row-level security lets it be seen."""
    row = (
        await conn.execute(
            text(f"SELECT {JOB_COLUMNS} FROM portfolio.jobs WHERE job_id = :job"),  # noqa: S608  # nosec B608  # a constant column list
            {"job": job_id},
        )
    ).first()
    if row is None:
        return None
    values = row._asdict()
    values["status"] = JobStatus(values["status"])
    return JobRow(**values)


# -- the worker's side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    job_id: uuid.UUID
    owner_id: uuid.UUID
    attempt: int
    request: ReportRequest


async def claim(
    conn: AsyncConnection, job_id: uuid.UUID, worker: str, *, lease_s: float, attempts_max: int
) -> Claim | None:
    """Take the job for one attempt if it is queued or its lease expired, and attempts are
    left; None if another worker holds it, it is finished, or it ran out of attempts (then
    it is failed here with `attempts_exhausted`)."""
    await repo.see_all(conn)
    row = (
        await conn.execute(
            text(
                "UPDATE portfolio.jobs SET status = 'running', attempts = attempts + 1,"
                " lease_expires_at = now() + make_interval(secs => :lease), worker = :worker,"
                " started_at = coalesce(started_at, now()), updated_at = now()"
                " WHERE job_id = :job AND attempts < :max"
                " AND (status = 'queued' OR (status = 'running' AND lease_expires_at <= now()))"
                " RETURNING owner_id, kind, params, attempts"
            ),
            {"job": job_id, "worker": worker, "lease": lease_s, "max": attempts_max},
        )
    ).first()
    if row is None:
        await _fail_exhausted(conn, job_id, attempts_max)
        return None
    attempt = int(row.attempts)
    await _end_open_attempts(conn, job_id, "expired", before=attempt)
    await conn.execute(
        text(
            "INSERT INTO portfolio.job_attempts (job_id, attempt, owner_id, worker)"
            " VALUES (:job, :attempt, :owner, :worker)"
        ),
        {"job": job_id, "attempt": attempt, "owner": row.owner_id, "worker": worker},
    )
    return Claim(job_id, row.owner_id, attempt, ReportRequest.of(row.kind, row.params))


async def _fail_exhausted(conn: AsyncConnection, job_id: uuid.UUID, attempts_max: int) -> None:
    result = await conn.execute(
        text(
            "UPDATE portfolio.jobs SET status = 'failed', lease_expires_at = NULL,"
            " error_code = 'attempts_exhausted',"
            " error_detail = 'no attempt finished within its lease',"
            " finished_at = now(), updated_at = now()"
            " WHERE job_id = :job AND attempts >= :max"
            " AND (status = 'queued' OR (status = 'running' AND lease_expires_at <= now()))"
        ),
        {"job": job_id, "max": attempts_max},
    )
    if result.rowcount:
        await _end_open_attempts(conn, job_id, "expired")
        log.warning("job failed: attempts exhausted", extra={"job_id": str(job_id)})


async def _end_open_attempts(
    conn: AsyncConnection,
    job_id: uuid.UUID,
    outcome: str,
    *,
    before: int | None = None,
    error_code: str | None = None,
) -> None:
    await conn.execute(
        text(
            "UPDATE portfolio.job_attempts SET finished_at = now(), outcome = :outcome,"
            " error_code = :code WHERE job_id = :job AND outcome IS NULL"
            " AND attempt < coalesce(CAST(:before AS integer), 2147483647)"
        ),
        {"job": job_id, "outcome": outcome, "code": error_code, "before": before},
    )


async def renew(conn: AsyncConnection, c: Claim, *, lease_s: float) -> bool:
    """Extend the attempt's lease; False if the claim was lost (another attempt began)."""
    await repo.see_all(conn)
    result = await conn.execute(
        text(
            "UPDATE portfolio.jobs SET lease_expires_at = now() + make_interval(secs => :lease),"
            " updated_at = now()"
            " WHERE job_id = :job AND status = 'running' AND attempts = :attempt"
        ),
        {"job": c.job_id, "attempt": c.attempt, "lease": lease_s},
    )
    return bool(result.rowcount)


async def succeed(conn: AsyncConnection, c: Claim, report: Mapping[str, Any]) -> bool:
    """Write the result if the claim still holds; False (nothing written) if it was lost."""
    await repo.see_all(conn)
    result = await conn.execute(
        text(
            "UPDATE portfolio.jobs SET status = 'succeeded', result = CAST(:result AS jsonb),"
            " result_attempt = :attempt, lease_expires_at = NULL, error_code = NULL,"
            " error_detail = NULL, finished_at = now(), updated_at = now()"
            " WHERE job_id = :job AND status = 'running' AND attempts = :attempt"
        ),
        {"job": c.job_id, "attempt": c.attempt, "result": json.dumps(report)},
    )
    if not result.rowcount:
        return False
    await _end_attempt(conn, c, "succeeded")
    return True


async def fail(
    conn: AsyncConnection,
    c: Claim,
    outbox: Table,
    codec: Encoder,
    *,
    error_code: str,
    detail: str,
    retry: bool,
    attempts_max: int,
) -> bool:
    """End the attempt with an error: re-queued (with a new event) while `retry` and attempts
    are left, else failed with `error_code`. False if the claim was lost."""
    await repo.see_all(conn)
    requeue = retry and c.attempt < attempts_max
    result = await conn.execute(
        text(
            "UPDATE portfolio.jobs SET status = :status, lease_expires_at = NULL,"
            " error_code = :code, error_detail = :detail, updated_at = now(),"
            " finished_at = CASE WHEN :status = 'failed' THEN now() END"
            " WHERE job_id = :job AND status = 'running' AND attempts = :attempt"
        ),
        {
            "job": c.job_id,
            "attempt": c.attempt,
            "status": "queued" if requeue else "failed",
            "code": error_code,
            "detail": detail[:500],
        },
    )
    if not result.rowcount:
        return False
    await _end_attempt(conn, c, "retry" if requeue else "failed", error_code)
    if requeue:
        await _add_job_event(
            conn, outbox, codec, c.job_id, c.owner_id, c.request, None, datetime.now(UTC)
        )
    return True


async def _end_attempt(
    conn: AsyncConnection, c: Claim, outcome: str, error_code: str | None = None
) -> None:
    await conn.execute(
        text(
            "UPDATE portfolio.job_attempts SET finished_at = now(), outcome = :outcome,"
            " error_code = :code WHERE job_id = :job AND attempt = :attempt"
        ),
        {"job": c.job_id, "attempt": c.attempt, "outcome": outcome, "code": error_code},
    )


@dataclass(frozen=True, slots=True)
class Swept:
    requeued: int
    failed: int
    republished: int


async def sweep(
    conn: AsyncConnection,
    outbox: Table,
    codec: Encoder,
    *,
    attempts_max: int,
    queued_stale_s: float,
    batch_max: int,
) -> Swept:
    """Jobs whose worker vanished: a running job past its lease is queued again with a new
    event (or failed `attempts_exhausted` after its last attempt); a job queued for more than
    `queued_stale_s` whose event was lost (a broker restart) gets a new one. At most
    `batch_max` of each; rows locked by a worker right now are skipped, never waited for."""
    await repo.see_all(conn)
    expired = (
        await conn.execute(
            text(
                "SELECT job_id, owner_id, kind, params, attempts FROM portfolio.jobs"
                " WHERE status = 'running' AND lease_expires_at <= now()"
                " ORDER BY lease_expires_at LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": batch_max},
        )
    ).all()
    stale = (
        await conn.execute(
            text(
                "SELECT job_id, owner_id, kind, params FROM portfolio.jobs"
                " WHERE status = 'queued' AND updated_at <= now() - make_interval(secs => :s)"
                " ORDER BY updated_at LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": batch_max, "s": queued_stale_s},
        )
    ).all()
    requeued = failed = 0
    now = datetime.now(UTC)
    for row in expired:
        if row.attempts >= attempts_max:
            await _fail_exhausted(conn, row.job_id, attempts_max)
            failed += 1
            continue
        await conn.execute(
            text(
                "UPDATE portfolio.jobs SET status = 'queued', lease_expires_at = NULL,"
                " updated_at = now() WHERE job_id = :job"
            ),
            {"job": row.job_id},
        )
        await _end_open_attempts(conn, row.job_id, "expired")
        request = ReportRequest.of(row.kind, row.params)
        await _add_job_event(conn, outbox, codec, row.job_id, row.owner_id, request, None, now)
        requeued += 1
    for row in stale:
        await conn.execute(
            text("UPDATE portfolio.jobs SET updated_at = now() WHERE job_id = :job"),
            {"job": row.job_id},
        )
        request = ReportRequest.of(row.kind, row.params)
        await _add_job_event(conn, outbox, codec, row.job_id, row.owner_id, request, None, now)
    return Swept(requeued, failed, len(stale))


# -- the report ------------------------------------------------------------------------------


async def compute(
    conn: AsyncConnection, c: Claim, scales: d.Scales, entries_max: int
) -> dict[str, Any]:
    """The report of `c`, recomputed from the portfolio's whole stored history."""
    await repo.see_all(conn)
    history = await repo.history(conn, c.owner_id)
    return realized_report(c.owner_id, c.request, history, scales, entries_max)


def _money(value: Decimal, currency: str, scales: d.Scales) -> str:
    """At the currency's scale when that is exact, else exactly (never rounded here)."""
    at_scale = d.round_to(value, scales.of(currency))
    return repo.plain(at_scale if at_scale == value else value.normalize())


def _exact(value: Decimal) -> str:
    return repo.plain(value.normalize()) if value else "0"


def realized_report(
    owner_id: uuid.UUID,
    request: ReportRequest,
    history: list[d.PortfolioTransfer],
    scales: d.Scales,
    entries_max: int,
) -> dict[str, Any]:
    """Realized P&L of the sales on UTC days request.start..end under request.method, from
    the whole history (`domain.compute`, as the rebuild does): totals per currency, per
    symbol, and the first `entries_max` sales with the lots they consumed."""
    holdings = d.compute(history, scales)
    entries = d.realized_between(holdings, request.method, request.start, request.end)
    totals: dict[str, Decimal] = {}
    symbols: dict[str, dict[str, Any]] = {}
    for r in entries:
        totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.pnl
        s = symbols.setdefault(
            r.symbol,
            {"currency": r.currency, "sales": 0, "q": Decimal(0), "p": Decimal(0), "c": Decimal(0)},
        )
        s["sales"] += 1
        s["q"] += r.quantity
        s["p"] += r.proceeds
        s["c"] += r.cost
    return {
        "kind": request.kind.value,
        "portfolio_id": str(owner_id),
        "method": request.method.value,
        "from": request.start.isoformat(),
        "to": request.end.isoformat(),
        "transfers_replayed": holdings.transfers_applied,
        "history_through": holdings.last_transfer_at.isoformat()
        if holdings.last_transfer_at
        else None,
        "sales": len(entries),
        "total": {c: _money(x, c, scales) for c, x in sorted(totals.items())},
        "by_symbol": [
            {
                "symbol": symbol,
                "currency": s["currency"],
                "sales": s["sales"],
                "quantity": _exact(s["q"]),
                "proceeds": _money(s["p"], s["currency"], scales),
                "cost": _money(s["c"], s["currency"], scales),
                "pnl": _money(s["p"] - s["c"], s["currency"], scales),
            }
            for symbol, s in sorted(symbols.items())
        ],
        "entries": [
            {
                "symbol": r.symbol,
                "currency": r.currency,
                "sale_transfer_id": str(r.sale_transfer_id),
                "occurred_at": r.occurred_at.isoformat(),
                "quantity": _exact(r.quantity),
                "proceeds": _money(r.proceeds, r.currency, scales),
                "cost": _money(r.cost, r.currency, scales),
                "pnl": _money(r.pnl, r.currency, scales),
                "uncovered_quantity": _exact(r.uncovered_quantity),
                "lots": [
                    {
                        "transfer_id": str(u.transfer_id),
                        "quantity": _exact(u.quantity),
                        "cost": _money(u.cost, r.currency, scales),
                    }
                    for u in r.lots
                ],
            }
            for r in entries[:entries_max]
        ],
        "entries_truncated": len(entries) > entries_max,
    }
