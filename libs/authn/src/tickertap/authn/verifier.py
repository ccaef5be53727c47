"""Verifying an access token: a compact JWS signed by the auth service (RFC 7515, 7519, 9068).

What a token must be, checked in this order, each failure an `InvalidToken`:

- at most `token_bytes_max` characters of `header.payload.signature` in base64url;
- a protected header with an allowed asymmetric `alg` (never "none" or HS*),
  a `kid`, no `crit` or `b64`, and a `typ`, if any, of "at+jwt" or "JWT";
- a signature that verifies with the key of that `kid` from the key source,
  whose type and curve fit `alg` (and whose own `alg`, if published, is `alg`);
- a JSON object of claims, no member repeated: `iss` is the issuer, `aud` (a
  string or a list) holds the audience, `exp` is not past, `iat` and `nbf` not
  ahead (each give or take `leeway_s`), `exp - iat` at most `lifetime_s_max`,
  `sub` a non-empty string; `roles` a list of strings, `scope` a
  space-separated string or `scp` a list (not both), `sid` and `jti` strings,
  each optional and bounded in length and count;
- with `revocations`, neither its session nor its user revoked since it was issued
  (`tickertap.authn.revocation`).

The signature is checked before any claim is read.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NoReturn, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry, extract_compact

from tickertap.authn._jose import ASYMMETRIC_ALGORITHMS, algorithm, b64decode
from tickertap.authn.errors import SCOPE_TOKEN, InvalidToken
from tickertap.authn.jwks import JwksSource
from tickertap.authn.principal import Principal
from tickertap.authn.revocation import Revocations

log = logging.getLogger(__name__)

__all__ = ["AccessTokenVerifier", "TokenVerifier"]

TEXT_CHARS_MAX = 255  # sub, sid, jti, kid, iss, each role and audience
SCOPE_CHARS_MAX = 128
ROLES_MAX = 64
SCOPES_MAX = 64
AUDIENCES_MAX = 16
HEADER_BYTES_MAX = 1024
SIGNATURE_BYTES_MAX = 1024

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_NOT_VALID = "the access token is not valid"
_EXPIRED = "the access token has expired"


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


class AccessTokenVerifier:
    """Verifies access tokens against keys from `jwks`; see the module docstring for the checks."""

    def __init__(
        self,
        jwks: JwksSource,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("EdDSA", "ES256"),
        leeway_s: float = 30,
        lifetime_s_max: float = 3600,
        token_bytes_max: int = 8 * 1024,
        cache_entries_max: int = 10_000,
        cache_ttl_s: float = 60.0,
        revocations: Revocations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        allowed = frozenset(algorithms)
        if not allowed or not allowed <= ASYMMETRIC_ALGORITHMS:
            raise ValueError(
                f"algorithms must be a non-empty subset of {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        assert issuer
        assert audience
        assert 0 <= leeway_s <= 300
        assert lifetime_s_max > 0
        assert token_bytes_max > 0
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._algorithms = allowed
        self._leeway_s = leeway_s
        self._lifetime_s_max = lifetime_s_max
        self._token_bytes_max = token_bytes_max
        self._clock = clock
        self.revocations = revocations
        # A token verified once is accepted again, as the very same string, until it
        # expires or `cache_ttl_s` passes, whichever is first, and only while the key
        # source still holds the very key that verified it: clients reuse one token for
        # many requests, and a key removed from the JWKS stops being honoured at once.
        assert cache_entries_max >= 0
        assert cache_ttl_s >= 0
        self._cache: OrderedDict[str, tuple[float, Principal, str, Key]] = OrderedDict()
        self._cache_entries_max = cache_entries_max
        self._cache_ttl_s = cache_ttl_s
        self._registry = JWSRegistry(algorithms=sorted(allowed))
        self._registry.max_header_length = HEADER_BYTES_MAX
        self._registry.max_payload_length = token_bytes_max
        self._registry.max_signature_length = SIGNATURE_BYTES_MAX

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; `InvalidToken` otherwise, `KeysUnavailable` (503)
        when the key source cannot answer."""
        now = self._clock()
        cached = self._cache.get(token) if self._cache_entries_max else None
        if cached is not None:
            valid_until, principal, kid, key = cached
            if now < valid_until and await self._jwks.get_key(kid) is key:
                self._cache.move_to_end(token)
                if self.revocations is not None:
                    self.revocations.check(principal)
                return principal
            self._cache.pop(token, None)
        try:
            principal, kid, key = await self._verify(token)
            if self.revocations is not None:
                self.revocations.check(principal)
        except InvalidToken as error:
            log.debug("access token rejected: %s", error.reason)
            raise
        if self._cache_entries_max:
            expires = principal.expires_at.timestamp()
            self._cache[token] = (min(expires, now + self._cache_ttl_s), principal, kid, key)
            if len(self._cache) > self._cache_entries_max:
                self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, str, Key]:
        if not isinstance(token, str) or len(token) > self._token_bytes_max:
            _reject("token too long")
        if not _COMPACT_JWS.fullmatch(token):
            _reject("not a compact JWS")
        try:
            jws = extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError, TypeError, LookupError, AttributeError, RecursionError):
            _reject("undecodable JWS")
        header: object = jws.protected
        if not isinstance(header, dict):
            _reject("header is not an object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            _reject("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= TEXT_CHARS_MAX:
            _reject("no kid")
        if "crit" in header or "b64" in header:
            _reject("critical header parameters are not supported")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TOKEN_TYPES):
            _reject("not an access token type")

        key = await self._jwks.get_key(kid)
        if key is None:
            _reject("unknown kid")
        model = algorithm(alg)
        segments = jws.segments
        try:
            model.check_key(key)
            signature = b64decode(segments["signature"])
            valid = model.verify(segments["header"] + b"." + segments["payload"], signature, key)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            _reject("signature does not verify")

        try:
            claims = json.loads(
                jws.payload.decode("utf-8"),
                object_pairs_hook=_unique_members,
                parse_constant=_no_constant,
            )
        except (ValueError, RecursionError):
            _reject("claims are not JSON")
        if not isinstance(claims, dict):
            _reject("claims are not an object")
        return self._principal(claims), kid, key

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if claims.get("iss") != self._issuer:
            _reject("wrong issuer")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if (
            not isinstance(audiences, list)
            or not 0 < len(audiences) <= AUDIENCES_MAX
            or self._audience not in audiences
        ):
            _reject("wrong audience")

        now = self._clock()
        expires = _number(claims, "exp", required=True)
        issued = _number(claims, "iat", required=True)
        not_before = _number(claims, "nbf", required=False)
        assert expires is not None
        assert issued is not None
        if expires + self._leeway_s < now:
            _reject("expired", _EXPIRED)
        if issued > now + self._leeway_s:
            _reject("issued in the future")
        if not_before is not None and not_before > now + self._leeway_s:
            _reject("not yet valid")
        if not 0 < expires - issued <= self._lifetime_s_max:
            _reject("lifetime out of bounds")

        subject = _text(claims, "sub", required=True)
        assert subject is not None
        return Principal(
            subject=subject,
            roles=_roles(claims),
            scopes=_scopes(claims),
            session_id=_text(claims, "sid", required=False),
            token_id=_text(claims, "jti", required=False),
            issued_at=datetime.fromtimestamp(issued, UTC),
            expires_at=datetime.fromtimestamp(expires, UTC),
            claims=MappingProxyType(claims),
        )


def _reject(reason: str, detail: str = _NOT_VALID) -> NoReturn:
    raise InvalidToken(reason, detail) from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("a member is repeated")
    return members


def _no_constant(_: str) -> NoReturn:
    raise ValueError("NaN and Infinity are not JSON")


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    if name not in claims and not required:
        return None
    value = claims.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        _reject(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        _reject(f"{name} is out of range")
    if not math.isfinite(number):
        _reject(f"{name} is out of range")
    return number


def _text(claims: dict[str, Any], name: str, *, required: bool) -> str | None:
    if name not in claims and not required:
        return None
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= TEXT_CHARS_MAX:
        _reject(f"{name} is not a bounded non-empty string")
    return value


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles = claims.get("roles", [])
    if (
        not isinstance(roles, list)
        or len(roles) > ROLES_MAX
        or not all(isinstance(r, str) and 0 < len(r) <= TEXT_CHARS_MAX for r in roles)
    ):
        _reject("roles is not a bounded list of strings")
    return frozenset(roles)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    if "scope" in claims and "scp" in claims:
        _reject("both scope and scp")
    if "scope" in claims:
        scope = claims["scope"]
        if not isinstance(scope, str) or len(scope) > SCOPES_MAX * (SCOPE_CHARS_MAX + 1):
            _reject("scope is not a bounded string")
        scopes: list[Any] = scope.split()
    else:
        scopes = claims.get("scp", [])
        if isinstance(scopes, str):  # some issuers put the space-separated form in scp
            scopes = scopes.split()
    if (
        not isinstance(scopes, list)
        or len(scopes) > SCOPES_MAX
        or not all(
            isinstance(s, str) and len(s) <= SCOPE_CHARS_MAX and SCOPE_TOKEN.fullmatch(s)
            for s in scopes
        )
    ):
        _reject("scope is not a bounded list of scope tokens")
    return frozenset(scopes)
