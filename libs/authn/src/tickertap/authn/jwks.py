"""Where the verifier finds public keys by key id: a fixed set, or the auth service's JWKS.

`HttpJwks` fetches the RFC 7517 key set over HTTP(S) and caches it for
`cache_ttl_s`. A token with a key id it does not know makes it fetch again, but
never sooner than `refresh_min_interval_s` after the last attempt, so a flood of
made-up key ids costs the auth service one request per interval. One fetch runs
at a time; callers that waited for it use its result. When a refresh fails the
last good set is used for up to `stale_if_error_s` past its expiry, then
`KeysUnavailable` (503).

Only public signature keys are kept: `kty` OKP, EC or RSA, `use` absent or
"sig", a `kid`; symmetric keys, keys without an id and keys joserfc cannot
import are skipped; private members, should a set ever carry them, are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key

from tickertap.authn.errors import KeysUnavailable

log = logging.getLogger(__name__)

__all__ = ["HttpJwks", "JwksSource", "StaticJwks", "parse_jwks"]

KEYS_MAX = 32
KID_CHARS_MAX = 255
_PUBLIC_KEY_TYPES = frozenset({"OKP", "EC", "RSA"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksSource(Protocol):
    async def get_key(self, kid: str) -> Key | None:
        """The public key with this key id, or None when there is none."""
        ...


def parse_jwks(document: object) -> dict[str, Key]:
    """The usable public signature keys of a JWKS document, by key id.

    ValueError when the document is not a key set at all; single keys that are
    not usable are skipped (RFC 7517 section 5).
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    entries: list[Any] = document["keys"]
    if len(entries) > KEYS_MAX:
        raise ValueError(f"a JWK set of more than {KEYS_MAX} keys")
    keys: dict[str, Key] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            log.warning("JWKS entry %d is not an object; skipped", index)
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= KID_CHARS_MAX:
            log.warning("JWKS entry %d has no usable kid; skipped", index)
            continue
        if entry.get("kty") not in _PUBLIC_KEY_TYPES or entry.get("use", "sig") != "sig":
            continue
        if kid in keys:
            log.warning("JWKS repeats a kid; entry %d skipped", index)
            continue
        if _PRIVATE_MEMBERS & entry.keys():
            log.error("JWKS entry %d publishes private key material; it was dropped", index)
        public = {name: value for name, value in entry.items() if name not in _PRIVATE_MEMBERS}
        try:
            keys[kid] = import_key(public)
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            log.warning("JWKS entry %d is not a key joserfc can import; skipped", index)
    return keys


class StaticJwks:
    """A fixed key set, for tests and for keys that come with the deployment."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = parse_jwks(jwks)

    async def get_key(self, kid: str) -> Key | None:
        return self._keys.get(kid)


class HttpJwks:
    """The auth service's published key set, cached and refreshed on an unknown key id.

    Pass `client` to share a connection pool (it is then not closed here);
    otherwise `aclose()` closes the client this object made.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_ttl_s: float = 300,
        refresh_min_interval_s: float = 10,
        timeout_s: float = 2,
        stale_if_error_s: float = 3600,
        response_bytes_max: int = 64 * 1024,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert url.startswith(("http://", "https://")), "JWKS URL must be http(s)"
        assert 0 < refresh_min_interval_s <= cache_ttl_s
        assert timeout_s > 0
        assert stale_if_error_s >= 0
        assert response_bytes_max > 0
        self._url = url
        self._cache_ttl_s = cache_ttl_s
        self._refresh_min_interval_s = refresh_min_interval_s
        self._timeout_s = timeout_s
        self._stale_if_error_s = stale_if_error_s
        self._response_bytes_max = response_bytes_max
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self._keys: dict[str, Key] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()

    async def get_key(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is not None and self._age_s() <= self._cache_ttl_s:
            return key
        if self._lock.locked():
            async with self._lock:  # a refresh is in flight: wait for its keys, do not fail
                pass
        elif self._may_attempt():
            await self._refresh()
        if self._fetched_at is None or self._age_s() > self._cache_ttl_s + self._stale_if_error_s:
            raise KeysUnavailable()
        return self._keys.get(kid)

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> HttpJwks:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _age_s(self) -> float:
        return float("inf") if self._fetched_at is None else self._clock() - self._fetched_at

    def _may_attempt(self) -> bool:
        last = self._attempted_at
        return last is None or self._clock() - last >= self._refresh_min_interval_s

    async def _refresh(self) -> None:
        seen = self._attempted_at
        async with self._lock:
            if self._attempted_at != seen:
                return  # another caller fetched while this one waited
            self._attempted_at = self._clock()
            try:
                keys = parse_jwks(await self._fetch())
            except (httpx.HTTPError, TimeoutError, ValueError, RecursionError) as error:
                log.warning(
                    "JWKS refresh from %s failed: %s: %s", self._url, type(error).__name__, error
                )
                return
            self._keys = keys
            self._fetched_at = self._attempted_at
            log.info("JWKS refreshed from %s: %d keys", self._url, len(keys))

    async def _fetch(self) -> object:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        body = bytearray()
        async with asyncio.timeout(self._timeout_s):
            async with self._client.stream(
                "GET", self._url, headers={"Accept": "application/json"}, timeout=self._timeout_s
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"JWKS answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._response_bytes_max:
                        raise ValueError("JWKS response over its size bound")
        return json.loads(body)


def jwks_source(url: str | None, file: Path | None) -> JwksSource:
    """The key source a service's settings name: the auth service's JWKS URL, or a JWKS
    document on disk (exactly one of them; the settings classes check that)."""
    if url is not None:
        return HttpJwks(url)
    assert file is not None, "a JWKS URL or file"
    return StaticJwks(json.loads(file.read_text()))
