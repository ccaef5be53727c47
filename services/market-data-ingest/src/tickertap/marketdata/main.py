"""Composition root of the market-data ingest service: `create_app(settings)` and `main()`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tickertap.marketdata.settings import MarketDataSettings
from tickertap.runtime import ServiceDefinition, create_service_app, serve

DEFINITION = ServiceDefinition(
    name="market-data-ingest",
    title="tickerTap market-data ingest",
    version="0.1.0",
    description=("Validates and normalizes upstream ticks; latest prices and OHLCV bars."),
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: MarketDataSettings) -> FastAPI:
    return create_service_app(DEFINITION, settings)


def main() -> None:
    settings = MarketDataSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
