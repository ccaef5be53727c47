"""Against the real OpenBao and Postgres of the local stack."""

from __future__ import annotations

import asyncpg
import pytest

from tickertap.secrets import AppRoleLogin, Vault, VaultDenied


async def _login(stack, approle_secret_id, role: str) -> Vault:
    vault = Vault(stack.vault_addr)
    await vault.login_approle(AppRoleLogin(stack.role_id(role), approle_secret_id(role)))
    return vault


async def test_approle_login_gives_only_the_services_own_credentials(stack, approle_secret_id):
    vault = await _login(stack, approle_secret_id, "ledger")
    try:
        credentials = await vault.database_credentials("ledger")
        assert credentials.username.startswith("v-approle-ledger")
        assert credentials.lease.lease_id.startswith("database/creds/ledger/")
        with pytest.raises(VaultDenied):
            await vault.database_credentials("auth")
        await vault.revoke_lease(credentials.lease.lease_id)
    finally:
        vault.close()


async def test_a_services_login_is_denied_on_another_services_schema(stack, approle_secret_id):
    vault = await _login(stack, approle_secret_id, "ledger")
    credentials = await vault.database_credentials("ledger")
    conn = await asyncpg.connect(
        host=stack.pg_host,
        port=stack.pg_port,
        database=stack.database,
        user=credentials.username,
        password=credentials.password,
    )
    try:
        assert await conn.fetchval("SELECT current_user") == "ledger_owner"
        await conn.execute("CREATE TABLE IF NOT EXISTS ledger.rotation_probe (x int)")
        owner = await conn.fetchval(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'ledger' "
            "AND tablename = 'rotation_probe'"
        )
        assert owner == "ledger_owner"  # objects outlive the login that made them
        for statement in (
            "SELECT * FROM auth.alembic_version",
            "CREATE TABLE auth.intruder (x int)",
            "CREATE TABLE public.intruder (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as denied:
                await conn.execute(statement)
            assert denied.value.sqlstate == "42501"
    finally:
        await conn.close()
        await vault.revoke_lease(credentials.lease.lease_id)
        vault.close()


async def test_revoking_the_lease_ends_the_login(stack, approle_secret_id, vault_root):
    vault = await _login(stack, approle_secret_id, "ledger")
    credentials = await vault.database_credentials("ledger")
    conn = await asyncpg.connect(
        host=stack.pg_host,
        port=stack.pg_port,
        database=stack.database,
        user=credentials.username,
        password=credentials.password,
    )
    renewed = await vault.renew_lease(credentials.lease.lease_id, 60)
    assert 0 < renewed.duration_s <= 60
    await vault.revoke_lease(credentials.lease.lease_id)
    # the session was terminated; asyncpg reports it in one of several ways
    with pytest.raises(
        (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.AdminShutdownError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        )
    ):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    admin = await asyncpg.connect(stack.pg_admin_url)
    try:
        assert not await admin.fetchval(
            "SELECT 1 FROM pg_roles WHERE rolname = $1", credentials.username
        )
    finally:
        await admin.close()
        vault.close()


async def test_transit_encrypts_decrypts_and_hmacs_with_the_services_key(
    stack, approle_secret_id, vault_root
):
    vault = await _login(stack, approle_secret_id, "ledger")
    try:
        ciphertext = await vault.encrypt("ledger", b"alice@example.com")
        assert ciphertext.startswith("vault:v")
        assert b"alice" not in ciphertext.encode()
        assert await vault.decrypt("ledger", ciphertext) == b"alice@example.com"
        digest = await vault.hmac("ledger", b"alice@example.com", key_version=1)
        assert digest == await vault.hmac("ledger", b"alice@example.com", key_version=1)
        assert digest != await vault.hmac("ledger", b"bob@example.com", key_version=1)
        vault_root.secrets.transit.rotate_key(name="ledger")
        rewrapped = await vault.rewrap("ledger", ciphertext)
        assert rewrapped != ciphertext
        assert await vault.decrypt("ledger", rewrapped) == b"alice@example.com"
        plain_key, wrapped_key = await vault.data_key("ledger")
        assert len(plain_key) == 32
        assert wrapped_key.startswith("vault:v")
        with pytest.raises(VaultDenied):
            await vault.encrypt("auth", b"not mine")
    finally:
        vault.close()
