"""What the auth service's tests share: settings, a small client, an independent JWT check."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import uuid
from typing import Any

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tickertap.auth.settings import AuthSettings

ISSUER = "https://auth.tickertap.test"
AUDIENCE = "tickertap"
PASSWORD = "correct horse battery staple"
# client addresses of their own per test run: the rate buckets of earlier runs stay in Postgres
_ips = itertools.count(secrets.randbelow(1 << 23) + 1)


def app_settings(stack: Any, secret_id: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "http_port": 1,
        "db_host": stack.pg_host,
        "db_port": stack.pg_port,
        "db_name": stack.database,
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "vault_addr": stack.vault_addr,
        "vault_role_id": stack.role_id("auth"),
        "vault_secret_id": secret_id,
        "auth_issuer": ISSUER,
        "auth_audience": AUDIENCE,
        "lockout_failures_max": 3,
        "lockout_base_s": 2.0,
        "lockout_s_max": 8.0,
        "login_burst": 30,
        "register_burst": 30,
    }
    return AuthSettings(**(values | overrides))


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@Example.test"


def new_ip() -> str:
    n = next(_ips)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def client_for(app: Any, ip: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip or new_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://auth.test", timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AuthClient:
    """A small client of the auth API for tests: calls return responses."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def register(self, email: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
        r = await self.http.post(
            "/v1/users", json={"email": email or new_email(), "password": password}
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def token(self, **form: str) -> httpx.Response:
        return await self.http.post("/oauth/token", data=form)

    async def login(self, email: str, password: str = PASSWORD, **form: str) -> dict[str, Any]:
        r = await self.token(grant_type="password", username=email, password=password, **form)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def new_user(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A registered user and a token pair of theirs."""
        user = await self.register()
        return user, await self.login(user["email"])

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.token(grant_type="refresh_token", refresh_token=refresh_token)

    async def me(self, access_token: str) -> httpx.Response:
        return await self.http.get("/v1/users/me", headers=bearer(access_token))


async def make_admin(db: asyncpg.Connection, user_id: str, role: str = "admin") -> None:
    """The first administrator is made in the database (an operator's job, audited there)."""
    await db.execute(
        "UPDATE auth.users SET roles = array_append(roles, $2) WHERE id = $1",
        uuid.UUID(user_id),
        role,
    )


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify_independently(token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, its Ed25519 signature checked with `cryptography`
    against the published JWK of its kid (no JOSE library of the project involved)."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64d(header_b64))
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert "d" not in jwk, "a private key is published"
    public = Ed25519PublicKey.from_public_bytes(b64d(jwk["x"]))
    public.verify(b64d(signature_b64), f"{header_b64}.{payload_b64}".encode())
    return header, json.loads(b64d(payload_b64))
