"""Minting access tokens in tests, until (and besides) the auth service.

    minter = TokenMinter("https://auth.tickertap.test", "ledger")
    verifier = minter.verifier()              # or AccessTokenVerifier(StaticJwks(minter.jwks), ...)
    token = minter.mint("user-1", roles=["trader"], scopes=["ledger:read"])

A `TokenMinter` holds private keys it generated itself, publishes their public
halves as `.jwks`, and is itself a live `JwksSource`, so `rotate()` and
`retire()` show at once in a verifier built on it. Never use it in a service.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from joserfc.jwk import ECKey, Key, KeyParameters, OKPKey, import_key

from tickertap.authn._jose import algorithm, b64encode, json_segment
from tickertap.authn.verifier import AccessTokenVerifier

__all__ = ["TokenMinter"]

MinterAlgorithm = Literal["EdDSA", "Ed25519", "ES256"]


class TokenMinter:
    def __init__(
        self,
        issuer: str,
        audience: str,
        alg: MinterAlgorithm = "EdDSA",
        *,
        kid: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert alg in ("EdDSA", "Ed25519", "ES256")
        self.issuer = issuer
        self.audience = audience
        self.alg: MinterAlgorithm = alg
        self._clock = clock
        self._keys: dict[str, Key] = {}
        self._public_keys: dict[str, Key] = {}
        self.kid = self.rotate(kid)

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWK set (RFC 7517) of every key not retired, newest last."""
        return {"keys": [dict(key.as_dict(private=False)) for key in self._keys.values()]}

    @property
    def private_key(self) -> Key:
        """The key that signs now, for tests that check signatures by other means."""
        return self._keys[self.kid]

    def rotate(self, kid: str | None = None) -> str:
        """Add a new key, sign with it from now on, and return its key id."""
        kid = kid or secrets.token_urlsafe(12)
        assert kid not in self._keys
        parameters: KeyParameters = {"kid": kid, "use": "sig", "alg": self.alg}
        key: Key
        if self.alg == "ES256":
            key = ECKey.generate_key("P-256", parameters)
        else:
            key = OKPKey.generate_key("Ed25519", parameters)
        self._keys[kid] = key
        self._public_keys[kid] = import_key(dict(key.as_dict(private=False)))
        self.kid = kid
        return kid

    def retire(self, kid: str) -> None:
        """Stop publishing a key that no longer signs."""
        assert kid != self.kid, "retire a key only after rotating away from it"
        del self._keys[kid]
        del self._public_keys[kid]

    def mint(
        self,
        subject: str,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        ttl_s: float = 300,
        **claims: Any,
    ) -> str:
        """A signed access token: `sign(self.claims(...))`."""
        return self.sign(self.claims(subject, roles, scopes, ttl_s, **claims))

    def claims(
        self,
        subject: str,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        ttl_s: float = 300,
        **claims: Any,
    ) -> dict[str, Any]:
        """The claims of an access token; `claims` add to or replace the standard ones, and
        a claim given as None is left out when signed (`mint("u", iat=None)`)."""
        now = int(self._clock())
        standard: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(ttl_s),
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
        }
        scope = " ".join(sorted(scopes))
        if scope:
            standard["scope"] = scope
        return standard | claims

    def sign(self, claims: Mapping[str, Any], *, header: Mapping[str, Any] | None = None) -> str:
        """Any claims, signed with the current key whatever the header says, so tests can
        build tokens that lie; header members given as None are left out."""
        merged = {"alg": self.alg, "kid": self.kid, "typ": "at+jwt", **(header or {})}
        protected = {name: value for name, value in merged.items() if value is not None}
        payload = {name: value for name, value in claims.items() if value is not None}
        signing_input = json_segment(protected) + b"." + json_segment(payload)
        signature = algorithm(self.alg).sign(signing_input, self.private_key)
        return (signing_input + b"." + b64encode(signature)).decode("ascii")

    async def get_key(self, kid: str) -> Key | None:
        """The public key of a published key id: the minter as a live `JwksSource`."""
        return self._public_keys.get(kid)

    def verifier(self, **options: Any) -> AccessTokenVerifier:
        """A verifier of this minter's tokens, with its issuer, audience and algorithm."""
        return AccessTokenVerifier(
            self,
            issuer=self.issuer,
            audience=self.audience,
            algorithms=options.pop("algorithms", (self.alg,)),
            **options,
        )
