"""The consumer loop: decode, dead-letter what cannot be used, apply the rest exactly once.

    consumer = InboxConsumer(engine, inbox, codec, apply_transfer,
                             bootstrap_servers=..., group_id="portfolio",
                             topics=["ledger.transfers.v1"])
    task = asyncio.create_task(consumer.run())   # in the service's lifespan
    ...
    consumer.stop(); await task                  # finishes the message in flight

For each message, in partition order:

1. Decode it with the codec. A message that does not decode (or has no value) is
   published, key, value and headers unchanged, to the dead-letter topic of its topic
   (`<domain>.<name>.dlq.v<N>`) with `x-dlq-*` headers saying why; the loop goes on once
   the broker has acknowledged the dead letter.
2. In one database transaction: claim the event id in the inbox table (INSERT ... ON
   CONFLICT DO NOTHING) and, when the claim is new, call `handler(conn, event)`. An event
   already claimed is a duplicate: the handler is not called.
3. After each batch, commit the offsets of the messages done, synchronously.

Offsets are committed after the database commit, so a crash anywhere repeats work
that the inbox then drops: effects happen exactly once.

Batch mode (`batch_handler=` instead of `handler`): a consumer that would otherwise spend
a transaction per message (a price feed at 1,000/s) applies the whole batch `kafka.take_batch`
returned in ONE transaction: the batch's event ids are claimed in one INSERT, and
`batch_handler(conn, events)` gets the newly claimed events in partition order (duplicates
left out; it is not called when none is new). Messages that do not decode are
dead-lettered first, one by one, as above. When the batch fails:

    transient database error       the whole batch is rolled back and retried with the
                                   same backoff as one message, until it succeeds or stop()
    InvalidEvent or anything else  rolled back, then the batch's events are applied one
                                   per transaction (`batch_handler(conn, [event])`), so a
                                   poison message is isolated and handled as one message is
                                   (dead-lettered, or retried and raised); the rest apply

Errors of a handler:

    InvalidEvent(reason, detail)   the event cannot be applied (fails validation): rolled
                                   back and dead-lettered with that reason; the loop goes on
    transient database error       (lost connection, serialization failure, deadlock, ...)
                                   rolled back and retried, the same message, with a backoff
                                   doubling up to `retry_backoff_s_max`, until it succeeds
                                   or `stop()` is called; never skipped, never dead-lettered
    anything else                  a bug: retried `handler_attempts_max` times, then it
                                   propagates out of `run()` (offsets of the messages done
                                   before are committed); the service stops, loudly
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TextClause,
    Uuid,
    delete,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from tickertap.messaging import headers as h
from tickertap.messaging import kafka
from tickertap.messaging.retry import backoff_delay_s, is_transient_error

__all__ = [
    "BatchHandler",
    "ConsumedEvent",
    "ConsumerStats",
    "Decode",
    "Handler",
    "InboxConsumer",
    "InvalidEvent",
    "OnOutcome",
    "Outcome",
    "avro_decoder",
    "claim_event",
    "claim_events",
    "inbox_table",
    "purge_inbox",
]

if TYPE_CHECKING:
    from tickertap.messaging.codec import AvroCodec

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_EVENT_ID_NAMESPACE = uuid.UUID("6f1c3c0e-4b9e-4c55-9d4e-2b1f0c7a9e11")


Decode = Callable[[str, bytes], tuple[str, Mapping[str, Any]]]
"""`decode(topic, value) -> (schema name, record)`. Raises InvalidEvent for bytes that
cannot be used (dead-lettered with its reason); any other exception is retried like a
handler's. `avro_decoder(codec)` makes one from the project's AvroCodec."""


def avro_decoder(codec: AvroCodec, *, reader_schemas: Mapping[str, str] | None = None) -> Decode:
    """A Decode over the Avro codec: the record is read into the reader schema of its
    topic, `reader_schemas[topic]`, by default the schema named like the topic when the
    codec has it (else as written). A DecodeError becomes InvalidEvent with its reason
    (bad_magic, truncated, unknown_schema, invalid_avro, schema_mismatch); the codec's
    other errors (an unreachable registry, a missing schema) are not dead-lettered."""
    from tickertap.messaging.codec import DecodeError

    def decode(topic: str, data: bytes) -> tuple[str, Mapping[str, Any]]:
        if reader_schemas is not None:
            reader = reader_schemas.get(topic)
        else:
            reader = topic if topic in codec.schemas else None
        try:
            name = reader if reader is not None else codec.writer_schema(data).name
            return name, codec.decode(data, reader)
        except DecodeError as exc:
            raise InvalidEvent(exc.reason, exc.detail) from exc

    return decode


class InvalidEvent(Exception):
    """A message that cannot be used: raised by the decode function (bytes that do not
    decode) or by a handler (an event that fails validation). The message is dead-lettered
    with `reason` (a machine-readable code) and `detail` (text without secrets)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ConsumedEvent:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    schema_name: str
    record: Mapping[str, Any]
    event_id: uuid.UUID
    correlation_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timestamp_ms: int | None = None


Handler = Callable[[AsyncConnection, ConsumedEvent], Awaitable[None]]
BatchHandler = Callable[[AsyncConnection, Sequence[ConsumedEvent]], Awaitable[None]]
"""`batch_handler(conn, events)`: apply the events (new, in partition order) in the
caller's transaction; raising rolls back the whole batch (see "Batch mode" above)."""

Outcome = Literal["applied", "duplicate", "dead_lettered"]
OnOutcome = Callable[[str, Outcome, str | None], None]
"""`on_outcome(topic, outcome, reason)`, called once per message done; `reason` is the
dead-letter reason, else None. Fits tickertap.observability's `Metrics`:
`metrics.consumer_processed(topic, outcome)`, `metrics.dead_lettered(topic, reason)`."""


@dataclass
class ConsumerStats:
    """Counters since start, for metrics."""

    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    commit_failures: int = 0


class _Interrupted(Exception):
    """stop() came while a message was waiting for a retry: leave it for redelivery."""


def inbox_table(metadata: MetaData, schema: str, name: str = "inbox") -> Table:
    """The inbox table `<schema>.<name>`: the events a consumer has applied.

    consumer      text  } primary key: one claim per consumer and event
    event_id      uuid  }
    topic         text
    partition     int
    offset        bigint
    processed_at  timestamptz, default now(); indexed, for retention
    """
    assert schema, "an inbox lives in its service's schema"
    return Table(
        name,
        metadata,
        Column("consumer", Text, primary_key=True),
        Column("event_id", Uuid(as_uuid=True), primary_key=True),
        Column("topic", Text, nullable=False),
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{name}_processed_at", "processed_at"),
        schema=schema,
    )


async def claim_event(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    *,
    consumer: str,
    event_id: uuid.UUID,
    topic: str,
    partition: int,
    offset: int,
) -> bool:
    """Record that `consumer` applies `event_id`, in the caller's transaction; False when it
    was already recorded (a duplicate: apply nothing). A concurrent claim of the same event
    waits for the other transaction and then sees its outcome."""
    result = await conn.execute(
        insert(table)
        .values(
            consumer=consumer, event_id=event_id, topic=topic, partition=partition, offset=offset
        )
        .on_conflict_do_nothing()
        .returning(table.c.event_id)
    )
    return result.first() is not None


async def claim_events(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    *,
    consumer: str,
    events: Sequence[ConsumedEvent],
) -> list[ConsumedEvent]:
    """`claim_event` for many events in one statement: the events whose claim is new, in
    the given order (an id twice in `events` counts once, its first occurrence)."""
    first: dict[uuid.UUID, ConsumedEvent] = {}
    for event in events:
        first.setdefault(event.event_id, event)
    if not first:
        return []
    kept = list(first.values())
    # one text statement over arrays: compiled once, whatever the batch's size (a
    # multi-row VALUES is compiled anew for each size, which costs more than the insert)
    result = await conn.execute(
        _claims_sql(table),
        {
            "consumer": consumer,
            "ids": [e.event_id for e in kept],
            "topics": [e.topic for e in kept],
            "partitions": [e.partition for e in kept],
            "offsets": [e.offset for e in kept],
        },
    )
    claimed = {row.event_id for row in result}
    return [e for e in first.values() if e.event_id in claimed]


@functools.cache
def _claims_sql(table: Table) -> TextClause:
    assert table.schema, "an inbox lives in its service's schema"
    name = ".".join('"' + part.replace('"', '""') + '"' for part in (table.schema, table.name))
    return text(
        f'INSERT INTO {name} (consumer, event_id, topic, "partition", "offset")'  # noqa: S608 # nosec B608 - the quoted name of the service's own inbox table
        " SELECT :consumer, r.e, r.t, r.p, r.o FROM unnest(CAST(:ids AS uuid[]),"
        " CAST(:topics AS text[]), CAST(:partitions AS integer[]), CAST(:offsets AS bigint[]))"
        " AS r(e, t, p, o) ON CONFLICT DO NOTHING RETURNING event_id"
    )


async def purge_inbox(
    conn: AsyncConnection | AsyncSession, table: Table, *, older_than_s: float, batch_max: int
) -> int:
    """Forget at most `batch_max` claims older than `older_than_s` (keep it longer than any
    redelivery can come late: the retention of the consumed topics), in the caller's
    transaction; returns how many."""
    cutoff = func.now() - dt.timedelta(seconds=older_than_s)
    doomed = (
        select(table.c.consumer, table.c.event_id)
        .where(table.c.processed_at < cutoff)
        .order_by(table.c.processed_at)
        .limit(batch_max)
    )
    result = await conn.execute(
        delete(table).where(tuple_(table.c.consumer, table.c.event_id).in_(doomed))
    )
    return int(getattr(result, "rowcount", 0))


class InboxConsumer:
    def __init__(
        self,
        engine: AsyncEngine,
        inbox: Table,
        decode: Decode,
        handler: Handler | None,
        *,
        batch_handler: BatchHandler | None = None,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        name: str | None = None,
        consumer_overrides: Mapping[str, Any] | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
        batch_max: int = 500,
        # how long one wait for a message lasts (a batch is what has arrived when the first
        # does: never waited for); it is how soon an idle consumer notices stop()
        poll_timeout_s: float = 0.05,
        retry_backoff_s_min: float = 0.05,
        retry_backoff_s_max: float = 30.0,
        handler_attempts_max: int = 5,
        dead_letter_timeout_s: float = 30.0,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        assert (handler is None) != (batch_handler is None), "one of handler, batch_handler"
        assert topics, "subscribe to at least one topic"
        assert 0 < batch_max <= 10_000
        assert 0 < poll_timeout_s <= 10
        assert 0 < retry_backoff_s_min <= retry_backoff_s_max <= 3600
        assert 0 < handler_attempts_max <= 100
        self._dead_letter_topics = {topic: h.dead_letter_topic(topic) for topic in topics}
        self._engine = engine
        self._inbox = inbox
        self._decode = decode
        self._handler = handler
        self._batch_handler = batch_handler
        self.group_id = group_id
        self.name = name or group_id
        self.topics = list(topics)
        self._consumer_config = kafka.consumer_config(
            bootstrap_servers, group_id, consumer_overrides
        )
        self._producer = kafka.ProducerSlot(
            kafka.producer_config(
                bootstrap_servers,
                {
                    "message.timeout.ms": int(dead_letter_timeout_s * 1000),
                    **(producer_overrides or {}),
                },
            )
        )
        self.batch_max = batch_max
        self.poll_timeout_s = poll_timeout_s
        self.retry_backoff_s_min = retry_backoff_s_min
        self.retry_backoff_s_max = retry_backoff_s_max
        self.handler_attempts_max = handler_attempts_max
        self.dead_letter_timeout_s = dead_letter_timeout_s
        self.stats = ConsumerStats()
        self._on_outcome = on_outcome
        self._stopping = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None

    # -- public ------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until `stop()`; then commit what is done, leave the group and return."""
        assert self._executor is None, "run() is already running"
        # one thread owns the client: librdkafka's consumer is not thread-safe
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox-consumer")
        consumer: Consumer | None = None
        try:
            consumer = await self._in_thread(Consumer, dict(self._consumer_config))
            await self._in_thread(consumer.subscribe, self.topics)
            while not self._stopping.is_set():
                messages = await self._in_thread(
                    kafka.take_batch, consumer, self.batch_max, self.poll_timeout_s
                )
                await self._process_batch(consumer, messages)
        finally:
            if consumer is not None:
                await self._in_thread(consumer.close)
            await self._in_thread(self._producer.close)
            self._executor.shutdown(wait=False)
            self._executor = None

    def stop(self) -> None:
        """Ask `run()` to return after the message in flight; safe to call more than once."""
        self._stopping.set()

    # -- one batch ----------------------------------------------------------------------

    def _usable(self, message: Message) -> bool:
        """False for a message that carries a client error (logged); a fatal one raises."""
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer %s: %s", self.name, kafka.describe(error))
        return False

    async def _process_batch(self, consumer: Consumer, messages: Sequence[Message]) -> None:
        if self._batch_handler is not None:
            await self._process_as_batch(consumer, messages, self._batch_handler)
            return
        done: dict[tuple[str, int], int] = {}
        try:
            for message in messages:
                if self._stopping.is_set():
                    break
                if not self._usable(message):
                    continue
                await self._process(message)
                topic, partition, offset = _position(message)
                done[(topic, partition)] = offset + 1
        except _Interrupted:
            pass
        finally:
            if done:
                await self._commit(consumer, done)

    async def _process(self, message: Message) -> None:
        headers = h.decode_headers(message.headers())
        token = h.correlation_id_var.set(h.inbound_correlation_id(headers))
        try:
            try:
                event = await self._decoded(message, headers)
            except InvalidEvent as exc:
                await self._dead_letter(message, exc.reason, exc.detail or str(exc))
                return
            h.correlation_id_var.set(event.correlation_id)
            await self._apply(message, event)
        finally:
            h.correlation_id_var.reset(token)

    async def _decoded(self, message: Message, headers: Mapping[str, str]) -> ConsumedEvent:
        topic, partition, offset = _position(message)
        value = message.value()
        if value is None:
            raise InvalidEvent("tombstone", "the message has no value")
        attempt = 0
        while True:
            attempt += 1
            try:
                schema_name, record = self._decode(topic, value)
                break
            except InvalidEvent:
                raise
            except Exception as exc:
                await self._retry_or_raise(attempt, f"decoding {topic}[{partition}]@{offset}", exc)
        try:
            event_id = _event_id(record, headers, topic, partition, offset)
        except ValueError as exc:
            raise InvalidEvent("invalid_event_id", str(exc)) from exc
        timestamp_type, timestamp_ms = message.timestamp()
        return ConsumedEvent(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            schema_name=schema_name,
            record=record,
            event_id=event_id,
            correlation_id=h.inbound_correlation_id(headers) or str(event_id),
            headers=headers,
            timestamp_ms=timestamp_ms if timestamp_type else None,
        )

    async def _process_as_batch(
        self, consumer: Consumer, messages: Sequence[Message], handler: BatchHandler
    ) -> None:
        """Batch mode: dead-letter what does not decode, apply the rest in one transaction
        (see the module's docstring); commit the offsets of what is done."""
        positions: list[tuple[str, int, int]] = []  # every usable message, in order
        finished: set[tuple[str, int, int]] = set()  # dead-lettered, skipped or applied
        pending: list[tuple[Message, ConsumedEvent]] = []
        try:
            for message in messages:
                if self._stopping.is_set():
                    break
                if not self._usable(message):
                    continue
                position = _position(message)
                positions.append(position)
                headers = h.decode_headers(message.headers())
                token = h.correlation_id_var.set(h.inbound_correlation_id(headers))
                try:
                    pending.append((message, await self._decoded(message, headers)))
                except InvalidEvent as exc:
                    await self._dead_letter(message, exc.reason, exc.detail or str(exc))
                    finished.add(position)
                finally:
                    h.correlation_id_var.reset(token)
            if pending and not self._stopping.is_set():
                if await self._apply_batch(pending, handler):
                    finished.update(_position(m) for m, _ in pending)
                else:
                    for message, event in pending:
                        await self._apply_one_of_batch(message, event, handler)
                        finished.add(_position(message))
        except _Interrupted:
            pass
        finally:
            done = _done_offsets(positions, finished)
            if done:
                await self._commit(consumer, done)

    async def _apply_batch(
        self, pending: Sequence[tuple[Message, ConsumedEvent]], handler: BatchHandler
    ) -> bool:
        """One transaction for the whole batch, retried on transient errors; False when it
        failed otherwise (the caller then isolates the culprit one message at a time)."""
        events = [e for _, e in pending]
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._engine.begin() as conn:
                    claimed = await claim_events(
                        conn, self._inbox, consumer=self.name, events=events
                    )
                    if claimed:
                        await handler(conn, claimed)
            except Exception as exc:
                if isinstance(exc, InvalidEvent) or not is_transient_error(exc):
                    log.warning(
                        "consumer %s: a batch of %d failed (%s: %s); applying it one by one",
                        self.name,
                        len(events),
                        type(exc).__name__,
                        str(exc)[:200],
                    )
                    return False
                await self._retry_pause(
                    attempt, f"applying a batch of {len(events)}", exc, transient=True
                )
                continue
            new = {e.event_id for e in claimed}
            for event in events:
                if event.event_id in new:
                    new.discard(event.event_id)  # a second copy in the batch is a duplicate
                    self.stats.processed += 1
                    self._report(event.topic, "applied", None)
                else:
                    self.stats.duplicates += 1
                    self._report(event.topic, "duplicate", None)
            return True

    async def _apply_one_of_batch(
        self, message: Message, event: ConsumedEvent, handler: BatchHandler
    ) -> None:
        token = h.correlation_id_var.set(event.correlation_id)
        try:

            async def apply_one(conn: AsyncConnection, e: ConsumedEvent) -> None:
                await handler(conn, [e])

            await self._apply(message, event, apply_one)
        finally:
            h.correlation_id_var.reset(token)

    async def _apply(
        self, message: Message, event: ConsumedEvent, handler: Handler | None = None
    ) -> None:
        apply = handler or self._handler
        assert apply is not None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._engine.begin() as conn:
                    claimed = await claim_event(
                        conn,
                        self._inbox,
                        consumer=self.name,
                        event_id=event.event_id,
                        topic=event.topic,
                        partition=event.partition,
                        offset=event.offset,
                    )
                    if claimed:
                        await apply(conn, event)
            except InvalidEvent as exc:
                await self._dead_letter(message, exc.reason, exc.detail or str(exc))
                return
            except Exception as exc:
                await self._retry_or_raise(attempt, f"applying event {event.event_id}", exc)
                continue
            if claimed:
                self.stats.processed += 1
                self._report(event.topic, "applied", None)
            else:
                self.stats.duplicates += 1
                self._report(event.topic, "duplicate", None)
            return

    # -- dead letters ---------------------------------------------------------------------

    async def _dead_letter(self, message: Message, reason: str, detail: str) -> None:
        topic, partition, offset = _position(message)
        original = message.headers() or []
        pairs = original.items() if isinstance(original, Mapping) else original
        kept = [
            (key, value.encode() if isinstance(value, str) else value or b"")
            for key, value in pairs
            if key not in h.DLQ_HEADERS
        ]
        dlq_headers = {
            h.DLQ_REASON: reason,
            h.DLQ_DETAIL: detail[: h.DLQ_DETAIL_CHARS_MAX],
            h.DLQ_SOURCE_TOPIC: topic,
            h.DLQ_SOURCE_PARTITION: str(partition),
            h.DLQ_SOURCE_OFFSET: str(offset),
            h.DLQ_CONSUMER_GROUP: self.group_id,
        }
        letter = kafka.OutgoingMessage(
            topic=self._dead_letter_topics.get(topic) or h.dead_letter_topic(topic),
            key=message.key(),
            value=message.value(),
            headers=[*kept, *h.encode_headers(dlq_headers)],
        )
        attempt = 0
        while True:
            attempt += 1
            (delivery,) = await self._in_thread(
                kafka.deliver, self._producer.get(), [letter], self.dead_letter_timeout_s + 5
            )
            if delivery.ok:
                break
            assert delivery.error is not None
            if kafka.needs_new_producer([delivery]):
                await self._in_thread(self._producer.close, True)  # a new one next time
            await self._retry_pause(
                attempt,
                f"dead-lettering {topic}[{partition}]@{offset} to {letter.topic}",
                KafkaException(delivery.error),
                transient=True,
            )
        self.stats.dead_lettered += 1
        self._report(topic, "dead_lettered", reason)
        log.warning(
            "consumer %s: dead-lettered %s[%d]@%d to %s: %s",
            self.name,
            topic,
            partition,
            offset,
            letter.topic,
            reason,
        )

    # -- plumbing ---------------------------------------------------------------------------

    async def _retry_or_raise(self, attempt: int, what: str, exc: Exception) -> None:
        """Wait before retrying; re-raise `exc` when it is not transient and the attempts
        are used up; raise _Interrupted when stop() comes first."""
        transient = is_transient_error(exc)
        if not transient and attempt >= self.handler_attempts_max:
            log.error("consumer %s: %s failed %d times; stopping", self.name, what, attempt)
            raise exc
        await self._retry_pause(attempt, what, exc, transient=transient)

    async def _retry_pause(
        self, attempt: int, what: str, exc: BaseException, *, transient: bool
    ) -> None:
        self.stats.retries += 1
        delay_s = backoff_delay_s(
            attempt, delay_s_min=self.retry_backoff_s_min, delay_s_max=self.retry_backoff_s_max
        )
        log.warning(
            "consumer %s: %s failed (%s: %s%s); retry %d in %.2f s",
            self.name,
            what,
            type(exc).__name__,
            str(exc)[:200],
            "" if transient else "; unexpected",
            attempt,
            delay_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        if self._stopping.is_set():
            raise _Interrupted

    def _report(self, topic: str, outcome: Outcome, reason: str | None) -> None:
        if self._on_outcome is not None:
            try:
                self._on_outcome(topic, outcome, reason)
            except Exception:
                log.exception("consumer %s: on_outcome callback failed", self.name)

    async def _commit(self, consumer: Consumer, done: Mapping[tuple[str, int], int]) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(done.items())]

        def commit() -> list[TopicPartition]:
            return consumer.commit(offsets=offsets, asynchronous=False)

        try:
            results = await self._in_thread(commit)
        except KafkaException as exc:
            # lost the partitions in a rebalance, say: the next owner repeats these
            # messages and the inbox drops them
            self.stats.commit_failures += 1
            log.warning("consumer %s: offset commit failed: %s", self.name, exc)
            return
        failed = [tp for tp in results if tp.error is not None]
        if failed:
            self.stats.commit_failures += 1
            log.warning("consumer %s: offset commit failed for %s", self.name, failed)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _position(message: Message) -> tuple[str, int, int]:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return topic, partition, offset


def _done_offsets(
    positions: Sequence[tuple[str, int, int]], finished: set[tuple[str, int, int]]
) -> dict[tuple[str, int], int]:
    """The offset to commit per partition: after the last message of an unbroken run of
    finished ones from the batch's start (a message not finished stops its partition)."""
    done: dict[tuple[str, int], int] = {}
    stopped: set[tuple[str, int]] = set()
    for topic, partition, offset in positions:
        key = (topic, partition)
        if key in stopped:
            continue
        if (topic, partition, offset) in finished:
            done[key] = offset + 1
        else:
            stopped.add(key)
    return done


def _event_id(
    record: Mapping[str, Any], headers: Mapping[str, str], topic: str, partition: int, offset: int
) -> uuid.UUID:
    """The record's event_id, else the x-event-id header, else one derived from the
    message's position (a message without an id is deduplicated by position)."""
    raw = record.get("event_id") or h.header(headers, h.EVENT_ID)
    if isinstance(raw, uuid.UUID):
        return raw
    if raw:
        return uuid.UUID(str(raw))
    return uuid.uuid5(_EVENT_ID_NAMESPACE, f"{topic}/{partition}/{offset}")
