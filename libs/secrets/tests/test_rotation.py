"""A live pool survives credential rotation under load: zero failed queries.

A test role with a 3 s lease and a 6 s max TTL forces a rotation every few
seconds; 16 workers run transactions through one engine the whole time.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from sqlalchemy import text

from tickertap.db import DatabaseSettings, create_engine
from tickertap.secrets import AppRoleLogin, CredentialRotator, TokenKeeper, Vault

ROLE = "test-ledger-rotation"
WORKERS = 16
ROTATIONS_MIN = 3
DURATION_S_MAX = 60.0


@pytest.fixture
def rotation_role(vault_root, stack):
    statements = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
        "VALID UNTIL '{{expiration}}' IN ROLE \"ledger_owner\";",
        "ALTER ROLE \"{{name}}\" SET role = 'ledger_owner';",
        "ALTER ROLE \"{{name}}\" SET search_path = 'ledger';",
    ]
    vault_root.secrets.database.create_role(
        name=ROLE,
        db_name="tickertap",
        creation_statements=statements,
        revocation_statements=[
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
            'DROP ROLE IF EXISTS "{{name}}";',
        ],
        default_ttl="3s",
        max_ttl="6s",
    )
    vault_root.sys.create_or_update_policy(
        name=ROLE,
        policy=f'path "database/creds/{ROLE}" {{ capabilities = ["read"] }}\n'
        f'path "sys/leases/renew/database/creds/{ROLE}/*" {{ capabilities = ["update"] }}\n'
        f'path "sys/leases/revoke/database/creds/{ROLE}/*" {{ capabilities = ["update"] }}\n',
    )
    vault_root.auth.approle.create_or_update_approle(
        role_name=ROLE, token_policies=[ROLE], token_ttl="10m"
    )
    role_id = vault_root.auth.approle.read_role_id(ROLE)["data"]["role_id"]
    secret_id = vault_root.auth.approle.generate_secret_id(ROLE)["data"]["secret_id"]
    return AppRoleLogin(role_id, secret_id)


@pytest.mark.slow
async def test_pool_rotates_credentials_under_load_without_a_failed_query(stack, rotation_role):
    vault = Vault(stack.vault_addr)
    await vault.login_approle(rotation_role)
    rotator = CredentialRotator(vault, ROLE, grace_s=1.0)
    await rotator.start()
    settings = DatabaseSettings(
        host=stack.pg_host,
        port=stack.pg_port,
        name=stack.database,
        schema="ledger",
        pool_size=8,
        pool_overflow_max=8,
    )
    engine = create_engine(settings, rotator, application_name="rotation-test")
    table = f"rotation_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, worker int)"))
    usernames: set[str] = set()
    done = 0
    failures: list[BaseException] = []
    deadline = time.monotonic() + DURATION_S_MAX

    async def worker(n: int) -> None:
        nonlocal done
        while rotator.rotations < ROTATIONS_MIN and time.monotonic() < deadline:
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(f"INSERT INTO {table} (worker) VALUES (:n)"), {"n": n})
                    usernames.add(await conn.scalar(text("SELECT session_user")))
                done += 1
            except Exception as exc:  # every failure is a test failure; keep counting
                failures.append(exc)
            await asyncio.sleep(0.002)

    try:
        await asyncio.gather(*(worker(n) for n in range(WORKERS)))
        assert rotator.rotations >= ROTATIONS_MIN, "the test role did not rotate in time"
        assert not failures, f"{len(failures)} failed queries, first: {failures[0]!r}"
        async with engine.connect() as conn:
            assert await conn.scalar(text(f"SELECT count(*) FROM {table}")) == done
            await conn.execute(text(f"DROP TABLE {table}"))
            await conn.commit()
        assert len(usernames) >= ROTATIONS_MIN  # the newest login may not have served yet
    finally:
        await engine.dispose()
        await rotator.stop()
        vault.close()
    await asyncio.sleep(1.5)  # the grace period of the last rotation
    admin = await asyncpg.connect(stack.pg_admin_url)
    try:
        left = await admin.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", sorted(usernames)
        )
        assert not left, f"old logins not dropped: {left}"
    finally:
        await admin.close()


@pytest.mark.slow
async def test_token_keeper_logs_in_again_before_the_token_and_its_leases_expire(
    stack, vault_root, rotation_role
):
    """The AppRole token lives 4 s, at most 10 s; its database leases die with it.

    The keeper must log in again and the rotator move the pool to credentials
    under the new token before the old token expires: queries never fail.
    """
    vault_root.auth.approle.create_or_update_approle(
        role_name=ROLE, token_policies=[ROLE], token_ttl="4s", token_max_ttl="10s"
    )
    vault = Vault(stack.vault_addr)
    await vault.login_approle(rotation_role)
    rotator = CredentialRotator(vault, ROLE, grace_s=0.5)
    await rotator.start()
    keeper = TokenKeeper(vault, [rotator])
    keeper.start()
    settings = DatabaseSettings(
        host=stack.pg_host, port=stack.pg_port, name=stack.database, schema="ledger", pool_size=4
    )
    engine = create_engine(settings, rotator, application_name="token-keeper-test")
    failures: list[BaseException] = []
    deadline = time.monotonic() + 30

    async def worker() -> None:
        while keeper.relogins < 2 and time.monotonic() < deadline:
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(*(worker() for _ in range(4)))
        assert keeper.relogins >= 2
        assert keeper.running
        assert not failures, f"{len(failures)} failed queries, first: {failures[0]!r}"
    finally:
        await engine.dispose()
        await keeper.stop()
        await rotator.stop()
        vault.close()
