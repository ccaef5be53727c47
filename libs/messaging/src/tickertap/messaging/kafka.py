"""confluent-kafka settings shared by the relay and the consumer, and a blocking helper that
produces a batch and waits for every delivery report.

The settings work on Apache Kafka and on Tansu, the local broker: a session timeout of 6 s
(Tansu's group coordinator needs one that short to rebalance promptly), no auto-created
topics (they would get the broker's default partition count), and nothing that depends
on Kafka transactions or on end offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

__all__ = [
    "Delivery",
    "OutgoingMessage",
    "close_producer",
    "consumer_config",
    "deliver",
    "key_partition",
    "murmur2",
    "needs_new_producer",
    "paced_fetches",
    "producer_config",
    "take_batch",
]

log = logging.getLogger(__name__)


def _log_client_error(error: KafkaError) -> None:
    log.warning("kafka client error: %s", error)


def producer_config(
    bootstrap_servers: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An idempotent producer that waits for all in-sync replicas; keys are hashed with
    murmur2 like the Java client, so every client puts a key on the same partition."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        "allow.auto.create.topics": False,
        "message.timeout.ms": 30_000,
        "error_cb": _log_client_error,
    }
    config.update(overrides or {})
    return config


_MURMUR2_SEED = 0x9747B28C
_MURMUR2_M = 0x5BD1E995
_U32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 of a key (`Utils.murmur2`), as an unsigned 32-bit int: what
    librdkafka's `murmur2_random` partitioner hashes too."""
    m = _MURMUR2_M
    h = (_MURMUR2_SEED ^ len(data)) & _U32
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & _U32
        k = ((k ^ (k >> 24)) * m) & _U32
        h = ((h * m) & _U32) ^ k
    rest = len(data) & 3
    if rest:
        h ^= int.from_bytes(data[whole:], "little")
        h = (h * m) & _U32
    h = ((h ^ (h >> 13)) * m) & _U32
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition `producer_config`'s producers (and the Java client's default
    partitioner) put `key` on, of a topic with `partitions` partitions."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def consumer_config(
    bootstrap_servers: str, group_id: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A group member that commits offsets itself, after the database commit."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1500,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "error_cb": _log_client_error,
    }
    config.update(overrides or {})
    return config


def paced_fetches(interval_ms: int) -> dict[str, Any]:
    """Consumer settings for one that must see messages within about `interval_ms`, but
    asks the broker at most about that often.

    The local broker (Tansu) holds a fetch that finds nothing for the whole
    `fetch.wait.max.ms`, even when messages arrive meanwhile, so a consumer that must see
    them soon needs a short wait; and it answers at once when messages wait, so under a
    steady stream librdkafka fetches again as soon as an answer came: hundreds of requests
    a second for a trickle of messages, each costing the broker 0.1-1 ms of CPU (measured:
    1,000 prices a second took 229 fetches a second and ~20 % of a core). With a message
    in the local queue (`queued.min.messages` 1), the next fetch of that partition waits
    `fetch.queue.backoff.ms`: at 25 ms, 50 fetches a second and ~9 %."""
    return {
        "fetch.wait.max.ms": interval_ms,
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": interval_ms,
    }


def take_batch(consumer: Consumer, batch_max: int, timeout_s: float) -> list[Message]:
    """Up to `batch_max` messages, returned as soon as there are any: what the local queue
    holds now, or else the first to arrive within `timeout_s` with what came along with it
    ([] when none came).

    `consume(batch_max, timeout_s)` alone waits the whole `timeout_s` unless `batch_max`
    messages arrive first, so under a stream slower than `batch_max` per `timeout_s` every
    message waited for it (measured: 1,000 prices a second, 500 a batch, 50 ms: the
    prices reached the portfolio service's handler 55-65 ms after they were produced)."""
    messages = consumer.consume(batch_max, 0)
    if messages:
        return messages
    messages = consumer.consume(1, timeout_s)
    if messages and batch_max > 1:
        messages.extend(consumer.consume(batch_max - 1, 0))
    return messages


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class Delivery:
    """The outcome of one produced message: an error, or where the broker stored it."""

    error: KafkaError | None
    partition: int | None = None
    offset: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


_TIMED_OUT = Delivery(KafkaError(KafkaError._MSG_TIMED_OUT, "no delivery report in time"))
_NOT_PRODUCED = Delivery(KafkaError(KafkaError._FAIL, "not produced: an earlier message failed"))


def deliver(
    producer: Producer, messages: Sequence[OutgoingMessage], timeout_s: float
) -> list[Delivery]:
    """Produce `messages` in order and block until each has a delivery report or
    `timeout_s` has passed; returns one Delivery per message, in order.

    Blocking: call it from a worker thread (`asyncio.to_thread`), never on the event loop.
    """
    deadline = time.monotonic() + timeout_s
    results: list[Delivery | None] = [None] * len(messages)

    def on_delivery(index: int) -> Any:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                results[index] = Delivery(error)
            else:
                results[index] = Delivery(None, message.partition(), message.offset())

        return report

    for index, message in enumerate(messages):
        outcome = _produce(producer, message, on_delivery(index), deadline)
        if outcome is not None:
            results[index] = outcome
            # keep the order: nothing after a message that could not even be queued
            for later in range(index + 1, len(messages)):
                results[later] = _NOT_PRODUCED
            break
    while producer.flush(max(0.0, min(1.0, deadline - time.monotonic()))) > 0:
        if time.monotonic() >= deadline:
            break
    return [result if result is not None else _TIMED_OUT for result in results]


_PRODUCER_STATE_ERRORS = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError._INCONSISTENT,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    }
)


def needs_new_producer(deliveries: Sequence[Delivery]) -> bool:
    """True when a failure leaves the idempotent producer unusable (a fatal error, a fenced
    or unknown producer id): only a new producer can send again. Seen on Tansu: after
    message timeouts the epoch bump is answered PRODUCER_FENCED, for good."""
    return any(
        d.error is not None and (d.error.fatal() or d.error.code() in _PRODUCER_STATE_ERRORS)
        for d in deliveries
    )


def close_producer(producer: Producer, *, discard: bool) -> None:
    """Close a producer: after waiting (up to 5 s) for what it still holds, or, with
    `discard`, at once, dropping it (after a failed delivery, whatever was not
    acknowledged is sent again by a fresh producer). Blocking."""
    if discard:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(0)
    else:
        producer.flush(5)
    producer.close()


class ProducerSlot:
    """One producer, made on first use and replaced after a fatal error. Blocking: call
    it from the thread that owns the client (librdkafka clients are not shared)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._producer: Producer | None = None

    def get(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(dict(self._config))
        return self._producer

    def close(self, discard: bool = False) -> None:
        """Close the current producer (see `close_producer`); the next `get` makes a new one."""
        producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, discard=discard)


def _produce(
    producer: Producer, message: OutgoingMessage, report: Any, deadline: float
) -> Delivery | None:
    """Queue one message; None when queued, else the Delivery that says why not."""
    while True:
        try:
            producer.produce(
                message.topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                on_delivery=report,
            )
            return None
        except BufferError:  # local queue full: serve delivery reports, then retry
            if time.monotonic() >= deadline:
                return _TIMED_OUT
            producer.poll(0.05)
        except KafkaException as exc:
            return Delivery(_kafka_error(exc))


def _kafka_error(exc: KafkaException) -> KafkaError:
    if exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return KafkaError(KafkaError._FAIL, str(exc))


def describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def summarize(deliveries: Sequence[Delivery]) -> Mapping[str, int]:
    """Count of failed deliveries by error name, for a log line."""
    counts: dict[str, int] = {}
    for delivery in deliveries:
        if delivery.error is not None:
            name = delivery.error.name()
            counts[name] = counts.get(name, 0) + 1
    return counts
