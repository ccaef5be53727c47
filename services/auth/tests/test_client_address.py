"""The client address in audit rows and per-IP limits is the TCP peer's unless a trusted
proxy forwards it: the running auth service (real uvicorn, local stack defaults, no
trusted proxies) ignores a client's own X-Forwarded-For."""

from __future__ import annotations

import uuid

import httpx
from auth_testkit import PASSWORD


async def test_a_client_cannot_choose_its_audited_address(stack, db):
    email = f"xff-{uuid.uuid4().hex[:12]}@example.test"
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8"}
    async with httpx.AsyncClient(base_url=stack.service_url("auth"), timeout=30) as http:
        r = await http.post("/v1/users", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = await http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": email, "password": "wrong " + PASSWORD},
            headers=spoofed,
        )
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"
    rows = await db.fetch(
        "SELECT action, result, ip FROM auth.audit WHERE subject_id = $1 ORDER BY id",
        uuid.UUID(user_id),
    )
    failures = [row for row in rows if row["result"] == "failure"]
    assert failures, rows
    assert {row["ip"] for row in failures} == {"127.0.0.1"}
