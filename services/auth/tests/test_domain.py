"""The auth service's pure rules: TOTP (RFC 6238 appendix B vectors), lockout, scopes, keys."""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.parse
import uuid

import pyotp
import pytest

from tickertap.auth import domain as d
from tickertap.auth.keys import SigningKeys, key_versions

# RFC 6238 appendix B: the seeds are the ASCII digits, repeated to the hash's key size
SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890" * 6 + b"1234"
RFC6238_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("at_s", "sha1", "sha256", "sha512"), RFC6238_VECTORS)
def test_totp_matches_rfc6238_appendix_b(at_s: int, sha1: str, sha256: str, sha512: str):
    assert d.totp(SEED_SHA1, at_s, digits=8, digest="sha1") == sha1
    assert d.totp(SEED_SHA256, at_s, digits=8, digest="sha256") == sha256
    assert d.totp(SEED_SHA512, at_s, digits=8, digest="sha512") == sha512


def test_totp_agrees_with_pyotp_and_the_uri_is_readable():
    secret = d.new_totp_secret()
    now = time.time()
    assert d.totp(secret, now) == pyotp.TOTP(d.b32(secret)).at(now)
    uri = d.otpauth_uri(secret, "a@example.test", "tickerTap")
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == d.b32(secret)
    assert parsed.issuer == "tickerTap"
    assert urllib.parse.urlsplit(uri).scheme == "otpauth"


def test_a_totp_code_is_good_once_and_only_within_the_window():
    secret = d.new_totp_secret()
    now = 1_700_000_000.0
    code = d.totp(secret, now)
    step = d.verify_totp(secret, code, now, window_steps=1, last_step=None)
    assert step == int(now // 30)
    assert d.verify_totp(secret, code, now, window_steps=1, last_step=step) is None  # replay
    assert d.verify_totp(secret, code, now + 30, window_steps=1, last_step=None) == step
    assert d.verify_totp(secret, code, now + 90, window_steps=1, last_step=None) is None
    assert d.verify_totp(secret, "12345", now, window_steps=1, last_step=None) is None
    assert d.verify_totp(secret, "abcdef", now, window_steps=1, last_step=None) is None


def test_recovery_codes_are_random_and_their_digest_ignores_format():
    codes = d.new_recovery_codes(10)
    assert len(set(codes)) == 10
    assert all(len(c) == 16 for c in codes)
    user = uuid.uuid4()
    assert d.recovery_digest(user, codes[0]) == d.recovery_digest(user, codes[0].upper())
    assert d.recovery_digest(user, codes[0]) != d.recovery_digest(uuid.uuid4(), codes[0])


def test_lockout_grows_with_each_lockout_and_is_capped():
    policy = d.LockoutPolicy(failures_max=3, base_s=60, s_max=300, reset_s=3600)
    state, now = d.LoginThrottle(), 1000.0
    periods = []
    for _ in range(4):
        for _ in range(3):
            state = state.failed(policy, now)
        periods.append(state.retry_after_s(now))
        now = state.locked_until + 1
    assert periods == [60, 120, 240, 300]
    # a quiet day forgets earlier lockouts
    for _ in range(3):
        state = state.failed(policy, now + 7200)
    assert state.retry_after_s(now + 7200) == 60


def test_two_failures_do_not_lock():
    policy = d.LockoutPolicy(failures_max=3, base_s=60, s_max=300, reset_s=3600)
    state = d.LoginThrottle().failed(policy, 10).failed(policy, 11)
    assert state.retry_after_s(11) == 0
    assert state.failures == 2


def test_scopes_are_the_requested_subset_of_what_roles_allow():
    allowed = d.allowed_scopes(["customer"])
    assert d.grant_scopes(None, allowed) == allowed
    assert d.grant_scopes("ledger:read", allowed) == {"ledger:read"}
    with pytest.raises(d.OAuthError) as error:
        d.grant_scopes("users:write", allowed)
    assert error.value.error == "invalid_scope"
    assert "users:write" in d.allowed_scopes(["customer", "admin"])


def test_passwords_need_length_and_some_variety():
    d.check_password("a long enough passphrase", 12, 256)
    for bad in ("short", "x" * 300, "aaaaaaaaaaaaaaaa"):
        with pytest.raises(d.WeakPassword):
            d.check_password(bad, 12, 256)


def test_emails_are_indexed_in_one_normal_form():
    assert d.normalize_email("  Alice@Example.COM ") == "alice@example.com"
    assert d.normalize_email("ｆｏｏ@example.com") == "foo@example.com"  # NFKC


def test_access_token_claims_carry_what_rfc9068_asks():
    sid = uuid.uuid4()
    claims = d.access_token_claims(
        issuer="i", audience="a", subject="s", roles=["customer"], scopes={"b", "a"},
        session_id=sid, now_s=100, ttl_s=600,
    )  # fmt: skip
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == 100
    assert claims["scope"] == "a b"
    assert claims["sid"] == str(sid)
    assert {"iss", "aud", "sub", "jti", "roles"} <= claims.keys()


def _description(*created: str) -> dict[str, object]:
    keys = {}
    for number, when in enumerate(created, start=1):
        public = hashlib.sha256(str(number).encode()).digest()
        keys[str(number)] = {
            "public_key": base64.b64encode(public).decode(),
            "creation_time": when,
            "name": "ed25519",
        }
    return {"type": "ed25519", "keys": keys, "latest_version": len(created)}


class _NoVault:
    pass


def test_jwks_keeps_older_versions_only_while_their_tokens_may_live():
    versions = key_versions(
        _description(
            "2026-01-01T00:00:00.123456789Z",
            "2026-01-02T00:00:00Z",
            "2026-01-02T01:00:00.5Z",
        )
    )
    assert [v.version for v in versions] == [1, 2, 3]
    assert len({v.kid for v in versions}) == 3
    assert all(v.jwk["kty"] == "OKP" and v.jwk["alg"] == "EdDSA" for v in versions)
    keys = SigningKeys(
        _NoVault(),  # type: ignore[arg-type]
        "auth-jwt", token_ttl_s=600, rotation_s=0, check_interval_s=60, jwks_cache_s=5,
    )  # fmt: skip
    keys._versions = versions
    v3_created = versions[2].created_at_s
    # right after v3: v2 signed tokens that still live; v1 was replaced a day ago
    assert [v.version for v in keys.published(v3_created + 1)] == [3, 2]
    assert [v.version for v in keys.published(v3_created + 3600)] == [3]
