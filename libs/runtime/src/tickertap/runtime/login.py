"""A service process's Vault login and database credentials, one way for every process.

    async with service_login(settings, keep_alive=True) as login:   # a long-running process
        engine = create_engine(settings.database(), login.rotator, ...)

    async with command_engine(settings, "ledger-reconcile", read_only=True) as engine:
        ...                                                          # a short command

The AppRole login (role id, secret id from the settings), then short-lived database
credentials from Vault's database engine. A long-running process (the API, the outbox
relay's child, the job workers) also keeps its Vault token alive (`TokenKeeper`) and lets
a rotated database login's old sessions finish for `db_credential_grace_s`; a command
revokes its lease as it ends, which also ends its sessions. On the way out the pool must
be disposed before the lease is revoked: leave the engine's context first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.db import create_engine
from tickertap.runtime.settings import ServiceSettings
from tickertap.secrets import AppRoleLogin, CredentialRotator, TokenKeeper, Vault

__all__ = ["ServiceLogin", "command_engine", "service_login"]


@dataclass(frozen=True)
class ServiceLogin:
    vault: Vault
    rotator: CredentialRotator
    keeper: TokenKeeper | None  # None for a short command


@contextlib.asynccontextmanager
async def service_login(
    settings: ServiceSettings, *, keep_alive: bool
) -> AsyncIterator[ServiceLogin]:
    """Logged in to Vault with database credentials, until the block ends (see the module)."""
    vault = Vault(settings.vault_addr)
    try:
        await vault.login_approle(AppRoleLogin(settings.vault_role_id, settings.secret_id()))
        grace_s = settings.db_credential_grace_s if keep_alive else 0
        rotator = CredentialRotator(vault, settings.vault_role, grace_s=grace_s)
        await rotator.start()
        try:
            keeper = TokenKeeper(vault, [rotator]) if keep_alive else None
            if keeper is not None:
                keeper.start()
            try:
                yield ServiceLogin(vault, rotator, keeper)
            finally:
                if keeper is not None:
                    await keeper.stop()
        finally:
            await rotator.stop()  # after the pools: revoking the lease ends their sessions
    finally:
        vault.close()


@contextlib.asynccontextmanager
async def command_engine(
    settings: ServiceSettings, application_name: str, *, read_only: bool = False
) -> AsyncIterator[AsyncEngine]:
    """An engine on the service's schema for one command, disposed and revoked at the end."""
    async with service_login(settings, keep_alive=False) as login:
        engine = create_engine(
            settings.database(),
            login.rotator,
            application_name=application_name,
            read_only=read_only,
        )
        try:
            yield engine
        finally:
            await engine.dispose()
