"""The feed providers' example (examples/feed_producer.py) interoperates: what it publishes
with confluent-kafka and fastavro alone, the project's codec decodes, to the exact Decimal."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "feed_producer.py"
RUN_TIMEOUT_S = 60
READ_TIMEOUT_S = 30
COUNT = 7


def test_the_example_imports_nothing_of_tickertap():
    tree = ast.parse(EXAMPLE.read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("tickertap")}
    third_party = {m.split(".")[0] for m in modules if m} - set(sys.stdlib_module_names)
    assert third_party == {"confluent_kafka", "fastavro"}


@pytest.mark.stack
def test_the_example_publishes_ticks_the_project_codec_decodes(stack):
    topic = f"test.example.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=10).values():
        future.result(timeout=15)
    source_id = f"example-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            topic,
            "--symbol",
            "MSFT",
            "--price",
            "415.26",
            "--count",
            str(COUNT),
            "--source-id",
            source_id,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"sent {COUNT} ticks" in done.stdout

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
        while len(messages) < COUNT and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(100, 0.2) if m.error() is None]
    finally:
        consumer.close()
    assert len(messages) == COUNT
    assert {m.partition() for m in messages} == {messages[0].partition()}  # keyed by symbol

    codec = AvroCodec(load_schemas(find_schemas_dir()))
    ticks = sorted(
        (codec.decode(m.value(), "marketdata.ticks.v1") for m in messages),
        key=lambda t: t["source_seq"],
    )
    assert codec.writer_schema(messages[0].value()).name == "marketdata.ticks.v1"
    assert [t["source_seq"] for t in ticks] == list(range(1, COUNT + 1))
    assert {t["symbol"] for t in ticks} == {"MSFT"}
    assert {m.key() for m in messages} == {b"MSFT"}
    assert {t["source_id"] for t in ticks} == {source_id}
    assert ticks[0]["price"] == Decimal("415.26")  # seq 1: the given price
    assert ticks[1]["price"] == Decimal("415.27")
    assert ticks[2]["price"] == Decimal("415.25")
    assert ticks[0]["bid"] == Decimal("415.25")
    assert ticks[0]["ask"] == Decimal("415.27")
    assert ticks[0]["size"] == Decimal(100)
    assert ticks[0]["exchange_ts"].tzinfo is not None
