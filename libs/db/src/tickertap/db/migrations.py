"""Alembic migrations run by each service at start-up, in its own schema, with its own login.

A service's `migrations/env.py` is two lines:

    from tickertap.db.migrations import run_env
    run_env()
"""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATION_TIMEOUT_S = 600


def _config(script_location: Path, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["schema"] = schema
    return cfg


async def upgrade_to_head(engine: AsyncEngine, script_location: Path, schema: str) -> None:
    """Bring `schema` to the newest revision; replicas starting together take turns."""

    def upgrade(connection: Connection) -> None:
        # migrations may wait for another replica's and build indexes: not the request bound
        connection.execute(text(f"SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT_S}s'"))
        connection.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        cfg = _config(script_location, schema)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


def run_env() -> None:
    """The body of every service's Alembic env.py (online mode only)."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("migrations run from the service (upgrade_to_head), not the CLI")
    schema = context.config.attributes["schema"]
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table_schema=schema,
        include_schemas=False,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()
