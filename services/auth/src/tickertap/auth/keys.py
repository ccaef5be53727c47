"""Access-token signing with a Vault transit Ed25519 key, and the JWKS that publishes it.

The private key never leaves Vault: a token's signing input goes to
`transit/sign/<key>` with the key version its `kid` names, and the signature
comes back. Each transit key version is one JWK; its `kid` is the version and a
fingerprint of the public key, so a key recreated under the same version number
(a dev Vault started afresh) never shares a `kid` with its predecessor.

Rotation adds a transit key version (`transit/keys/<key>/rotate`): on demand
(`rotate`) and when the newest version is older than the rotation period
(`run`, which checks every interval). The JWKS lists the newest version and
every older one whose successor is younger than an access token's lifetime plus
leeway: exactly the keys that may still have signed an unexpired token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from joserfc.jwk import Key, import_key

from tickertap.secrets import Vault

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"  # the JOSE name every library knows for Ed25519 signatures
PUBLISH_LEEWAY_S = 60.0
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    kid: str
    created_at_s: float
    jwk: dict[str, str | list[str]]


def _created_at_s(text: str) -> float:
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_versions(description: dict[str, Any]) -> list[KeyVersion]:
    """Every version of a transit ed25519 key, oldest first, as JWKs."""
    if description.get("type") != "ed25519":
        raise ValueError("the signing key must be a transit ed25519 key")
    versions = []
    for number, entry in description["keys"].items():
        public = base64.b64decode(entry["public_key"])
        assert len(public) == 32
        kid = f"v{int(number)}-{hashlib.sha256(public).hexdigest()[:12]}"
        jwk: dict[str, str | list[str]] = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public)}
        jwk |= {"kid": kid, "use": "sig", "alg": ALGORITHM}
        versions.append(KeyVersion(int(number), kid, _created_at_s(entry["creation_time"]), jwk))
    return sorted(versions, key=lambda v: v.version)


class SigningKeys:
    """The signing key's versions as last read from Vault; signs tokens, publishes the JWKS.

    Also a `tickertap.authn.JwksSource`, so the service verifies its own tokens with
    the very keys it publishes.
    """

    def __init__(
        self,
        vault: Vault,
        key: str,
        *,
        token_ttl_s: float,
        rotation_s: float,
        check_interval_s: float,
        jwks_cache_s: float,
        include_file: Path | None = None,
        clock: Any = time.time,
    ) -> None:
        self._vault = vault
        self._key = key
        self._token_ttl_s = token_ttl_s
        self._rotation_s = rotation_s
        self._check_interval_s = check_interval_s
        self._jwks_cache_s = jwks_cache_s
        self._clock = clock
        self._versions: list[KeyVersion] = []
        self._read_at_s = float("-inf")
        self._imported: dict[str, Key] = {}
        self._included: list[dict[str, Any]] = []
        if include_file is not None:
            self._included = list(json.loads(include_file.read_text()).get("keys", []))
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            self._versions = key_versions(await self._vault.read_key(self._key))
            self._read_at_s = self._clock()

    async def _fresh(self, age_s_max: float) -> list[KeyVersion]:
        if not self._versions or self._clock() - self._read_at_s > age_s_max:
            await self.refresh()
        return self._versions

    @property
    def current(self) -> KeyVersion:
        assert self._versions, "refresh() first"
        return self._versions[-1]

    async def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims` signed in Vault by the newest key version known."""
        signer = (await self._fresh(self._check_interval_s))[-1]
        header = {"alg": ALGORITHM, "kid": signer.kid, "typ": "at+jwt"}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = await self._vault.sign(
            self._key, signing_input.encode("ascii"), key_version=signer.version
        )
        return f"{signing_input}.{_b64url(signature)}"

    def published(self, now_s: float) -> list[KeyVersion]:
        """The newest version, and older ones that may have signed an unexpired token."""
        versions = self._versions
        kept = [versions[-1]] if versions else []
        for older, newer in itertools.pairwise(versions):
            if now_s - newer.created_at_s < self._token_ttl_s + PUBLISH_LEEWAY_S:
                kept.append(older)
        return sorted(kept, key=lambda v: v.version, reverse=True)

    async def jwks(self) -> dict[str, Any]:
        await self._fresh(self._jwks_cache_s)
        keys: list[dict[str, Any]] = [v.jwk for v in self.published(self._clock())]
        return {"keys": keys + self._included}

    async def get_key(self, kid: str) -> Key | None:
        """`JwksSource`: the public key of a published kid (one re-read of Vault on a miss)."""
        for attempt in range(2):
            for version in self.published(self._clock()):
                if version.kid == kid:
                    key = self._imported.get(kid)
                    if key is None:
                        key = self._imported[kid] = import_key(dict(version.jwk.items()))
                    return key
            if attempt == 0 and self._clock() - self._read_at_s > 1.0:
                await self.refresh()
        return None

    async def rotate(self) -> KeyVersion:
        await self._vault.rotate_key(self._key)
        await self.refresh()
        log.info("signing key rotated", extra={"kid": self.current.kid})
        return self.current

    async def run(self) -> None:
        """Re-read the key every interval; rotate when the newest version is too old."""
        while True:
            await asyncio.sleep(self._check_interval_s)
            try:
                await self.refresh()
                age_s = self._clock() - self.current.created_at_s
                if self._rotation_s and age_s >= self._rotation_s:
                    await self.rotate()
            except Exception as exc:  # a missed check is retried; signing keeps its key
                log.warning("signing key check failed", extra={"error": type(exc).__name__})
