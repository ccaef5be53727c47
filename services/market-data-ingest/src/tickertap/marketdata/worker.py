"""The ingest worker: marketdata.ticks.v1 in; prices, bars and dead letters out. The hot path.

One worker consumes every partition of the ticks topic (assigned, not subscribed: no group
join to wait for) from the positions stored in Postgres, never the broker's committed
offsets. Per batch of up to `ingest_batch_max` messages:

1. in the consumer's thread: decode each message (a fast path for the single-object
   framing of marketdata.ticks.v1; any other framing or writer version through the
   AvroCodec), apply it to the pure domain (sequence, validation, 1-minute window);
2. publish the latest price of every symbol the batch touched to marketdata.prices.v1,
   and wait for the broker's acknowledgements (event ids are uuid5 of topic/partition/
   offset: a batch repeated after a crash republishes the same ids);
3. in ONE Postgres transaction: the bars the batch touched (open ones too: they are the
   window state), closed bars' events and dead letters into the outbox (the runtime's
   relay publishes them), the latest prices, and per partition the next offset
   and source sequences, fenced on the stored offset the batch started from;
4. then commit the offsets to the broker too (for lag tooling only; never read back).

Steps 2 and 3 of a batch overlap step 1 of the next one (the producer has a thread of its
own); a batch is persisted only after the one before it.

A crash anywhere repeats at most the uncommitted batches from the stored state, so every
tick ends up once in a bar, once in the dead-letter outbox, or dropped as a duplicate.
Nothing is re-read to rebuild windows: open windows are rows of `market.bars_1m`, and each
symbol's watermark is its latest price's exchange time. (Re-reading from the oldest open
window's offset would also need the instruments, watermarks and sequences as they were
then, to repeat the same decisions; storing the open bars is exact and costs one upsert
per symbol and batch.) A broker that lost its topics (Tansu after a restart) is noticed by
the topic's id: the worker then consumes the new partitions from their start and keeps its
stored bars.

Instruments are read again every `ingest_instruments_refresh_s`, and at once when a tick
names an unknown symbol (once per batch), so a just-listed instrument's first ticks count.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any, Final, TypeVar

import fastavro
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.marketdata import domain as d
from tickertap.marketdata import repository as repo
from tickertap.messaging import AvroCodec, DecodeError, kafka
from tickertap.messaging import headers as h
from tickertap.messaging.codec import (
    SINGLE_OBJECT_HEADER_BYTES,
    SINGLE_OBJECT_MAGIC,
    DecodeReason,
)
from tickertap.messaging.retry import backoff_delay_s, is_transient_error
from tickertap.observability import Metrics

__all__ = ["BARS_SCHEMA", "PRICES_SCHEMA", "TICKS_SCHEMA", "IngestWorker", "TickDecoder"]

log = logging.getLogger(__name__)

TICKS_SCHEMA: Final = "marketdata.ticks.v1"
PRICES_SCHEMA: Final = "marketdata.prices.v1"
BARS_SCHEMA: Final = "marketdata.bars.v1"
EVENT_ID_NAMESPACE: Final = uuid.UUID("0b7e4c52-6f0a-4d0e-9d2b-6d61726b6574")
WIRE_SCALE: Final = 18  # the ticks schema's decimal scale
_WIRE_CONTEXT: Final = Context(prec=38, traps=[Inexact, InvalidOperation])  # never rounds
DECIMAL_CACHE_ENTRIES_MAX: Final = 100_000
GAPS_LOG_INTERVAL_S: Final = 60.0
UNSCALED_MAX: Final = 10**38  # decimal(38, 18): more digits than that is not a valid value

_T = TypeVar("_T")


def now_us() -> int:
    return time.time_ns() // 1000


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


class TickDecoder:
    """Bytes of a marketdata.ticks.v1 message to a `domain.Tick`; DecodeError if they are not.

    The single-object framing with this very schema (what every feed of this project writes)
    is read with the schema's logical types stripped: decimals become integers scaled here,
    timestamps stay integer microseconds, which is several times faster than the codec's
    conversions; the Decimals of byte strings seen before are reused. Anything else
    (Confluent framing, another writer version) goes through `AvroCodec.decode` and is
    converted afterwards.
    """

    def __init__(self, codec: AvroCodec) -> None:
        schema = codec.schemas.get(TICKS_SCHEMA)
        self._codec = codec
        self._header = SINGLE_OBJECT_MAGIC + schema.fingerprint
        self._raw_schema = fastavro.parse_schema(_strip_logical_types(json.loads(schema.text)))
        # prices and sizes repeat: their bytes map to the same (immutable) Decimal
        self._decimals: dict[bytes, Decimal] = {}

    def decode(self, data: bytes | None, partition: int, offset: int, received_us: int) -> d.Tick:
        if data is None:
            raise DecodeError("truncated", "the message has no value (a tombstone)")
        if data[:SINGLE_OBJECT_HEADER_BYTES] != self._header:
            return self._slow(data, partition, offset, received_us)
        body = io.BytesIO(data)
        body.seek(SINGLE_OBJECT_HEADER_BYTES)
        try:
            r: Any = fastavro.schemaless_reader(body, self._raw_schema, None)
        except EOFError as exc:
            raise DecodeError("truncated", f"{TICKS_SCHEMA}: the body ends early: {exc}") from None
        except Exception as exc:  # bad bytes surface as many exception types
            reason: DecodeReason = "truncated" if body.tell() >= len(data) else "invalid_avro"
            raise DecodeError(reason, f"{TICKS_SCHEMA}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise DecodeError("invalid_avro", f"{TICKS_SCHEMA}: bytes after the end of the record")
        decimals = self._decimals
        if len(decimals) > DECIMAL_CACHE_ENTRIES_MAX:
            decimals.clear()
        raw_price, raw_size, bid, ask = r["price"], r["size"], r["bid"], r["ask"]
        price = decimals.get(raw_price) or _decimal(raw_price, decimals)
        size = decimals.get(raw_size) or _decimal(raw_size, decimals)
        if bid is not None:
            bid = decimals.get(bid) or _decimal(bid, decimals)
        if ask is not None:
            ask = decimals.get(ask) or _decimal(ask, decimals)
        return d.Tick(
            r["symbol"],
            r["venue"],
            price,
            size,
            bid,
            ask,
            r["exchange_ts"],
            r["source_id"],
            r["source_seq"],
            partition,
            offset,
            received_us,
        )

    def _slow(self, data: bytes, partition: int, offset: int, received_us: int) -> d.Tick:
        r = self._codec.decode(data, TICKS_SCHEMA)
        return d.Tick(
            r["symbol"],
            r["venue"],
            r["price"],
            r["size"],
            r.get("bid"),
            r.get("ask"),
            repo.to_us(r["exchange_ts"]),
            r["source_id"],
            r["source_seq"],
            partition,
            offset,
            received_us,
        )


def _decimal(raw: bytes, cache: dict[bytes, Decimal]) -> Decimal:
    """The Decimal of an Avro decimal(38, 18)'s bytes, remembered in `cache`."""
    unscaled = int.from_bytes(raw, "big", signed=True)
    if not -UNSCALED_MAX < unscaled < UNSCALED_MAX:
        raise DecodeError("invalid_avro", f"{TICKS_SCHEMA}: a decimal of more than 38 digits")
    value = cache[raw] = Decimal(unscaled).scaleb(-WIRE_SCALE, _WIRE_CONTEXT)
    return value


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs of the settings (see settings.py for the meaning)."""

    bootstrap_servers: str
    ticks_topic: str
    prices_topic: str
    bars_topic: str
    group_id: str
    batch_max: int
    poll_timeout_s: float
    publish_timeout_s: float
    retry_backoff_s_max: float
    topic_wait_s: float
    instruments_refresh_s: float
    instruments_max: int
    policy: d.IngestPolicy
    sequence_sources_max: int


@dataclass
class Batch:
    """What one batch of messages produced, ready to publish and persist."""

    started: float
    messages: int = 0
    progress: list[repo.PartitionProgress] = field(default_factory=list)
    bars: list[tuple[d.Bar, bool]] = field(default_factory=list)
    bar_events: list[tuple[uuid.UUID, str, bytes]] = field(default_factory=list)
    prices: list[repo.PriceRow] = field(default_factory=list)
    price_messages: list[kafka.OutgoingMessage] = field(default_factory=list)
    dead_letters: list[repo.DeadLetterRow] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    valid: int = 0
    duplicates: int = 0
    missing: int = 0  # sequence numbers missing, over all sources
    newest_us: int = 0  # the latest broker timestamp of a tick in the batch


class _Stopped(Exception):
    """stop() came while the batch waited for a retry: leave it; the stored state stands."""


class WorkerMetrics:
    def __init__(self, metrics: Metrics, topic: str) -> None:
        r = metrics.registry
        self.metrics = metrics
        self.topic = topic
        self.ticks = Counter(
            "tickertap_marketdata_ticks",
            "Ticks consumed, by outcome (valid, duplicate, dead_lettered).",
            ["outcome"],
            registry=r,
        )
        self.missing = Gauge(
            "tickertap_marketdata_sequence_missing",
            "Sequence numbers missing between each source's lowest and highest seen since "
            "start, summed; settles to the gaps once every partition is caught up.",
            registry=r,
        )
        self.bars_closed = Counter(
            "tickertap_marketdata_bars_closed", "1-minute bars closed and persisted.", registry=r
        )
        self.prices = Counter(
            "tickertap_marketdata_prices_published", "Price records published.", registry=r
        )
        self.batch_duration = Histogram(
            "tickertap_marketdata_batch_duration_seconds",
            "From the end of a batch's consume to its offsets committed.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.delay = Gauge(
            "tickertap_marketdata_ingest_delay_seconds",
            "When the last batch was persisted, minus the broker timestamp of its newest tick.",
            registry=r,
        )
        self.restarts = Counter(
            "tickertap_marketdata_worker_restarts",
            "Times the worker reloaded its state from Postgres (fenced or transient error).",
            registry=r,
        )

    def record(self, batch: Batch) -> None:
        self.ticks.labels("valid").inc(batch.valid)
        self.ticks.labels("duplicate").inc(batch.duplicates)
        self.ticks.labels("dead_lettered").inc(len(batch.dead_letters))
        for reason, count in batch.reasons.items():  # reasons are domain.REASONS: bounded
            self.metrics.dlq_messages.labels(topic=self.topic, reason=reason).inc(count)
        self.missing.set(batch.missing)
        self.bars_closed.inc(len(batch.bar_events))
        self.prices.inc(len(batch.price_messages))
        self.batch_duration.observe(time.monotonic() - batch.started)
        if batch.newest_us:
            self.delay.set(max(0.0, (now_us() - batch.newest_us) / d.US_PER_S))


class IngestWorker:
    """Runs the loop of the module docstring until `stop()`."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Table,
        codec: AvroCodec,
        config: WorkerConfig,
        metrics: Metrics,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._codec = codec
        self._decoder = TickDecoder(codec)
        self.config = config
        self._dlq_topic = h.dead_letter_topic(config.ticks_topic)
        self._metrics = WorkerMetrics(metrics, config.ticks_topic)
        self._producer = kafka.ProducerSlot(
            kafka.producer_config(
                config.bootstrap_servers,
                {"message.timeout.ms": int(config.publish_timeout_s * 1000)},
            )
        )
        self._stopping = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._publisher: ThreadPoolExecutor | None = None
        self._committable: list[TopicPartition] = []
        self._instruments: Mapping[str, d.Instrument] = {}
        self._instruments_version: tuple[int, datetime | None] | None = None
        self._instruments_checked = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = repo.IngestState({}, d.Windows())
        # per partition, the next offset stored once every batch made so far is persisted:
        # what the next batch's fence expects (batches persist in order)
        self._expected_offsets: dict[int, int | None] = {}
        self._source = config.ticks_topic
        self._gaps = d.SequenceGaps(config.sequence_sources_max)
        self._gaps_reported: dict[str, int] = {}
        self._gaps_logged = 0.0
        self.batches = 0  # committed batches, for tests and logs

    # -- public ------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until `stop()`. Reloads from Postgres after a fence or a transient error;
        any other error propagates (the service's readiness then fails)."""
        assert self._executor is None, "run() is already running"
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        # the producer has a thread of its own, so prices go out while the next batch is read
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-publish")
        attempt = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                    attempt = 0
                except _Stopped:
                    return
                except repo.Fenced as exc:
                    log.warning("ingest: %s; reloading the state", exc)
                    self._metrics.restarts.inc()
                except Exception as exc:
                    if not is_transient_error(exc):
                        log.exception("ingest: the worker stops on an unexpected error")
                        raise
                    attempt += 1
                    self._metrics.restarts.inc()
                    await self._pause(attempt, "ingest session", exc)
        finally:
            await asyncio.get_running_loop().run_in_executor(self._publisher, self._producer.close)
            self._publisher.shutdown(wait=False)
            self._publisher = None
            self._executor.shutdown(wait=False)
            self._executor = None

    def stop(self) -> None:
        self._stopping.set()

    # -- one session: load the state, assign, loop ------------------------------------------

    async def _session(self) -> None:
        cfg = self.config
        partitions, topic_id = await self._in_thread(self._partitions)
        # event ids derive from positions: the topic's id keeps a recreated topic's apart
        self._source = f"{cfg.ticks_topic}/{topic_id or ''}"
        async with self._engine.begin() as conn:
            self._state = await repo.load_state(conn, cfg.ticks_topic, partitions, topic_id)
        self._expected_offsets = {p: s.next_offset for p, s in self._state.partitions.items()}
        await self._refresh_instruments(force=True)
        consumer = await self._in_thread(
            Consumer,
            kafka.consumer_config(
                cfg.bootstrap_servers, cfg.group_id, {"enable.partition.eof": False}
            ),
        )
        try:
            assignment = [
                TopicPartition(
                    cfg.ticks_topic,
                    p,
                    OFFSET_BEGINNING if state.next_offset is None else state.next_offset,
                )
                for p, state in sorted(self._state.partitions.items())
            ]
            await self._in_thread(consumer.assign, assignment)
            log.info(
                "ingest: consuming %s from the stored offsets %s",
                cfg.ticks_topic,
                {tp.partition: tp.offset for tp in assignment},
            )
            # batch N is published and persisted while batch N+1 is consumed and applied
            # (its snapshot is taken, so applying N+1 does not change it); N+1 waits for N
            pending: asyncio.Future[None] | None = None
            try:
                while not self._stopping.is_set():
                    await self._refresh_instruments()
                    batch = await self._in_thread(self._consume, consumer)
                    if pending is not None:
                        await pending
                        pending = None
                    if batch is not None:
                        pending = asyncio.ensure_future(self._complete(batch))
                if pending is not None:  # stopping: finish the batch in flight
                    await pending
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
        finally:
            await self._in_thread(consumer.close)

    async def _complete(self, batch: Batch) -> None:
        await self._publish(batch)
        await self._persist(batch)
        self._committable = [
            TopicPartition(self.config.ticks_topic, p.partition, p.next_offset)
            for p in batch.progress
        ]
        self._metrics.record(batch)
        self.batches += 1

    def _partitions(self) -> tuple[list[int], str | None]:
        """The partitions and the broker's id of the ticks topic (None when the broker
        has no topic ids), waiting (bounded) for the topic to exist."""
        topic_name = self.config.ticks_topic
        admin = AdminClient({"bootstrap.servers": self.config.bootstrap_servers, "log_level": 3})
        deadline = time.monotonic() + self.config.topic_wait_s
        while True:
            try:
                described = admin.describe_topics(TopicCollection([topic_name]), request_timeout=5)[
                    topic_name
                ].result(timeout=10)
                partitions = sorted(p.id for p in described.partitions)
                topic_id = str(described.topic_id) if described.topic_id is not None else None
                if partitions:
                    return partitions, topic_id
            except KafkaException as exc:
                log.warning("ingest: cannot describe %s: %s", topic_name, exc)
            if time.monotonic() >= deadline or self._stopping.is_set():
                raise RuntimeError(f"topic {topic_name} not found")
            time.sleep(0.5)

    # -- the hot path, in the consumer's thread ------------------------------------------------

    def _consume(self, consumer: Consumer) -> Batch | None:
        committable, self._committable = self._committable, []
        if committable:  # the positions persisted so far, for lag tooling only
            try:
                consumer.commit(offsets=committable, asynchronous=True)
            except KafkaException as exc:
                log.debug("ingest: offset commit to the broker failed: %s", exc)
        messages = consumer.consume(self.config.batch_max, self.config.poll_timeout_s)
        if not messages:
            return None
        batch = Batch(started=0.0)
        states = self._state.partitions
        windows = self._state.windows
        instruments = self._instruments
        policy = self.config.policy
        decode = self._decoder.decode
        apply = d.apply_tick
        see = self._gaps.see
        latest: dict[str, d.Tick] = {}
        touched_parts: set[int] = set()
        touched_symbols: set[str] = set()
        wall_us = now_us()
        fresh = False  # the instruments were read again during this batch
        newest_us = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("ingest: %s", kafka.describe(error))
                continue
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            state = states.get(partition)
            if state is None:  # a partition added after the start: picked up on restart
                continue
            expected = state.next_offset
            if expected is not None and offset != expected:
                # once: next_offset follows this message; a jump ahead is retention or
                # compaction, one back a topic recreated under the same id
                log.warning(
                    "ingest: %s[%d] continues at offset %d instead of %d; following it",
                    self.config.ticks_topic,
                    partition,
                    offset,
                    expected,
                )
            ts_type, ts_ms = message.timestamp()
            # the message's time (so a backlog is not judged stale), but never later than
            # our clock: a producer's CreateTime is its own, and a fast clock must not let
            # far-future ticks in (they would make every real tick `late`)
            received_us = (
                min(ts_ms * 1000, wall_us) if ts_type != TIMESTAMP_NOT_AVAILABLE else wall_us
            )
            try:
                tick = decode(message.value(), partition, offset, received_us)
            except DecodeError as exc:
                batch.messages += 1
                touched_parts.add(partition)
                state.next_offset = offset + 1
                self._dead_letter(batch, message, "undecodable", f"{exc.reason}: {exc.detail}")
                continue
            if not fresh and tick.symbol not in instruments:
                # maybe listed since the instruments were read: read them again (once a
                # batch) before this tick is dead-lettered as unknown
                self._refresh_from_thread()
                instruments, fresh = self._instruments, True
            batch.messages += 1
            touched_parts.add(partition)
            if received_us > newest_us:
                newest_us = received_us
            outcome = apply(state, windows, tick, instruments, policy)
            if outcome is None:
                batch.valid += 1
                touched_symbols.add(tick.symbol)
                if tick.exchange_us >= windows.watermarks[tick.symbol]:
                    latest[tick.symbol] = tick  # never an older price after a newer one
            elif outcome == d.DUPLICATE:
                batch.duplicates += 1
                continue
            else:
                self._dead_letter(batch, message, outcome, _detail(outcome, tick))
            see(tick.source_id, tick.source_seq)
        batch.started = time.monotonic()
        batch.newest_us = newest_us
        if not batch.messages:
            return None
        self._finish(batch, touched_parts, touched_symbols, latest)
        return batch

    def _refresh_from_thread(self) -> None:
        """Read the instruments again, from the consumer's thread, on the event loop (which
        is free: it awaits this thread)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._refresh_instruments(force=True), self._loop)
        future.result(timeout=self.config.publish_timeout_s)

    def _finish(
        self,
        batch: Batch,
        touched_parts: set[int],
        touched_symbols: set[str],
        latest: dict[str, d.Tick],
    ) -> None:
        cfg = self.config
        states, windows = self._state.partitions, self._state.windows
        closed = d.close_windows(windows, touched_symbols, cfg.policy)
        for partition in sorted(touched_parts):
            state = states[partition]
            assert state.next_offset is not None
            batch.progress.append(
                repo.PartitionProgress(
                    partition,
                    self._expected_offsets.get(partition),
                    state.next_offset,
                    dict(state.last_seq),
                )
            )
            self._expected_offsets[partition] = state.next_offset
        batch.bars.extend((bar, True) for bar in closed)
        batch.bars.extend(
            (dataclasses.replace(bar), False)
            for bar in windows.open_bars.values()
            if bar.symbol in touched_symbols
        )
        occurred = datetime.now(UTC)
        for bar in closed:
            event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"bar/{bar.symbol}/{bar.start_us}")
            record = {
                "event_id": event_id,
                "occurred_at": occurred,
                "symbol": bar.symbol,
                "interval_s": bar.interval_us // d.US_PER_S,
                "window_start": repo.to_datetime(bar.start_us),
                "window_end": repo.to_datetime(bar.end_us),
                "open": bar.open,
                "high": bar.high,
                "low": bar.low,
                "close": bar.close,
                "volume": bar.volume,
                "tick_count": bar.tick_count,
            }
            batch.bar_events.append((event_id, bar.symbol, self._codec.encode(BARS_SCHEMA, record)))
        for symbol in sorted(latest):
            tick = latest[symbol]
            batch.prices.append(
                repo.PriceRow(
                    symbol,
                    tick.venue,
                    tick.price,
                    tick.bid,
                    tick.ask,
                    tick.exchange_us,
                    tick.received_us,
                    tick.partition,
                    tick.offset,
                )
            )
            record = {
                "event_id": uuid.uuid5(
                    EVENT_ID_NAMESPACE, f"{self._source}/{tick.partition}/{tick.offset}"
                ),
                "occurred_at": occurred,
                "symbol": symbol,
                "venue": tick.venue,
                "price": tick.price,
                "bid": tick.bid,
                "ask": tick.ask,
                "exchange_ts": repo.to_datetime(tick.exchange_us),
                # the broker's timestamp of the tick: a replay republishes the same record
                "received_at": repo.to_datetime(tick.received_us),
                "source_topic": cfg.ticks_topic,
                "source_partition": tick.partition,
                "source_offset": tick.offset,
            }
            batch.price_messages.append(
                kafka.OutgoingMessage(
                    cfg.prices_topic,
                    symbol.encode(),
                    self._codec.encode(PRICES_SCHEMA, record, topic=cfg.prices_topic),
                    h.encode_headers(
                        {h.EVENT_ID: str(record["event_id"]), h.SCHEMA: PRICES_SCHEMA}
                    ),
                )
            )
        missing = self._gaps.missing()
        batch.missing = sum(max(0, count) for count in missing.values())
        now = time.monotonic()
        if now - self._gaps_logged >= GAPS_LOG_INTERVAL_S:
            for source_id, count in sorted(missing.items()):
                if count > self._gaps_reported.get(source_id, 0):
                    log.warning(
                        "ingest: source %s: %d sequence numbers missing so far "
                        "(numbers in flight on other partitions included)",
                        source_id,
                        count,
                    )
                    self._gaps_logged = now
                self._gaps_reported[source_id] = count

    def _dead_letter(self, batch: Batch, message: Message, reason: str, detail: str) -> None:
        partition, offset = message.partition(), message.offset()
        headers = {
            _storable(key): _storable(value)
            for key, value in h.decode_headers(message.headers()).items()
            if key not in h.DLQ_HEADERS
        }
        headers.update(
            {
                h.DLQ_REASON: reason,
                h.DLQ_DETAIL: _storable(detail)[: h.DLQ_DETAIL_CHARS_MAX],
                h.DLQ_SOURCE_TOPIC: self.config.ticks_topic,
                h.DLQ_SOURCE_PARTITION: str(partition),
                h.DLQ_SOURCE_OFFSET: str(offset),
                h.DLQ_CONSUMER_GROUP: self.config.group_id,
            }
        )
        batch.dead_letters.append(
            repo.DeadLetterRow(
                uuid.uuid5(EVENT_ID_NAMESPACE, f"dlq/{self._source}/{partition}/{offset}"),
                self._dlq_topic,
                message.key() or b"",
                message.value(),
                headers,
            )
        )
        batch.reasons[reason] = batch.reasons.get(reason, 0) + 1

    # -- after the batch: publish, persist, commit ------------------------------------------

    async def _publish(self, batch: Batch) -> None:
        attempt = 0
        messages = batch.price_messages
        while messages:
            attempt += 1
            assert self._publisher is not None
            deliveries = await asyncio.get_running_loop().run_in_executor(
                self._publisher,
                kafka.deliver,
                self._producer.get(),
                messages,
                self.config.publish_timeout_s + 5,
            )
            failed = [m for m, dl in zip(messages, deliveries, strict=True) if not dl.ok]
            if not failed:
                return
            if kafka.needs_new_producer(deliveries):
                await asyncio.get_running_loop().run_in_executor(
                    self._publisher, self._producer.close, True
                )
            errors = kafka.summarize(deliveries)
            messages = failed
            await self._pause(attempt, "publishing prices", RuntimeError(str(errors)))

    async def _persist(self, batch: Batch) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._engine.begin() as conn:
                    await repo.persist_batch(
                        conn,
                        self._outbox,
                        topic=self.config.ticks_topic,
                        progress=batch.progress,
                        bars=batch.bars,
                        prices=batch.prices,
                        bar_events=batch.bar_events,
                        dead_letters=batch.dead_letters,
                        bars_topic=self.config.bars_topic,
                        bars_schema=BARS_SCHEMA,
                    )
            except repo.Fenced:
                raise
            except Exception as exc:
                if not is_transient_error(exc):
                    raise
                # the commit may have happened: the fence then sends us to reload
                await self._pause(attempt, "persisting a batch", exc)
                continue
            return

    # -- plumbing ------------------------------------------------------------------------------

    async def _refresh_instruments(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._instruments_checked < self.config.instruments_refresh_s:
            return
        self._instruments_checked = now
        async with self._engine.connect() as conn:
            version = await repo.instruments_version(conn)
            if force or version != self._instruments_version:
                self._instruments = await repo.load_instruments(conn, self.config.instruments_max)
                self._instruments_version = version

    async def _pause(self, attempt: int, what: str, exc: BaseException) -> None:
        delay_s = backoff_delay_s(
            attempt, delay_s_min=0.05, delay_s_max=self.config.retry_backoff_s_max
        )
        log.warning(
            "ingest: %s failed (%s: %s); retry %d in %.2f s",
            what,
            type(exc).__name__,
            str(exc)[:200],
            attempt,
            delay_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        if self._stopping.is_set():
            raise _Stopped

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _storable(text: str) -> str:
    """`text` as Postgres text and jsonb accept it: no NUL character (the rest is kept)."""
    return text.replace("\x00", "\\x00")


def _detail(reason: str, tick: d.Tick) -> str:
    return f"{reason}: {tick.symbol} at {tick.exchange_us} us, {tick.source_id}#{tick.source_seq}"


def worker_config(settings: Any) -> WorkerConfig:
    """The worker's configuration from `MarketDataSettings`."""
    return WorkerConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        ticks_topic=settings.ingest_ticks_topic,
        prices_topic=settings.ingest_prices_topic,
        bars_topic=settings.ingest_bars_topic,
        group_id=settings.ingest_group_id,
        batch_max=settings.ingest_batch_max,
        poll_timeout_s=settings.ingest_poll_timeout_s,
        publish_timeout_s=settings.ingest_publish_timeout_s,
        retry_backoff_s_max=settings.ingest_retry_backoff_s_max,
        topic_wait_s=settings.ingest_topic_wait_s,
        instruments_refresh_s=settings.ingest_instruments_refresh_s,
        instruments_max=settings.ingest_instruments_max,
        policy=settings.ingest_policy(),
        sequence_sources_max=settings.sequence_sources_max,
    )
