"""Fixtures of the auth service's tests; `auth_testkit` holds what they share.

The flows run against an auth app built in this process (`create_app`) on the
real stack: its Postgres, OpenBao (AppRole login, transit, the signing key) and
broker. Its settings are the defaults except short lockouts, so that a lockout
test ends in seconds; each test client speaks from its own client IP, so the
per-IP rate limits of one test never touch another.
"""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from auth_testkit import ISSUER, app_settings

from tickertap.auth.handlers import Auth
from tickertap.auth.main import create_app


@pytest.fixture(scope="session")
async def auth_app(stack, vault_root):
    secret_id = vault_root.auth.approle.generate_secret_id("auth")["data"]["secret_id"]
    app = create_app(app_settings(stack, secret_id))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="session")
def auth(auth_app) -> Auth:
    found = auth_app.state.runtime.state["auth"]
    assert isinstance(found, Auth)
    assert found.settings.auth_issuer == ISSUER
    return found


@pytest.fixture
async def db(stack):
    """The Postgres admin, to look at what the service stored."""
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()


@pytest.fixture
async def api(auth_app):
    """A client of the in-process auth app, speaking from a client IP of its own."""
    from auth_testkit import AuthClient, client_for

    async with client_for(auth_app) as http:
        yield AuthClient(http)
