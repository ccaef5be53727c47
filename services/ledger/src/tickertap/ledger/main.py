"""Composition root of the ledger service: `create_app(settings)` and `main()`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tickertap.ledger.settings import LedgerSettings
from tickertap.runtime import ServiceDefinition, create_service_app, serve

DEFINITION = ServiceDefinition(
    name="ledger",
    title="tickerTap ledger",
    version="0.1.0",
    description=(
        "Double-entry, multi-asset ledger: accounts, idempotent "
        "transfers, trades, balances and history."
    ),
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: LedgerSettings) -> FastAPI:
    return create_service_app(DEFINITION, settings)


def main() -> None:
    settings = LedgerSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
