"""Tokens against the real stack: the OAuth 2 token and revocation endpoints (checked with
an independent OAuth client, authlib), access tokens verified with `cryptography` against
the published JWKS, refresh rotation and reuse, signing key rotation, events."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import httpx
import pytest
from auth_testkit import (
    AUDIENCE,
    PASSWORD,
    AuthClient,
    bearer,
    make_admin,
    verify_independently,
)
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tickertap.auth.handlers import Auth

pytestmark = pytest.mark.stack


STACK_ISSUER = "tickertap-local"  # what the launcher gives every service


def oauth_client(stack, **kwargs) -> tuple[AsyncOAuth2Client, str]:
    """authlib's OAuth 2 client, over real HTTP to the stack's running auth service
    (authlib's requests do not fit httpx's in-process transport)."""
    base = stack.service_url("auth")
    return AsyncOAuth2Client(base_url=base, timeout=30, **kwargs), f"{base}/oauth/token"


async def test_password_grant_with_a_standard_client_and_an_independent_jwt_check(
    stack, api: AuthClient
):
    user = await api.register()
    client, token_url = oauth_client(stack, scope="profile ledger:read")
    async with client:
        token = await client.fetch_token(token_url, username=user["email"], password=PASSWORD)
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "ledger:read profile"
        assert 300 <= token["expires_in"] <= 900
        jwks = (await client.get("/.well-known/jwks.json")).json()
        header, claims = verify_independently(token["access_token"], jwks)
        assert header["alg"] == "EdDSA"
        assert header["typ"] == "at+jwt"
        assert claims["iss"] == STACK_ISSUER
        assert claims["aud"] == AUDIENCE
        assert claims["sub"] == user["id"]
        assert claims["roles"] == ["customer"]
        assert claims["scope"] == "ledger:read profile"
        assert claims["nbf"] <= time.time() < claims["exp"]
        assert 300 <= claims["exp"] - claims["iat"] <= 900
        assert uuid.UUID(claims["sid"])
        assert uuid.UUID(claims["jti"])
        me = await client.get("/v1/users/me")  # authlib sends the bearer token
        assert me.status_code == 200, me.text
        refreshed = await client.refresh_token(token_url, refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        _, new_claims = verify_independently(refreshed["access_token"], jwks)
        assert new_claims["sid"] == claims["sid"]
        assert new_claims["scope"] == "ledger:read profile"


async def test_token_responses_are_not_cached_and_errors_follow_rfc6749(api: AuthClient):
    user = await api.register()
    r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    assert r.headers["cache-control"] == "no-store"
    cases = [
        ({"grant_type": "implicit"}, 400, "unsupported_grant_type"),
        ({"grant_type": "password", "username": user["email"]}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "made-up"}, 400, "invalid_grant"),
        ({"grant_type": "password", "username": user["email"], "password": PASSWORD,
          "scope": "users:write"}, 400, "invalid_scope"),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
    ]  # fmt: skip
    for form, status, error in cases:
        r = await api.token(**form)
        assert r.status_code == status, (form, r.text)
        assert r.json()["error"] == error
        assert r.headers["cache-control"] == "no-store"
    r = await api.http.post("/oauth/token", json={"grant_type": "password"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    r = await api.http.post(
        "/oauth/token",
        content="grant_type=password&grant_type=refresh_token",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["error"] == "invalid_request"


async def test_refresh_tokens_are_one_time_and_reuse_revokes_the_family(
    api: AuthClient, db, auth: Auth
):
    user, first = await api.new_user()
    r = await api.refresh(first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    r = await api.refresh(second["refresh_token"])
    assert r.status_code == 200
    third = r.json()
    # the first token again: a replay; the whole session (family) ends
    r = await api.refresh(first["refresh_token"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    assert (await api.refresh(third["refresh_token"])).status_code == 400
    assert (await api.me(third["access_token"])).status_code == 401
    # other sessions of the user are untouched
    other = await api.login(user["email"])
    assert (await api.me(other["access_token"])).status_code == 200
    rows = await db.fetch(
        "SELECT value FROM auth.outbox WHERE key = $1 ORDER BY id", user["id"].encode()
    )
    records = [auth._codec.decode(bytes(r["value"])) for r in rows]
    kinds = [rec["event_type"] for rec in records]
    assert kinds[0] == "user_registered"
    assert "refresh_token_reused" in kinds
    reused = next(rec for rec in records if rec["event_type"] == "refresh_token_reused")
    assert str(reused["session_id"]) == r_sid(third["access_token"])
    audit = await db.fetch(
        "SELECT action FROM auth.audit WHERE subject_id = $1", uuid.UUID(user["id"])
    )
    assert "refresh.reuse" in [a["action"] for a in audit]


def r_sid(access_token: str) -> str:
    import json

    payload = access_token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"])


async def test_concurrent_use_of_one_refresh_token_yields_at_most_one_pair(api: AuthClient):
    _, pair = await api.new_user()
    results = await asyncio.gather(*(api.refresh(pair["refresh_token"]) for _ in range(8)))
    winners = [r for r in results if r.status_code == 200]
    assert len(winners) <= 1
    assert all(r.json()["error"] == "invalid_grant" for r in results if r.status_code != 200)


async def test_revocation_rfc7009_and_logout(api: AuthClient):
    user, pair = await api.new_user()
    r = await api.http.post("/oauth/revoke", data={"token": "not-a-token-we-know"})
    assert r.status_code == 200
    r = await api.http.post(
        "/oauth/revoke", data={"token": pair["refresh_token"], "token_type_hint": "refresh_token"}
    )
    assert r.status_code == 200
    assert (await api.me(pair["access_token"])).status_code == 401
    assert (await api.refresh(pair["refresh_token"])).status_code == 400

    second = await api.login(user["email"])
    r = await api.http.post("/oauth/revoke", data={"token": second["access_token"]})
    assert r.status_code == 200
    assert (await api.me(second["access_token"])).status_code == 401

    third = await api.login(user["email"])
    sessions = await api.http.get("/v1/sessions", headers=bearer(third["access_token"]))
    assert [s["id"] for s in sessions.json()] == [r_sid(third["access_token"])]
    r = await api.http.post("/v1/logout", headers=bearer(third["access_token"]))
    assert r.status_code == 204
    assert (await api.me(third["access_token"])).status_code == 401
    assert (await api.refresh(third["refresh_token"])).status_code == 400


async def test_client_credentials_for_machine_clients(stack, api: AuthClient, db):
    admin, admin_pair = await api.new_user()
    await make_admin(db, admin["id"])
    admin_pair = await api.login(admin["email"])
    client_id = f"gateway-{uuid.uuid4().hex[:8]}"
    r = await api.http.post(
        "/v1/admin/clients",
        json={"client_id": client_id, "scopes": ["ledger:read", "portfolio:read"],
              "roles": ["ops"]},
        headers=bearer(admin_pair["access_token"]),
    )  # fmt: skip
    assert r.status_code == 201, r.text
    secret = r.json()["client_secret"]
    client, token_url = oauth_client(
        stack, client_id=client_id, client_secret=secret, scope="ledger:read"
    )
    async with client:
        token = await client.fetch_token(token_url, grant_type="client_credentials")
        assert "refresh_token" not in token
        jwks = (await client.get("/.well-known/jwks.json")).json()
        _, claims = verify_independently(token["access_token"], jwks)
        assert claims["sub"] == f"client:{client_id}"
        assert claims["scope"] == "ledger:read"
        assert claims["roles"] == ["ops"]
        assert "sid" not in claims
    # client_secret_post works too; a wrong secret is invalid_client with a challenge
    r = await api.token(grant_type="client_credentials", client_id=client_id, client_secret=secret)
    assert r.status_code == 200
    assert r.json()["scope"] == "ledger:read portfolio:read"
    wrong = base64.b64encode(f"{client_id}:wrong".encode()).decode()
    r = await api.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {wrong}"},
    )  # fmt: skip
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic")
    r = await api.token(
        grant_type="client_credentials", client_id=client_id, client_secret=secret,
        scope="ledger:write",
    )  # fmt: skip
    assert r.json()["error"] == "invalid_scope"


async def test_signing_key_rotation_publishes_old_and_new_keys(api: AuthClient, db, auth: Auth):
    admin, _ = await api.new_user()
    await make_admin(db, admin["id"])
    old = await api.login(admin["email"])
    jwks_before = (await api.http.get("/.well-known/jwks.json")).json()
    old_header, _ = verify_independently(old["access_token"], jwks_before)
    r = await api.http.post("/v1/admin/signing-keys/rotate", headers=bearer(old["access_token"]))
    assert r.status_code == 200, r.text
    new_kid = r.json()["kid"]
    assert new_kid != old_header["kid"]
    await auth.keys.refresh()  # what the periodic check does within its interval
    jwks = (await api.http.get("/.well-known/jwks.json")).json()
    kids = [k["kid"] for k in jwks["keys"]]
    assert new_kid in kids
    assert old_header["kid"] in kids  # tokens it signed still live
    new = await api.login(admin["email"])
    new_header, _ = verify_independently(new["access_token"], jwks)
    assert new_header["kid"] == new_kid
    assert (await api.me(old["access_token"])).status_code == 200
    assert (await api.me(new["access_token"])).status_code == 200
    _customer, pair = await api.new_user()
    r = await api.http.post("/v1/admin/signing-keys/rotate", headers=bearer(pair["access_token"]))
    assert r.status_code == 403


async def test_the_running_service_publishes_jwks_and_metadata(stack):
    async with httpx.AsyncClient(base_url=stack.service_url("auth"), timeout=10) as http:
        jwks = await http.get("/.well-known/jwks.json")
        assert jwks.status_code == 200
        assert any(k.get("alg") == "EdDSA" for k in jwks.json()["keys"])
        assert all("d" not in k for k in jwks.json()["keys"])
        meta = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert meta["token_endpoint"].endswith("/oauth/token")
        assert "refresh_token" in meta["grant_types_supported"]
        assert (await http.get("/readyz")).status_code == 200


async def test_other_services_verify_auth_tokens_and_dev_tokens_from_its_jwks(
    stack, mint_token, api: AuthClient
):
    """What the ledger would do with TICKERTAP_AUTH_JWKS_URL pointing at the auth service:
    its tokens verify, and so do the local stack's dev tokens (republished there)."""
    from tickertap.authn import AccessTokenVerifier, HttpJwks

    user = await api.register()
    client, token_url = oauth_client(stack)
    async with client:
        token = await client.fetch_token(token_url, username=user["email"], password=PASSWORD)
    async with HttpJwks(f"{stack.service_url('auth')}/.well-known/jwks.json") as jwks:
        verifier = AccessTokenVerifier(
            jwks, issuer=STACK_ISSUER, audience=AUDIENCE, algorithms=("Ed25519", "EdDSA")
        )
        principal = await verifier.verify(token["access_token"])
        assert principal.subject == user["id"]
        assert principal.roles == {"customer"}
        assert "ledger:write" in principal.scopes
        dev = await verifier.verify(mint_token("someone", ("ops",)))
        assert dev.roles == {"ops"}


async def test_expired_rows_are_purged(api: AuthClient, db, auth: Auth):
    user, pair = await api.new_user()
    live = await api.login(user["email"])
    sid = uuid.UUID(r_sid(pair["access_token"]))
    await db.execute(
        "UPDATE auth.sessions SET expires_at = now() - interval '1 second' WHERE id = $1", sid
    )
    await auth.purge_expired()
    assert await db.fetchval("SELECT count(*) FROM auth.sessions WHERE id = $1", sid) == 0
    assert (
        await db.fetchval("SELECT count(*) FROM auth.refresh_tokens WHERE session_id = $1", sid)
        == 0
    )
    assert (await api.refresh(pair["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await api.refresh(live["refresh_token"])).status_code == 200
    # a rate bucket idle long enough to be full again is like no row; a recent one stays
    idle_s = max(auth.login_limit.refill_s, auth.register_limit.refill_s) + 1
    await db.execute(
        "INSERT INTO auth.rate_buckets (name, client, tokens, granted, updated_at) VALUES"
        " ('login', 'purge-idle', 0, false, now() - make_interval(secs => $1)),"
        " ('login', 'purge-recent', 0, false, now())",
        idle_s,
    )
    await auth.purge_expired()
    clients = await db.fetch(
        "SELECT client FROM auth.rate_buckets WHERE client LIKE 'purge-%' ORDER BY client"
    )
    assert [row["client"] for row in clients] == ["purge-recent"]
    await db.execute("DELETE FROM auth.rate_buckets WHERE client = 'purge-recent'")


async def test_the_signing_key_rotates_on_its_schedule(auth: Auth):
    """A key older than the rotation period is rotated at the next check (here: at once)."""
    from tickertap.auth.keys import SigningKeys

    keys = SigningKeys(
        auth._vault,
        auth.settings.signing_key,
        token_ttl_s=600,
        rotation_s=0.001,
        check_interval_s=0.05,
        jwks_cache_s=0,
    )
    await keys.refresh()
    before = keys.current.version
    task = asyncio.create_task(keys.run())
    try:
        for _ in range(200):  # at most 10 s
            if keys.current.version > before:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert keys.current.version > before
    published = [k["kid"] for k in (await keys.jwks())["keys"]]
    assert published[0] == keys.current.kid
    assert len(published) >= 2  # the previous version may still have signed live tokens
