"""Composition root of the auth service: `create_app(settings)` and `main()`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tickertap.auth.settings import AuthSettings
from tickertap.runtime import ServiceDefinition, create_service_app, serve

DEFINITION = ServiceDefinition(
    name="auth",
    title="tickerTap auth",
    version="0.1.0",
    description=(
        "Users, Argon2id passwords, JWT access tokens, rotating "
        "refresh tokens, TOTP MFA, roles and scopes."
    ),
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: AuthSettings) -> FastAPI:
    return create_service_app(DEFINITION, settings)


def main() -> None:
    settings = AuthSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
