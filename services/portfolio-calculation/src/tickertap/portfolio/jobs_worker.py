"""A report job worker: faust-streaming agents on portfolio.jobs.v1 in one consumer group.

    python -m tickertap.portfolio.jobs_worker              settings from TICKERTAP_* as the service
    deploy/local/stack.py exec portfolio-calculation -- python -m tickertap.portfolio.jobs_worker

Workers share the work through the group: the topic's partitions (key = portfolio id)
are spread over the running workers, and a worker that leaves or dies has its
partitions handed to the others after the session timeout. Start more workers (more
processes, up to the topic's partition count) to run more jobs at once.

Per job event: claim the job in Postgres (conditional UPDATE: status running, attempt
+ 1, a lease), recompute the report from the portfolio's whole transfer history while
a heartbeat extends the lease, write result and status in one transaction only if the
claim still holds, and only then let faust commit the offset (`broker_commit_every=1`
after the agent has handled the event). A killed worker leaves a running job whose
lease expires; the event is delivered again to the worker that takes its partition, or
every worker's sweeper (a faust timer) queues the job again with a new event; after
`job_attempts_max` attempts it is failed with `attempts_exhausted`. See jobs.py.

The local-broker settings of DESIGN.md: session timeout 6 s, no web server, no faust
tables (state is in Postgres), topics declared by the stack, not by faust; aiokafka's
idempotent producer is off (the broker rejects it), and the worker produces nothing:
its events go through the outbox, which the service's relay publishes.

`job_result_delay_s` (`--result-delay-s`) is for tests only: each attempt (of the job
`--result-delay-job`, when given) waits that long after computing and before writing its
result, so a test can kill a worker mid-job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Producer
from faust.types import Message
from mode import Service
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.db import create_engine
from tickertap.messaging import headers as h
from tickertap.messaging.kafka import producer_config
from tickertap.messaging.retry import is_transient_error
from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio import domain as d
from tickertap.portfolio import jobs
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime import messaging_tables
from tickertap.runtime.app import load_codec
from tickertap.runtime.login import service_login

log = logging.getLogger(__name__)
DLQ_FLUSH_S = 30.0


class JobWorkerSettings(PortfolioSettings):
    """The service's settings and the job worker's own (`TICKERTAP_JOB_*`)."""

    job_group: str = "portfolio-calculation.jobs"  # the consumer group (faust app id)
    job_lease_s: float = Field(default=30.0, ge=1, le=3600)  # renewed every third of it
    job_attempts_max: int = Field(default=3, ge=1, le=20)
    job_sweep_interval_s: float = Field(default=5.0, ge=0.5, le=3600)
    job_queued_stale_s: float = Field(default=60.0, ge=1, le=86_400)  # then re-published
    job_sweep_batch_max: int = Field(default=100, ge=1, le=10_000)
    job_report_entries_max: int = Field(default=1000, ge=1, le=100_000)
    job_concurrency: int = Field(default=1, ge=1, le=16)  # agents in one process
    job_session_timeout_s: float = Field(default=6.0, ge=1, le=300)  # DESIGN.md: 6 locally
    job_data_dir: Path | None = None  # faust's datadir (empty: no tables); default a tempdir
    # tests only: an attempt waits this long before writing its result (0 in production),
    # of every job or of the one job named
    job_result_delay_s: float = Field(default=0.0, ge=0, le=600)
    job_result_delay_job_id: uuid.UUID | None = None


class JobStore(Service):
    """The database side of a worker, started and stopped with the faust worker."""

    def __init__(self, settings: JobWorkerSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.ready = asyncio.Event()
        self._engine: AsyncEngine | None = None
        self._exit = contextlib.AsyncExitStack()

    async def on_start(self) -> None:
        """Log in as the service does and keep it up for the worker's life: the Vault token
        renewed (or a new login) by a TokenKeeper, database credentials rotated with a grace
        period, as the service's runtime does (`command_engine` is for short commands)."""
        s, stack = self.settings, self._exit
        login = await stack.enter_async_context(service_login(s, keep_alive=True))
        engine = create_engine(s.database(), login.rotator, application_name="portfolio-jobs")
        stack.push_async_callback(engine.dispose)
        self._engine = engine
        self.ready.set()

    async def on_stop(self) -> None:
        await self._exit.aclose()

    async def engine(self) -> AsyncEngine:
        await self.ready.wait()
        assert self._engine is not None
        return self._engine


class JobRunner:
    """What the agent and the sweeper do with the database (see the module docstring)."""

    def __init__(self, settings: JobWorkerSettings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.codec = load_codec(settings)
        self.outbox = messaging_tables(settings.db_schema)[0]
        self.scales = settings.scales()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.dlq_producer = Producer(producer_config(settings.kafka_bootstrap_servers))

    async def handle(self, message: Message) -> None:
        """One portfolio.jobs.v1 message; never raises (the sweeper retries what fails). One
        that cannot be decoded goes to portfolio.jobs.dlq.v1 (x-dlq-* headers) first."""
        value = message.value
        if value is None:
            return
        try:
            record = self.codec.decode(value, jobs.JOBS_TOPIC)
            job_id = uuid.UUID(str(record["job_id"]))
        except Exception as exc:
            log.warning("undecodable job event dead-lettered", extra={"error": type(exc).__name__})
            await asyncio.to_thread(self._dead_letter, message, type(exc).__name__, str(exc))
            return
        try:
            await self.run(job_id)
        except Exception as exc:
            log.warning(
                "job attempt broke off; its lease will expire",
                extra={"job_id": str(job_id), "error": type(exc).__name__},
                exc_info=not is_transient_error(exc),
            )

    def _dead_letter(self, message: Message, reason: str, detail: str) -> None:
        """The message unchanged (key, value, headers) with the x-dlq-* headers, acknowledged
        by the broker before the offset moves on; a broker that does not take it within the
        producer's timeout raises, and the agent stops there (the event is not lost)."""
        raw = message.headers or []
        pairs = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in pairs if k not in h.DLQ_HEADERS
        ]
        headers += h.encode_headers(
            {
                h.DLQ_REASON: "undecodable",
                h.DLQ_DETAIL: f"{reason}: {detail}"[: h.DLQ_DETAIL_CHARS_MAX],
                h.DLQ_SOURCE_TOPIC: message.topic,
                h.DLQ_SOURCE_PARTITION: str(message.partition),
                h.DLQ_SOURCE_OFFSET: str(message.offset),
                h.DLQ_CONSUMER_GROUP: self.settings.job_group,
            }
        )
        errors: list[Any] = []
        self.dlq_producer.produce(
            h.dead_letter_topic(jobs.JOBS_TOPIC),
            key=message.key,
            value=message.value,
            headers=headers,
            on_delivery=lambda err, _: errors.append(err),
        )
        left = self.dlq_producer.flush(DLQ_FLUSH_S)
        if left or errors != [None]:
            raise RuntimeError(f"dead-lettering failed: {errors or 'timed out'}")

    async def run(self, job_id: uuid.UUID) -> None:
        s = self.settings
        engine = await self.store.engine()
        async with engine.begin() as conn:
            claim = await jobs.claim(
                conn, job_id, self.worker, lease_s=s.job_lease_s, attempts_max=s.job_attempts_max
            )
        if claim is None:
            log.info("job not claimed (finished or held elsewhere)", extra={"job_id": str(job_id)})
            return
        log.info("job claimed", extra={"job_id": str(job_id), "attempt": claim.attempt})
        async with self._heartbeat(engine, claim):
            try:
                async with engine.begin() as conn:
                    report = await jobs.compute(conn, claim, self.scales, s.job_report_entries_max)
                if s.job_result_delay_s and s.job_result_delay_job_id in (None, job_id):
                    await asyncio.sleep(s.job_result_delay_s)
            except d.InvalidTransfer as exc:  # the stored history breaks a rule: no retry
                await self._fail(engine, claim, "invalid_history", str(exc), retry=False)
                return
            except Exception as exc:
                if not is_transient_error(exc):
                    log.error("job attempt failed", extra={"job_id": str(job_id)}, exc_info=True)
                code = "unavailable" if is_transient_error(exc) else "internal_error"
                await self._fail(engine, claim, code, type(exc).__name__, retry=True)
                return
            async with engine.begin() as conn:
                written = await jobs.succeed(conn, claim, report)
        log.info(
            "job succeeded" if written else "job result dropped: the claim was lost",
            extra={"job_id": str(job_id), "attempt": claim.attempt},
        )

    async def _fail(
        self, engine: AsyncEngine, claim: jobs.Claim, code: str, detail: str, *, retry: bool
    ) -> None:
        async with engine.begin() as conn:
            await jobs.fail(
                conn,
                claim,
                self.outbox,
                self.codec,
                error_code=code,
                detail=detail,
                retry=retry,
                attempts_max=self.settings.job_attempts_max,
            )
        log.warning("job attempt failed", extra={"job_id": str(claim.job_id), "code": code})

    @contextlib.asynccontextmanager
    async def _heartbeat(self, engine: AsyncEngine, claim: jobs.Claim) -> AsyncIterator[None]:
        """Extend the lease every third of it while the attempt runs."""
        lease_s = self.settings.job_lease_s

        async def beat() -> None:
            while True:
                await asyncio.sleep(lease_s / 3)
                try:
                    async with engine.begin() as conn:
                        if not await jobs.renew(conn, claim, lease_s=lease_s):
                            return  # lost: the result will not be written
                except Exception as exc:
                    if not is_transient_error(exc):
                        raise
                    log.warning("lease renewal failed", extra={"error": type(exc).__name__})

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def sweep(self) -> None:
        s = self.settings
        try:
            engine = await self.store.engine()
            async with engine.begin() as conn:
                swept = await jobs.sweep(
                    conn,
                    self.outbox,
                    self.codec,
                    attempts_max=s.job_attempts_max,
                    queued_stale_s=s.job_queued_stale_s,
                    batch_max=s.job_sweep_batch_max,
                )
        except Exception as exc:
            log.warning("job sweep failed", extra={"error": type(exc).__name__})
            return
        if swept.requeued or swept.failed or swept.republished:
            log.info(
                "jobs swept",
                extra={
                    "requeued": swept.requeued,
                    "failed": swept.failed,
                    "republished": swept.republished,
                },
            )


def build_app(settings: JobWorkerSettings, runner: JobRunner) -> faust.App:
    data_dir = settings.job_data_dir or Path(tempfile.gettempdir()) / "tickertap-portfolio-jobs"
    app = faust.App(
        settings.job_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_session_timeout=settings.job_session_timeout_s,
        broker_commit_every=1,  # commit each handled event's offset (after its DB commit)
        web_enabled=False,
        topic_allow_declare=False,  # the stack, compose and the chart declare topics
        topic_disable_leader=True,  # no leader topic to declare
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        store="memory://",
        datadir=str(data_dir),
        autodiscover=False,
        producer_enable_idempotence=False,
    )
    topic = app.topic(jobs.JOBS_TOPIC, key_type=bytes, value_type=bytes)

    @app.agent(topic, concurrency=settings.job_concurrency)
    async def run_jobs(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await runner.handle(event.message)

    @app.timer(settings.job_sweep_interval_s)  # type: ignore[untyped-decorator]  # faust's
    async def sweep() -> None:
        await runner.sweep()

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.portfolio.jobs_worker",
        description="Run a portfolio report job worker (settings from TICKERTAP_*).",
    )
    parser.add_argument("--lease-s", type=float, help="override TICKERTAP_JOB_LEASE_S")
    parser.add_argument(
        "--sweep-interval-s", type=float, help="override TICKERTAP_JOB_SWEEP_INTERVAL_S"
    )
    parser.add_argument(
        "--result-delay-s",
        type=float,
        help="tests only: wait this long before writing each result (TICKERTAP_JOB_RESULT_DELAY_S)",
    )
    parser.add_argument(
        "--result-delay-job", type=uuid.UUID, help="tests only: delay only this job's result"
    )
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("job_lease_s", args.lease_s),
            ("job_sweep_interval_s", args.sweep_interval_s),
            ("job_result_delay_s", args.result_delay_s),
            ("job_result_delay_job_id", args.result_delay_job),
        )
        if value is not None
    }
    install_context()
    try:
        settings = JobWorkerSettings(**overrides)  # the rest from the environment
    except Exception as exc:  # pydantic's ValidationError names what is wrong
        print(f"jobs_worker: bad settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("portfolio-jobs", settings.log_level)
    store = JobStore(settings)
    app = build_app(settings, JobRunner(settings, store))
    worker = faust.Worker(
        app,
        store,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()  # returns (or exits) when the worker stops
    return 0


if __name__ == "__main__":
    sys.exit(main())
