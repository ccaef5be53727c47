"""The Helm chart's pre-upgrade migration command (deploy/docker/migrate.py) against the real
stack: it logs in as each service does (AppRole, short-lived database credentials) and
brings the service's schema to head; the services already migrated at start, so a second
run must find every schema at head and change nothing (the Job is safe to rerun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATE = ROOT / "deploy" / "docker" / "migrate.py"
MODULES = {
    "auth": "tickertap.auth",
    "ledger": "tickertap.ledger",
    "market": "tickertap.marketdata",
    "portfolio": "tickertap.portfolio",
}
RUN_TIMEOUT_S = 60

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("schema", sorted(MODULES))
def test_migrate_brings_the_schema_to_head(stack: Any, approle_secret_id: Any, schema: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    env.update(
        TICKERTAP_MODULE=MODULES[schema],
        TICKERTAP_ENVIRONMENT="production",
        TICKERTAP_DB_HOST=stack.pg_host,
        TICKERTAP_DB_PORT=str(stack.pg_port),
        TICKERTAP_DB_NAME=stack.database,
        TICKERTAP_KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap,
        TICKERTAP_VAULT_ADDR=stack.vault_addr,
        TICKERTAP_VAULT_ROLE_ID=stack.role_id(schema),
        TICKERTAP_VAULT_SECRET_ID=approle_secret_id(schema),
        TICKERTAP_SCHEMAS_DIR=str(ROOT / "schemas" / "avro"),
        # the settings every service but auth requires; not used by the migration
        TICKERTAP_AUTH_ISSUER="tickertap-local",
        TICKERTAP_AUTH_JWKS_URL="http://127.0.0.1:9/.well-known/jwks.json",
    )
    result = subprocess.run(
        [sys.executable, str(MIGRATE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"schema {schema} is at head" in result.stdout


def test_migrate_refuses_without_a_module() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    result = subprocess.run(
        [sys.executable, str(MIGRATE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "TICKERTAP_MODULE" in result.stderr
