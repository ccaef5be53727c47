"""`tickertap-feed`: publish simulated or replayed ticks to `marketdata.ticks.v1`.

    tickertap-feed --symbols 10 --rate 20                       # 60 s of a 10-symbol demo feed
    tickertap-feed --symbols 100 --rate 0 --count 100000        # as fast as the broker takes them
    tickertap-feed --replay ticks.csv --rate 500                # a CSV file, paced
    python -m tickertap.marketdata.feed --help                  # the same command

Every run is bounded: by `--count`, by `--duration-s` (60 s when neither is given), and by the
end of the replay file. Ticks are Avro single-object encoded by the project's codec (`C3 01`,
the schema's CRC-64-AVRO fingerprint, the body) and keyed by symbol; the producer batches
(`linger.ms`). `--rate` is kept by a token bucket (0: no pacing). Progress goes to stderr: one
updating line on a terminal, a line every `--progress-interval-s` otherwise, and a summary at
the end. Exit status: 0 when every tick was delivered, 1 when some were not, 2 for bad usage
or a bad replay file (nothing is sent then: the whole file is checked first).

Timestamps (`--timestamps`): `wall` (the default) stamps each tick with the time it is sent
(`occurred_at` and `exchange_ts`; a deliberately far-future tick keeps its offset), so a live
consumer's freshness bounds accept it; `source` keeps the simulated clock (`--start-us`, one
`1/rate` step per tick) or the file's own `exchange_ts`.

Replay CSV: a header row, then one tick per row, UTF-8, comma-separated. Columns:

    symbol        required   e.g. AAPL
    price         required   decimal text, e.g. 189.84 (no exponent, no thousands separator)
    size          required   decimal text, >= 0
    exchange_ts   required   microseconds since the Unix epoch, or ISO 8601 with an offset
                             (2026-11-26T10:15:00.123456Z)
    venue         optional   default XNAS
    bid, ask      optional   decimal text; empty for none
    source_id     optional   default --source-id
    source_seq    optional   default: counts from 1 per source_id, in file order
    event_id      optional   a UUID; default: derived from source_id and source_seq

Rows are checked for these rules and for the Avro schema (at most 18 decimal places, 38
digits); business rules (known symbol, the instrument's scale, bid <= ask) are the ingest
service's to enforce, so a replay can exercise its dead-letter path.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from confluent_kafka import KafkaError, Message, Producer

from tickertap.marketdata.feed import (
    DEFAULT_VENUE,
    EVENT_ID_NAMESPACE,
    SYMBOLS_MAX,
    TICK_COUNT_MAX,
    default_symbols,
    simulate,
)
from tickertap.messaging import AvroCodec, EncodeError, find_schemas_dir, load_schemas
from tickertap.messaging.kafka import producer_config

TOPIC: Final = "marketdata.ticks.v1"
SCHEMA_NAME: Final = "marketdata.ticks.v1"
DEFAULT_BOOTSTRAP: Final = "127.0.0.1:25492"  # the dev stack's broker (`make run`)
RATE_MAX: Final = 1_000_000  # ticks/s
DURATION_S_DEFAULT: Final = 60.0
DURATION_S_MAX: Final = 7 * 86_400.0
BURST_S: Final = 0.1  # the token bucket holds at most this many seconds of ticks
PAUSE_S_MIN: Final = 0.001
PROGRESS_INTERVAL_S_DEFAULT: Final = 10.0
TTY_REFRESH_S: Final = 0.5
FLUSH_TIMEOUT_S: Final = 30.0
QUEUE_FULL_POLL_S: Final = 0.05
REPLAY_ROWS_MAX: Final = 10_000_000
REPLAY_FIELD_CHARS_MAX: Final = 200
PRODUCER_OVERRIDES: Final = {
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
}

REPLAY_REQUIRED: Final = ("symbol", "price", "size", "exchange_ts")
REPLAY_OPTIONAL: Final = ("venue", "bid", "ask", "source_id", "source_seq", "event_id")


class ReplayError(ValueError):
    """A replay file that does not follow the documented format; says where."""


# -- the token bucket -------------------------------------------------------------------------


class TokenBucket:
    """At most `rate_per_s` tokens a second on average, bursts up to `burst` tokens.

    `take(n)` returns how many of `n` tokens are available now (possibly 0) and spends them;
    `wait_s()` is how long until the next token. The clock is injected for tests.
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Any = time.monotonic) -> None:
        assert rate_per_s > 0
        assert burst >= 1
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._tokens = 1.0  # start gently: one tick, then the rate
        self._last = clock()

    def take(self, n: int) -> int:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        granted = min(n, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait_s(self) -> float:
        return max(PAUSE_S_MIN, (1 - self._tokens) / self._rate)


# -- progress ---------------------------------------------------------------------------------


@dataclass
class Progress:
    """Counts of one run, shown on `stream` as the run goes."""

    stream: TextIO
    interval_s: float
    tty: bool
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    delivered: int = 0
    errors: int = 0
    first_error: str | None = None
    _last_shown: float = 0.0
    _last_delivered: int = 0

    def __post_init__(self) -> None:
        self._last_shown = self.started  # the first line comes after one interval

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = str(error)

    def maybe_show(self, now: float) -> None:
        every_s = TTY_REFRESH_S if self.tty else self.interval_s
        if now - self._last_shown >= every_s:
            self._show(now, final=False)

    def finish(self) -> None:
        self._show(time.monotonic(), final=True)

    def _show(self, now: float, *, final: bool) -> None:
        elapsed_s = max(now - self.started, 1e-9)
        window_s = max(now - self._last_shown, 1e-9)
        rate = (self.delivered - self._last_delivered) / window_s
        if final:
            rate = self.delivered / elapsed_s
        self._last_shown, self._last_delivered = now, self.delivered
        line = (
            f"tickertap-feed: {elapsed_s:7.1f} s  sent {self.sent}  delivered {self.delivered}"
            f"  errors {self.errors}  {rate:,.0f} ticks/s{' (average)' if final else ''}"
        )
        if final and self.first_error:
            line += f"  first error: {self.first_error}"
        if self.tty and not final:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()


# -- replay -----------------------------------------------------------------------------------


def _decimal(text: str, column: str, *, non_negative: bool) -> Decimal:
    if len(text) > REPLAY_FIELD_CHARS_MAX:
        raise ValueError(f"{column}: longer than {REPLAY_FIELD_CHARS_MAX} characters")
    stripped = text.strip()
    if not stripped or not all(c.isdigit() or c in "+-." for c in stripped):
        raise ValueError(f"{column}: {text[:40]!r} is not a plain decimal number")
    try:
        value = Decimal(stripped)
    except InvalidOperation:
        raise ValueError(f"{column}: {text[:40]!r} is not a decimal number") from None
    if non_negative and value < 0:
        raise ValueError(f"{column}: {value} is negative")
    return value


def _timestamp_us(text: str) -> int:
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    try:
        moment = dt.datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"exchange_ts: {text[:40]!r} is neither microseconds nor ISO 8601"
        ) from None
    if moment.utcoffset() is None:
        raise ValueError("exchange_ts: an ISO 8601 time needs an offset (Z or +hh:mm)")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def read_replay(path: Path, default_source_id: str) -> Iterator[dict[str, Any]]:
    """The tick records of a replay CSV, in file order; raises ReplayError on the first bad row."""
    seqs: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REPLAY_REQUIRED if c not in columns]
        if missing:
            raise ReplayError(f"{path}: header lacks the columns {', '.join(missing)}")
        unknown = [c for c in columns if c not in REPLAY_REQUIRED + REPLAY_OPTIONAL]
        if unknown:
            raise ReplayError(f"{path}: unknown columns {', '.join(unknown)}")
        for index, row in enumerate(reader):
            line = reader.line_num
            if index >= REPLAY_ROWS_MAX:
                raise ReplayError(f"{path}: more than {REPLAY_ROWS_MAX} rows")
            if None in row or any(value is None for value in row.values()):
                raise ReplayError(f"{path}:{line}: the row does not have one value per column")
            try:
                yield _replay_record(row, default_source_id, seqs)
            except ValueError as exc:
                raise ReplayError(f"{path}:{line}: {exc}") from None


def _replay_record(row: dict[str, str], default_source_id: str, seqs: dict[str, int]) -> Any:
    for column, value in row.items():
        if len(value) > REPLAY_FIELD_CHARS_MAX:
            raise ValueError(f"{column}: longer than {REPLAY_FIELD_CHARS_MAX} characters")
    symbol = row["symbol"].strip()
    if not symbol:
        raise ValueError("symbol: empty")
    source_id = (row.get("source_id") or "").strip() or default_source_id
    seq_text = (row.get("source_seq") or "").strip()
    if seq_text:
        if not seq_text.isdigit():
            raise ValueError(f"source_seq: {seq_text[:40]!r} is not a whole number >= 0")
        seq = int(seq_text)
    else:
        seq = seqs.get(source_id, 0) + 1
    seqs[source_id] = seq
    event_text = (row.get("event_id") or "").strip()
    try:
        event_id = str(uuid.UUID(event_text)) if event_text else None
    except ValueError:
        raise ValueError(f"event_id: {event_text[:40]!r} is not a UUID") from None
    exchange_ts = _timestamp_us(row["exchange_ts"])
    bid_text, ask_text = (row.get("bid") or "").strip(), (row.get("ask") or "").strip()
    return {
        "event_id": event_id or str(uuid.uuid5(EVENT_ID_NAMESPACE, f"replay/{source_id}/{seq}")),
        "occurred_at": exchange_ts,
        "symbol": symbol,
        "venue": (row.get("venue") or "").strip() or DEFAULT_VENUE,
        "price": _decimal(row["price"], "price", non_negative=False),
        "size": _decimal(row["size"], "size", non_negative=True),
        "bid": _decimal(bid_text, "bid", non_negative=False) if bid_text else None,
        "ask": _decimal(ask_text, "ask", non_negative=False) if ask_text else None,
        "exchange_ts": exchange_ts,
        "source_id": source_id,
        "source_seq": seq,
    }


def check_replay(path: Path, default_source_id: str, codec: AvroCodec) -> int:
    """Read the whole file once and encode every row; returns the row count."""
    rows = 0
    for record in read_replay(path, default_source_id):
        rows += 1
        try:
            codec.encode(SCHEMA_NAME, record)
        except EncodeError as exc:
            raise ReplayError(f"{path}: row {rows}: {exc.detail}") from None
    return rows


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedOptions:
    bootstrap_servers: str
    topic: str = TOPIC
    symbols: int = 10
    rate_per_s: float = 20.0
    count: int | None = None
    duration_s: float | None = None
    seed: int = 1
    bad_ratio: Decimal = Decimal(0)
    replay: Path | None = None
    source_id: str = "sim"
    timestamps: str = "wall"
    start_us: int | None = None
    progress_interval_s: float = PROGRESS_INTERVAL_S_DEFAULT
    quiet: bool = False


def _now_us() -> int:
    return time.time_ns() // 1000


def _ticks(options: FeedOptions, count_bound: int) -> Iterator[dict[str, Any]]:
    if options.replay is not None:
        return read_replay(options.replay, options.source_id)
    step_us = round(1_000_000 / options.rate_per_s) if options.rate_per_s > 0 else 1000
    return simulate(
        default_symbols(options.symbols),
        seed=options.seed,
        source_id=options.source_id,
        start_us=options.start_us if options.start_us is not None else _now_us(),
        step_us=step_us,
        count=count_bound,
        bad_ratio=options.bad_ratio,
    )


def run_feed(options: FeedOptions, stream: TextIO = sys.stderr) -> Progress:
    """Publish ticks as `options` say; returns the counts. Stops early when `stop` is set."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    if options.replay is not None:
        check_replay(options.replay, options.source_id, codec)
    duration_s = options.duration_s
    if duration_s is None and options.count is None and options.replay is None:
        duration_s = DURATION_S_DEFAULT
    count_bound = options.count if options.count is not None else TICK_COUNT_MAX
    progress = Progress(
        stream=stream,
        interval_s=options.progress_interval_s,
        tty=stream.isatty() and not options.quiet,
    )
    producer = Producer(producer_config(options.bootstrap_servers, PRODUCER_OVERRIDES))
    bucket = (
        TokenBucket(options.rate_per_s, max(1.0, options.rate_per_s * BURST_S))
        if options.rate_per_s > 0
        else None
    )
    deadline = progress.started + duration_s if duration_s is not None else None
    stopping = _StopFlag()
    ticks = _ticks(options, count_bound)
    wall = options.timestamps == "wall"
    try:
        with stopping.installed():
            for record in _paced(ticks, bucket, deadline, stopping, count_bound, producer):
                if wall:
                    now_us = _now_us()
                    record["exchange_ts"] += now_us - record["occurred_at"]
                    record["occurred_at"] = now_us
                value = codec.encode(SCHEMA_NAME, record, topic=options.topic)
                key = record["symbol"].encode()
                while True:
                    try:
                        producer.produce(
                            options.topic, value, key, on_delivery=progress.on_delivery
                        )
                        break
                    except BufferError:  # the local queue is full: let deliveries drain
                        producer.poll(QUEUE_FULL_POLL_S)
                progress.sent += 1
                producer.poll(0)
                if not options.quiet:
                    progress.maybe_show(time.monotonic())
    finally:
        left = producer.flush(FLUSH_TIMEOUT_S)
        if left:
            progress.errors += left
            progress.first_error = progress.first_error or f"{left} not delivered in time"
        if not options.quiet:
            progress.finish()
    return progress


def _paced(
    ticks: Iterator[dict[str, Any]],
    bucket: TokenBucket | None,
    deadline: float | None,
    stopping: _StopFlag,
    count_bound: int,
    producer: Producer,
) -> Iterator[dict[str, Any]]:
    """`ticks`, as fast as the bucket allows, until the count, deadline or a signal."""
    granted = 0
    for sent, record in enumerate(ticks):
        if sent >= count_bound:
            return
        while granted == 0:
            if stopping.set or (deadline is not None and time.monotonic() >= deadline):
                return
            if bucket is None:
                granted = 1
                break
            granted = bucket.take(count_bound - sent)
            if granted == 0:
                # Sleep in the producer's poll: delivery reports keep flowing meanwhile.
                producer.poll(min(bucket.wait_s(), TTY_REFRESH_S))
        granted -= 1
        yield record


class _StopFlag:
    """Set by SIGINT or SIGTERM: the run stops sending, flushes and reports."""

    def __init__(self) -> None:
        self.set = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.set = True

    def installed(self) -> _Installed:
        return _Installed(self)


class _Installed:
    def __init__(self, flag: _StopFlag) -> None:
        self._flag = flag
        self._previous: list[tuple[int, Any]] = []

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous.append((signum, signal.signal(signum, self._flag._handle)))

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous:
            signal.signal(signum, handler)


# -- the command line -------------------------------------------------------------------------


def _positive_rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= RATE_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{RATE_MAX} (0: no pacing)")
    return value


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}")
        return value

    return parse


def _duration(text: str) -> float:
    value = float(text)
    if not 0 < value <= DURATION_S_MAX:
        raise argparse.ArgumentTypeError(f"must be in (0, {DURATION_S_MAX:.0f}] seconds")
    return value


def _ratio(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError("must be a decimal number in 0..1") from None
    if not value.is_finite() or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a decimal number in 0..1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickertap-feed",
        description="Publish simulated (or replayed) ticks to marketdata.ticks.v1.",
        epilog=__doc__[__doc__.index("Replay CSV:") :] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("TICKERTAP_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
        help="Kafka bootstrap servers (default $TICKERTAP_KAFKA_BOOTSTRAP_SERVERS or %(default)s)",
    )
    parser.add_argument("--topic", default=TOPIC, help="topic (default %(default)s)")
    parser.add_argument(
        "--symbols",
        type=_bounded_int(1, SYMBOLS_MAX),
        default=10,
        help="how many simulated symbols: AAPL, MSFT, … then SYM000, … (default %(default)s)",
    )
    parser.add_argument(
        "--rate", type=_positive_rate, default=20.0, help="ticks per second; 0: no pacing"
    )
    parser.add_argument(
        "--count", type=_bounded_int(0, TICK_COUNT_MAX), help="stop after this many ticks"
    )
    parser.add_argument(
        "--duration-s",
        type=_duration,
        help=f"stop after this many seconds (default {DURATION_S_DEFAULT:.0f} without --count)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument(
        "--bad-ratio", type=_ratio, default=Decimal(0), help="fraction of bad ticks, 0..1"
    )
    parser.add_argument("--replay", type=Path, help="a CSV file of ticks to publish instead")
    parser.add_argument(
        "--source-id",
        help="the feed's source id (default: sim-<random>, so a rerun is a new source "
        "whose sequence and event ids do not collide with the last run's)",
    )
    parser.add_argument(
        "--timestamps",
        choices=("wall", "source"),
        default="wall",
        help="wall: stamp ticks when sent (default); source: the simulated or file times",
    )
    parser.add_argument(
        "--start-us", type=_bounded_int(0, 2**62), help="simulated clock start (source mode)"
    )
    parser.add_argument(
        "--progress-interval-s",
        type=_duration,
        default=PROGRESS_INTERVAL_S_DEFAULT,
        help="seconds between progress lines when stderr is not a terminal",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress, no summary")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> FeedOptions:
    args = build_parser().parse_args(argv)
    return FeedOptions(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        symbols=args.symbols,
        rate_per_s=args.rate,
        count=args.count,
        duration_s=args.duration_s,
        seed=args.seed,
        bad_ratio=args.bad_ratio,
        replay=args.replay,
        source_id=args.source_id or f"sim-{uuid.uuid4().hex[:12]}",
        timestamps=args.timestamps,
        start_us=args.start_us,
        progress_interval_s=args.progress_interval_s,
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        progress = run_feed(options)
    except (ReplayError, OSError) as exc:
        print(f"tickertap-feed: {exc}", file=sys.stderr)
        return 2
    return 0 if progress.errors == 0 and progress.delivered == progress.sent else 1


if __name__ == "__main__":
    sys.exit(main())
