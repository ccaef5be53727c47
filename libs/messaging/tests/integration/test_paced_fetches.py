"""A consumer with `paced_fetches` on the real broker: it reads a backlog larger than a
fetch and a steady trickle, every message once and in order per partition, while asking
the broker about once an interval."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from tickertap.messaging.kafka import paced_fetches

INTERVAL_MS = 25
PARTITIONS = 3
BACKLOG = 9_000  # ~1.5 MB a partition: more than one fetch (max.partition.fetch.bytes 1 MB)
TRICKLE = 1200
TRICKLE_PAUSE_S = 0.001  # ~1,000 messages a second: unpaced, ~230 fetches a second here
READ_TIMEOUT_S = 60.0
STATS_INTERVAL_MS = 100
FETCHES_PER_INTERVAL_MAX = 1.25
FETCHES_SLACK = 10  # the statistics' own timing; 70-72 fetches here against a bound of ~95


def test_a_paced_consumer_reads_a_backlog_and_a_trickle_once_in_order_with_few_fetches(
    stack: Any, topic: Callable[..., str]
) -> None:
    name = topic("paced", partitions=PARTITIONS, dlq=False)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
    padding = b"x" * 500
    for seq in range(BACKLOG):
        producer.produce(name, str(seq).encode() + b" " + padding, str(seq % 97).encode())
        if seq % 1000 == 0:
            producer.poll(0)
    producer.flush(30)

    fetches: list[int] = []

    def stats(raw: str) -> None:
        for broker in json.loads(raw)["brokers"].values():
            if broker.get("nodeid", -1) >= 0:
                fetches.append(broker["req"].get("Fetch", 0))

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"{name}.reader",
            "enable.auto.commit": False,
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": stats,
            **paced_fetches(INTERVAL_MS),
        }
    )
    consumer.assign([TopicPartition(name, p, 0) for p in range(PARTITIONS)])
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}

    def read_until(total: int) -> None:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while sum(map(len, seen.values())) < total and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.1):
                assert message.error() is None, message.error()
                partition, value = message.partition(), message.value()
                assert partition is not None
                assert value is not None
                seen[partition].append(int(value.split(b" ")[0]))

    try:
        read_until(BACKLOG)
        assert sum(map(len, seen.values())) == BACKLOG  # the backlog, not stalled
        consumer.poll(0.5)  # the statistics of the backlog's reading
        before = fetches[-1]

        def trickle() -> None:
            for seq in range(BACKLOG, BACKLOG + TRICKLE):
                producer.produce(name, str(seq).encode(), str(seq % 97).encode())
                producer.poll(0)
                time.sleep(TRICKLE_PAUSE_S)
            producer.flush(30)

        started = time.monotonic()
        writer = threading.Thread(target=trickle)
        writer.start()
        read_until(BACKLOG + TRICKLE)
        writer.join(READ_TIMEOUT_S)
        elapsed_s = time.monotonic() - started
        consumer.poll(0.3)
        during = fetches[-1] - before
    finally:
        consumer.close()

    everything = sorted(seq for values in seen.values() for seq in values)
    assert everything == list(range(BACKLOG + TRICKLE))  # each once
    for values in seen.values():
        assert values == sorted(values)  # in order within the partition
    # about one fetch an interval, however often messages come (the partitions' answers
    # arrive together, so their waits end together and librdkafka asks for them in one
    # request); unpaced, the broker answers at once while messages wait: 134-141 here
    bound = FETCHES_PER_INTERVAL_MAX * (elapsed_s + 0.3) * 1000 / INTERVAL_MS + FETCHES_SLACK
    assert during <= bound, f"{during} fetches in {elapsed_s:.2f} s (bound {bound:.0f})"
