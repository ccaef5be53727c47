"""Async SQLAlchemy engines whose connections log in with the current Vault credentials.

Each new connection is opened by a callback that reads `CredentialRotator.current`
and is tagged with the rotator's generation; at checkout, a connection of an
older generation is discarded and replaced, so a rotation never fails a query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from tickertap.secrets import CredentialRotator


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the service's database is and how its pools are bounded."""

    host: str
    port: int
    name: str
    schema: str
    pool_size: int = 10
    pool_overflow_max: int = 10
    pool_timeout_s: float = 10.0
    statement_timeout_ms: int = 15_000
    idle_in_transaction_timeout_ms: int = 20_000  # below the credential grace period
    connect_timeout_s: float = 5.0
    reader_host: str | None = None  # a read replica; defaults to the writer
    reader_port: int | None = None


class _TaggedConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that remembers which credential generation opened it."""

    credential_generation = 0


def create_engine(
    settings: DatabaseSettings,
    rotator: CredentialRotator,
    *,
    application_name: str,
    read_only: bool = False,
    session_settings: Mapping[str, str] | None = None,
    pool_size: int | None = None,
) -> AsyncEngine:
    """`session_settings` are set for the whole life of each connection (at login): only
    for an engine that serves one purpose, since every user of its pool inherits them."""
    host = settings.reader_host if read_only and settings.reader_host else settings.host
    port = settings.reader_port if read_only and settings.reader_port else settings.port
    server_settings = {
        "application_name": application_name,
        "search_path": settings.schema,
        "statement_timeout": str(settings.statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.idle_in_transaction_timeout_ms),
        "timezone": "UTC",
    }
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    server_settings.update(session_settings or {})

    async def connect() -> Any:
        credentials = rotator.current
        generation = rotator.generation
        conn = await asyncpg.connect(
            host=host,
            port=port,
            user=credentials.username,
            password=credentials.password,
            database=settings.name,
            timeout=settings.connect_timeout_s,
            server_settings=server_settings,
            connection_class=_TaggedConnection,
        )
        conn.credential_generation = generation
        return conn

    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=connect,
        pool_size=settings.pool_size if pool_size is None else pool_size,
        max_overflow=settings.pool_overflow_max,
        pool_timeout=settings.pool_timeout_s,
        pool_pre_ping=False,
        hide_parameters=True,  # bound values (emails, token hashes) never reach error messages
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _replace_stale(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if dbapi_conn.driver_connection.credential_generation != rotator.generation:
            raise exc.DisconnectionError("credentials rotated; reconnecting")

    return engine
