"""Report jobs over HTTP: submit one (202 and a job id), fetch its status and result.

    POST /v1/portfolios/{id}/reports   {"kind": "realized_pnl", "year": 2026, "method": "fifo"}
                                       or {"kind": ..., "from": "2026-01-01", "to": "2026-03-31"}
    GET  /v1/jobs/{job_id}

Who may: as for the other portfolio routes, a customer submits for and reads the jobs of
their own portfolio; support, ops and admin any. A job of someone else's portfolio is
404 (its existence is not disclosed). The work itself runs on the job workers
(jobs_worker.py); see jobs.py for how a job runs once.

Errors (problem details with a `code`):

    401 invalid_token, 403 insufficient_scope     (libs/authn)
    403 not_your_portfolio                        a customer submitting for another
    404 portfolio_not_found, job_not_found
    409 idempotency_key_reused                    the key was used for another request
    422 validation_error, invalid_range
"""

# No `from __future__ import annotations`: FastAPI must read the annotations of the
# routes built inside `build_router`, and they name local aliases (Writer, Reader).

import uuid
from datetime import date
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.authn import BearerAuth, Principal
from tickertap.portfolio import domain as d
from tickertap.portfolio import jobs
from tickertap.portfolio import repository as repo
from tickertap.portfolio.api import (
    DAY_MAX,
    DAY_MIN,
    READ_ALL,
    NotYourPortfolio,
    PortfolioNotFound,
    check_range,
)
from tickertap.runtime import Conflict, NotFound

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:\-]{8,128}$"  # as the ledger's
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN)
]
DateText = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class JobNotFound(NotFound):
    code = "job_not_found"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class ReportCreate(BaseModel):
    """A report request: `year` (a calendar year, UTC days) or `from` and `to` (UTC days,
    both included), not both; `method` the cost-basis method (default fifo)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["realized_pnl"]
    method: Literal["fifo", "average"] = "fifo"
    year: StrictInt | None = Field(default=None, ge=DAY_MIN.year, le=DAY_MAX.year - 1)
    start: DateText | None = Field(default=None, alias="from")
    end: DateText | None = Field(default=None, alias="to")

    @model_validator(mode="after")
    def _one_period(self) -> Self:
        if self.year is not None:
            if self.start is not None or self.end is not None:
                raise ValueError("give year, or from and to, not both")
        elif self.start is None or self.end is None:
            raise ValueError("give year, or both from and to")
        for text_ in (self.start, self.end):
            if text_ is not None:
                date.fromisoformat(text_)  # a ValueError names a day that does not exist
        return self

    def request(self) -> jobs.ReportRequest:
        if self.year is not None:
            start, end = date(self.year, 1, 1), date(self.year, 12, 31)
        else:
            assert self.start is not None  # the validator's
            assert self.end is not None
            start, end = date.fromisoformat(self.start), date.fromisoformat(self.end)
        check_range(start, end)
        return jobs.ReportRequest(jobs.ReportKind(self.kind), d.Method(self.method), start, end)


class JobAccepted(BaseModel):
    job_id: str
    portfolio_id: str
    status: str
    href: str


class JobError(BaseModel):
    code: str
    detail: str | None


class JobPublic(BaseModel):
    job_id: str
    portfolio_id: str
    kind: str
    params: dict[str, str]
    status: Literal["queued", "running", "succeeded", "failed"]
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    lease_expires_at: str | None
    result: dict[str, Any] | None
    error: JobError | None


def build_router(auth: BearerAuth) -> APIRouter:
    router = APIRouter(tags=["jobs"])
    Anyone = Annotated[Principal, Depends(auth.require())]

    def engine_of(request: Request, name: str) -> AsyncEngine:
        engine = getattr(request.app.state.runtime, name)
        assert isinstance(engine, AsyncEngine)
        return engine

    @router.post(
        "/v1/portfolios/{portfolio_id}/reports",
        status_code=202,
        response_model=JobAccepted,
        responses={
            403: {"description": "not_your_portfolio"},
            404: {"description": "portfolio_not_found"},
            409: {"description": "idempotency_key_reused"},
            422: {"description": "validation_error, invalid_range"},
        },
    )
    async def submit_report(
        portfolio_id: uuid.UUID,
        body: ReportCreate,
        request: Request,
        response: Response,
        principal: Anyone,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Queue a report job (realized P&L for a period under a method, recomputed from the
        portfolio's whole transfer history by a job worker); poll the `Location`. The same
        Idempotency-Key with the same body gives the same job."""
        report = body.request()
        runtime = request.app.state.runtime
        key = (
            None
            if idempotency_key is None
            else f"{len(principal.subject)}:{principal.subject}:{idempotency_key}"
        )
        async with engine_of(request, "writer").begin() as conn:
            if not READ_ALL.isdisjoint(principal.roles):
                await repo.see_all(conn)
            elif principal.subject != str(portfolio_id):
                raise NotYourPortfolio("customers request reports of their own portfolio only")
            else:
                await repo.see_owner(conn, portfolio_id)
            if await repo.portfolio(conn, portfolio_id) is None:
                raise PortfolioNotFound(f"no transfer of portfolio {portfolio_id} has been applied")
            try:
                submitted = await jobs.submit(
                    conn,
                    runtime.outbox,
                    runtime.codec,
                    portfolio_id,
                    report,
                    requested_by=principal.subject,
                    idempotency_key=key,
                )
            except jobs.KeyReused as exc:
                raise IdempotencyKeyReused(str(exc)) from exc
        href = f"/v1/jobs/{submitted.job_id}"
        response.headers["Location"] = href
        return {
            "job_id": str(submitted.job_id),
            "portfolio_id": str(portfolio_id),
            "status": "queued",
            "href": href,
        }

    @router.get(
        "/v1/jobs/{job_id}",
        response_model=JobPublic,
        responses={404: {"description": "job_not_found"}},
    )
    async def get_job(job_id: uuid.UUID, request: Request, principal: Anyone) -> dict[str, Any]:
        """The job's status, attempts and times; its result once succeeded (amounts as
        strings), its error code once failed. The job of another's portfolio is 404."""
        # the primary, not a replica: a client polls the Location right after the 202
        async with engine_of(request, "writer").begin() as conn:
            if not READ_ALL.isdisjoint(principal.roles):
                await repo.see_all(conn)
            else:
                try:
                    owner = uuid.UUID(principal.subject)
                except ValueError:
                    raise JobNotFound(f"no job {job_id}") from None
                await repo.see_owner(conn, owner)
            job = await jobs.get(conn, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")

        def iso(value: Any) -> str | None:
            return None if value is None else str(value.isoformat())

        failed = job.status is jobs.JobStatus.FAILED
        return {
            "job_id": str(job.job_id),
            "portfolio_id": str(job.owner_id),
            "kind": job.kind,
            "params": job.params,
            "status": job.status.value,
            "attempts": job.attempts,
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "updated_at": iso(job.updated_at),
            "lease_expires_at": iso(job.lease_expires_at),
            "result": job.result,
            "error": {"code": job.error_code, "detail": job.error_detail} if failed else None,
        }

    return router
