"""Attacks on the auth service, against the real stack: forged and stale access tokens are
401, and property-based fuzzing of every operation of its OpenAPI gives no 5xx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
from typing import Any

import pytest
from auth_testkit import PASSWORD, AuthClient, bearer, client_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickertap.auth.handlers import Auth
from tickertap.authn.testing import TokenMinter

pytestmark = pytest.mark.stack


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_forged_and_stale_tokens_are_refused(api: AuthClient, auth: Auth):
    user, pair = await api.new_user()
    good = pair["access_token"]
    assert (await api.me(good)).status_code == 200
    header_b64, payload_b64, signature_b64 = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = claims_of(good)
    now = int(time.time())
    public_x = next(k for k in (await auth.keys.jwks())["keys"] if k["kid"] == header["kid"])["x"]

    forged: dict[str, str] = {}
    forged["alg none"] = f"{segment({'alg': 'none', 'kid': header['kid']})}.{payload_b64}."
    hs_header = segment({"alg": "HS256", "kid": header["kid"], "typ": "at+jwt"})
    mac = hmac.new(public_x.encode(), f"{hs_header}.{payload_b64}".encode(), hashlib.sha256)
    forged["HS256 with the public key"] = f"{hs_header}.{payload_b64}.{b64(mac.digest())}"
    other = TokenMinter(claims["iss"], claims["aud"], kid=header["kid"])
    forged["another key, same kid"] = other.sign(claims)
    forged["unknown kid"] = TokenMinter(claims["iss"], claims["aud"], kid="v99-unknown").sign(
        claims
    )
    tampered = dict(claims, roles=["admin"])
    forged["tampered payload"] = f"{header_b64}.{segment(tampered)}.{signature_b64}"
    forged["wrong issuer"] = await auth.keys.sign(dict(claims, iss="https://evil.example"))
    forged["wrong audience"] = await auth.keys.sign(dict(claims, aud="another-api"))
    forged["expired"] = await auth.keys.sign(dict(claims, iat=now - 1300, nbf=now - 1300,
                                                  exp=now - 700))  # fmt: skip
    forged["not yet valid"] = await auth.keys.sign(dict(claims, nbf=now + 600))
    forged["issued in the future"] = await auth.keys.sign(
        dict(claims, iat=now + 600, nbf=now + 600, exp=now + 1200)
    )
    forged["too long a lifetime"] = await auth.keys.sign(dict(claims, exp=now + 86_400))
    forged["unknown session"] = await auth.keys.sign(dict(claims, sid=str(uuid.uuid4())))
    forged["another user's session"] = await auth.keys.sign(dict(claims, sub=str(uuid.uuid4())))
    forged["no session"] = await auth.keys.sign({k: v for k, v in claims.items() if k != "sid"})
    for name, token in forged.items():
        r = await api.me(token)
        assert r.status_code == 401, (name, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), name
        assert r.json()["code"] == "invalid_token", name

    # a deleted user's and a revoked session's tokens
    second = await api.login(user["email"])
    assert (
        await api.http.post("/v1/logout", headers=bearer(second["access_token"]))
    ).status_code == 204
    assert (await api.me(second["access_token"])).status_code == 401
    r = await api.http.request(
        "DELETE", "/v1/users/me", json={"password": PASSWORD}, headers=bearer(good)
    )
    assert r.status_code == 204
    assert (await api.me(good)).status_code == 401
    assert (await api.me(await auth.keys.sign(claims))).status_code == 401


def _operations(app: Any) -> list[tuple[str, str]]:
    spec = app.openapi()
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if path not in ("/metrics",)
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["email", "password", "current_password", "new_password", "code", "client_id",
          "scopes", "roles", "grant_type", "username", "refresh_token", "token", "scope",
          "mfa_token", "otp", "recovery_code", "client_secret"]  # fmt: skip
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS}),
    st.fixed_dictionaries({}, optional={f: st.text(max_size=300) for f in FIELDS}),
)
forms = st.dictionaries(st.sampled_from([*FIELDS, "x"]), st.text(max_size=80), max_size=6)
path_values = st.one_of(
    st.uuids().map(str), st.sampled_from(["admin", "support", "customer"]), st.text(max_size=20)
)


@pytest.fixture(scope="module")
async def fuzz_context(auth_app, stack):
    async with client_for(auth_app) as http:
        api = AuthClient(http)
        _, pair = await api.new_user()
        yield auth_app, pair["access_token"]


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    operation=st.integers(min_value=0, max_value=10_000),
    body=bodies,
    form=forms,
    as_form=st.booleans(),
    with_token=st.sampled_from(["valid", "none", "junk"]),
    path_value=path_values,
)
async def test_fuzzed_requests_never_get_a_5xx(
    fuzz_context, operation, body, form, as_form, with_token, path_value
):
    app, token = fuzz_context
    operations = _operations(app)
    method, path = operations[operation % len(operations)]
    value = urllib.parse.quote(path_value, safe="")
    path = path.replace("{user_id}", value).replace("{role}", value)
    headers = {"valid": bearer(token), "none": {}, "junk": {"Authorization": "Bearer x.y.z"}}[
        with_token
    ]
    async with client_for(app) as http:
        if as_form:
            r = await http.request(method, path, data=form, headers=headers)
        else:
            r = await http.request(method, path, json=body, headers=headers)
    assert r.status_code < 500, (method, path, r.status_code, r.text)


async def test_without_vault_logins_and_registrations_are_503_and_write_nothing(
    api: AuthClient, auth: Auth, db
):
    from tickertap.secrets import Vault

    user = await api.register()
    before = await db.fetchval("SELECT count(*) FROM auth.users")
    sessions = await db.fetchval("SELECT count(*) FROM auth.sessions")
    real, auth._vault = auth._vault, Vault("http://127.0.0.1:9", timeout_s=0.5)
    keys_vault, auth.keys._vault = auth.keys._vault, auth._vault
    try:
        r = await api.http.post("/v1/users", json={"email": "x@y.test", "password": PASSWORD})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "unavailable"
        assert r.headers["retry-after"] == "1"
        r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
        assert r.status_code == 503, r.text
    finally:
        auth._vault, auth.keys._vault = real, keys_vault
    assert await db.fetchval("SELECT count(*) FROM auth.users") == before
    assert await db.fetchval("SELECT count(*) FROM auth.sessions") == sessions
    # the blind index answers but signing does not: no session is left behind
    keys_vault, auth.keys._vault = auth.keys._vault, Vault("http://127.0.0.1:9", timeout_s=0.5)
    try:
        r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
        assert r.status_code == 503, r.text
    finally:
        auth.keys._vault = keys_vault
    assert await db.fetchval("SELECT count(*) FROM auth.sessions") == sessions
    await api.login(user["email"])
