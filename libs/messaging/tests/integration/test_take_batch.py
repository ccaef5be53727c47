"""`kafka.take_batch` on the real broker: it returns as soon as messages are there (a lone
message does not wait out the timeout for a batch to fill), never more than asked, and
every message once and in order per partition."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from tickertap.messaging.kafka import paced_fetches, take_batch

PARTITIONS = 3
WAIT_S = 10.0  # the longest wait asked for: `consume(500, 10)` alone would wait all of it
LONE_DELAY_S = 0.5
FEW = [b"first", b"second", b"third", b"fourth", b"fifth"]
MESSAGES = 2_000
BACKLOG = 500
BATCH_MAX = 64
READ_TIMEOUT_S = 60.0


def _consumer(stack: Any, name: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"{name}.reader",
            "enable.auto.commit": False,
            **paced_fetches(25),
        }
    )
    consumer.assign([TopicPartition(name, p, 0) for p in range(PARTITIONS)])
    return consumer


def test_messages_are_returned_when_they_arrive_not_when_the_wait_ends(
    stack: Any, topic: Callable[..., str]
) -> None:
    name = topic("take-lone", partitions=PARTITIONS, dlq=False)
    consumer = _consumer(stack, name)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 50})

    def produce_later() -> None:  # one record batch: it reaches the consumer as one fetch
        time.sleep(LONE_DELAY_S)
        for value in FEW:
            producer.produce(name, value, b"one key")
        producer.flush(10)

    writer = threading.Thread(target=produce_later)
    try:
        assert take_batch(consumer, 500, 0.3) == []  # nothing there: [] after the wait
        started = time.monotonic()
        writer.start()
        batch = take_batch(consumer, 500, WAIT_S)
        elapsed_s = time.monotonic() - started
    finally:
        writer.join(10)
        consumer.close()
    # the first to arrive and those that came with it, in order
    assert [m.value() for m in batch] == FEW
    # they came after ~0.5 s and were returned then; the wait was 10 s
    assert elapsed_s < WAIT_S / 2, f"returned after {elapsed_s:.1f} s"


def test_batches_hold_at_most_batch_max_and_every_message_once_in_order(
    stack: Any, topic: Callable[..., str]
) -> None:
    name = topic("take-all", partitions=PARTITIONS, dlq=False)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})

    def produce(first: int, last: int) -> None:
        for seq in range(first, last):
            producer.produce(name, str(seq).encode(), str(seq % 31).encode())
            if seq % 200 == 199:
                producer.poll(0.02)
        producer.flush(30)

    produce(0, BACKLOG)  # a backlog, then bursts while the reader reads
    consumer = _consumer(stack, name)
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    sizes: list[int] = []
    writer = threading.Thread(target=produce, args=(BACKLOG, MESSAGES))
    writer.start()
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while sum(map(len, seen.values())) < MESSAGES and time.monotonic() < deadline:
            batch = take_batch(consumer, BATCH_MAX, 0.1)
            if batch:
                sizes.append(len(batch))
            for message in batch:
                assert message.error() is None, message.error()
                partition, value = message.partition(), message.value()
                assert partition is not None
                assert value is not None
                seen[partition].append(int(value))
    finally:
        writer.join(30)
        consumer.close()
    everything = sorted(seq for values in seen.values() for seq in values)
    assert everything == list(range(MESSAGES))  # each once
    assert max(sizes) <= BATCH_MAX
    assert BATCH_MAX in sizes  # the backlog came in full batches
    for values in seen.values():
        assert values == sorted(values)  # in order within the partition
