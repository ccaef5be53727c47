"""Pointing the launcher at existing servers: it starts none of them, only the services.

The test stack's own Postgres, broker and OpenBao stand in for "real clusters";
a second launcher (own ports, own state folder) is given their addresses.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import devkeys  # noqa: E402

STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
PORT_BASE = 27400  # the bench block: free while tests run


def launcher_env(stack, state: Path) -> dict[str, str]:
    """A second launcher's environment: its own ports and state, the test stack's servers."""
    return {
        **os.environ,
        "TICKERTAP_PROFILE": "test",
        "TICKERTAP_PORT_BASE": str(PORT_BASE),
        "TICKERTAP_STATE_DIR": str(state),
        "TICKERTAP_PG_ADMIN_URL": stack.pg_admin_url.rsplit("/", 1)[0]
        + "/postgres?sslmode=disable",
        "TICKERTAP_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "TICKERTAP_VAULT_ADDR": stack.vault_addr,
        "TICKERTAP_VAULT_TOKEN": stack.vault_root_token,
    }


@pytest.mark.slow
def test_launcher_uses_given_servers_and_starts_only_the_services(stack, tmp_path):
    env = launcher_env(stack, tmp_path / "state")
    started = subprocess.run([*STACK, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        info = json.loads((tmp_path / "state" / "stack.json").read_text())
        assert info["postgres"]["pid"] is None
        assert info["kafka"]["pid"] is None
        assert info["vault"]["pid"] is None
        assert info["postgres"]["port"] == stack.pg_port
        for name, svc in info["services"].items():
            assert svc["url"].endswith(str(PORT_BASE + list(info["services"]).index(name) + 1))
            ready = httpx.get(f"{svc['url']}/readyz", timeout=5)
            assert ready.status_code == 200, (name, ready.text)
    finally:
        stopped = subprocess.run(
            [*STACK, "down"], env=env, capture_output=True, text=True, timeout=90
        )
        assert stopped.returncode == 0, stopped.stderr

    # the given servers are still there: the launcher stops only what it started
    async def postgres_answers() -> int:
        conn = await asyncpg.connect(stack.pg_admin_url)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    assert asyncio.run(postgres_answers()) == 1
    assert httpx.get(f"{stack.vault_addr}/v1/sys/health").status_code == 200


@pytest.mark.slow
def test_launcher_starts_only_the_services_asked_for(stack, tmp_path):
    """`up --services ledger`: the ledger alone, verifying tokens against the dev key file
    (no auth service to ask); `exec` gives a second process the same environment; a stack
    without auth is not mistaken for one with it."""
    state = tmp_path / "state"
    env = launcher_env(stack, state)

    def launcher(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STACK, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    unknown = launcher("up", "--services", "ledger,bogus")
    assert unknown.returncode == 2
    assert "--services takes names of" in unknown.stderr
    started = launcher("up", "--services", "ledger")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        info = json.loads((state / "stack.json").read_text())
        assert list(info["services"]) == ["ledger"]
        url = info["services"]["ledger"]["url"]
        token = devkeys.mint(
            state / "secrets" / "dev-signing-key.json",
            "00000000-0000-4000-8000-000000000001",
            ("ops",),
        )
        listed = httpx.get(
            f"{url}/v1/accounts",
            params={"owner": "00000000-0000-4000-8000-000000000001"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert listed.status_code == 200, listed.text
        given = launcher("exec", "ledger", "--", "env")
        assert given.returncode == 0, given.stderr
        assert f"TICKERTAP_AUTH_JWKS_FILE={state / 'dev-jwks.json'}" in given.stdout.splitlines()
        assert "TICKERTAP_AUTH_JWKS_URL=" not in given.stdout
        more = launcher("up", "--services", "ledger,auth")
        assert more.returncode == 1
        assert "runs without auth" in more.stderr
        assert launcher("up", "--services", "ledger").returncode == 0  # what runs will do
    finally:
        stopped = launcher("down")
        assert stopped.returncode == 0, stopped.stderr
