"""The verifier remembers tokens it verified, never past their expiry or their key."""

from __future__ import annotations

import pytest

from tickertap.authn import InvalidToken
from tickertap.authn.testing import TokenMinter


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_cached_token_stops_at_its_expiry_the_cache_ttl_and_its_keys_removal():
    clock = Clock()
    minter = TokenMinter("https://auth.test", "ledger", alg="Ed25519", clock=clock)
    verifier = minter.verifier(cache_ttl_s=60, clock=clock)
    token = minter.mint("u1", ttl_s=300)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # served from the cache

    clock.now += 61  # past the cache TTL: verified again (and still valid)
    again = await verifier.verify(token)
    assert again == first
    assert again is not first

    clock.now += 300  # past the expiry: rejected even though it was cached
    with pytest.raises(InvalidToken):
        await verifier.verify(token)

    fresh = minter.mint("u2", ttl_s=300)
    await verifier.verify(fresh)
    old_kid = minter.kid
    minter.rotate()
    minter.retire(old_kid)  # the key leaves the key set: its tokens stop at once
    with pytest.raises(InvalidToken):
        await verifier.verify(fresh)


async def test_the_cache_is_bounded():
    clock = Clock()
    minter = TokenMinter("https://auth.test", "ledger", alg="Ed25519", clock=clock)
    verifier = minter.verifier(cache_entries_max=2, clock=clock)
    tokens = [minter.mint(f"u{i}") for i in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert len(verifier._cache) == 2
