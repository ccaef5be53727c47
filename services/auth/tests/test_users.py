"""Users and passwords against the real stack: registration, self-service, Argon2id, PII at
rest, no enumeration, lockout and per-IP rate limits."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from argon2 import PasswordHasher, Type
from auth_testkit import (
    PASSWORD,
    AuthClient,
    app_settings,
    bearer,
    client_for,
    new_email,
    new_ip,
)

from tickertap.auth.main import create_app

pytestmark = pytest.mark.stack


async def test_register_read_and_change_email(api: AuthClient, db):
    email = new_email()
    user = await api.register(email)
    assert user["email"] == email
    assert user["roles"] == ["customer"]
    assert user["mfa_enabled"] is False
    pair = await api.login(email.upper())  # the lookup ignores case
    me = await api.me(pair["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["id"]

    other = new_email()
    r = await api.http.patch(
        "/v1/users/me", json={"email": other, "password": "wrong password!"},
        headers=bearer(pair["access_token"]),
    )  # fmt: skip
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_credentials"
    r = await api.http.patch(
        "/v1/users/me", json={"email": other, "password": PASSWORD},
        headers=bearer(pair["access_token"]),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["email"] == other
    await api.login(other)
    r = await api.token(grant_type="password", username=email, password=PASSWORD)
    assert r.json()["error"] == "invalid_grant"


async def test_email_is_stored_encrypted_and_indexed_by_a_keyed_hmac(api: AuthClient, db):
    email = new_email()
    user = await api.register(email)
    row = await db.fetchrow("SELECT * FROM auth.users WHERE id = $1", uuid.UUID(user["id"]))
    assert row["email_ciphertext"].startswith("vault:v")
    assert row["email_index"].startswith("vault:v")
    stored = " ".join(str(v) for v in row.values()).lower()
    assert email.lower() not in stored
    assert email.split("@")[0].lower() not in stored
    assert row["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    audit = await db.fetch("SELECT * FROM auth.audit WHERE subject_id = $1", row["id"])
    assert email.lower() not in str([dict(a) for a in audit]).lower()


async def test_duplicate_email_and_bad_input_are_4xx_and_write_nothing(api: AuthClient, db):
    email = new_email()
    await api.register(email)
    users_before = await db.fetchval("SELECT count(*) FROM auth.users")
    r = await api.http.post("/v1/users", json={"email": email.lower(), "password": PASSWORD})
    assert r.status_code == 409
    assert r.json()["code"] == "email_taken"
    cases = [
        ({"email": new_email(), "password": "short"}, 422, "weak_password"),
        ({"email": "not-an-email", "password": PASSWORD}, 422, "validation_error"),
        ({"email": new_email(), "password": PASSWORD, "roles": ["admin"]}, 422, "validation_error"),
        ({"email": new_email(), "password": 12345678901234}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        r = await api.http.post("/v1/users", json=body)
        assert r.status_code == status, r.text
        assert r.json()["code"] == code
        assert PASSWORD not in r.text
    assert await db.fetchval("SELECT count(*) FROM auth.users") == users_before


async def test_unknown_email_and_wrong_password_answer_alike(api: AuthClient):
    user = await api.register()
    wrong = await api.token(grant_type="password", username=user["email"], password="nope" * 4)
    unknown = await api.token(grant_type="password", username=new_email(), password="nope" * 4)
    assert wrong.status_code == unknown.status_code == 400
    assert (
        wrong.json()
        == unknown.json()
        == {
            "error": "invalid_grant",
            "error_description": "the email or the password is wrong",
        }
    )


async def test_change_password_revokes_every_session(api: AuthClient, db):
    user, first = await api.new_user()
    second = await api.login(user["email"])
    new_password = "another long passphrase"
    r = await api.http.post(
        "/v1/users/me/password",
        json={"current_password": "wrong wrong wrong", "new_password": new_password},
        headers=bearer(first["access_token"]),
    )
    assert r.status_code == 401
    r = await api.http.post(
        "/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=bearer(first["access_token"]),
    )
    assert r.status_code == 204, r.text
    for pair in (first, second):
        assert (await api.me(pair["access_token"])).status_code == 401
        assert (await api.refresh(pair["refresh_token"])).json()["error"] == "invalid_grant"
    await api.login(user["email"], new_password)
    events = await db.fetch("SELECT headers FROM auth.outbox WHERE key = $1", user["id"].encode())
    assert len(events) >= 4  # registered, two sessions revoked, password changed


async def test_delete_account_removes_the_user_and_revokes_tokens(api: AuthClient, db):
    user, pair = await api.new_user()
    r = await api.http.request(
        "DELETE", "/v1/users/me", json={"password": "wrong wrong wrong"},
        headers=bearer(pair["access_token"]),
    )  # fmt: skip
    assert r.status_code == 401
    r = await api.http.request(
        "DELETE", "/v1/users/me", json={"password": PASSWORD},
        headers=bearer(pair["access_token"]),
    )  # fmt: skip
    assert r.status_code == 204, r.text
    assert (
        await db.fetchval("SELECT count(*) FROM auth.users WHERE id = $1", uuid.UUID(user["id"]))
        == 0
    )
    assert (await api.me(pair["access_token"])).status_code == 401
    assert (await api.refresh(pair["refresh_token"])).status_code == 400
    r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    assert r.json()["error"] == "invalid_grant"


async def test_login_rehashes_when_the_parameters_changed(api: AuthClient, db):
    user = await api.register()
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    await db.execute(
        "UPDATE auth.users SET password_hash = $2 WHERE id = $1",
        uuid.UUID(user["id"]),
        weak.hash(PASSWORD),
    )
    await api.login(user["email"])
    stored = await db.fetchval(
        "SELECT password_hash FROM auth.users WHERE id = $1", uuid.UUID(user["id"])
    )
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    await api.login(user["email"])


async def test_lockout_after_failures_grows_and_answers_429(auth_app, db):
    async with client_for(auth_app) as http:
        api = AuthClient(http)
        user = await api.register()
        for _ in range(2):
            r = await api.token(grant_type="password", username=user["email"], password="x" * 12)
            assert r.status_code == 400
        r = await api.token(grant_type="password", username=user["email"], password="x" * 12)
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_requests"
        first_wait = int(r.headers["Retry-After"])
        assert 1 <= first_wait <= 2
        # while locked, even the right password is refused (and not checked)
        r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
        assert r.status_code == 429
        await asyncio.sleep(first_wait + 0.2)
        for _ in range(3):
            r = await api.token(grant_type="password", username=user["email"], password="x" * 12)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > first_wait  # the second lockout lasts longer
        # an unknown email locks the same way: a lock tells nothing about existence
        unknown = new_email()
        for _ in range(3):
            r = await api.token(grant_type="password", username=unknown, password="x" * 12)
        assert r.status_code == 429
    actions = await db.fetch(
        "SELECT action, result FROM auth.audit WHERE subject_id = $1 ORDER BY id",
        uuid.UUID(user["id"]),
    )
    assert ("login.lockout", "denied") in [(a["action"], a["result"]) for a in actions]
    assert ("login", "failure") in [(a["action"], a["result"]) for a in actions]


async def test_per_ip_rate_limits_on_login_and_registration(auth_app, auth):
    """A burst passes, then 429 with Retry-After (the buckets refill as time passes, so
    the 429 may come a few requests after the burst on a slow machine)."""
    async with client_for(auth_app) as http:
        api = AuthClient(http)
        burst = auth.settings.register_burst
        passed = 0
        for _ in range(burst * 2):
            r = await http.post("/v1/users", json={"email": new_email(), "password": "short"})
            if r.status_code == 429:
                break
            assert r.status_code == 422
            passed += 1
        assert r.status_code == 429
        assert passed >= burst
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["code"] == "too_many_requests"
        burst = auth.settings.login_burst
        passed = 0
        for _ in range(burst * 2):
            r = await api.token(grant_type="password", username=new_email(), password="x" * 12)
            if r.status_code == 429:
                break
            passed += 1
        assert r.status_code == 429
        assert passed >= burst
        assert r.json()["error"] == "too_many_requests"
        assert int(r.headers["Retry-After"]) >= 1
    async with client_for(auth_app) as other:  # another client IP is not limited
        r = await other.post("/v1/users", json={"email": new_email(), "password": "short"})
        assert r.status_code == 422


async def test_replicas_share_the_per_ip_limits(auth_app, auth, stack, vault_root):
    """Two replicas of the service (two apps on the same Postgres): a client that spent
    its registration burst at one is limited at the other too."""
    secret_id = vault_root.auth.approle.generate_secret_id("auth")["data"]["secret_id"]
    replica = create_app(app_settings(stack, secret_id))
    ip = new_ip()
    async with (
        replica.router.lifespan_context(replica),
        client_for(auth_app, ip) as first,
        client_for(replica, ip) as second,
    ):
        statuses = []
        for i in range(auth.settings.register_burst * 2):
            http = first if i % 2 == 0 else second
            r = await http.post("/v1/users", json={"email": new_email(), "password": "short"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
        # one bucket: within two bursts (one a replica if each had its own), though
        # a few more than one burst may pass as it refills on a slow machine
        assert statuses[-1] == 429, statuses
        r = await (second if http is first else first).post(
            "/v1/users", json={"email": new_email(), "password": "short"}
        )
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1


async def test_emails_passwords_and_tokens_are_never_logged(api: AuthClient, caplog):
    caplog.set_level(logging.DEBUG)
    email = new_email()
    await api.register(email)
    pair = await api.login(email)
    await api.token(grant_type="password", username=email, password="wrong but long")
    await api.refresh(pair["refresh_token"])
    await api.me(pair["access_token"])
    await api.http.post("/v1/users", json={"email": email, "password": PASSWORD})  # 409
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records).lower()
    assert caplog.records
    for secret in (email.lower(), PASSWORD, "wrong but long", pair["refresh_token"].lower(),
                   pair["access_token"].lower()):  # fmt: skip
        assert secret not in logged
