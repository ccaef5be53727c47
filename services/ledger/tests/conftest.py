"""Fixtures of the ledger's tests; `ledger_testkit` holds what they share."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
async def db(stack):
    """The Postgres admin, to look at (and, in reconciliation tests, corrupt) the ledger."""
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()
