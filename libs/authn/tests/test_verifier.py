"""The verifier accepts the auth service's tokens and rejects every forgery, with no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.authn import (
    AccessTokenVerifier,
    InvalidToken,
    Principal,
    StaticJwks,
)
from tickertap.authn.testing import TokenMinter


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def segment(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def sign_raw(minter: TokenMinter, header: dict[str, Any], payload: bytes) -> str:
    """A token over exactly these payload bytes, signed with the minter's current key."""
    signing_input = f"{segment(header)}.{b64(payload)}"
    op_key: Any = minter.private_key.get_op_key("sign")
    return f"{signing_input}.{b64(op_key.sign(signing_input.encode()))}"


async def rejected(verifier: AccessTokenVerifier, token: str) -> str:
    """The reason the verifier gives for rejecting the token."""
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert caught.value.status == 401
    assert caught.value.code == "invalid_token"
    return caught.value.reason


@pytest.fixture
def verifier(minter: TokenMinter) -> AccessTokenVerifier:
    return AccessTokenVerifier(
        StaticJwks(minter.jwks), issuer=minter.issuer, audience=minter.audience
    )


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "Ed25519"])
async def test_a_minted_token_gives_its_principal(alg):
    minter = TokenMinter("https://auth.tickertap.test", "ledger", alg)
    verifier = AccessTokenVerifier(
        StaticJwks(minter.jwks),
        issuer=minter.issuer,
        audience="ledger",
        algorithms=("EdDSA", "ES256", "Ed25519"),
    )
    before = time.time()
    token = minter.mint(
        "user-1", roles=["trader"], scopes=["ledger:read", "ledger:write"], sid="s-1", jti="t-1"
    )
    principal = await verifier.verify(token)
    assert principal.subject == "user-1"
    assert principal.roles == {"trader"}
    assert principal.scopes == {"ledger:read", "ledger:write"}
    assert principal.session_id == "s-1"
    assert principal.token_id == "t-1"
    assert principal.expires_at.tzinfo is UTC
    assert before + 299 <= principal.expires_at.timestamp() <= time.time() + 300
    assert principal.claims["iss"] == minter.issuer
    assert principal.has_role("trader")
    assert not principal.has_role("admin")
    assert principal.has_scope("ledger:write")
    assert not principal.has_scope("ledger")


async def test_optional_claims_default_and_aud_may_be_a_list(minter, verifier):
    claims = minter.claims("u", aud=["portfolio", "ledger"], jti=None)
    del claims["roles"]
    principal = await verifier.verify(minter.sign(claims))
    assert principal.roles == frozenset()
    assert principal.scopes == frozenset()
    assert principal.session_id is None
    assert principal.token_id is None


async def test_scp_list_or_string_is_accepted_but_not_with_scope(minter, verifier):
    assert (await verifier.verify(minter.mint("u", scp=["a", "b"]))).scopes == {"a", "b"}
    assert (await verifier.verify(minter.mint("u", scp="a b"))).scopes == {"a", "b"}
    assert await rejected(verifier, minter.mint("u", scopes=["a"], scp=["b"])) == (
        "both scope and scp"
    )


async def test_typ_may_be_absent_or_jwt_but_not_another_kind_of_token(minter, verifier):
    for typ in (None, "JWT", "at+JWT", "application/at+jwt"):
        await verifier.verify(minter.sign(minter.claims("u"), header={"typ": typ}))
    for typ in ("dpop+jwt", "logout+jwt", 1):
        token = minter.sign(minter.claims("u"), header={"typ": typ})
        assert await rejected(verifier, token) == "not an access token type"


def test_principal_is_frozen_hashable_and_keeps_claims_out_of_repr():
    principal = Principal(
        subject="u", expires_at=datetime.now(UTC), claims={"email": "a@example.test"}
    )
    with pytest.raises(FrozenInstanceError):
        principal.subject = "v"
    assert hash(principal) == hash(Principal(subject="u", expires_at=principal.expires_at))
    assert "a@example.test" not in repr(principal)


# every attack below is rejected, each for its own reason


async def test_alg_none_is_rejected(minter, verifier):
    header = segment({"alg": "none", "kid": minter.kid, "typ": "at+jwt"})
    payload = segment(minter.claims("admin", roles=["admin"]))
    assert await rejected(verifier, f"{header}.{payload}.") == "not a compact JWS"
    assert await rejected(verifier, f"{header}.{payload}.AAAA") == "algorithm not allowed"
    for name in ("None", "NONE", "nOnE"):
        token = f"{segment({'alg': name, 'kid': minter.kid})}.{payload}.AAAA"
        assert await rejected(verifier, token) == "algorithm not allowed"


async def test_hs256_signed_with_the_public_key_as_secret_is_rejected(minter, verifier):
    jwk = minter.jwks["keys"][0]
    public_key: Any = minter.private_key.get_op_key("verify")
    secrets = [
        unb64(jwk["x"]),
        jwk["x"].encode(),
        json.dumps(jwk).encode(),
        public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    ]
    payload = segment(minter.claims("admin", roles=["admin"]))
    for secret in secrets:
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            signing_input = f"{segment({'alg': alg, 'kid': minter.kid})}.{payload}"
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            token = f"{signing_input}.{b64(mac)}"
            assert await rejected(verifier, token) == "algorithm not allowed"


async def test_a_verifier_refuses_symmetric_or_unknown_algorithms(minter):
    for algorithms in (["HS256"], ["none"], ["ES256", "HS256"], [], ["XX1"]):
        with pytest.raises(ValueError, match="algorithms"):
            AccessTokenVerifier(
                StaticJwks(minter.jwks), issuer="i", audience="a", algorithms=algorithms
            )


async def test_rs256_is_rejected_unless_allowed(minter, verifier):
    token = minter.sign(minter.claims("u"), header={"alg": "RS256"})
    assert await rejected(verifier, token) == "algorithm not allowed"


async def test_an_alg_that_does_not_fit_the_key_is_rejected(minter):
    verifier = AccessTokenVerifier(
        StaticJwks(minter.jwks),
        issuer=minter.issuer,
        audience=minter.audience,
        algorithms=("EdDSA", "ES256", "Ed25519"),
    )
    for alg in ("ES256", "Ed25519"):  # an EC alg on an OKP key; a key published for "EdDSA"
        token = minter.sign(minter.claims("u"), header={"alg": alg})
        assert await rejected(verifier, token) == "signature does not verify"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.test"}, "wrong issuer"),
        ({"iss": None}, "wrong issuer"),
        ({"aud": "portfolio"}, "wrong audience"),
        ({"aud": ["portfolio", "auth"]}, "wrong audience"),
        ({"aud": []}, "wrong audience"),
        ({"aud": None}, "wrong audience"),
        ({"sub": None}, "sub is not a bounded non-empty string"),
        ({"sub": ""}, "sub is not a bounded non-empty string"),
        ({"sub": 42}, "sub is not a bounded non-empty string"),
        ({"sub": "x" * 256}, "sub is not a bounded non-empty string"),
        ({"exp": None}, "exp is not a number"),
        ({"exp": "9999999999"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"iat": None}, "iat is not a number"),
        ({"nbf": "0"}, "nbf is not a number"),
        ({"roles": "admin"}, "roles is not a bounded list of strings"),
        ({"roles": ["admin", 1]}, "roles is not a bounded list of strings"),
        ({"roles": ["r"] * 65}, "roles is not a bounded list of strings"),
        ({"scope": ["a"]}, "scope is not a bounded string"),
        ({"scope": 'a "b"'}, "scope is not a bounded list of scope tokens"),
        ({"scp": [1]}, "scope is not a bounded list of scope tokens"),
        ({"sid": 7}, "sid is not a bounded non-empty string"),
        ({"jti": ""}, "jti is not a bounded non-empty string"),
    ],
)
async def test_claims_that_are_wrong_or_malformed_are_rejected(minter, verifier, claims, reason):
    assert await rejected(verifier, minter.sign(minter.claims("u") | claims)) == reason


async def test_time_claims_allow_the_leeway_and_no_more(minter, verifier):
    now = int(time.time())
    await verifier.verify(minter.mint("u", iat=now - 400, exp=now - 10))
    await verifier.verify(minter.mint("u", nbf=now + 10))
    await verifier.verify(minter.mint("u", iat=now + 10, exp=now + 310))
    expired = minter.mint("u", iat=now - 400, exp=now - 31)
    with pytest.raises(InvalidToken, match="has expired") as caught:
        await verifier.verify(expired)
    assert caught.value.reason == "expired"
    assert await rejected(verifier, minter.mint("u", nbf=now + 60)) == "not yet valid"
    future = minter.mint("u", iat=now + 60, exp=now + 360)
    assert await rejected(verifier, future) == "issued in the future"


async def test_lifetime_is_bounded(minter, verifier):
    assert await rejected(verifier, minter.mint("u", ttl_s=3601)) == "lifetime out of bounds"
    now = int(time.time())
    assert await rejected(verifier, minter.mint("u", iat=now, exp=now)) == (
        "lifetime out of bounds"
    )
    assert await rejected(verifier, minter.mint("u", exp=10**400)) == "exp is out of range"
    await verifier.verify(minter.mint("u", ttl_s=3600))


async def test_a_tampered_payload_is_rejected(minter, verifier):
    header, payload, signature = minter.mint("user-1", roles=["trader"]).split(".")
    claims = json.loads(unb64(payload))
    for change in ({"sub": "admin"}, {"roles": ["admin"]}, {"exp": claims["exp"] + 3600}):
        forged = f"{header}.{segment(claims | change)}.{signature}"
        assert await rejected(verifier, forged) == "signature does not verify"


async def test_a_tampered_signature_is_rejected(minter, verifier):
    header, payload, signature = minter.mint("u").split(".")
    raw = bytearray(unb64(signature))
    for index in (0, 31, 63):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        token = f"{header}.{payload}.{b64(bytes(flipped))}"
        assert await rejected(verifier, token) == "signature does not verify"
    for wrong in (b64(bytes(raw[:-1])), b64(bytes(raw) + b"\0"), b64(bytes(64))):
        token = f"{header}.{payload}.{wrong}"
        assert await rejected(verifier, token) == "signature does not verify"


async def test_a_header_swapped_from_another_token_is_rejected(minter, verifier):
    _, payload, signature = minter.mint("u").split(".")
    header = minter.sign(minter.claims("u"), header={"typ": "JWT"}).split(".")[0]
    assert await rejected(verifier, f"{header}.{payload}.{signature}") == (
        "signature does not verify"
    )


async def test_non_canonical_base64_is_rejected(minter, verifier):
    header, payload, signature = minter.mint("u").split(".")
    # 64 signature bytes leave 4 unused bits in the last character; setting one must not pass
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    assert last % 16 == 0
    alias = (
        signature[:-1]
        + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last + 1]
    )
    assert await rejected(verifier, f"{header}.{payload}.{alias}") == ("signature does not verify")
    assert await rejected(verifier, f"{header}.{payload}.{signature}==") == "not a compact JWS"


async def test_unknown_kid_and_missing_kid_are_rejected(minter, verifier):
    assert await rejected(verifier, minter.sign(minter.claims("u"), header={"kid": "nope"})) == (
        "unknown kid"
    )
    for kid in (None, "", 7, "k" * 256):
        token = minter.sign(minter.claims("u"), header={"kid": kid})
        assert await rejected(verifier, token) == "no kid"


async def test_a_token_from_another_minter_with_the_same_kid_is_rejected(minter, verifier):
    impostor = TokenMinter(minter.issuer, minter.audience, kid=minter.kid)
    token = impostor.mint("admin", roles=["admin"])
    assert await rejected(verifier, token) == "signature does not verify"


async def test_critical_and_unencoded_payload_headers_are_rejected(minter, verifier):
    for header in ({"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}, {"b64": True}):
        token = minter.sign(minter.claims("u"), header=header)
        assert await rejected(verifier, token) in (
            "critical header parameters are not supported",
            "undecodable JWS",
        )


async def test_claims_must_be_one_json_object_without_repeated_members(minter, verifier):
    header = {"alg": "EdDSA", "kid": minter.kid, "typ": "at+jwt"}
    claims = minter.claims("user-1")
    good = json.dumps(claims).encode()
    await verifier.verify(sign_raw(minter, header, good))
    repeated = good[:-1] + b', "sub": "admin"}'
    assert await rejected(verifier, sign_raw(minter, header, repeated)) == ("claims are not JSON")
    for payload in (b"[1, 2]", b'"sub"', b"null", b"\xff\xfe", b"{", b'{"exp": NaN}'):
        assert await rejected(verifier, sign_raw(minter, header, payload)) in (
            "claims are not JSON",
            "claims are not an object",
        )
    deep = b"[" * 2000 + b"]" * 2000
    assert await rejected(verifier, sign_raw(minter, header, deep)) == "claims are not JSON"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d.e",
        "....",
        "é.é.é",
        "eyJ.eyJ.eyJ",
        "Bearer x.y.z",
        " eyJhbGciOiJFZERTQSJ9.e30.AAAA",
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA\n",
        "W10.e30.AAAA",  # header []
        "bnVsbA.e30.AAAA",  # header null
        "e30.e30.AAAA",  # header {}
    ],
)
async def test_garbage_is_rejected(verifier, token):
    await rejected(verifier, token)


async def test_an_oversize_token_is_rejected_before_anything_else(minter, verifier):
    token = minter.mint("u", padding="x" * 8192)
    assert len(token) > 8192
    assert await rejected(verifier, token) == "token too long"
    assert await rejected(verifier, "a" * 100_000) == "token too long"
    roomy = AccessTokenVerifier(
        StaticJwks(minter.jwks),
        issuer=minter.issuer,
        audience=minter.audience,
        token_bytes_max=16 * 1024,
    )
    await roomy.verify(token)


async def test_rejections_log_the_reason_and_never_the_token_or_claims(minter, verifier, caplog):
    caplog.set_level(logging.DEBUG, logger="tickertap.authn")
    token = minter.mint("user-secret-subject", iss="https://evil.test")
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert "wrong issuer" in caplog.text
    for leaked in (token, token.split(".")[1], "user-secret-subject", "evil.test"):
        assert leaked not in caplog.text
        assert leaked not in str(caught.value)
        assert leaked not in repr(caught.value.extra)


# fuzzing: nothing but InvalidToken ever comes out, and no await ever suspends


def run(coroutine: Coroutine[Any, Any, Principal]) -> Principal:
    """Runs a coroutine that never suspends (StaticJwks answers at once)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: Principal = stop.value
        return result
    coroutine.close()
    raise AssertionError("the verifier suspended")


@cache
def fuzz_setup() -> tuple[TokenMinter, AccessTokenVerifier]:
    minter = TokenMinter("https://auth.tickertap.test", "ledger", kid="fuzz")
    verifier = AccessTokenVerifier(
        StaticJwks(minter.jwks), issuer=minter.issuer, audience=minter.audience
    )
    return minter, verifier


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(
    ["iss", "aud", "sub", "exp", "iat", "nbf", "roles", "scope", "scp", "sid", "jti", "x"]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_-]{0,40}(\.[A-Za-z0-9_-]{0,40}){2}"))
def test_fuzz_arbitrary_strings_are_invalid_tokens(token):
    _, verifier = fuzz_setup()
    with pytest.raises(InvalidToken):
        run(verifier.verify(token))


@settings(max_examples=300, deadline=None)
@given(
    json_values
    | st.fixed_dictionaries(
        {"alg": st.sampled_from(["EdDSA", "ES256", "none", "HS256"]), "kid": st.just("fuzz")},
        optional={"typ": json_values, "crit": json_values, "b64": json_values},
    ),
    json_values,
    st.binary(max_size=70),
)
def test_fuzz_arbitrary_json_segments_are_invalid_tokens(header, payload, signature):
    _, verifier = fuzz_setup()
    with pytest.raises(InvalidToken):
        run(verifier.verify(f"{segment(header)}.{segment(payload)}.{b64(signature)}"))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(claim_names, json_values, max_size=6),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)
def test_fuzz_signed_claims_and_headers_verify_or_are_invalid(changes, header):
    minter, verifier = fuzz_setup()
    claims = minter.claims("u") | changes
    try:
        token = minter.sign(claims, header=header)
    except (TypeError, ValueError):  # not JSON-serialisable (NaN is)
        return
    try:
        principal = run(verifier.verify(token))
    except InvalidToken:
        return
    assert principal.subject == claims["sub"]
