"""Composition root of the portfolio calculation service: `create_app(settings)` and `main()`.

At start the service consumes ledger.transfers.v1 and marketdata.prices.v1 (inbox
consumers, consumer.py) and runs the live publisher (live.py), which turns every change
into coalesced portfolio.updates.v1 events.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI

from tickertap.messaging.kafka import paced_fetches
from tickertap.messaging.retry import is_transient_error
from tickertap.money import install_context
from tickertap.portfolio import api, handlers, jobs_api
from tickertap.portfolio.consumer import (
    PRICES_TOPIC,
    TRANSFERS_TOPIC,
    price_batch_handler,
    transfer_batch_handler,
)
from tickertap.portfolio.live_process import ShardFigures, publisher_for
from tickertap.portfolio.metrics import PortfolioMetrics
from tickertap.portfolio.reconcile_job import ReconcileMetrics, run_periodically
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime import ServiceDefinition, ServiceRuntime, create_service_app, serve
from tickertap.runtime.app import start_child_process
from tickertap.runtime.revocations import token_auth

log = logging.getLogger(__name__)
PUBLISH_RETRY_S_MAX = 5.0


async def snapshot_valuations(runtime: ServiceRuntime, settings: PortfolioSettings) -> None:
    """Every `valuation_snapshot_interval_s`, store today's valuation of every portfolio."""
    while True:
        await asyncio.sleep(settings.valuation_snapshot_interval_s)
        try:
            stored = await handlers.snapshot_valuations(
                runtime.writer,
                settings.base_currency,
                settings.scales(),
                batch_max=settings.valuation_batch_max,
            )
            log.info("valuations stored", extra={"portfolios": stored})
        except Exception as exc:
            if not is_transient_error(exc):
                raise
            log.warning("valuation snapshot failed", extra={"error": type(exc).__name__})


async def start_live_updates(
    runtime: ServiceRuntime, settings: PortfolioSettings, metrics: PortfolioMetrics
) -> None:
    """The live publisher (live.py): in this process, or sharded over child processes."""
    shards = settings.update_publisher_processes
    if shards == 0:
        publisher = publisher_for(settings, runtime.writer, runtime.codec, metrics)
        runtime.spawn(publisher.run(), "live-updates", graceful=False)
        return
    figures = ShardFigures(metrics)
    for shard in range(shards):
        await start_child_process(
            runtime,
            f"live-updates-{shard}",
            ["tickertap.portfolio.live_process", str(shard), str(shards)],
            on_line=figures.take,
        )


def create_app(settings: PortfolioSettings) -> FastAPI:
    install_context()
    auth, follow_revocations = token_auth(settings)

    async def start_portfolio(runtime: ServiceRuntime) -> None:
        metrics = PortfolioMetrics(runtime.metrics.registry)
        fetch_soon = paced_fetches(settings.consumer_fetch_interval_ms)
        runtime.start_consumer(
            name="transfers",
            topics=[TRANSFERS_TOPIC],
            batch_handler=transfer_batch_handler(settings.scales(), metrics),
            batch_max=settings.transfer_consumer_batch_max,
            consumer_overrides=fetch_soon,
        )
        runtime.start_consumer(
            name="prices",
            topics=[PRICES_TOPIC],
            batch_handler=price_batch_handler(settings.price_exchange_ts_skew_s_max, metrics),
            batch_max=settings.price_consumer_batch_max,
            consumer_overrides=fetch_soon,
        )
        await start_live_updates(runtime, settings, metrics)
        if settings.valuation_snapshot_interval_s > 0:
            runtime.spawn(
                snapshot_valuations(runtime, settings), "valuation-snapshots", graceful=False
            )
        if settings.reconcile_interval_s > 0 and settings.reconcile_configured():
            reconcile_metrics = ReconcileMetrics(runtime.metrics.registry)
            runtime.spawn(
                run_periodically(runtime.writer, settings, reconcile_metrics),
                "reconciliation",
                graceful=False,
            )
        elif settings.reconcile_interval_s > 0:
            log.warning(
                "periodic reconciliation is off: set TICKERTAP_RECONCILE_LEDGER_URL and the "
                "machine client (TICKERTAP_RECONCILE_TOKEN_URL, _CLIENT_ID, _CLIENT_SECRET_FILE)"
            )

    definition = ServiceDefinition(
        name="portfolio-calculation",
        title="tickerTap portfolio calculation",
        version="0.1.0",
        description="Positions, cost basis (FIFO and average), realized and unrealized P&L.",
        migrations=Path(__file__).parent / "migrations",
        routers=[api.build_router(auth, settings), jobs_api.build_router(auth)],
        on_start=[start_portfolio, follow_revocations],
    )
    return create_service_app(definition, settings)


def main() -> None:
    settings = PortfolioSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
