"""Keep a service's Vault token and database login alive, and rotate the login without errors.

The pattern (measured in DESIGN.md): a pool's connect callback reads
`CredentialRotator.current`; the rotator renews the lease before it expires,
takes new credentials when renewal can no longer extend it (max TTL), bumps
`generation` so pools replace older connections at their next checkout, and
revokes the old lease after a grace period (which terminates its sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from tickertap.secrets.vault import DatabaseCredentials, Vault, VaultError

log = logging.getLogger(__name__)

RotationListener = Callable[[DatabaseCredentials], None]


class CredentialRotator:
    """One live database login from `database/creds/<role>`, always valid."""

    def __init__(
        self,
        vault: Vault,
        role: str,
        *,
        renew_at_fraction: float = 0.5,
        grace_s: float = 30.0,
        retry_backoff_s_max: float = 5.0,
    ) -> None:
        assert 0.1 <= renew_at_fraction <= 0.9
        self._vault = vault
        self.role = role
        self._renew_at_fraction = renew_at_fraction
        self._grace_s = grace_s
        self._retry_backoff_s_max = retry_backoff_s_max
        self._current: DatabaseCredentials | None = None
        self._expires_at_s = 0.0
        self.generation = 0
        self.rotations = 0
        self.renewals = 0
        self._listeners: list[RotationListener] = []
        self._task: asyncio.Task[None] | None = None
        self._revocations: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def current(self) -> DatabaseCredentials:
        assert self._current is not None, "CredentialRotator.start() was not awaited"
        return self._current

    def on_rotate(self, listener: RotationListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._issue()
        self._task = asyncio.create_task(self._run(), name=f"rotate-{self.role}")

    def rotate_soon(self) -> None:
        """Take new credentials now (for example after the Vault token was replaced)."""
        self._expires_at_s = 0.0
        self._wake.set()

    async def stop(self, *, revoke: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._revocations):
            task.cancel()
        if revoke and self._current is not None:
            with contextlib.suppress(VaultError):
                await self._vault.revoke_lease(self._current.lease.lease_id)

    async def _issue(self) -> None:
        old = self._current
        fresh = await self._vault.database_credentials(self.role)
        self._current = fresh
        self._expires_at_s = fresh.issued_at_s + fresh.lease.duration_s
        self.generation += 1
        if old is not None:
            self.rotations += 1
            log.info(
                "database credentials rotated",
                extra={"role": self.role, "generation": self.generation},
            )
            self._schedule_revocation(old)
        for listener in self._listeners:
            listener(fresh)

    def _schedule_revocation(self, old: DatabaseCredentials) -> None:
        async def revoke_later() -> None:
            await asyncio.sleep(self._grace_s)
            with contextlib.suppress(VaultError):  # already expired is fine
                await self._vault.revoke_lease(old.lease.lease_id)

        task = asyncio.create_task(revoke_later(), name=f"revoke-{self.role}")
        self._revocations.add(task)
        task.add_done_callback(self._revocations.discard)

    async def _run(self) -> None:
        failures = 0
        while True:
            remaining_s = self._expires_at_s - time.monotonic()
            wait_s = max(0.0, remaining_s * self._renew_at_fraction)
            if failures:
                wait_s = min(wait_s, random.uniform(0, min(self._retry_backoff_s_max, 2**failures)))  # noqa: S311
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            try:
                await self._refresh()
                failures = 0
            except VaultError as exc:
                failures += 1
                log.warning(
                    "credential refresh failed",
                    extra={"role": self.role, "error": type(exc).__name__},
                )

    async def _refresh(self) -> None:
        current = self.current
        remaining_s = self._expires_at_s - time.monotonic()
        if remaining_s <= 0 or not current.lease.renewable:
            await self._issue()
            return
        requested_s = current.lease.duration_s
        lease = await self._vault.renew_lease(current.lease.lease_id, requested_s)
        self.renewals += 1
        self._expires_at_s = time.monotonic() + lease.duration_s
        if lease.duration_s < requested_s * self._renew_at_fraction or lease.duration_s <= 1:
            # the max TTL caps the lease: switch to new credentials while the old still work
            await self._issue()


class TokenKeeper:
    """Keeps the Vault token alive: renews it, logs in again near its max TTL.

    Database leases belong to the token that made them, so after a new login
    every rotator is asked to take new credentials at once.
    """

    def __init__(
        self, vault: Vault, rotators: list[CredentialRotator], *, renew_at_fraction: float = 0.5
    ) -> None:
        self._vault = vault
        self._rotators = rotators
        self._renew_at_fraction = renew_at_fraction
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vault-token")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            expires = self._vault.token_expires_at_s
            if expires is None:
                return  # a token without expiry (root, tests): nothing to do
            await asyncio.sleep(max(0.5, (expires - time.monotonic()) * self._renew_at_fraction))
            try:
                before = self._vault.token_expires_at_s or 0.0
                ttl_s = await self._vault.renew_token()
                if ttl_s <= 2 or (self._vault.token_expires_at_s or 0.0) <= before:
                    await self._vault.relogin()
                    for rotator in self._rotators:
                        rotator.rotate_soon()
            except VaultError as exc:
                log.warning("vault token renewal failed", extra={"error": type(exc).__name__})
                try:
                    await self._vault.relogin()
                    for rotator in self._rotators:
                        rotator.rotate_soon()
                except VaultError:
                    await asyncio.sleep(1.0)
