"""A small async face over Vault (OpenBao): AppRole login, dynamic database credentials, transit.

hvac is synchronous; every call runs in a worker thread so the event loop never
blocks. Errors are one tree:

    VaultError                  anything Vault refused or could not answer
    ├── VaultUnavailable        no answer (connection refused, timeout, 5xx)
    └── VaultDenied             the token may not do this (403)
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests


class VaultError(Exception):
    """Vault refused a request or could not answer it."""


class VaultUnavailable(VaultError):
    """Vault did not answer (connection refused, timeout, sealed, 5xx)."""


class VaultDenied(VaultError):
    """The token is not allowed to do this (403)."""


@dataclass(frozen=True)
class AppRoleLogin:
    """How a service proves who it is: its AppRole role_id and secret_id."""

    role_id: str
    secret_id: str

    @classmethod
    def from_file(cls, role_id: str, secret_id_file: Path) -> AppRoleLogin:
        return cls(role_id=role_id, secret_id=secret_id_file.read_text().strip())

    def __repr__(self) -> str:  # never print the secret_id
        return f"AppRoleLogin(role_id={self.role_id!r}, secret_id=***)"


@dataclass(frozen=True)
class Lease:
    lease_id: str
    duration_s: int
    renewable: bool


@dataclass(frozen=True)
class DatabaseCredentials:
    """A Vault-issued Postgres login and the lease that keeps it alive."""

    username: str
    password: str
    lease: Lease
    issued_at_s: float  # time.monotonic() when issued

    def __repr__(self) -> str:
        return f"DatabaseCredentials(username={self.username!r}, lease={self.lease.lease_id!r})"


def _translate(exc: Exception) -> VaultError:
    if isinstance(exc, hvac.exceptions.Forbidden):
        return VaultDenied(str(exc).split("\n")[0])
    if isinstance(exc, hvac.exceptions.VaultDown | hvac.exceptions.InternalServerError):
        return VaultUnavailable(type(exc).__name__)
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultUnavailable(type(exc).__name__)
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultError(str(exc).split("\n")[0])
    raise exc


class Vault:
    """One service's Vault session. Build it with `login_approle` or a token."""

    def __init__(self, addr: str, token: str | None = None, *, timeout_s: float = 5.0) -> None:
        self._client = hvac.Client(url=addr, token=token, timeout=timeout_s)
        self._login: AppRoleLogin | None = None
        self.token_expires_at_s: float | None = None  # monotonic; None: no expiry known

    @property
    def addr(self) -> str:
        return str(self._client.url)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise _translate(exc) from exc

    # -- authentication -----------------------------------------------------------------
    async def login_approle(self, login: AppRoleLogin) -> None:
        self._login = login
        response = await self._call(
            self._client.auth.approle.login, role_id=login.role_id, secret_id=login.secret_id
        )
        self._note_token(response["auth"])

    def _note_token(self, auth: dict[str, Any]) -> None:
        duration_s = int(auth.get("lease_duration") or 0)
        self.token_expires_at_s = time.monotonic() + duration_s if duration_s else None

    async def renew_token(self) -> int:
        """Renew our token; returns its new TTL in seconds (capped by the max TTL)."""
        response = await self._call(self._client.auth.token.renew_self)
        self._note_token(response["auth"])
        return int(response["auth"]["lease_duration"])

    async def relogin(self) -> None:
        if self._login is None:
            raise VaultError("no AppRole login to repeat")
        await self.login_approle(self._login)

    async def ping(self) -> None:
        """Readiness: Vault answers and our token is valid."""
        await self._call(self._client.auth.token.lookup_self)

    # -- database credentials -----------------------------------------------------------
    async def database_credentials(self, role: str, mount: str = "database") -> DatabaseCredentials:
        response = await self._call(
            self._client.secrets.database.generate_credentials, name=role, mount_point=mount
        )
        return DatabaseCredentials(
            username=response["data"]["username"],
            password=response["data"]["password"],
            lease=Lease(
                lease_id=response["lease_id"],
                duration_s=int(response["lease_duration"]),
                renewable=bool(response["renewable"]),
            ),
            issued_at_s=time.monotonic(),
        )

    async def renew_lease(self, lease_id: str, increment_s: int | None = None) -> Lease:
        body = {"increment": increment_s} if increment_s else {}
        response = await self._call(
            self._client.adapter.put, f"/v1/sys/leases/renew/{lease_id}", json=body
        )
        return Lease(
            lease_id=response["lease_id"],
            duration_s=int(response["lease_duration"]),
            renewable=bool(response["renewable"]),
        )

    async def revoke_lease(self, lease_id: str) -> None:
        await self._call(self._client.adapter.put, f"/v1/sys/leases/revoke/{lease_id}")

    # -- transit ------------------------------------------------------------------------
    async def encrypt(self, key: str, plaintext: bytes, *, context: bytes | None = None) -> str:
        """Field encryption: returns Vault's ciphertext string (`vault:vN:...`)."""
        response = await self._call(
            self._client.secrets.transit.encrypt_data,
            name=key,
            plaintext=base64.b64encode(plaintext).decode(),
            context=base64.b64encode(context).decode() if context else None,
        )
        return str(response["data"]["ciphertext"])

    async def decrypt(self, key: str, ciphertext: str, *, context: bytes | None = None) -> bytes:
        response = await self._call(
            self._client.secrets.transit.decrypt_data,
            name=key,
            ciphertext=ciphertext,
            context=base64.b64encode(context).decode() if context else None,
        )
        return base64.b64decode(response["data"]["plaintext"])

    async def rewrap(self, key: str, ciphertext: str) -> str:
        """Re-encrypt under the key's latest version without revealing the plaintext."""
        response = await self._call(
            self._client.secrets.transit.rewrap_data, name=key, ciphertext=ciphertext
        )
        return str(response["data"]["ciphertext"])

    async def hmac(self, key: str, data: bytes, *, key_version: int | None = None) -> str:
        """A keyed digest for blind indexes: equal inputs give equal outputs per key version."""
        response = await self._call(
            self._client.secrets.transit.generate_hmac,
            name=key,
            hash_input=base64.b64encode(data).decode(),
            key_version=key_version,
            algorithm="sha2-256",
        )
        return str(response["data"]["hmac"])

    async def data_key(self, key: str) -> tuple[bytes, str]:
        """Envelope encryption: a fresh data key in plaintext and wrapped by `key`."""
        response = await self._call(
            self._client.secrets.transit.generate_data_key, name=key, key_type="plaintext"
        )
        return base64.b64decode(response["data"]["plaintext"]), str(response["data"]["ciphertext"])

    async def sign(self, key: str, data: bytes, *, key_version: int | None = None) -> bytes:
        """Sign `data` with an asymmetric transit key (the private key never leaves Vault);
        returns the raw signature (for Ed25519 the 64 bytes a JWS carries)."""
        response = await self._call(
            self._client.secrets.transit.sign_data,
            name=key,
            hash_input=base64.b64encode(data).decode(),
            key_version=key_version,
        )
        signature = str(response["data"]["signature"])  # vault:v<N>:<base64>
        return base64.b64decode(signature.rsplit(":", 1)[1])

    async def read_key(self, key: str) -> dict[str, Any]:
        """A transit key's description: type, latest_version, and per version its creation
        time (and, for asymmetric keys, its public key)."""
        response = await self._call(self._client.secrets.transit.read_key, name=key)
        return dict(response["data"])

    async def rotate_key(self, key: str) -> None:
        """Add a new version to a transit key; new encryptions and signatures use it."""
        await self._call(self._client.secrets.transit.rotate_key, name=key)

    def close(self) -> None:
        self._client.adapter.close()
