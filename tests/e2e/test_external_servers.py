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
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
PORT_BASE = 27400  # the bench block: free while tests run


@pytest.mark.slow
def test_launcher_uses_given_servers_and_starts_only_the_services(stack, tmp_path):
    postgres_admin = stack.pg_admin_url.rsplit("/", 1)[0] + "/postgres"
    env = {
        **os.environ,
        "TICKERTAP_PROFILE": "test",
        "TICKERTAP_PORT_BASE": str(PORT_BASE),
        "TICKERTAP_STATE_DIR": str(tmp_path / "state"),
        "TICKERTAP_PG_ADMIN_URL": postgres_admin + "?sslmode=disable",
        "TICKERTAP_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "TICKERTAP_VAULT_ADDR": stack.vault_addr,
        "TICKERTAP_VAULT_TOKEN": stack.vault_root_token,
    }
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
