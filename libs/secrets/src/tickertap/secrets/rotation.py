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
        self._pending_revocation: list[DatabaseCredentials] = []
        self._rotation_requested = False
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
        self._rotation_requested = True
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop renewing; revoke the current lease and any still in their grace period.

        Call it after the pools using these credentials are disposed.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._revocations):
            task.cancel()
        if not revoke:
            return
        pending = [*self._pending_revocation, *([self._current] if self._current else [])]
        for credentials in pending:
            with contextlib.suppress(VaultError):
                await self._vault.revoke_lease(credentials.lease.lease_id)
        self._pending_revocation.clear()

    async def _issue(self) -> None:
        self._rotation_requested = False
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
        self._pending_revocation.append(old)

        async def revoke_later() -> None:
            await asyncio.sleep(self._grace_s)
            with contextlib.suppress(VaultError):  # already expired is fine
                await self._vault.revoke_lease(old.lease.lease_id)
            with contextlib.suppress(ValueError):
                self._pending_revocation.remove(old)

        task = asyncio.create_task(revoke_later(), name=f"revoke-{self.role}")
        self._revocations.add(task)
        task.add_done_callback(self._revocations.discard)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._rotation_requested:
                remaining_s = self._expires_at_s - time.monotonic()
                wait_s = max(0.0, remaining_s * self._renew_at_fraction)
                if failures:  # back off after a failure, however little time is left
                    ceiling_s = min(self._retry_backoff_s_max, 0.1 * 2**failures)
                    wait_s = max(ceiling_s / 2, min(wait_s, random.uniform(0, ceiling_s)))  # noqa: S311  # nosec B311  # backoff jitter, not crypto
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            try:
                await self._refresh()
                failures = 0
            except Exception as exc:  # keep the login alive whatever went wrong once
                failures += 1
                log.warning(
                    "credential refresh failed: %s: %s",
                    type(exc).__name__,
                    str(exc)[:200],  # Vault's message: a reason, never a credential
                    extra={"role": self.role, "failures": failures},
                )

    async def _refresh(self) -> None:
        current = self.current
        remaining_s = self._expires_at_s - time.monotonic()
        if self._rotation_requested or remaining_s <= 0 or not current.lease.renewable:
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
    """Keeps the Vault token alive: renews it, logs in again before its max TTL.

    Database leases belong to the token that made them and die with it, so the
    keeper logs in again as soon as a renewal comes back capped by the max TTL
    (while the old token still has most of its life) and asks every rotator to
    take new credentials under the new token.
    """

    def __init__(
        self,
        vault: Vault,
        rotators: list[CredentialRotator],
        *,
        renew_at_fraction: float = 0.5,
        retry_backoff_s_max: float = 5.0,
    ) -> None:
        self._vault = vault
        self._rotators = rotators
        self._renew_at_fraction = renew_at_fraction
        self._retry_backoff_s_max = retry_backoff_s_max
        self._task: asyncio.Task[None] | None = None
        self._ttl_s_full: int | None = None
        self.relogins = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vault-token")

    @property
    def running(self) -> bool:
        """False only when it stopped unexpectedly (a token without expiry needs no keeper)."""
        if self._task is None or not self._task.done():
            return True
        return not self._task.cancelled() and self._task.exception() is None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _relogin(self) -> None:
        await self._vault.relogin()
        self.relogins += 1
        self._ttl_s_full = None
        for rotator in self._rotators:
            rotator.rotate_soon()

    async def _run(self) -> None:
        failures = 0
        while True:
            expires = self._vault.token_expires_at_s
            if expires is None:
                return  # a token without expiry (root, tests): nothing to do
            wait_s = max(0.5, (expires - time.monotonic()) * self._renew_at_fraction)
            if failures:
                wait_s = min(wait_s, min(self._retry_backoff_s_max, 0.1 * 2**failures))
            await asyncio.sleep(wait_s)
            try:
                ttl_s = await self._vault.renew_token()
                self._ttl_s_full = max(self._ttl_s_full or 0, ttl_s)
                if ttl_s < self._ttl_s_full * self._renew_at_fraction:
                    await self._relogin()  # capped by the max TTL: start a new token now
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("vault token renewal failed", extra={"error": type(exc).__name__})
                with contextlib.suppress(Exception):
                    await self._relogin()
                    failures = 0
