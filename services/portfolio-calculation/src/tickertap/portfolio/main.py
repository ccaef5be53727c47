"""Composition root of the portfolio calculation service: `create_app(settings)` and `main()`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime import ServiceDefinition, create_service_app, serve

DEFINITION = ServiceDefinition(
    name="portfolio-calculation",
    title="tickerTap portfolio calculation",
    version="0.1.0",
    description=("Positions, cost basis, realized and unrealized P&L, valuations."),
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: PortfolioSettings) -> FastAPI:
    return create_service_app(DEFINITION, settings)


def main() -> None:
    settings = PortfolioSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
