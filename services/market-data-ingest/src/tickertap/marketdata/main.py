"""Composition root of the market-data ingest service: `create_app(settings)` and `main()`.

The ingest worker (worker.py) runs inside the service process as a runtime task, so every
stack that runs the service ingests ticks; `TICKERTAP_INGEST_ENABLED=false` leaves only
the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tickertap.marketdata import api
from tickertap.marketdata.settings import MarketDataSettings
from tickertap.marketdata.worker import IngestWorker, worker_config
from tickertap.money import install_context
from tickertap.runtime import ServiceDefinition, ServiceRuntime, create_service_app, serve
from tickertap.runtime.revocations import token_auth


def create_app(settings: MarketDataSettings) -> FastAPI:
    install_context()
    auth, follow_revocations = token_auth(settings)

    async def start_ingest(runtime: ServiceRuntime) -> None:
        if not settings.ingest_enabled:
            return
        worker = IngestWorker(
            runtime.writer, runtime.outbox, runtime.codec, worker_config(settings), runtime.metrics
        )
        runtime.state["ingest"] = worker
        runtime.spawn(worker.run(), "ingest-worker")

        async def stop() -> None:
            worker.stop()

        runtime.on_stop(stop)

    definition = ServiceDefinition(
        name="market-data-ingest",
        title="tickerTap market-data ingest",
        version="0.1.0",
        description=(
            "Validates and normalizes upstream ticks; instruments, latest prices and "
            "OHLCV bars (1m, and 5m/1h/1d derived from them)."
        ),
        migrations=Path(__file__).parent / "migrations",
        routers=[api.build_router(auth, settings)],
        on_start=[start_ingest, follow_revocations],
    )
    return create_service_app(definition, settings)


def main() -> None:
    settings = MarketDataSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
