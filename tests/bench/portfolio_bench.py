"""Portfolio service: price-to-update latency, updates/s, RSS and backlog under a steady feed.

On the bench profile's stack (infrastructure only; started here if it is not up and stopped
at the end if so), with the portfolio-calculation service as `make run` starts it:

1. seed: empty the portfolio schema's tables, then publish `--portfolios` (10,000) customers'
   ledger.transfers.v1 events straight onto the topic with the project's AvroCodec (as the
   ledger's outbox encodes them, as the portfolio tests do): a USD deposit and
   `--positions` buys of distinct symbols out of `--symbols` (100), spread evenly, so each
   symbol is held by portfolios x positions / symbols portfolios. Waits until every
   position is stored and the seed's own updates are out.
2. `--runs` times, a fresh service process each: marketdata.prices.v1 records published
   straight onto the topic at `--rate` (1,000/s) for `--duration-s`, round-robin over the
   symbols (the market-data-ingest service is NOT in the chain: on this 2-core machine it
   would compete with the service measured; its own tick-to-price latency is in
   marketdata_bench.py). Each price names a unique source offset (`price_source_offset`
   in the update), and its send time is kept.
3. portfolio.updates.v1 is read by partition assignment (no group) from the offsets at the
   start of the run; after the run each update is matched to the prices it carries:
   - latency (cause): when this script's consumer (fetches paced at 50 ms, as
     examples/portfolio_updates_consumer.py sets them) received the update, minus the send
     time of the oldest price it is the first to reflect (per position, the first price of
     that symbol after the one the portfolio's previous update carried): what a subscriber
     waits for a price to show; also the same up to the update's produce timestamp
     (without the producer's linger, the broker and the fetch);
   - freshness: receive time minus the send time of the newest price it carries.
   Also updates/s during the feed, the service's RSS (process tree), and the backlog in
   the middle and at the end of the feed: prices not applied yet (sent minus claimed in the
   service's inbox; the local broker's watermarks are unreliable), unsent outbox rows,
   changed portfolios waiting for their update and the longest wait (the live publisher's
   gauges on /metrics). Each run's feed starts once the fresh service has published every
   portfolio once (what it does at start; that time is reported too). A backlog grows when
   the end is above the middle by more than a second of feed (prices), 1,000 rows
   (outbox), or the longest-waiting changed portfolio waits a second longer at the end.

Bounded: seed and drain timeouts, every run's duration (at most 600 s), every process start
and stop. CPU shares (percent of one core) say who had the CPU: the service, Postgres, the
broker, this script (producer and reader), the rest of the machine.

    .venv/bin/python tests/bench/portfolio_bench.py --runs 2
    .venv/bin/python tests/bench/portfolio_bench.py --portfolios 1000 --runs 1 --duration-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "deploy" / "local"))
os.environ["TICKERTAP_PROFILE"] = "bench"  # before config reads it

import asyncpg  # noqa: E402
import harness  # noqa: E402
import hvac  # noqa: E402
import marketdata_bench as mdb  # noqa: E402 - Stack, Shares, readiness, percentile
from config import SERVICES, StackConfig, load_topics  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from stack import service_env  # noqa: E402

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas  # noqa: E402
from tickertap.messaging.kafka import paced_fetches, producer_config, take_batch  # noqa: E402

TRANSFERS = "ledger.transfers.v1"
PRICES = "marketdata.prices.v1"
UPDATES = "portfolio.updates.v1"
PRICE_GROUP = "portfolio-calculation.prices"  # the service's group: `<service>.<consumer>`
BENCH_SOURCE = "bench.portfolio-ticks"  # the tick topic the bench's prices claim to come from
HOUSE = "00000000-0000-0000-0000-000000000000"
D = Decimal
PORTFOLIOS_MAX = 100_000
SYMBOLS_MAX = 1000
RUNS_MAX = 10
RATE_MAX = 20_000.0
DURATION_S_MAX = 600.0
SEED_TIMEOUT_S_DEFAULT = 900.0
SEED_TIMEOUT_S_MAX = 3600.0  # a machine shared with other work can take that long
DRAIN_TIMEOUT_S_DEFAULT = 30.0
SAMPLE_INTERVAL_S = 1.0
QUIET_WAIT_S = 30.0
STEADY_AFTER_S = 3.0  # the feed's start makes every portfolio change at once
STARTUP_PUBLISH_TIMEOUT_S = 300.0
LIVE_GAUGES = {
    "tickertap_portfolio_live_leader",
    "tickertap_portfolio_live_dirty_portfolios",
    "tickertap_portfolio_live_oldest_dirty_seconds",
}
SERVICE_START_ATTEMPTS = 3
HTTP_PORT_OFFSET = 45  # odd and unused by the stack (services 1-4, Vault 20, PG 32, Kafka 92)
SERVICE_RETRY_PAUSE_S = 2.0
RESET_ATTEMPTS = 5
# the feed's producer lingers as the project's feed simulator's does (feed_cli.py): a price
# produced alone with the default 5 ms is a record batch of its own, and the local broker's
# fetches rescan every batch a partition keeps (its cost grows with their count, not their
# size). A price's time in the linger still counts: its send time is taken at produce().
PRODUCER_OVERRIDES = {"linger.ms": 20}
PRODUCE_FLUSH_TIMEOUT_S = 120.0
PRODUCER_WARMUP_S = 1.0
TIMELINE_SLOT_S = 0.5
GC_PAUSE_SHOWN_MS = 5.0
READ_BATCH_MAX = 5000
READ_POLL_S = 0.05  # one wait for an update (take_batch returns as soon as one is there)
# the reader asks at most every 50 ms: fetching again at each answer cost the broker 14% of
# a core (updates at 33,000/s, synthetic), paced 8%; the broker's CPU is the service's
READ_FETCH_WAIT_MS = 50
READER_JOIN_TIMEOUT_S = 10.0
DEPOSIT_USD = D("1000000.00")
BUY_QUANTITY = D("10")
BASE_PRICE = D("100.00")
PRICE_STEP = D("0.01")


# -- the service --------------------------------------------------------------------------


def portfolio_secret_file(stack: mdb.Stack, directory: Path) -> Path:
    """A fresh AppRole secret_id for the portfolio role (the infra-only stack hands none out)."""
    token = (Path(stack.info["secrets_dir"]) / "vault_root_token").read_text().strip()
    client = hvac.Client(url=stack.info["vault"]["addr"], token=token)
    secret_id = client.auth.approle.generate_secret_id("portfolio")["data"]["secret_id"]
    path = directory / "portfolio.secret_id"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret_id)
    return path


@contextlib.contextmanager
def portfolio_service(
    stack: mdb.Stack, secret_file: Path, log: Path, publisher_processes: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The portfolio-calculation service with the launcher's environment, until ready.

    A profile's ports may lie in the kernel's ephemeral range (32768-60999), where Linux
    hands out even ports to outgoing connections: one to Vault or Kafka, lingering in
    TIME-WAIT for a minute, then blocks the service's usual (even) HTTP port. So the
    service listens on an odd port of the profile's block, and a start is retried."""
    spec = next(svc for svc in SERVICES if svc.name == "portfolio-calculation")
    env = service_env(
        stack.cfg,
        spec,
        stack.info["approle_role_ids"]["portfolio"],
        secret_file,
        without_auth=True,  # the bench runs this service alone
    )
    env["TICKERTAP_VALUATION_SNAPSHOT_INTERVAL_S"] = "0"  # a daily job, not the feed's load
    if publisher_processes is not None:
        env["TICKERTAP_UPDATE_PUBLISHER_PROCESSES"] = str(publisher_processes)
    env["TICKERTAP_HTTP_PORT"] = str(stack.cfg.port_base + HTTP_PORT_OFFSET)
    url = service_url(stack)
    for attempt in range(1, SERVICE_START_ATTEMPTS + 1):
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=harness._die_with_parent,
            )
        deadline = time.monotonic() + mdb.SERVICE_READY_TIMEOUT_S
        while not mdb._ready(url) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None and mdb._ready(url):
            break
        harness.stop_process(proc, mdb.SERVICE_STOP_TIMEOUT_S)
        if attempt == SERVICE_START_ATTEMPTS:
            raise RuntimeError(f"the portfolio service did not get ready; see {log}")
        time.sleep(SERVICE_RETRY_PAUSE_S)
    try:
        yield proc
    finally:
        harness.stop_process(proc, mdb.SERVICE_STOP_TIMEOUT_S)


def service_url(stack: mdb.Stack) -> str:
    return f"http://127.0.0.1:{stack.cfg.port_base + HTTP_PORT_OFFSET}"


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (the service may fork helpers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def stack_up(marker: Path | None = None) -> None:
    """`stack.py up --no-services`, retried (see `portfolio_service` on ephemeral ports:
    OpenBao's listener can meet the same clash)."""
    argv = [sys.executable, str(harness.STACK_PY), "up", "--no-services"]
    if marker is not None:
        argv += ["--started-marker", str(marker)]
    for attempt in range(1, SERVICE_START_ATTEMPTS + 1):
        done = subprocess.run(
            argv,
            env=harness.STACK_ENV,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=harness.STACK_UP_TIMEOUT_S,
        )
        if done.returncode == 0:
            return
        if attempt == SERVICE_START_ATTEMPTS:
            raise RuntimeError("the bench stack did not start; see its logs/stack.log")
        time.sleep(SERVICE_RETRY_PAUSE_S)


@contextlib.contextmanager
def bench_stack(tmp: Path) -> Iterator[None]:
    """The bench profile's stack: used if up, else started and, at the end, stopped
    (harness.bench_stack without the retries)."""
    marker = tmp / "started"
    stack_up(marker)
    try:
        yield
    finally:
        if marker.exists():
            subprocess.run(
                [sys.executable, str(harness.STACK_PY), "down"],
                env=harness.STACK_ENV,
                check=False,
                stdout=subprocess.DEVNULL,
                timeout=harness.STACK_DOWN_TIMEOUT_S,
            )


def restart_stack(tmp: Path) -> tuple[mdb.Stack, Path]:
    """`stack.py down` then `up --no-services`, retried: a fresh broker for a run.

    The broker of the local stack (tansu, in memory) keeps a consumer group that lost a
    member stuck: a restarted service would never be assigned its partitions. The
    portfolio service's group ids are fixed (`portfolio-calculation.<consumer>`), so each
    run gets a fresh broker; Postgres keeps its data, so the seeded portfolios stay."""
    argv = [sys.executable, str(harness.STACK_PY)]
    subprocess.run(
        [*argv, "down"],
        env=harness.STACK_ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=harness.STACK_DOWN_TIMEOUT_S,
    )
    stack_up()
    return open_stack(tmp)


def open_stack(tmp: Path) -> tuple[mdb.Stack, Path]:
    """The running bench stack and a fresh secret_id for the portfolio role."""
    cfg = StackConfig.from_env()
    info = json.loads(cfg.stack_file.read_text())
    stack = mdb.Stack(cfg, info, harness.read_bench_stack().admin_url)
    return stack, portfolio_secret_file(stack, tmp)


# -- state ---------------------------------------------------------------------------------


async def reset_portfolio_state(admin_url: str) -> None:
    """Empty every table of the portfolio schema but the migrations' (a fresh service)."""
    conn = await asyncpg.connect(admin_url)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'portfolio'"
            )
            if r["tablename"] != "alembic_version"
        ]
        # the service already runs (it migrated the schema): its readers can deadlock
        # with the TRUNCATE, which then simply goes again
        for attempt in range(1, RESET_ATTEMPTS + 1):
            try:
                if names:
                    await conn.execute(f"TRUNCATE {', '.join('portfolio.' + n for n in names)}")
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == RESET_ATTEMPTS:
                    raise
                await asyncio.sleep(SERVICE_RETRY_PAUSE_S)
    finally:
        await conn.close()


def symbol_names(count: int) -> list[str]:
    return [f"PB{i:03d}" for i in range(count)]


def holdings_of(index: int, symbols: list[str], positions: int) -> list[str]:
    """Distinct symbols for portfolio `index`, spread so each symbol has as many holders."""
    return [symbols[(index + j * (len(symbols) // positions or 1)) % len(symbols)]
            for j in range(positions)]  # fmt: skip


def transfer(
    owner: str, at: datetime, kind: str, legs: list[tuple[str, str, Decimal]], trade: Any
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at,
        "transfer_id": str(uuid.uuid4()),
        "kind": kind,
        "legs": [
            {"account_id": str(uuid.uuid4()), "owner_id": o, "asset": a, "amount": x}
            for o, a, x in legs
        ],
        "trade": trade,
        "reverses_transfer_id": None,
        "metadata": {},
    }


def seed_transfers(portfolios: int, symbols: list[str], positions: int) -> Iterator[dict[str, Any]]:
    """Per customer: a deposit, then one buy per held symbol, in posting-time order."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    notional = (BUY_QUANTITY * BASE_PRICE).quantize(PRICE_STEP)
    for i in range(portfolios):
        owner = str(uuid.UUID(int=(0xB0 << 120) + i + 1))
        yield transfer(
            owner, t0, "deposit", [(owner, "USD", DEPOSIT_USD), (HOUSE, "USD", -DEPOSIT_USD)], None
        )
        for j, symbol in enumerate(holdings_of(i, symbols, positions)):
            legs = [
                (owner, "USD", -notional),
                (HOUSE, "USD", notional),
                (owner, symbol, BUY_QUANTITY),
                (HOUSE, symbol, -BUY_QUANTITY),
            ]
            details = {
                "symbol": symbol,
                "side": "buy",
                "quantity": BUY_QUANTITY,
                "price": BASE_PRICE,
                "notional": notional,
                "fee": D("0"),
                "currency": "USD",
            }
            yield transfer(owner, t0 + timedelta(seconds=j + 1), "trade", legs, details)


def produce_all(bootstrap: str, topic: str, records: Iterator[dict[str, Any]], key: str) -> int:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer(producer_config(bootstrap, {"linger.ms": 20}))
    errors: list[Any] = []
    count = 0

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    for record in records:
        value = codec.encode(topic, record)
        owner = record["legs"][0][key]
        while True:
            try:
                producer.produce(topic, value, str(owner).encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        count += 1
    left = producer.flush(PRODUCE_FLUSH_TIMEOUT_S)
    assert left == 0, f"{left} transfers undelivered"
    assert not errors, f"delivery errors: {errors[:3]}"
    return count


async def seeded_state(admin_url: str) -> tuple[int, int]:
    """(portfolios, nonzero positions of the bench's symbols) stored; (0, 0) before migrations."""
    conn = await asyncpg.connect(admin_url)
    try:
        portfolios = await conn.fetchval("SELECT count(*) FROM portfolio.portfolios")
        positions = await conn.fetchval(
            "SELECT count(*) FROM portfolio.positions WHERE quantity <> 0 AND symbol LIKE 'PB%'"
        )
        return int(portfolios), int(positions)
    except asyncpg.UndefinedTableError:
        return 0, 0
    finally:
        await conn.close()


async def clear_leftovers(admin_url: str) -> None:
    """Every run starts alike: no unsent outbox row from the run before."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("DELETE FROM portfolio.outbox WHERE sent_at IS NULL")
    finally:
        await conn.close()


@dataclass(frozen=True)
class Live:
    """The live publisher's gauges, read from the service's /metrics."""

    leader: bool
    dirty: int
    oldest_s: float


def live_state(url: str) -> Live:
    values = {name: v for name, _, v in harness.metric_samples(url) if name in LIVE_GAUGES}
    return Live(
        values.get("tickertap_portfolio_live_leader", 0.0) >= 1.0,  # shards led
        int(values.get("tickertap_portfolio_live_dirty_portfolios", -1)),
        values.get("tickertap_portfolio_live_oldest_dirty_seconds", 0.0),
    )


def wait_published(url: str, timeout_s: float) -> float:
    """Until the service leads and has published every portfolio it loaded; seconds taken."""
    started = time.monotonic()
    while True:
        live = live_state(url)
        if live.leader and live.dirty == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"live publisher: {live} after {timeout_s} s")
        time.sleep(0.2)


async def count_positions(admin_url: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM portfolio.positions WHERE quantity <> 0")
        )
    finally:
        await conn.close()


async def wait_seeded(
    admin_url: str, url: str, portfolios: int, positions: int, timeout_s: float
) -> float:
    """Until every position is stored and no portfolio waits for its update; seconds taken."""
    conn = await asyncpg.connect(admin_url)
    started = time.monotonic()
    try:
        while True:
            stored = await conn.fetchval(
                "SELECT count(*) FROM portfolio.positions WHERE quantity <> 0"
            )
            live = await asyncio.to_thread(live_state, url)
            if stored >= portfolios * positions and live.leader and live.dirty == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(
                    f"seed: {stored} of {portfolios * positions} positions, {live} after "
                    f"{timeout_s} s"
                )
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


# -- a run -------------------------------------------------------------------------------


@dataclass
class Sample:
    at_s: float
    rss_bytes: int
    lag: int
    unsent: int
    dirty: int
    oldest_dirty_s: float


@dataclass
class RunResult:
    label: str
    prices: int
    feed_s: float
    updates_in_feed: int
    latencies_ms: list[float]
    steady_ms: list[float]  # of the updates from STEADY_AFTER_S into the feed on
    freshness_ms: list[float]
    produced_ms: list[float]  # latency (cause) up to the updates' produce timestamps
    delivery_ms: list[float]  # produce timestamp -> receipt, from STEADY_AFTER_S on
    samples: list[Sample]
    shares: dict[str, float]
    drain_s: float | None  # None: not drained within the bound
    rss_end_bytes: int = 0
    mid: Sample | None = None
    end: Sample | None = None
    startup_publish_s: float = 0.0  # from ready to every loaded portfolio published once

    @property
    def updates_per_s(self) -> float:
        return self.updates_in_feed / self.feed_s if self.feed_s > 0 else 0.0

    @property
    def rss_max_bytes(self) -> int:
        return max((s.rss_bytes for s in self.samples), default=0)

    def growing(self, rate: float) -> bool:
        if self.mid is None or self.end is None:
            return False
        return (
            self.end.lag > self.mid.lag + rate
            or self.end.oldest_dirty_s > self.mid.oldest_dirty_s + 1.0
            or self.end.unsent > self.mid.unsent + 1000
        )


@dataclass
class Feed:
    """What the price producer sent: send time (µs) and symbol by source offset."""

    sent_us: dict[int, int] = field(default_factory=dict)
    symbol_of: dict[int, str] = field(default_factory=dict)
    offsets_by_symbol: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0
    started_us: int = 0
    ended_us: int = 0


class Sampler(threading.Thread):
    """Every second: the service's RSS, the prices not applied yet (sent by the feed minus
    claimed in the service's inbox since the run began; the local broker's watermarks are
    not reliable), unsent outbox rows, and the live publisher's changed portfolios waiting
    for their update and the oldest one's wait (its /metrics)."""

    def __init__(self, stack: mdb.Stack, pid: int, url: str, feed: Feed) -> None:
        super().__init__(daemon=True)
        self.stack, self.pid, self.url, self.feed = stack, pid, url, feed
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()
        self.since = datetime.now(UTC)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the caller
            self.error = exc

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.stack.admin_url)
        try:
            while not self.stop_event.is_set():
                self.samples.append(await self.sample(conn))
                await asyncio.to_thread(self.stop_event.wait, SAMPLE_INTERVAL_S)
        finally:
            await conn.close()

    async def sample(self, conn: asyncpg.Connection) -> Sample:
        at_s = time.monotonic() - self.t0
        sent = len(self.feed.sent_us)
        applied = await conn.fetchval(
            "SELECT count(*) FROM portfolio.inbox WHERE topic = $1 AND processed_at >= $2",
            PRICES,
            self.since,
        )
        live = await asyncio.to_thread(live_state, self.url)
        unsent = await conn.fetchval("SELECT count(*) FROM portfolio.outbox WHERE sent_at IS NULL")
        rss = tree_rss_bytes(self.pid)
        return Sample(at_s, rss, sent - applied, unsent, live.dirty, live.oldest_s)


class UpdateReader(threading.Thread):
    """Raw portfolio.updates.v1 messages from the given offsets (decoded after the run, so
    reading costs the machine little while the service is measured)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.partitions = bootstrap, partitions
        # kept in lists of floats and bytes, which the garbage collector does not track
        # (~800,000 (received, produced, value) tuples a run were walked by each of its full
        # collections): the bench's own CPU, which the service competes with, fell from
        # 24-33 to 22-25 % of a core
        self.received_ms: list[float] = []
        self.produced_ms: list[float] = []
        self.values: list[bytes] = []
        self.stop_event = threading.Event()

    @property
    def messages(self) -> list[tuple[float, float, bytes]]:
        """(received, produce timestamp: ms since the epoch; the value) of each update."""
        return list(zip(self.received_ms, self.produced_ms, self.values, strict=True))

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-updates-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                **paced_fetches(READ_FETCH_WAIT_MS),
            }
        )
        # a fresh broker per run: the topic holds this run's updates only
        consumer.assign(
            [TopicPartition(UPDATES, p, OFFSET_BEGINNING) for p in range(self.partitions)]
        )
        try:
            while not self.stop_event.is_set():
                batch = take_batch(consumer, READ_BATCH_MAX, READ_POLL_S)
                received_ms = time.time_ns() / 1e6
                for message in batch:
                    if message.error() is None:
                        self.received_ms.append(received_ms)
                        self.produced_ms.append(float(message.timestamp()[1]))
                        self.values.append(message.value())
        finally:
            consumer.close()


def feed_prices(
    bootstrap: str,
    symbols: list[str],
    rate: float,
    duration_s: float,
    offset_base: int,
    feed: Feed,
) -> Feed:
    """Publish prices at `rate` for `duration_s`, round-robin over the symbols; each price a
    small step from the last one of its symbol, exchange time now (always the newest)."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer(producer_config(bootstrap, PRODUCER_OVERRIDES))
    last = dict.fromkeys(symbols, BASE_PRICE)

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            feed.errors += 1

    # a feed's producer is long-lived: connected, with the topic's metadata and its
    # idempotent producer id, before the first price (else those wait ~1 s for all three)
    producer.list_topics(PRICES, timeout=PRODUCER_WARMUP_S)
    producer.poll(PRODUCER_WARMUP_S)
    count = int(rate * duration_s)
    started = time.monotonic()
    feed.started_us = time.time_ns() // 1000
    for i in range(count):
        delay_s = started + i / rate - time.monotonic()
        if delay_s > 0:
            producer.poll(delay_s)
        symbol = symbols[i % len(symbols)]
        step = PRICE_STEP if (i // len(symbols)) % 2 == 0 else -PRICE_STEP
        last[symbol] += step
        offset = offset_base + i
        now = datetime.now(UTC)
        record = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": now,
            "symbol": symbol,
            "venue": "BENCH",
            "price": last[symbol],
            "bid": None,
            "ask": None,
            "exchange_ts": now,
            "received_at": now,
            "source_topic": BENCH_SOURCE,
            "source_partition": 0,
            "source_offset": offset,
        }
        value = codec.encode(PRICES, record)
        sent_us = time.time_ns() // 1000
        while True:
            try:
                producer.produce(PRICES, value, symbol.encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        feed.symbol_of[offset] = symbol
        feed.offsets_by_symbol.setdefault(symbol, []).append(offset)
        feed.sent_us[offset] = sent_us  # last: the sampler counts these
    feed.ended_us = time.time_ns() // 1000
    feed.errors += producer.flush(PRODUCE_FLUSH_TIMEOUT_S)
    return feed


@dataclass
class Matched:
    """The updates matched to the prices they carry, each timed at its receipt or its
    produce timestamp (ms since the epoch)."""

    causes: list[float] = field(default_factory=list)  # cause latencies, ms
    freshness: list[float] = field(default_factory=list)  # ms
    in_feed: int = 0  # updates timed during the feed
    steady: list[float] = field(default_factory=list)  # causes from STEADY_AFTER_S on
    timed: list[tuple[float, float]] = field(default_factory=list)  # (time, cause)


def match_updates(messages: list[tuple[float, float, bytes]], feed: Feed, at: int = 0) -> Matched:
    """The updates timed at their receipt (`at` 0) or their produce timestamps (1)."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    seen: dict[tuple[str, str], int] = {}  # (portfolio, symbol) -> offset last carried
    matched = Matched()
    for message in sorted(messages, key=lambda m: m[at]):
        ts_ms, value = message[at], message[2]
        if feed.started_us <= ts_ms * 1000 <= feed.ended_us:
            matched.in_feed += 1
        record = codec.decode(value)
        oldest_us, newest_us = None, None
        for position in record["positions"]:
            offset = position["price_source_offset"]
            if position["price_source_topic"] != BENCH_SOURCE or offset not in feed.sent_us:
                continue
            symbol = position["symbol"]
            key = (record["portfolio_id"], symbol)
            previous = seen.get(key, -1)
            seen[key] = offset
            newest_us = max(newest_us or 0, feed.sent_us[offset])
            if offset <= previous:
                continue
            offsets = feed.offsets_by_symbol[symbol]
            first_new = offsets[bisect.bisect_right(offsets, previous)]
            sent = feed.sent_us[first_new]
            oldest_us = sent if oldest_us is None else min(oldest_us, sent)
        if oldest_us is not None:
            cause = ts_ms - oldest_us / 1000
            matched.causes.append(cause)
            matched.timed.append((ts_ms, cause))
            if ts_ms * 1000 >= feed.started_us + STEADY_AFTER_S * 1e6:
                matched.steady.append(cause)
        if newest_us is not None:
            matched.freshness.append(ts_ms - newest_us / 1000)
    return matched


def delivery_ms(messages: list[tuple[float, float, bytes]], feed: Feed) -> list[float]:
    """From each update's produce timestamp to its receipt (the producer's linger, the
    broker, the reader's paced fetch), for the updates produced from STEADY_AFTER_S into
    the feed to its end."""
    steady_from_ms = feed.started_us / 1000 + STEADY_AFTER_S * 1000
    return [
        received - produced
        for received, produced, _ in messages
        if steady_from_ms <= produced <= feed.ended_us / 1000
    ]


class GcPauses:
    """This script's own garbage collections (start, ms since the epoch; duration, ms;
    generation), while recording: a collection holds every thread of the script, the
    update reader's receipts too."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._started = 0.0
        self._recording = False

    def start(self) -> None:
        self._recording = True
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._recording:
            gc.callbacks.remove(self._callback)
            self._recording = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.time_ns() / 1e6
        elif self._recording:
            now = time.time_ns() / 1e6
            self.pauses.append((self._started, now - self._started, info["generation"]))


def print_timeline(
    matched: Matched, feed: Feed, messages: list[tuple[float, float, bytes]]
) -> None:
    """The cause latency of the updates received in each half second of the feed (and of
    its drain), and their delivery (produce timestamp to receipt): where in a run its tail
    comes from."""

    def slot_of(received_ms: float) -> int:
        return int((received_ms * 1000 - feed.started_us) // (TIMELINE_SLOT_S * 1e6))

    slots: dict[int, list[float]] = {}
    for received_ms, latency_ms in matched.timed:
        slots.setdefault(slot_of(received_ms), []).append(latency_ms)
    deliveries: dict[int, list[float]] = {}
    for received_ms, produced_ms, _ in messages:
        deliveries.setdefault(slot_of(received_ms), []).append(received_ms - produced_ms)
    for slot, latencies in sorted(slots.items()):
        p50, p99 = mdb.percentile(latencies, 50), mdb.percentile(latencies, 99)
        delivered = deliveries.get(slot, [0.0])
        d50, d99 = mdb.percentile(delivered, 50), mdb.percentile(delivered, 99)
        print(
            f"    {slot * TIMELINE_SLOT_S:5.1f} s  {len(latencies):6,} updates"
            f"  p50 {p50:5.0f} ms  p99 {p99:5.0f} ms  delivery p50 {d50:4.0f} p99 {d99:4.0f} ms"
        )


def feed_s_of(feed: Feed) -> float:
    return (feed.ended_us - feed.started_us) / 1e6


def drained(sample: Sample) -> bool:
    return sample.lag == 0 and sample.unsent == 0 and sample.dirty == 0


def run_once(
    tmp: Path,
    symbols: list[str],
    args: argparse.Namespace,
    run: int,
    partitions: int,
) -> RunResult:
    stack, secret_file = restart_stack(tmp)
    held = asyncio.run(count_positions(stack.admin_url))
    assert held == args.portfolios * args.positions, f"{held} positions stored after restart"
    asyncio.run(clear_leftovers(stack.admin_url))
    harness.settle(QUIET_WAIT_S, f"portfolio run {run}")
    log = stack.cfg.logs_dir / "bench-portfolio.log"
    with portfolio_service(stack, secret_file, log, args.publisher_processes) as proc:
        url = service_url(stack)
        startup_publish_s = wait_published(url, STARTUP_PUBLISH_TIMEOUT_S)
        reader = UpdateReader(stack.bootstrap, partitions)
        reader.start()
        feed = Feed()
        sampler = Sampler(stack, proc.pid, url, feed)
        shares = mdb.Shares(
            {
                "postgres": stack.postgres_pid,
                "broker": stack.broker_pid,
                "service": proc.pid,
            }
        )
        bench_cpu0 = time.process_time()  # this script (producer, reader, sampler) alone
        sampler.start()
        offset_base = time.time_ns() // 1000  # unique per run: never matches an old price
        # what this script holds already (modules, the stack's clients, the seed's and earlier
        # runs' figures) out of the collector's sight: each full collection walked all of it,
        # ~100-150 ms every ~3 s during the feed, holding the reader's receipts meanwhile
        gc.freeze()
        gc_pauses = GcPauses()
        gc_pauses.start()
        feed_prices(stack.bootstrap, symbols, args.rate, args.duration_s, offset_base, feed)
        cpu = shares.stop()
        cpu["bench%"] = 100.0 * (time.process_time() - bench_cpu0) / max(feed_s_of(feed), 1e-6)
        cpu["other%"] = max(0.0, cpu["other%"] - cpu["bench%"])
        feed_s = (feed.ended_us - feed.started_us) / 1e6
        feed_end_s = time.monotonic() - sampler.t0
        drain_started = time.monotonic()
        drain_s = None
        while time.monotonic() - drain_started < args.drain_timeout_s:
            if sampler.error is not None:
                raise sampler.error
            latest = sampler.samples[-1] if sampler.samples else None
            if latest is not None and latest.at_s > feed_end_s and drained(latest):
                drain_s = time.monotonic() - drain_started
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the last updates reach the reader
        sampler.stop_event.set()
        reader.stop_event.set()
        sampler.join(READER_JOIN_TIMEOUT_S)
        reader.join(READER_JOIN_TIMEOUT_S)
        gc_pauses.stop()
        gc.unfreeze()
        rss_end = tree_rss_bytes(proc.pid)
    assert feed.errors == 0, f"{feed.errors} prices were not delivered"
    messages = reader.messages
    received = match_updates(messages, feed)
    if args.timeline:
        print(f"  run #{run}: cause latency by the time each update was received")
        print_timeline(received, feed, messages)
        for at_ms, took_ms, generation in gc_pauses.pauses:
            if took_ms >= GC_PAUSE_SHOWN_MS:
                at_s = (at_ms * 1000 - feed.started_us) / 1e6
                print(f"    {at_s:5.1f} s  this script's gc (gen {generation}) {took_ms:.0f} ms")
    # counted by produce timestamp: the start's updates may be received after the feed began
    produced = match_updates(messages, feed, at=1)
    during = [s for s in sampler.samples if s.at_s <= feed_end_s]
    mid = min(during, key=lambda s: abs(s.at_s - feed_end_s / 2), default=None)
    end = during[-1] if during else None
    return RunResult(
        f"run #{run}",
        len(feed.sent_us),
        feed_s,
        produced.in_feed,
        received.causes,
        received.steady,
        received.freshness,
        produced.causes,
        delivery_ms(messages, feed),
        sampler.samples,
        cpu,
        drain_s,
        rss_end,
        mid,
        end,
        startup_publish_s,
    )


# -- the report ----------------------------------------------------------------------------


def describe(s: Sample | None) -> str:
    if s is None:
        return "-"
    return (
        f"lag {s.lag}, outbox {s.unsent}, dirty {s.dirty} (oldest {s.oldest_dirty_s:.1f} s)"
        f" at {s.at_s:.0f} s"
    )


def print_report(results: list[RunResult], args: argparse.Namespace, seed_s: float) -> None:
    pct = mdb.percentile
    mib = 1024 * 1024
    print(
        f"\nportfolio-calculation: {args.portfolios:,} portfolios x {args.positions} positions "
        f"over {args.symbols} symbols (seeded in {seed_s:.0f} s); prices published directly "
        f"at {args.rate:,.0f}/s for {args.duration_s:.0f} s; median of {len(results)} run(s)"
    )

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    p50 = med([pct(r.latencies_ms, 50) for r in results])
    p99 = med([pct(r.latencies_ms, 99) for r in results])
    print(f"  price publish -> update (cause)  p50 {p50:.0f} ms, p99 {p99:.0f} ms (target < 500)")
    p50 = med([pct(r.steady_ms, 50) for r in results])
    p99 = med([pct(r.steady_ms, 99) for r in results])
    print(f"    from {STEADY_AFTER_S:.0f} s into the feed on   p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    p50 = med([pct(r.produced_ms, 50) for r in results])
    p99 = med([pct(r.produced_ms, 99) for r in results])
    print(f"    up to the produce timestamp    p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    p50 = med([pct(r.delivery_ms, 50) for r in results])
    p99 = med([pct(r.delivery_ms, 99) for r in results])
    print(f"  update produced -> received      p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    p50 = med([pct(r.freshness_ms, 50) for r in results])
    p99 = med([pct(r.freshness_ms, 99) for r in results])
    print(f"  newest price -> update (fresh)   p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  updates published per second     {med([r.updates_per_s for r in results]):,.0f}")
    rss = med([r.rss_max_bytes / mib for r in results])
    print(f"  service RSS                      max {rss:.0f} MiB")
    startup = med([r.startup_publish_s for r in results])
    print(f"  every portfolio published at start  {startup:.1f} s after ready")
    growing = [r.label for r in results if r.growing(args.rate)]
    print(f"  backlog grows                    {'yes: ' + ', '.join(growing) if growing else 'no'}")
    print("\n  run      prices  updates/s  p50 ms  p99 ms  max ms  fresh p50/p99  RSS MiB  drain s")
    for r in results:
        drain = f"{r.drain_s:.1f}" if r.drain_s is not None else f">{args.drain_timeout_s:.0f}"
        print(
            f"  {r.label:<7} {r.prices:7,} {r.updates_per_s:10,.0f} {pct(r.latencies_ms, 50):7.0f}"
            f" {pct(r.latencies_ms, 99):7.0f} {max(r.latencies_ms, default=float('nan')):7.0f}"
            f"  {pct(r.freshness_ms, 50):6.0f}/{pct(r.freshness_ms, 99):<6.0f}"
            f" {r.rss_max_bytes / mib:8.0f} {drain:>8}"
        )
        shares = "  ".join(f"{k} {v:.0f}" for k, v in sorted(r.shares.items()))
        print(f"          CPU (% of one core): {shares}")
        last = r.samples[-1] if r.samples else None
        if last is not None and last.lag > 0:
            print(
                f"          {r.prices - last.lag:,} of {r.prices:,} prices applied by the end of"
                " the drain: the percentiles cover those only (the rest would wait longer)"
            )
        print(f"          middle: {describe(r.mid)}")
        print(f"          end:    {describe(r.end)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portfolios", type=int, default=10_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--positions", type=int, default=3, help="symbols held per portfolio")
    parser.add_argument("--rate", type=float, default=1000.0, help="prices per second")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--publisher-processes",
        type=int,
        help="TICKERTAP_UPDATE_PUBLISHER_PROCESSES for the service (default: the stack's)",
    )
    parser.add_argument("--seed-timeout-s", type=float, default=SEED_TIMEOUT_S_DEFAULT)
    parser.add_argument("--drain-timeout-s", type=float, default=DRAIN_TIMEOUT_S_DEFAULT)
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print each run's cause latency per half second of the feed",
    )
    parser.add_argument(
        "--reuse-seed",
        action="store_true",
        help="keep the portfolios a previous invocation seeded when they match the arguments",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.portfolios <= PORTFOLIOS_MAX or not 1 <= args.symbols <= SYMBOLS_MAX:
        parser.error(f"--portfolios in 1..{PORTFOLIOS_MAX}, --symbols in 1..{SYMBOLS_MAX}")
    if not 1 <= args.positions <= args.symbols or not 1 <= args.runs <= RUNS_MAX:
        parser.error(f"--positions in 1..--symbols, --runs in 1..{RUNS_MAX}")
    if not 0 < args.rate <= RATE_MAX or not 0 < args.duration_s <= DURATION_S_MAX:
        parser.error(f"--rate in (0, {RATE_MAX:.0f}], --duration-s in (0, {DURATION_S_MAX:.0f}]")
    if not 0 < args.seed_timeout_s <= SEED_TIMEOUT_S_MAX or not 0 < args.drain_timeout_s <= 600:
        parser.error(
            f"--seed-timeout-s in (0, {SEED_TIMEOUT_S_MAX:.0f}], --drain-timeout-s in (0, 600]"
        )

    symbols = symbol_names(args.symbols)
    with tempfile.TemporaryDirectory() as tmp_dir, bench_stack(Path(tmp_dir)):
        tmp = Path(tmp_dir)
        stack, secret_file = restart_stack(tmp)  # a fresh broker: no stuck group from before
        cfg = stack.cfg
        partitions = next(t.partitions for t in load_topics() if t.name == UPDATES)
        log = cfg.logs_dir / "bench-portfolio.log"
        seed_s = 0.0
        seeded = asyncio.run(seeded_state(stack.admin_url))
        if args.reuse_seed and seeded == (args.portfolios, args.portfolios * args.positions):
            print(f"reusing the {args.portfolios:,} seeded portfolios", flush=True)
        else:
            with portfolio_service(stack, secret_file, log):  # migrates, then consumes the seed
                asyncio.run(reset_portfolio_state(stack.admin_url))
                print(
                    f"seeding {args.portfolios:,} portfolios x {args.positions} positions ...",
                    flush=True,
                )
                started = time.monotonic()
                sent = produce_all(
                    stack.bootstrap,
                    TRANSFERS,
                    seed_transfers(args.portfolios, symbols, args.positions),
                    "owner_id",
                )
                asyncio.run(
                    wait_seeded(
                        stack.admin_url,
                        service_url(stack),
                        args.portfolios,
                        args.positions,
                        args.seed_timeout_s,
                    )
                )
                seed_s = time.monotonic() - started
                print(f"  {sent:,} transfers applied in {seed_s:.0f} s", flush=True)
        results = []
        for run in range(1, args.runs + 1):
            results.append(run_once(tmp, symbols, args, run, partitions))
            r = results[-1]
            print(
                f"  {r.label}: {len(r.latencies_ms):,} updates matched, "
                f"p99 {mdb.percentile(r.latencies_ms, 99):.0f} ms, {r.updates_per_s:,.0f}/s",
                flush=True,
            )
    print_report(results, args, seed_s)
    if args.json:
        figures = [
            {
                "label": r.label,
                "prices": r.prices,
                "updates_per_s": r.updates_per_s,
                "received_p50_ms": mdb.percentile(r.latencies_ms, 50),
                "received_p99_ms": mdb.percentile(r.latencies_ms, 99),
                "steady_p50_ms": mdb.percentile(r.steady_ms, 50),
                "steady_p99_ms": mdb.percentile(r.steady_ms, 99),
                "produced_p99_ms": mdb.percentile(r.produced_ms, 99),
                "fresh_p50_ms": mdb.percentile(r.freshness_ms, 50),
                "fresh_p99_ms": mdb.percentile(r.freshness_ms, 99),
                "rss_max_bytes": r.rss_max_bytes,
                "drain_s": r.drain_s,
                "startup_publish_s": r.startup_publish_s,
                "shares": r.shares,
                "middle": r.mid.__dict__ if r.mid else None,
                "end": r.end.__dict__ if r.end else None,
                "growing": r.growing(args.rate),
            }
            for r in results
        ]
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
