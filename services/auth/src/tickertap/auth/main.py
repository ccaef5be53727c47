"""Composition root of the auth service: `create_app(settings)` and `main()`."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from joserfc.jwk import Key

from tickertap.auth import api
from tickertap.auth.domain import AuthError, OAuthError
from tickertap.auth.handlers import Auth
from tickertap.auth.keys import SigningKeys
from tickertap.auth.settings import AuthSettings
from tickertap.authn import AccessTokenVerifier, BearerAuth
from tickertap.runtime import ServiceDefinition, ServiceRuntime, create_service_app, problem, serve
from tickertap.secrets import VaultError

log = logging.getLogger(__name__)


class LiveKeys:
    """The verifier's key source before start-up: the signing keys once the service runs."""

    def __init__(self) -> None:
        self.keys: SigningKeys | None = None

    async def get_key(self, kid: str) -> Key | None:
        return None if self.keys is None else await self.keys.get_key(kid)


def create_app(settings: AuthSettings) -> FastAPI:
    live_keys = LiveKeys()
    verifier = AccessTokenVerifier(
        live_keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=("EdDSA",),
        lifetime_s_max=max(settings.access_token_ttl_s, settings.client_token_ttl_s),
    )

    async def start_auth(runtime: ServiceRuntime) -> None:
        keys = SigningKeys(
            runtime.vault,
            settings.signing_key,
            token_ttl_s=settings.access_token_ttl_s,
            rotation_s=settings.signing_key_rotation_s,
            check_interval_s=settings.signing_key_check_interval_s,
            jwks_cache_s=settings.jwks_cache_s,
            include_file=settings.jwks_include_file,
        )
        await keys.refresh()
        live_keys.keys = keys
        auth = Auth(
            settings, runtime.writer, runtime.vault, keys, runtime.outbox, runtime.codec, verifier
        )
        runtime.state["auth"] = auth
        runtime.spawn(keys.run(), "signing-key-rotation", graceful=False)
        runtime.spawn(auth.run_purge(), "auth-purge", graceful=False)

    definition = ServiceDefinition(
        name="auth",
        title="tickerTap auth",
        version="0.1.0",
        description=(
            "Users, Argon2id passwords, JWT access tokens signed in Vault, rotating "
            "refresh tokens, TOTP MFA, roles and scopes; OAuth 2 token and revocation "
            "endpoints and the JWKS."
        ),
        migrations=Path(__file__).parent / "migrations",
        routers=[api.build_router(BearerAuth(verifier))],
        on_start=[start_auth],
    )
    app = create_service_app(definition, settings)

    async def on_auth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        response = problem(exc.status, exc.code, exc.detail, **exc.extra)
        response.headers.update(exc.headers)
        return response

    async def on_oauth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OAuthError)
        return api.oauth_error_response(exc)

    async def on_vault_error(_: Request, exc: Exception) -> JSONResponse:
        # Vault signs tokens and guards emails: without it nothing is issued or written
        log.warning("vault unavailable", extra={"error": type(exc).__name__})
        response = problem(503, "unavailable", "a dependency is unavailable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    app.add_exception_handler(AuthError, on_auth_error)
    app.add_exception_handler(VaultError, on_vault_error)
    app.add_exception_handler(OAuthError, on_oauth_error)
    return app


def main() -> None:
    settings = AuthSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
