"""TOTP MFA, roles and the audit trail against the real stack. Codes are computed by pyotp
(independent of the service's own TOTP code)."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pyotp
import pytest
from auth_testkit import PASSWORD, AuthClient, bearer, make_admin

from tickertap.auth.handlers import MFA_GRANT, Auth

pytestmark = pytest.mark.stack


def wrong_code(totp: pyotp.TOTP) -> str:
    """A code that no step of the window accepts."""
    window = {totp.at(time.time() + k * 30) for k in range(-2, 3)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in window)


async def enable_totp(api: AuthClient, access_token: str) -> tuple[pyotp.TOTP, list[str]]:
    r = await api.http.post("/v1/users/me/mfa/totp", headers=bearer(access_token))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    enrollment = r.json()
    totp = pyotp.TOTP(enrollment["secret"])
    assert pyotp.parse_uri(enrollment["otpauth_uri"]).secret == enrollment["secret"]
    r = await api.http.post(
        "/v1/users/me/mfa/totp/confirm",
        json={"code": wrong_code(totp)},
        headers=bearer(access_token),
    )
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_otp"
    r = await api.http.post(
        "/v1/users/me/mfa/totp/confirm", json={"code": totp.now()}, headers=bearer(access_token)
    )
    assert r.status_code == 200, r.text
    return totp, r.json()["recovery_codes"]


async def test_totp_enrollment_login_second_step_recovery_and_disable(api: AuthClient, db):
    user, pair = await api.new_user()
    totp, recovery = await enable_totp(api, pair["access_token"])
    assert len(recovery) == 10
    row = await db.fetchrow(
        "SELECT mfa_secret_ciphertext, mfa_enabled FROM auth.users WHERE id = $1",
        uuid.UUID(user["id"]),
    )
    assert row["mfa_enabled"] is True
    assert row["mfa_secret_ciphertext"].startswith("vault:v")
    stored = await db.fetch(
        "SELECT code_hash FROM auth.recovery_codes WHERE user_id = $1", uuid.UUID(user["id"])
    )
    assert len(stored) == 10
    assert all(code.encode() not in bytes(r["code_hash"]) for r in stored for code in recovery)

    # the password alone is not enough now
    r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    assert r.status_code == 403, r.text
    challenge = r.json()
    assert challenge["error"] == "mfa_required"
    assert challenge["mfa_grant_type"] == MFA_GRANT
    r = await api.token(
        grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=wrong_code(totp)
    )
    assert r.json()["error"] == "invalid_grant"
    # the confirmation spent this step's code; the next step's is within the window
    code = totp.at(time.time() + 30)
    r = await api.token(grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=code)
    assert r.status_code == 200, r.text
    assert (await api.me(r.json()["access_token"])).status_code == 200
    # the challenge is spent, and a code is good once
    r = await api.token(grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=code)
    assert r.json()["error"] == "invalid_grant"
    challenge = (
        await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    ).json()
    r = await api.token(grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=code)
    assert r.json()["error"] == "invalid_grant"

    # a recovery code instead of the app: once
    challenge = (
        await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    ).json()
    r = await api.token(
        grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], recovery_code=recovery[0]
    )
    assert r.status_code == 200, r.text
    tokens = r.json()
    challenge = (
        await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    ).json()
    r = await api.token(
        grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], recovery_code=recovery[0]
    )
    assert r.json()["error"] == "invalid_grant"

    # disabling needs the password and a second factor
    r = await api.http.request(
        "DELETE", "/v1/users/me/mfa/totp", json={"password": "wrong wrong wrong",
                                                 "code": recovery[1]},
        headers=bearer(tokens["access_token"]),
    )  # fmt: skip
    assert r.status_code == 401
    r = await api.http.request(
        "DELETE", "/v1/users/me/mfa/totp", json={"password": PASSWORD, "code": recovery[1]},
        headers=bearer(tokens["access_token"]),
    )  # fmt: skip
    assert r.status_code == 204, r.text
    await api.login(user["email"])  # one step again
    actions = [
        a["action"]
        for a in await db.fetch(
            "SELECT action FROM auth.audit WHERE subject_id = $1 ORDER BY id",
            uuid.UUID(user["id"]),
        )
    ]
    for expected in ("mfa.enroll", "mfa.confirm", "login.mfa_required", "login.mfa",
                     "mfa.disable"):  # fmt: skip
        assert expected in actions


async def test_wrong_codes_lock_the_account_like_wrong_passwords(api: AuthClient, auth: Auth):
    """Knowing the password must not allow guessing codes without end: wrong codes count
    towards the lockout, and the password alone does not reset it."""
    user, pair = await api.new_user()
    totp, _ = await enable_totp(api, pair["access_token"])
    statuses = []
    for _ in range(auth.settings.lockout_failures_max):
        challenge = (
            await api.token(grant_type="password", username=user["email"], password=PASSWORD)
        ).json()
        assert challenge["error"] == "mfa_required"
        r = await api.token(
            grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=wrong_code(totp)
        )
        statuses.append(r.status_code)
    assert statuses[:-1] == [400] * (auth.settings.lockout_failures_max - 1)
    assert statuses[-1] == 429
    assert int(r.headers["Retry-After"]) >= 1
    r = await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    assert r.status_code == 429
    r = await api.token(grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"])
    assert r.json()["error"] == "invalid_request"


async def test_an_mfa_challenge_allows_few_attempts(api: AuthClient, auth: Auth, db):
    user, pair = await api.new_user()
    totp, _ = await enable_totp(api, pair["access_token"])
    challenge = (
        await api.token(grant_type="password", username=user["email"], password=PASSWORD)
    ).json()
    await db.execute(
        "UPDATE auth.mfa_challenges SET attempts = $1 WHERE user_id = $2",
        auth.settings.mfa_attempts_max,
        uuid.UUID(user["id"]),
    )
    r = await api.token(
        grant_type=MFA_GRANT, mfa_token=challenge["mfa_token"], otp=totp.at(time.time() + 30)
    )
    assert r.json()["error"] == "invalid_grant"  # even the right code: the challenge is spent


async def test_admins_grant_and_revoke_roles_audited_with_events(api: AuthClient, db, auth: Auth):
    admin, _ = await api.new_user()
    await make_admin(db, admin["id"])
    admin_pair = await api.login(admin["email"])
    user, user_pair = await api.new_user()
    url = f"/v1/admin/users/{user['id']}/roles/support"
    # customers may not
    r = await api.http.post(url, headers=bearer(user_pair["access_token"]))
    assert r.status_code == 403
    assert r.json()["code"] == "insufficient_scope"
    r = await api.http.post(url, headers=bearer(admin_pair["access_token"]))
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == ["customer", "support"]
    r = await api.http.post(
        f"/v1/admin/users/{user['id']}/roles/overlord", headers=bearer(admin_pair["access_token"])
    )
    assert r.status_code == 422
    assert r.json()["code"] == "unknown_role"
    r = await api.http.post(
        f"/v1/admin/users/{uuid.uuid4()}/roles/support", headers=bearer(admin_pair["access_token"])
    )
    assert r.status_code == 404
    # the new role shows in new tokens; support may read users and their audit trail
    support_pair = await api.login(user["email"])
    r = await api.http.get(
        f"/v1/admin/users/{admin['id']}", headers=bearer(support_pair["access_token"])
    )
    assert r.status_code == 200
    assert r.json()["roles"] == ["admin", "customer"]
    r = await api.http.get(
        f"/v1/admin/users/{user['id']}/audit", headers=bearer(support_pair["access_token"])
    )
    assert r.status_code == 200
    grant = next(e for e in r.json() if e["action"] == "role.grant")
    assert grant["actor_id"] == admin["id"]
    assert grant["details"] == {"role": "support"}
    assert grant["ip"].startswith("10.")
    assert grant["user_agent"].startswith("python-httpx")
    # revoking ends the user's sessions: no refreshing into a role they lost
    r = await api.http.delete(url, headers=bearer(admin_pair["access_token"]))
    assert r.status_code == 200
    assert r.json()["roles"] == ["customer"]
    assert (await api.refresh(support_pair["refresh_token"])).status_code == 400
    rows = await db.fetch(
        "SELECT value FROM auth.outbox WHERE key = $1 ORDER BY id", user["id"].encode()
    )
    records = [auth._codec.decode(bytes(r["value"])) for r in rows]
    changes = [(r["event_type"], r["details"], r["actor_id"]) for r in records]
    assert ("role_granted", {"role": "support"}, uuid.UUID(admin["id"])) in [
        (t, d, uuid.UUID(str(a)) if a else None) for t, d, a in changes
    ]
    assert "role_revoked" in [t for t, _, _ in changes]


async def test_audit_is_append_only_for_the_service_role(stack, vault_root, db):
    await db.execute(
        "INSERT INTO auth.audit (action, result) VALUES ('test.append_only', 'success')"
    )
    creds = vault_root.secrets.database.generate_credentials(name="auth")
    conn = await asyncpg.connect(
        host=stack.pg_host, port=stack.pg_port, database=stack.database,
        user=creds["data"]["username"], password=creds["data"]["password"],
    )  # fmt: skip
    try:
        assert await conn.fetchval("SELECT current_user") == "auth_owner"
        await conn.execute(
            "INSERT INTO auth.audit (action, result) VALUES ('test.service_role', 'success')"
        )
        for statement in (
            "UPDATE auth.audit SET result = 'failure' WHERE action = 'test.append_only'",
            "DELETE FROM auth.audit WHERE action = 'test.append_only'",
            "TRUNCATE auth.audit",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
        vault_root.sys.revoke_lease(creds["lease_id"])
    # the trigger holds even for a superuser
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM auth.audit WHERE action = 'test.append_only'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE auth.audit SET result = 'denied' WHERE id = 1")


async def test_an_operator_makes_the_first_admin(api: AuthClient, auth: Auth, db):
    user = await api.register()
    view = await auth.set_role_by_email(user["email"].upper(), "admin", True, "alice")
    assert sorted(view.roles) == ["admin", "customer"]
    row = await db.fetchrow(
        "SELECT actor_id, action FROM auth.audit WHERE subject_id = $1 ORDER BY id DESC LIMIT 1",
        uuid.UUID(user["id"]),
    )
    assert (row["actor_id"], row["action"]) == ("operator:alice", "role.grant")
    pair = await api.login(user["email"])
    assert "users:write" in pair["scope"]
