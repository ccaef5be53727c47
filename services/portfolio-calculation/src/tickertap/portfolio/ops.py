"""What the operator commands (rebuild, reconcile, valuations) share: logging in as the
service does, AppRole then short-lived database credentials, revoked on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.db import create_engine
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.secrets import AppRoleLogin, CredentialRotator, Vault


@contextlib.asynccontextmanager
async def service_engine(
    settings: PortfolioSettings, application_name: str, *, read_only: bool = False
) -> AsyncIterator[AsyncEngine]:
    vault = Vault(settings.vault_addr)
    try:
        await vault.login_approle(AppRoleLogin(settings.vault_role_id, settings.secret_id()))
        rotator = CredentialRotator(vault, settings.vault_role, grace_s=0)
        await rotator.start()
        try:
            engine = create_engine(
                settings.database(), rotator, application_name=application_name, read_only=read_only
            )
            try:
                yield engine
            finally:
                await engine.dispose()
        finally:
            await rotator.stop()  # after the pool: revoking the lease ends its sessions
    finally:
        vault.close()
