"""What the feed's integration tests share: a fresh topic, and reading a topic back."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

READ_TIMEOUT_S = 30.0


def fresh_topic(bootstrap: str, partitions: int = 6) -> str:
    """A new topic of its own for one test, so nothing else (the ingest worker) reads it."""
    name = f"test.feed.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(name, partitions, 1)], operation_timeout=10
    ).values():
        future.result(timeout=15)
    return name


def read_topic(
    bootstrap: str, topic: str, count: int, timeout_s: float = READ_TIMEOUT_S
) -> list[Message]:
    """Up to `count` messages of `topic`, every partition from the beginning (assigned, no
    group to join); waits on content, never on end offsets, and at most `timeout_s`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while len(messages) < count and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None:
                    assert not error.fatal(), error
                    continue
                messages.append(message)
    finally:
        consumer.close()
    return messages
