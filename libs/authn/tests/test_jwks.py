"""Key sets: parsing, and HttpJwks against a real HTTP server on 127.0.0.1 (rotation,
removal, the refresh rate limit, failures)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx
import pytest

from tickertap.authn import (
    AccessTokenVerifier,
    HttpJwks,
    InvalidToken,
    KeysUnavailable,
    StaticJwks,
    parse_jwks,
)
from tickertap.authn.testing import TokenMinter


def verifier_for(jwks, minter: TokenMinter) -> AccessTokenVerifier:
    return AccessTokenVerifier(jwks, issuer=minter.issuer, audience=minter.audience)


def with_kid(minter: TokenMinter, kid: str) -> str:
    return minter.sign(minter.claims("u"), header={"kid": kid})


async def reason(verifier: AccessTokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return caught.value.reason


def test_parse_keeps_public_signature_keys_only(minter, caplog):
    ec = TokenMinter("i", "a", "ES256", kid="ec-1").jwks["keys"][0]
    okp = minter.jwks["keys"][0]
    private = dict(minter.private_key.as_dict(private=True)) | {"kid": "leaked"}
    document = {
        "keys": [
            okp,
            ec,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**ec, "kid": "enc", "use": "enc"},
            {**okp, "kid": None},
            {**okp, "kid": ""},
            {"kty": "EC", "crv": "P-256", "x": "not-a-point", "y": "AA", "kid": "bad"},
            {"kty": "RSA", "kid": "rsa-no-modulus"},
            {"kty": "PQ", "kid": "future"},
            "not an object",
            {**ec, "kid": okp["kid"]},  # a repeated kid: the first stays
            private,
        ]
    }
    keys = parse_jwks(document)
    assert sorted(keys) == sorted([okp["kid"], "ec-1", "leaked"])
    assert keys[okp["kid"]].key_type == "OKP"
    assert not keys["leaked"].is_private
    assert "private key material" in caplog.text
    assert "c2VjcmV0" not in caplog.text


@pytest.mark.parametrize(
    "document", [None, [], {}, {"keys": {}}, {"keys": "x"}, {"keys": [{}] * 33}]
)
def test_parse_refuses_what_is_not_a_key_set(document):
    with pytest.raises(ValueError):
        parse_jwks(document)


async def test_static_jwks_knows_its_keys(minter):
    jwks = StaticJwks(minter.jwks)
    assert await jwks.get_key(minter.kid) is not None
    assert await jwks.get_key("other") is None


async def test_a_minter_is_a_live_key_source_through_rotation(minter):
    verifier = minter.verifier()
    old_kid, old = minter.kid, minter.mint("u")
    new_kid = minter.rotate()
    assert new_kid != old_kid
    assert [k["kid"] for k in minter.jwks["keys"]] == [old_kid, new_kid]
    await verifier.verify(old)
    await verifier.verify(minter.mint("u"))
    minter.retire(old_kid)
    assert await reason(verifier, old) == "unknown kid"


async def test_rotation_over_http_new_key_after_refresh_removed_key_after_expiry(
    jwks_server, minter, clock
):
    jwks_server.jwks = lambda: minter.jwks
    async with HttpJwks(
        jwks_server.url, cache_ttl_s=300, refresh_min_interval_s=10, clock=clock
    ) as jwks:
        verifier = verifier_for(jwks, minter)
        old_kid, old = minter.kid, minter.mint("u")
        await verifier.verify(old)
        assert jwks_server.requests == 1
        await verifier.verify(old)
        assert jwks_server.requests == 1  # cached

        minter.rotate()
        new = minter.mint("u")
        clock.advance(10)
        await verifier.verify(new)  # the unknown kid made it refresh
        assert jwks_server.requests == 2

        minter.retire(old_kid)
        clock.advance(299)
        await verifier.verify(old)  # still cached: 299 s since the last refresh
        assert jwks_server.requests == 2
        clock.advance(2)
        assert await reason(verifier, old) == "unknown kid"  # expired, refreshed, gone
        assert jwks_server.requests == 3
        await verifier.verify(new)
        assert jwks_server.requests == 3


async def test_unknown_kids_refresh_at_most_once_per_interval(jwks_server, minter, clock):
    jwks_server.jwks = lambda: minter.jwks
    async with HttpJwks(jwks_server.url, refresh_min_interval_s=10, clock=clock) as jwks:
        verifier = verifier_for(jwks, minter)
        await verifier.verify(minter.mint("u"))
        assert jwks_server.requests == 1

        for i in range(50):
            assert await reason(verifier, with_kid(minter, f"random-{i}")) == "unknown kid"
        assert jwks_server.requests == 1  # the first fetch was less than 10 s ago

        clock.advance(9.9)
        assert await reason(verifier, with_kid(minter, "again")) == "unknown kid"
        assert jwks_server.requests == 1
        clock.advance(0.1)
        for i in range(50):
            assert await reason(verifier, with_kid(minter, f"later-{i}")) == "unknown kid"
        assert jwks_server.requests == 2  # one refresh, still unknown, then no more

        clock.advance(10)
        jwks_server.delay_s = 0.2  # concurrent callers share the one slow fetch

        async def unknown(i: int) -> str:
            return await reason(verifier, with_kid(minter, f"burst-{i}"))

        assert set(await asyncio.gather(*(unknown(i) for i in range(100)))) == {"unknown kid"}
        assert jwks_server.requests == 3
        await verifier.verify(minter.mint("u"))  # known keys never wait for the network
        assert jwks_server.requests == 3


async def test_the_first_requests_wait_for_the_first_fetch_instead_of_failing(
    jwks_server, minter, clock
):
    jwks_server.jwks = lambda: minter.jwks
    jwks_server.delay_s = 0.2  # a burst arrives while the first fetch is in flight
    async with HttpJwks(jwks_server.url, refresh_min_interval_s=10, clock=clock) as jwks:
        verifier = verifier_for(jwks, minter)
        token = minter.mint("u")
        found = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
        assert {p.subject for p in found} == {"u"}
        assert jwks_server.requests == 1


async def test_no_keys_ever_is_503_and_retries_are_rate_limited(jwks_server, minter, clock):
    jwks_server.jwks = lambda: minter.jwks
    jwks_server.status = 500
    async with HttpJwks(jwks_server.url, refresh_min_interval_s=10, clock=clock) as jwks:
        verifier = verifier_for(jwks, minter)
        with pytest.raises(KeysUnavailable) as caught:
            await verifier.verify(minter.mint("u"))
        assert caught.value.status == 503
        assert caught.value.code == "keys_unavailable"
        with pytest.raises(KeysUnavailable):
            await verifier.verify(minter.mint("u"))
        assert jwks_server.requests == 1

        jwks_server.status = 200
        clock.advance(10)
        await verifier.verify(minter.mint("u"))
        assert jwks_server.requests == 2


async def test_stale_keys_serve_through_an_outage_for_a_bounded_time(
    jwks_server, minter, clock, caplog
):
    jwks_server.jwks = lambda: minter.jwks
    async with HttpJwks(
        jwks_server.url, cache_ttl_s=300, stale_if_error_s=600, clock=clock
    ) as jwks:
        verifier = verifier_for(jwks, minter)
        await verifier.verify(minter.mint("u"))
        jwks_server.status = 503
        clock.advance(301)
        await verifier.verify(minter.mint("u"))  # the refresh failed; the stale set serves
        assert jwks_server.requests == 2
        assert "JWKS refresh" in caplog.text
        clock.advance(600)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(minter.mint("u"))
        jwks_server.status = 200
        clock.advance(10)
        await verifier.verify(minter.mint("u"))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"keys": "none"}',
        b"[" * 50_000,
        json.dumps({"keys": [], "padding": "x" * 70_000}).encode(),
    ],
)
async def test_a_bad_or_oversize_answer_is_a_failed_refresh(jwks_server, minter, clock, body):
    jwks_server.body = body
    async with HttpJwks(jwks_server.url, clock=clock) as jwks:
        with pytest.raises(KeysUnavailable):
            await verifier_for(jwks, minter).verify(minter.mint("u"))


async def test_a_slow_or_absent_server_is_a_failed_refresh(jwks_server, minter, clock):
    jwks_server.jwks = lambda: minter.jwks
    jwks_server.delay_s = 1.0
    async with HttpJwks(jwks_server.url, timeout_s=0.2, clock=clock) as jwks:
        with pytest.raises(KeysUnavailable):
            await verifier_for(jwks, minter).verify(minter.mint("u"))

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with HttpJwks(f"http://127.0.0.1:{port}/jwks", clock=clock) as jwks:
        with pytest.raises(KeysUnavailable):
            await verifier_for(jwks, minter).verify(minter.mint("u"))


async def test_a_shared_client_is_used_and_left_open(jwks_server, minter, caplog):
    caplog.set_level(logging.INFO, logger="tickertap.authn")
    jwks_server.jwks = lambda: minter.jwks
    async with httpx.AsyncClient() as client:
        jwks = HttpJwks(jwks_server.url, client=client)
        await verifier_for(jwks, minter).verify(minter.mint("u"))
        await jwks.aclose()
        assert not client.is_closed
    assert "JWKS refreshed" in caplog.text
