"""The running stack, checked from the outside: what `make run` promises a newcomer."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

from config import SERVICES, load_topics  # noqa: E402

SERVICE_NAMES = [svc.name for svc in SERVICES]


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_service_is_alive_ready_and_measured(stack, name):
    url = stack.service_url(name)
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    assert {check: body["status"] for check, body in ready.json()["checks"].items()} == {
        "postgres": "ok",
        "kafka": "ok",
        "vault": "ok",
        "workers": "ok",
    }
    metrics = httpx.get(f"{url}/metrics")
    families = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert "tickertap_http_request_duration_seconds" in families
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["info"]["title"].startswith("tickerTap")
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= document.get("components", {}).get("schemas", {}).keys(), "every $ref resolves"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_errors_are_problem_details_with_a_code_and_the_correlation_id(stack, name):
    correlation_id = f"e2e-{uuid.uuid4()}"
    response = httpx.get(
        f"{stack.service_url(name)}/no/such/route", headers={"X-Correlation-ID": correlation_id}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-correlation-id"] == correlation_id
    body = response.json()
    assert body["code"] == "not_found"
    assert body["status"] == 404


def test_every_topic_exists_with_its_partitions_and_configs(stack):
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    existing = admin.list_topics(timeout=5).topics
    for topic in load_topics():
        assert topic.name in existing, topic.name
        assert len(existing[topic.name].partitions) == topic.partitions, topic.name
    (future,) = admin.describe_configs([ConfigResource("topic", "marketdata.prices.v1")]).values()
    assert future.result(timeout=5)["cleanup.policy"].value == "compact"


async def test_each_service_migrated_its_own_schema_with_its_owner_role(stack):
    conn = await asyncpg.connect(stack.pg_admin_url)
    try:
        for svc in SERVICES:
            owners = dict(
                await conn.fetch(
                    "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = $1",
                    svc.schema,
                )
            )
            for table in ("alembic_version", "outbox", "inbox"):
                assert owners.get(table) == svc.owner_role, (svc.schema, table, owners)
            # the service is connected with a Vault-issued login acting as the owner role
            logins = await conn.fetch(
                "SELECT DISTINCT usename, pg_has_role(usename, $2, 'MEMBER') AS member, "
                "(SELECT rolvaliduntil FROM pg_roles WHERE rolname = usename) AS valid_until "
                "FROM pg_stat_activity WHERE application_name = $1",
                svc.name,
                svc.owner_role,
            )
            assert logins, f"{svc.name} has no open connection"
            for row in logins:
                assert row["usename"].startswith("v-approle-"), row["usename"]
                assert row["member"], row["usename"]
                assert row["valid_until"] is not None  # a short-lived login
        # nobody but its owner may use a schema; public is closed
        public_create = await conn.fetchval(
            "SELECT has_schema_privilege('public', 'public', 'CREATE')"
        )
        assert public_create is False
        vault_admin_rights = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.role_table_grants "
            "WHERE grantee = 'vault_admin'"
        )
        assert vault_admin_rights == []
    finally:
        await conn.close()


def test_bootstrap_is_idempotent(stack):
    """Running the whole bootstrap again against the live stack changes nothing that breaks."""
    import config as stack_config
    from bootstrap import bootstrap_all

    cfg = stack_config.StackConfig.from_env()
    bootstrap_all(cfg, stack.pg_admin_url, stack.vault_root_token, load_topics())
    for name in SERVICE_NAMES:
        assert httpx.get(f"{stack.service_url(name)}/readyz").status_code == 200
