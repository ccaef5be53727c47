"""An operator's provisioning of machine clients (`python -m tickertap.auth.cli set-client`,
what the local stack runs for the portfolio reconciliation's client): made if new, else
given a new secret that replaces the old one; audited; the secret file is the owner's only.
"""

from __future__ import annotations

import stat
import uuid

import pytest
from auth_testkit import AuthClient

from tickertap.auth.cli import write_secret
from tickertap.auth.handlers import Auth


@pytest.mark.stack
async def test_set_client_creates_then_rotates_the_secret(auth: Auth, api: AuthClient, db):
    client_id = f"recon-{uuid.uuid4().hex[:8]}"
    first, created = await auth.set_client(client_id, ["ledger:read"], ["support"], "tester")
    assert created
    r = await api.token(grant_type="client_credentials", client_id=client_id, client_secret=first)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "ledger:read"

    second, created = await auth.set_client(client_id, ["ledger:read"], ["support"], "tester")
    assert not created
    assert second != first
    r = await api.token(grant_type="client_credentials", client_id=client_id, client_secret=first)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    r = await api.token(grant_type="client_credentials", client_id=client_id, client_secret=second)
    assert r.status_code == 200, r.text
    actions = await db.fetch(
        "SELECT action, actor_id FROM auth.audit WHERE details->>'client_id' = $1 ORDER BY id",
        client_id,
    )
    assert [(a["action"], a["actor_id"]) for a in actions] == [
        ("client.create", "operator:tester"),
        ("client.rotate", "operator:tester"),
    ]


def test_the_secret_file_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "secrets" / "client_secret"
    path.parent.mkdir()
    path.write_text("old")
    path.chmod(0o644)
    write_secret(path, "new-secret")
    assert path.read_text() == "new-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
