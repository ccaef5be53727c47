"""The job state machine in the real Postgres of the stack (jobs.py, no worker process):
concurrent claims take a job once, a lost claim writes nothing, the sweeper re-queues an
expired lease with a new event and fails a job whose attempts are spent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.portfolio import domain as d
from tickertap.portfolio import jobs
from tickertap.runtime import messaging_tables

pytestmark = pytest.mark.stack
OUTBOX = messaging_tables("portfolio")[0]
REQUEST = jobs.ReportRequest(
    jobs.ReportKind.REALIZED_PNL, d.Method.FIFO, date(2026, 1, 1), date(2026, 12, 31)
)
ATTEMPTS_MAX = 3


@pytest.fixture
async def engine(stack: Any) -> AsyncIterator[AsyncEngine]:
    url = stack.pg_admin_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    e = create_async_engine(url, pool_size=4)
    try:
        yield e
    finally:
        await e.dispose()


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(load_schemas(find_schemas_dir()))


async def new_job(engine: AsyncEngine, codec: AvroCodec) -> uuid.UUID:
    async with engine.begin() as conn:
        submitted = await jobs.submit(
            conn,
            OUTBOX,
            codec,
            uuid.uuid4(),
            REQUEST,
            requested_by="test",
            idempotency_key=None,
        )
    return submitted.job_id


async def events_of(engine: AsyncEngine, job_id: uuid.UUID, codec: AvroCodec) -> int:
    async with engine.begin() as conn:
        owner = (
            await conn.execute(
                text("SELECT owner_id FROM portfolio.jobs WHERE job_id = :j"), {"j": job_id}
            )
        ).scalar_one()
        values = (
            await conn.execute(
                text("SELECT value FROM portfolio.outbox WHERE topic = :t AND key = :k"),
                {"t": jobs.JOBS_TOPIC, "k": str(owner).encode()},
            )
        ).scalars()
        return sum(1 for v in values if codec.decode(v, jobs.JOBS_TOPIC)["job_id"] == job_id)


async def claim(engine: AsyncEngine, job_id: uuid.UUID, worker: str) -> jobs.Claim | None:
    async with engine.begin() as conn:
        return await jobs.claim(conn, job_id, worker, lease_s=30, attempts_max=ATTEMPTS_MAX)


async def expire_lease(engine: AsyncEngine, job_id: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE portfolio.jobs SET lease_expires_at = now() - interval '1 second'"
                " WHERE job_id = :j"
            ),
            {"j": job_id},
        )


async def sweep(engine: AsyncEngine, codec: AvroCodec) -> jobs.Swept:
    async with engine.begin() as conn:
        return await jobs.sweep(
            conn, OUTBOX, codec, attempts_max=ATTEMPTS_MAX, queued_stale_s=3600, batch_max=1000
        )


async def test_concurrent_claims_take_a_job_once(engine: AsyncEngine, codec: AvroCodec) -> None:
    job_id = await new_job(engine, codec)
    claims = await asyncio.gather(*(claim(engine, job_id, f"w{n}") for n in range(4)))
    taken = [c for c in claims if c is not None]
    assert len(taken) == 1
    assert (taken[0].attempt, taken[0].request) == (1, REQUEST)
    assert await events_of(engine, job_id, codec) == 1


async def test_a_lost_claim_writes_nothing(engine: AsyncEngine, codec: AvroCodec) -> None:
    job_id = await new_job(engine, codec)
    first = await claim(engine, job_id, "slow")
    assert first is not None
    assert await claim(engine, job_id, "eager") is None  # the lease holds
    await expire_lease(engine, job_id)
    second = await claim(engine, job_id, "next")
    assert second is not None
    assert second.attempt == 2
    async with engine.begin() as conn:
        assert not await jobs.renew(conn, first, lease_s=30)
        assert not await jobs.succeed(conn, first, {"from": "the slow one"})
        assert await jobs.succeed(conn, second, {"from": "the next one"})
        assert not await jobs.succeed(conn, second, {"again": True})  # once
        job = await jobs.get(conn, job_id)
        rows = (
            await conn.execute(
                text(
                    "SELECT attempt, outcome FROM portfolio.job_attempts WHERE job_id = :j"
                    " ORDER BY attempt"
                ),
                {"j": job_id},
            )
        ).all()
    assert job is not None
    assert (job.status, job.attempts, job.result_attempt) == (jobs.JobStatus.SUCCEEDED, 2, 2)
    assert job.result == {"from": "the next one"}
    assert [tuple(r) for r in rows] == [(1, "expired"), (2, "succeeded")]


async def test_the_sweeper_requeues_then_fails_after_the_last_attempt(
    engine: AsyncEngine, codec: AvroCodec
) -> None:
    job_id = await new_job(engine, codec)
    for attempt in range(1, ATTEMPTS_MAX + 1):
        c = await claim(engine, job_id, f"doomed-{attempt}")
        assert c is not None
        assert c.attempt == attempt
        await expire_lease(engine, job_id)
        await sweep(engine, codec)
        async with engine.begin() as conn:
            job = await jobs.get(conn, job_id)
        assert job is not None
        if attempt < ATTEMPTS_MAX:
            assert (job.status, job.lease_expires_at) == (jobs.JobStatus.QUEUED, None)
            assert await events_of(engine, job_id, codec) == 1 + attempt  # a new event each
    assert (job.status, job.error_code) == (jobs.JobStatus.FAILED, "attempts_exhausted")
    assert job.finished_at is not None
    assert await claim(engine, job_id, "late") is None
