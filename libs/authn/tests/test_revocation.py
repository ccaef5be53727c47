"""Revoked sessions and users: their tokens are refused before they expire (pure: no I/O)."""

from __future__ import annotations

import pytest

from tickertap.authn import InvalidToken, Revocations
from tickertap.authn.testing import TokenMinter

RETENTION_S = 3630


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def minter(clock: Clock) -> TokenMinter:
    return TokenMinter("https://auth.test", "ledger", alg="Ed25519", clock=clock)


async def test_a_revoked_session_is_refused_even_from_the_cache(minter, clock):
    revocations = Revocations(retention_s=RETENTION_S, clock=clock)
    verifier = minter.verifier(revocations=revocations, clock=clock)
    token = minter.mint("u1", sid="s1")
    other = minter.mint("u1", sid="s2")
    await verifier.verify(token)  # now cached
    revocations.revoke_session("s1", clock.now)
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "session revoked"
    assert (await verifier.verify(other)).session_id == "s2"


async def test_a_user_revocation_refuses_tokens_issued_before_it_only(minter, clock):
    revocations = Revocations(retention_s=RETENTION_S, clock=clock)
    verifier = minter.verifier(revocations=revocations, clock=clock)
    before = minter.mint("u1", sid="s1")
    clock.now += 5
    revocations.revoke_user("u1", clock.now)  # a password change, say
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(before)
    assert refused.value.reason == "revoked for the user"
    after = minter.mint("u1", sid="s3")  # a new login in the same second
    assert (await verifier.verify(after)).subject == "u1"
    assert (await verifier.verify(minter.mint("u2", sid="s4"))).subject == "u2"


def test_records_are_kept_as_long_as_a_token_they_concern_can_live(clock):
    revocations = Revocations(retention_s=RETENTION_S, clock=clock)
    revocations.revoke_session("old", clock.now - RETENTION_S - 1)  # nothing left to refuse
    assert len(revocations) == 0
    revocations.revoke_session("s1", clock.now)
    revocations.revoke_user("u1", clock.now)
    clock.now += RETENTION_S + 1
    revocations.revoke_session("s2", clock.now)
    revocations.revoke_user("u2", clock.now)
    assert len(revocations) == 2  # s1 and u1 forgotten


def test_the_count_is_bounded(clock):
    revocations = Revocations(retention_s=RETENTION_S, entries_max=3, clock=clock)
    for i in range(10):
        revocations.revoke_session(f"s{i}", clock.now)
    assert len(revocations) == 3
