"""The three ways a request's access token can fail, as problem details (RFC 9457).

    InvalidToken (401 invalid_token)        the token is missing, malformed, forged or stale
    └── MissingToken (401 invalid_token)    no Bearer credentials at all
    InsufficientScope (403 insufficient_scope)  a valid token without a required scope or role
    KeysUnavailable (503 keys_unavailable)  the auth service's keys cannot be had

401 and 403 carry the RFC 6750 `WWW-Authenticate: Bearer ...` challenge. No
message, header or log line ever holds the token or any of its claims: the
internal `reason` of an `InvalidToken` names the check that failed, nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from tickertap.runtime.errors import Forbidden, ServiceError, Unauthorized

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class InvalidToken(Unauthorized):
    code = "invalid_token"
    headers: Mapping[str, str] = MappingProxyType(
        {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )

    def __init__(self, reason: str, detail: str = "the access token is not valid") -> None:
        super().__init__(detail)
        self.reason = reason


class MissingToken(InvalidToken):
    """No Bearer credentials: RFC 6750 section 3.1 asks for a challenge without an error code."""

    headers: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": "Bearer"})

    def __init__(self) -> None:
        super().__init__("no bearer credentials", "an access token is required")


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        super().__init__("the access token lacks a required scope or role")
        required = sorted(scopes)
        assert all(SCOPE_TOKEN.fullmatch(scope) for scope in required)
        challenge = 'Bearer error="insufficient_scope"'
        if required:
            challenge += f', scope="{" ".join(required)}"'
        self.headers = MappingProxyType({"WWW-Authenticate": challenge})


class KeysUnavailable(ServiceError):
    """The key set was never fetched, or is older than its stale bound and cannot be refreshed."""

    status = 503
    code = "keys_unavailable"

    def __init__(self) -> None:
        super().__init__("the keys to verify access tokens are unavailable, try again later")
