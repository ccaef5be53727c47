"""Build a service's FastAPI app: the lifespan wires Vault, Postgres, Kafka and health.

At start-up a service logs in to Vault with its AppRole, takes short-lived
database credentials (kept alive and rotated in the background), migrates its
own schema with them, then starts its background workers (outbox relay,
consumers). `/readyz` answers 200 only while Postgres, the broker and Vault all
answer with the service's own credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, SecretStr
from pydantic.json_schema import models_json_schema
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.db import create_engine, upgrade_to_head
from tickertap.messaging import (
    AvroCodec,
    InboxConsumer,
    OutboxRelay,
    avro_decoder,
    find_schemas_dir,
    inbox_table,
    load_schemas,
    outbox_table,
    purge_inbox,
)
from tickertap.messaging.codec import ConfluentSchemaRegistry
from tickertap.messaging.consumer import BatchHandler, Handler, Outcome
from tickertap.observability import (
    Metrics,
    ObservabilityMiddleware,
    configure_logging,
    health_router,
)
from tickertap.runtime.direct import DirectRoutes
from tickertap.runtime.errors import install_error_handlers
from tickertap.runtime.limits import BodySizeLimit
from tickertap.runtime.login import service_login
from tickertap.runtime.settings import ServiceSettings
from tickertap.secrets import CredentialRotator, TokenKeeper, Vault

log = logging.getLogger(__name__)

StartHook = Callable[["ServiceRuntime"], Awaitable[None]]
KAFKA_STATS_INTERVAL_MS = 5_000
RELAY_PROCESS_STOP_S_MAX = 15.0  # a child process's time to stop before SIGKILL
INBOX_PURGE_BATCH_MAX = 10_000


@dataclass(frozen=True)
class ServiceDefinition:
    """What makes one service different from another; the rest is shared.

    Every service has an outbox and an inbox table in its schema (its first
    migration creates them) and runs an outbox relay.
    """

    name: str
    title: str
    version: str
    migrations: Path | None
    routers: Sequence[APIRouter] = ()
    on_start: Sequence[StartHook] = ()  # start consumers through runtime.spawn
    description: str = ""
    # bodies that routes parse themselves (see `with_schemas`), for the OpenAPI components
    openapi_models: Sequence[type[BaseModel]] = ()


def messaging_tables(schema: str) -> tuple[Table, Table]:
    """The service's outbox and inbox tables (also used by its first migration)."""
    metadata = MetaData()
    return outbox_table(metadata, schema), inbox_table(metadata, schema)


def load_codec(settings: ServiceSettings) -> AvroCodec:
    schemas = load_schemas(settings.schemas_dir or find_schemas_dir())
    if not settings.kafka_schema_registry_url:
        return AvroCodec(schemas)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = ConfluentSchemaRegistry(
        SchemaRegistryClient({"url": settings.kafka_schema_registry_url})
    )
    return AvroCodec(schemas, registry)


@dataclass
class ServiceRuntime:
    """Everything a running service holds; handed to start hooks and request dependencies."""

    settings: ServiceSettings
    metrics: Metrics
    vault: Vault
    rotator: CredentialRotator
    token_keeper: TokenKeeper
    writer: AsyncEngine
    reader: AsyncEngine
    kafka_admin: AdminClient
    codec: AvroCodec
    outbox: Table
    inbox: Table
    relay: OutboxRelay
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    helpers: list[asyncio.Task[Any]] = field(default_factory=list)  # cancelled at once on stop
    state: dict[str, Any] = field(default_factory=dict)  # what start hooks build (use cases)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def spawn(self, coro: Awaitable[Any], name: str, *, graceful: bool = True) -> asyncio.Task[Any]:
        """Run a background worker for the life of the service; its crash stops readiness.

        A graceful worker is asked to stop (`on_stop`) and finishes what is in flight;
        others (periodic reporters) are cancelled at once.
        """
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        (self.tasks if graceful else self.helpers).append(task)
        return task

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(closer)

    def kafka_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.settings.kafka_bootstrap_servers}

    def start_consumer(
        self,
        *,
        name: str,
        topics: Sequence[str],
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        batch_max: int = 500,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> InboxConsumer:
        """Consume `topics` into `handler` (inbox, dead-lettering, metrics) for the service's life.

        The group id is `<service>.<name>`; outcomes, dead letters and the consumer
        lag that librdkafka reports from the broker's watermarks feed `/metrics`. Give
        `handler` (a transaction per message) or `batch_handler` (a transaction per batch,
        see tickertap.messaging.consumer). `consumer_overrides` are librdkafka settings of
        the consumer (for one that must see messages soon: a small `fetch.wait.max.ms`).
        """
        consumer = InboxConsumer(
            self.writer,
            self.inbox,
            avro_decoder(self.codec),
            handler,
            batch_handler=batch_handler,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=f"{self.metrics.service}.{name}",
            topics=topics,
            name=name,
            batch_max=batch_max,
            consumer_overrides={
                **(consumer_overrides or {}),
                "statistics.interval.ms": KAFKA_STATS_INTERVAL_MS,
                "stats_cb": self._on_kafka_stats,
            },
            on_outcome=self._on_outcome,
        )
        self.spawn(consumer.run(), f"consumer-{name}")
        self.on_stop(_stopper(consumer.stop))
        return consumer

    def _on_outcome(self, topic: str, outcome: Outcome, reason: str | None) -> None:
        self.metrics.consumer_processed(topic, outcome)
        if outcome == "dead_lettered":
            self.metrics.dead_lettered(topic, reason or "unknown")

    def _on_kafka_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: lag per assigned partition, where the broker reports it."""
        try:
            stats = json.loads(stats_json)
            for topic, info in stats.get("topics", {}).items():
                for partition, p in info.get("partitions", {}).items():
                    lag = int(p.get("consumer_lag", -1))
                    if int(partition) >= 0 and lag >= 0:
                        self.metrics.set_consumer_lag(topic, int(partition), lag)
        except (ValueError, TypeError, AttributeError):
            log.warning("unreadable kafka statistics")


async def _check_postgres(runtime: ServiceRuntime) -> None:
    async with runtime.writer.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_broker(runtime: ServiceRuntime) -> None:
    await asyncio.to_thread(runtime.kafka_admin.list_topics, timeout=1.5)


async def _check_workers(runtime: ServiceRuntime) -> None:
    if not runtime.rotator.running:
        raise RuntimeError("database credential rotation stopped")
    if not runtime.token_keeper.running:
        raise RuntimeError("vault token renewal stopped")
    for task in [*runtime.tasks, *runtime.helpers]:
        if task.done():
            raise RuntimeError(f"background worker {task.get_name()} stopped")


async def _stop_workers(runtime: ServiceRuntime, timeout_s: float = 10.0) -> None:
    """Ask workers to finish what is in flight, then cancel what is left."""
    for helper in runtime.helpers:
        helper.cancel()
    for closer in reversed(runtime.closers):
        try:
            await closer()
        except Exception:
            log.exception("error while stopping a worker")
    if runtime.tasks:
        _, pending = await asyncio.wait(runtime.tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
    for task in [*runtime.tasks, *runtime.helpers]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _stopper(stop: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        stop()

    return close


async def _purge_inbox(runtime: ServiceRuntime) -> None:
    """Forget inbox claims older than the retention (redeliveries come much sooner)."""
    settings = runtime.settings
    while True:
        await asyncio.sleep(settings.inbox_purge_interval_s)
        try:
            while True:
                async with runtime.writer.begin() as conn:
                    purged = await purge_inbox(
                        conn,
                        runtime.inbox,
                        older_than_s=settings.inbox_retention_s,
                        batch_max=INBOX_PURGE_BATCH_MAX,
                    )
                if purged < INBOX_PURGE_BATCH_MAX:
                    break
        except Exception as exc:  # housekeeping must never take the service down
            log.warning("inbox purge failed", extra={"error": type(exc).__name__})


async def _report_backlog(runtime: ServiceRuntime, interval_s: float = 5.0) -> None:
    while True:
        try:
            runtime.metrics.set_outbox_backlog(await runtime.relay.backlog())
        except Exception as exc:  # a metric must never take the service down
            log.warning("outbox backlog unavailable", extra={"error": type(exc).__name__})
        await asyncio.sleep(interval_s)


async def _start_relay_process(runtime: ServiceRuntime, service: str) -> None:
    """The outbox relay as a child process (`tickertap.runtime.relay_process`)."""
    await start_child_process(
        runtime, "outbox-relay-process", ["tickertap.runtime.relay_process", service]
    )


async def start_child_process(
    runtime: ServiceRuntime,
    name: str,
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """`python -m <argv>` as a child process with this service's settings in its
    environment; its exit fails readiness, and it is stopped (SIGTERM, then SIGKILL) with
    the service. With `on_line`, each line the child writes to its standard output is
    handed to it (its logs go to standard error)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *argv,
        env={**os.environ, **_settings_env(runtime.settings)},
        stdout=asyncio.subprocess.PIPE if on_line is not None else None,
    )
    stopping = False

    async def supervise() -> None:
        if on_line is not None and process.stdout is not None:
            async for line in process.stdout:
                on_line(line.decode(errors="replace"))
        code = await process.wait()
        if not stopping:
            log.error("child process exited", extra={"child": name, "exit_code": code})

    async def stop() -> None:
        nonlocal stopping
        stopping = True
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), RELAY_PROCESS_STOP_S_MAX)
        except TimeoutError:
            process.kill()
            await process.wait()

    runtime.spawn(supervise(), name)
    runtime.on_stop(stop)


def _settings_env(settings: ServiceSettings) -> dict[str, str]:
    """The shared settings as the `TICKERTAP_*` variables that give them back (a service's
    own defaults, such as its schema, and settings built in code reach the child too)."""
    env: dict[str, str] = {}
    for name in ServiceSettings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple | dict):
            value = json.dumps(value)  # pydantic-settings reads complex values as JSON
        env[f"TICKERTAP_{name.upper()}"] = str(value)
    return env


def create_service_app(definition: ServiceDefinition, settings: ServiceSettings) -> FastAPI:
    configure_logging(definition.name, settings.log_level)
    metrics = Metrics(definition.name)
    state: dict[str, ServiceRuntime] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            login = await stack.enter_async_context(service_login(settings, keep_alive=True))
            vault, rotator, keeper = login.vault, login.rotator, login.keeper
            assert keeper is not None
            db = settings.database()
            writer = create_engine(db, rotator, application_name=definition.name)
            stack.push_async_callback(writer.dispose)
            reader = create_engine(
                db, rotator, application_name=f"{definition.name}-reader", read_only=True
            )
            stack.push_async_callback(reader.dispose)
            outbox, inbox = messaging_tables(settings.db_schema)
            runtime = ServiceRuntime(
                settings=settings,
                metrics=metrics,
                vault=vault,
                rotator=rotator,
                token_keeper=keeper,
                writer=writer,
                reader=reader,
                kafka_admin=AdminClient(
                    {"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 3}
                ),
                codec=load_codec(settings),
                outbox=outbox,
                inbox=inbox,
                relay=OutboxRelay(
                    writer,
                    outbox,
                    settings.kafka_bootstrap_servers,
                    listen=True,
                    linger_s=settings.outbox_relay_linger_s,
                ),
            )
            stack.push_async_callback(_stop_workers, runtime)
            state["runtime"] = runtime
            app.state.runtime = runtime
            if definition.migrations is not None:
                await upgrade_to_head(writer, definition.migrations, settings.db_schema)
            if settings.outbox_relay_process:
                await _start_relay_process(runtime, definition.name)
            else:
                runtime.spawn(runtime.relay.run(), "outbox-relay")
                runtime.on_stop(_stopper(runtime.relay.stop))
            runtime.spawn(_report_backlog(runtime), "outbox-backlog", graceful=False)
            runtime.spawn(_purge_inbox(runtime), "inbox-purge", graceful=False)
            for hook in definition.on_start:
                await hook(runtime)
            log.info("service started", extra={"port": settings.http_port})
            yield
        log.info("service stopped")

    def runtime() -> ServiceRuntime:
        return state["runtime"]

    checks = {
        "postgres": lambda: _check_postgres(runtime()),
        "kafka": lambda: _check_broker(runtime()),
        "vault": lambda: runtime().vault.ping(),
        "workers": lambda: _check_workers(runtime()),
    }
    app = FastAPI(
        title=definition.title,
        version=definition.version,
        description=definition.description,
        lifespan=lifespan,
        # metrics are Prometheus (/metrics); FastAPI's OpenTelemetry hooks would only look
        # for global providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.include_router(
        health_router(checks, metrics, readiness_timeout_s=settings.readiness_timeout_s)
    )
    for router in definition.routers:
        app.include_router(router)
    if definition.openapi_models:
        with_schemas(app, definition.openapi_models)
    app.add_middleware(DirectRoutes)  # innermost: @direct routes skip only the routing
    app.add_middleware(BodySizeLimit, body_bytes_max=settings.request_body_bytes_max)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def with_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add `models` (and the models they use) to the OpenAPI components, so a route that
    parses its own body can `$ref` `#/components/schemas/<Model>` in its `openapi_extra`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _, top = models_json_schema(
            [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in top.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run one service process (uvicorn, uvloop, httptools) until SIGTERM/SIGINT."""
    import uvicorn

    uvicorn.run(app, **uvicorn_options(settings))


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """How `serve` runs uvicorn. Forwarded headers are believed only from the proxies of
    `forwarded_allow_ips` (uvicorn's own default would believe 127.0.0.1's)."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }
