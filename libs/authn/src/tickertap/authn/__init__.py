"""Verifying the auth service's access tokens in every service.

    verifier = AccessTokenVerifier(
        HttpJwks("http://auth:8000/.well-known/jwks.json"),
        issuer="https://auth.tickertap", audience="ledger",
    )
    auth = BearerAuth(verifier)
    PrincipalDep = Annotated[Principal, Depends(auth.require())]

    @router.post("/transfers")
    async def post_transfer(body: TransferCreate, principal: PrincipalDep) -> TransferPublic: ...

Errors (problem details through `tickertap.runtime.install_error_handlers`):

    InvalidToken (401 invalid_token)       missing, malformed, forged, expired or foreign token
    └── MissingToken                      no bearer credentials (challenge without an error code)
    InsufficientScope (403 insufficient_scope)
    KeysUnavailable (503 keys_unavailable) the key set cannot be fetched and none is cached

`tickertap.authn.testing.TokenMinter` mints tokens for tests.
"""

from tickertap.authn.bearer import BearerAuth, bearer_token
from tickertap.authn.errors import InsufficientScope, InvalidToken, KeysUnavailable, MissingToken
from tickertap.authn.jwks import HttpJwks, JwksSource, StaticJwks, jwks_source, parse_jwks
from tickertap.authn.principal import Principal
from tickertap.authn.revocation import Revocations
from tickertap.authn.verifier import AccessTokenVerifier, TokenVerifier

__all__ = [
    "AccessTokenVerifier",
    "BearerAuth",
    "HttpJwks",
    "InsufficientScope",
    "InvalidToken",
    "JwksSource",
    "KeysUnavailable",
    "MissingToken",
    "Principal",
    "Revocations",
    "StaticJwks",
    "TokenVerifier",
    "bearer_token",
    "jwks_source",
    "parse_jwks",
]
