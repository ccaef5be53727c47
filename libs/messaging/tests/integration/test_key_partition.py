"""`kafka.key_partition` against librdkafka on the real broker: a producer made by
`producer_config` (its `murmur2_random` partitioner) puts every key on the partition
`key_partition` names, so a producer that picks partitions itself keeps them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tickertap.messaging.kafka import key_partition, producer_config

PARTITIONS = 6
KEYS = 300


def test_librdkafka_puts_each_key_where_key_partition_says(
    stack: Any, topic: Callable[..., str]
) -> None:
    name = topic("key-partition", partitions=PARTITIONS, dlq=False)
    producer = Producer(producer_config(stack.kafka_bootstrap))
    landed: dict[bytes, int] = {}
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
            return
        key = message.key()
        assert isinstance(key, bytes)
        landed[key] = message.partition()

    keys = [str(uuid.uuid4()).encode() for _ in range(KEYS)] + [b"a", b"ab", b"abc"]
    for key in keys:
        producer.produce(name, b"x", key, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert errors == []
    assert landed == {key: key_partition(key, PARTITIONS) for key in keys}
