"""A service app built by the runtime, run against the real stack: Vault login, migrations,
relay, a consumer with dead-lettering, and what /readyz and /metrics report."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from tickertap.messaging import ConsumedEvent
from tickertap.runtime import ServiceDefinition, ServiceRuntime, ServiceSettings, create_service_app

LEDGER_MIGRATIONS = (
    Path(__file__).resolve().parents[3] / "services/ledger/src/tickertap/ledger/migrations"
)
DEADLINE_S = 40


def sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.mark.slow
async def test_runtime_wires_vault_db_relay_consumer_and_metrics(stack, approle_secret_id):
    topic = f"rttest.events_{uuid.uuid4().hex[:8]}.v1"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for future in admin.create_topics(
        [NewTopic(topic, 1, 1), NewTopic(topic.replace(".v1", ".dlq.v1"), 1, 1)]
    ).values():
        future.result(10)
    applied: list[ConsumedEvent] = []

    async def handle(_conn, event: ConsumedEvent) -> None:
        applied.append(event)

    async def start(runtime: ServiceRuntime) -> None:
        runtime.start_consumer(name="test", topics=[topic], handler=handle)

    settings = ServiceSettings(
        http_port=1,
        db_host=stack.pg_host,
        db_port=stack.pg_port,
        db_name=stack.database,
        db_schema="ledger",
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        vault_addr=stack.vault_addr,
        vault_role="ledger",
        vault_role_id=stack.role_id("ledger"),
        vault_secret_id=approle_secret_id("ledger"),
    )
    definition = ServiceDefinition(
        name="runtime-test",
        title="tickerTap runtime test",
        version="0",
        migrations=LEDGER_MIGRATIONS,
        on_start=[start],
    )
    app = create_service_app(definition, settings)
    async with app.router.lifespan_context(app):
        runtime: ServiceRuntime = app.state.runtime
        record = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC),
            "transfer_id": str(uuid.uuid4()),
            "kind": "deposit",
            "legs": [],
            "trade": None,
            "reverses_transfer_id": None,
            "metadata": {},
        }
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        producer.produce(topic, key=b"k", value=b"not avro at all")
        producer.produce(topic, key=b"k", value=runtime.codec.encode("ledger.transfers.v1", record))
        producer.flush(10)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            deadline = time.monotonic() + DEADLINE_S
            metrics = ""
            while time.monotonic() < deadline:
                metrics = (await client.get("/metrics")).text
                if applied and sample(metrics, "tickertap_dlq_messages_total", topic=topic):
                    break
                await asyncio.sleep(0.2)
            assert [str(e.event_id) for e in applied] == [record["event_id"]]
            assert applied[0].record["legs"] == []
            assert (
                sample(metrics, "tickertap_consumer_messages_total", topic=topic, outcome="applied")
                == 1
            )
            assert (
                sample(
                    metrics,
                    "tickertap_consumer_messages_total",
                    topic=topic,
                    outcome="dead_lettered",
                )
                == 1
            )
            assert (
                sample(metrics, "tickertap_dlq_messages_total", topic=topic, reason="bad_magic")
                == 1
            )
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
    # after shutdown every background worker has ended
    assert all(task.done() for task in [*runtime.tasks, *runtime.helpers])
    assert Decimal("0") == Decimal(sample(metrics, "tickertap_outbox_backlog_messages"))
    admin.delete_topics([topic, topic.replace(".v1", ".dlq.v1")])
