"""The auth service's rules, pure: roles and scopes, lockout, TOTP, token claims, errors.

Nothing here does I/O: Vault, Postgres and Argon2 live behind the handlers.
Errors are one tree; each maps to one HTTP status and one machine-readable code:

    AuthError (400 bad_request)
    ├── InvalidCredentials (401 invalid_credentials)   wrong email or password, same for both
    ├── SessionInvalid (401 invalid_token)             revoked session, deleted user
    ├── MfaRequired (401 mfa_required)                 a second factor is needed
    ├── InvalidOtp (401 invalid_otp)
    ├── Throttled (429 too_many_requests)              rate limit or lockout; Retry-After
    ├── EmailTaken (409 email_taken), MfaState (409 mfa_state)
    ├── WeakPassword (422 weak_password), UnknownRole (422 unknown_role)
    └── NotFound (404 not_found)

The token endpoint answers RFC 6749 errors instead: `OAuthError(error, description)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import struct
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

ROLES = ("customer", "support", "admin")
DEFAULT_ROLES = ("customer",)
# the scopes each role may hold; a token carries the requested subset (all when none asked)
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "customer": frozenset({"profile", "ledger:read", "ledger:write", "portfolio:read"}),
    "support": frozenset({"profile", "ledger:read", "portfolio:read", "users:read"}),
    "admin": frozenset(
        {"profile", "ledger:read", "ledger:write", "portfolio:read", "users:read", "users:write"}
    ),
}
EMAIL_CHARS_MAX = 254
TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation
RECOVERY_CODE_BYTES = 10  # 80 bits, shown as 16 base32 characters


class AuthError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class InvalidCredentials(AuthError):
    status = 401
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("the email or the password is wrong")


class SessionInvalid(AuthError):
    status = 401
    code = "invalid_token"

    def __init__(self) -> None:
        super().__init__("the access token's session has ended")
        self.headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class MfaRequired(AuthError):
    status = 401
    code = "mfa_required"


class InvalidOtp(AuthError):
    status = 401
    code = "invalid_otp"

    def __init__(self) -> None:
        super().__init__("the one-time code is wrong or was used already")


class Throttled(AuthError):
    status = 429
    code = "too_many_requests"

    def __init__(
        self, retry_after_s: float, detail: str = "too many attempts; retry later"
    ) -> None:
        super().__init__(detail, retry_after_s=max(1, math.ceil(retry_after_s)))
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class EmailTaken(AuthError):
    status = 409
    code = "email_taken"

    def __init__(self) -> None:
        super().__init__("an account with this email exists")


class MfaState(AuthError):
    status = 409
    code = "mfa_state"


class WeakPassword(AuthError):
    status = 422
    code = "weak_password"


class UnknownRole(AuthError):
    status = 422
    code = "unknown_role"


class NotFound(AuthError):
    status = 404
    code = "not_found"


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error of the token or revocation endpoint."""

    def __init__(
        self, error: str, description: str, *, status: int = 400, **extra: str | int
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.extra = extra


# -- emails and passwords --------------------------------------------------------------


def normalize_email(email: str) -> str:
    """The form the blind index is computed on: NFKC, trimmed, lower case."""
    return unicodedata.normalize("NFKC", email).strip().lower()


def check_password(password: str, chars_min: int, chars_max: int) -> None:
    """Length rules only (NIST SP 800-63B): no composition rules, every character allowed."""
    if len(password) < chars_min:
        raise WeakPassword(f"a password has at least {chars_min} characters")
    if len(password) > chars_max:
        raise WeakPassword(f"a password has at most {chars_max} characters")
    if len(set(password)) < 4:
        raise WeakPassword("a password needs more than a few distinct characters")


# -- lockout ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    failures_max: int
    base_s: float
    s_max: float
    reset_s: float


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """Failed logins of one email (known or not: unknown emails lock alike, so a lock
    says nothing about whether an account exists). Times are epoch seconds."""

    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0
    last_failure_at: float = 0.0

    def retry_after_s(self, now: float) -> float:
        return max(0.0, self.locked_until - now)

    def failed(self, policy: LockoutPolicy, now: float) -> LoginThrottle:
        """The state after one more failure: every `failures_max` failures in a row lock
        for base * 2^lockouts (capped); a quiet `reset_s` forgets earlier lockouts."""
        lockouts = self.lockouts if now - self.last_failure_at < policy.reset_s else 0
        failures = self.failures + 1
        if failures < policy.failures_max:
            return LoginThrottle(failures, lockouts, self.locked_until, now)
        period_s = min(policy.s_max, policy.base_s * 2 ** min(lockouts, 32))
        return LoginThrottle(0, lockouts + 1, now + period_s, now)


# -- roles and scopes ------------------------------------------------------------------


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UnknownRole(f"roles are {', '.join(ROLES)}", role=role)
    return role


def allowed_scopes(roles: Iterable[str]) -> frozenset[str]:
    scopes: frozenset[str] = frozenset()
    for role in roles:
        scopes |= ROLE_SCOPES.get(role, frozenset())
    return scopes


def grant_scopes(requested: str | None, allowed: frozenset[str]) -> frozenset[str]:
    """RFC 6749 section 3.3: the requested scopes when all are allowed, every allowed
    scope when none were asked; `invalid_scope` otherwise."""
    if requested is None or not requested.strip():
        return allowed
    asked = frozenset(requested.split())
    if not asked <= allowed:
        raise OAuthError("invalid_scope", "a requested scope is not available to this client")
    return asked


# -- access tokens ---------------------------------------------------------------------


def access_token_claims(
    *,
    issuer: str,
    audience: str,
    subject: str,
    roles: Iterable[str],
    scopes: Iterable[str],
    session_id: uuid.UUID | None,
    now_s: int,
    ttl_s: int,
    client_id: str | None = None,
) -> dict[str, Any]:
    """RFC 9068 claims of an access token."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + ttl_s,
        "jti": str(uuid.uuid4()),
        "roles": sorted(roles),
        "scope": " ".join(sorted(scopes)),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    if client_id is not None:
        claims["client_id"] = client_id
    return claims


def opaque_token() -> str:
    """A refresh token, MFA token or client secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """What is stored of a high-entropy token: its SHA-256 (no salt is needed at 256 bits)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


# -- TOTP (RFC 4226, RFC 6238) ---------------------------------------------------------


def hotp(secret: bytes, counter: int, digits: int = TOTP_DIGITS, digest: str = "sha1") -> str:
    mac = hmac.new(secret, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10**digits).zfill(digits)


def totp(
    secret: bytes,
    at_s: float,
    *,
    digits: int = TOTP_DIGITS,
    digest: str = "sha1",
    step_s: int = TOTP_STEP_S,
) -> str:
    return hotp(secret, int(at_s // step_s), digits, digest)


def verify_totp(
    secret: bytes, code: str, at_s: float, *, window_steps: int, last_step: int | None
) -> int | None:
    """The time step `code` matches within ±`window_steps`, if later than `last_step`
    (a code is good once); None otherwise. Compares in constant time."""
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    now_step = int(at_s // TOTP_STEP_S)
    found: int | None = None
    for step in range(now_step - window_steps, now_step + window_steps + 1):
        if hmac.compare_digest(hotp(secret, step), code) and (
            last_step is None or step > last_step
        ):
            found = step if found is None else found
    return found


def new_totp_secret() -> bytes:
    return secrets.token_bytes(TOTP_SECRET_BYTES)


def b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def otpauth_uri(secret: bytes, account: str, issuer: str) -> str:
    """The Key Uri Format authenticator apps read (as a QR code)."""
    label = urllib.parse.quote(f"{issuer}:{account}")
    query = urllib.parse.urlencode(
        {
            "secret": b32(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP_S,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def new_recovery_codes(count: int) -> list[str]:
    return [b32(secrets.token_bytes(RECOVERY_CODE_BYTES)).lower() for _ in range(count)]


def recovery_digest(user_id: uuid.UUID, code: str) -> bytes:
    """Recovery codes are 80 random bits: a salted SHA-256 is enough to store them."""
    normalized = code.strip().lower().replace("-", "").replace(" ", "")
    return hashlib.sha256(user_id.bytes + normalized.encode("ascii", "replace")).digest()
