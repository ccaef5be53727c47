"""Restart correctness: SIGKILL the ingest worker at random points, restart it, and compare.

A deterministic stream (the feed simulator, with bad ticks, repeated ticks and late ticks) is
published to topics of this test's own. A service process of its own ingests it (the real
`python -m tickertap.marketdata`, with the stack's Postgres, broker and OpenBao) and is
killed with SIGKILL three times, each at a random moment of its progress, then restarted.
In the end the bars in Postgres equal the bars the pure domain computes offline from the
same messages, and every tick is in exactly one bar, or dead-lettered exactly once (one
outbox row each), or dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_testkit import (
    Api,
    create_topics,
    fresh_symbol,
    now_us,
    produce,
    read_topic,
)

from tickertap.marketdata import domain as d
from tickertap.marketdata.feed import SymbolSpec, simulate
from tickertap.marketdata.repository import to_us
from tickertap.marketdata.worker import TickDecoder
from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging.headers import decode_headers

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
TICKS = 20_000
SYMBOLS = 12
KILLS = 3
PARTITIONS = 6
WORKER_PORT_OFFSET = 57  # from the service's port: an unused one of the stack's block
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 90.0
POLICY = d.IngestPolicy(future_us_max=5_000_000, age_us_max=3600_000_000, grace_us=5_000_000)


def worker_port(stack: Any) -> int:
    """A port of the stack's block that nothing else uses (below the ephemeral range, so no
    outgoing connection holds it)."""
    port = urlsplit(stack.service_url("market-data-ingest")).port
    assert port is not None
    return port + WORKER_PORT_OFFSET


@pytest.fixture
async def db(stack: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.pg_admin_url)
    yield conn
    await conn.close()


@pytest.fixture
async def api(stack: Any, mint_token: Any) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(
        base_url=stack.service_url("market-data-ingest"), timeout=10
    ) as client:
        yield Api(client, mint_token)


def stream(symbols: list[str], start_us: int) -> list[dict[str, Any]]:
    """Feed ticks over ~4 minutes of exchange time, plus repeats and late ticks, with the
    source's sequence numbered in publishing order (repeats keep their number)."""
    specs = [
        SymbolSpec(sym, Decimal(50 + 10 * i), 2, Decimal(4), Decimal(3))
        for i, sym in enumerate(symbols)
    ]
    rng = random.Random(11)
    base = list(
        simulate(
            specs,
            seed=7,
            source_id="restart",
            start_us=start_us,
            step_us=10_000,
            count=TICKS,
            bad_ratio=Decimal("0.02"),
        )
    )
    out: list[dict[str, Any]] = []
    for record in base:
        roll = rng.random()
        if roll < 0.005 and out:  # a tick again, as a reconnecting feed sends it
            out.append(dict(rng.choice(out[-50:])))
        elif roll < 0.01:  # a straggler from 90 s before: late once its minute closed
            late = dict(record)
            late["exchange_ts"] = record["exchange_ts"] - 90_000_000
            late["source_seq"] = len(out) + 1
            out.append(late)
        record = dict(record)
        record["source_seq"] = len(out) + 1
        out.append(record)
    return out


class Worker:
    """One service process ingesting the test's topics; killed or stopped by its PID."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickertap.marketdata"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def worker_env(stack: Any, approle_secret_id: Any, tmp_path: Path) -> dict[str, str]:
    secret_file = tmp_path / "market.secret_id"
    secret_file.write_text(approle_secret_id("market"))
    secret_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    env.update(
        TICKERTAP_ENVIRONMENT="test",
        TICKERTAP_HTTP_HOST="127.0.0.1",
        TICKERTAP_HTTP_PORT=str(worker_port(stack)),
        TICKERTAP_DB_HOST=stack.pg_host,
        TICKERTAP_DB_PORT=str(stack.pg_port),
        TICKERTAP_DB_NAME=stack.database,
        TICKERTAP_DB_SCHEMA="market",
        TICKERTAP_KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap,
        TICKERTAP_VAULT_ADDR=stack.vault_addr,
        TICKERTAP_VAULT_ROLE="market",
        TICKERTAP_VAULT_ROLE_ID=stack.role_id("market"),
        TICKERTAP_VAULT_SECRET_ID_FILE=str(secret_file),
        TICKERTAP_SCHEMAS_DIR=str(ROOT / "schemas" / "avro"),
        TICKERTAP_AUTH_JWKS_FILE=str(Path(stack.secrets_dir).parent / "dev-jwks.json"),
        TICKERTAP_AUTH_ISSUER="tickertap-local",
        TICKERTAP_INGEST_BATCH_MAX="200",  # many batches: many places to be killed at
        TICKERTAP_BAR_GRACE_S="5",
        TICKERTAP_TICK_FUTURE_S_MAX="5",
        TICKERTAP_TICK_AGE_S_MAX="3600",
        PYTHONUNBUFFERED="1",
    )
    return env


async def progress(db: asyncpg.Connection, topic: str) -> int:
    value = await db.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM market.ingest_partitions WHERE topic = $1",
        topic,
    )
    return int(value)


async def wait_progress(
    db: asyncpg.Connection, topic: str, at_least: int, worker: Worker, timeout_s: float
) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        done = await progress(db, topic)
        if done >= at_least:
            return done
        assert worker.alive(), f"the worker exited; see {worker.log_path}"
        assert time.monotonic() < deadline, f"no progress to {at_least} in {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_bars_survive_sigkill(
    stack: Any, api: Api, db: asyncpg.Connection, worker_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = fresh_symbol("R")[:7]
    base = f"rt{prefix.lower()}"
    ticks_topic, prices_topic, bars_topic = (
        f"{base}.ticks.v1",
        f"{base}.prices.v1",
        f"{base}.bars.v1",
    )
    dlq_topic = f"{base}.ticks.dlq.v1"
    create_topics(stack.kafka_bootstrap, [ticks_topic], PARTITIONS)
    create_topics(stack.kafka_bootstrap, [prices_topic, bars_topic, dlq_topic], 1)
    symbols = [f"{prefix}{i:02d}" for i in range(SYMBOLS)]
    for symbol in symbols:
        await api.instrument(symbol)

    received_ms = now_us() // 1000
    start_us = received_ms * 1000 - 300_000_000  # the stream ends ~1 minute before now
    records = stream(symbols, start_us)
    produce(stack.kafka_bootstrap, ticks_topic, records, timestamp_ms=received_ms)

    # what the broker holds, in partition order: the offline reference's input
    messages = read_topic(stack.kafka_bootstrap, ticks_topic, lambda ms: len(ms) >= len(records))
    assert len(messages) == len(records)
    decoder = TickDecoder(AvroCodec(load_schemas(find_schemas_dir())))
    ticks = sorted(
        (
            decoder.decode(m.value(), m.partition(), m.offset(), m.timestamp()[1] * 1000)
            for m in messages
        ),
        key=lambda t: (t.partition, t.offset),
    )
    instruments = {s: d.Instrument(s, "USD", 2) for s in symbols}
    expected = d.ingest([ticks], instruments, POLICY)
    assert expected.dead_letters  # every kind of outcome is exercised
    assert expected.duplicates
    assert expected.closed
    assert any(reason == "late" for _, _, reason in expected.dead_letters)

    worker_env.update(
        TICKERTAP_INGEST_TICKS_TOPIC=ticks_topic,
        TICKERTAP_INGEST_PRICES_TOPIC=prices_topic,
        TICKERTAP_INGEST_BARS_TOPIC=bars_topic,
        TICKERTAP_INGEST_GROUP_ID=f"{base}.ingest",
    )
    worker = Worker(worker_env, tmp_path / "worker.log")
    seed = int(os.environ.get("TICKERTAP_TEST_SEED") or random.randrange(2**32))
    print(f"kill points from seed {seed} (TICKERTAP_TEST_SEED={seed} replays them)")
    rng = random.Random(seed)
    total = len(records)
    try:
        for kill in range(KILLS):
            worker.start()
            target = rng.randint(
                total * (kill + 1) // (KILLS + 2), total * (kill + 2) // (KILLS + 2)
            )
            reached = await wait_progress(db, ticks_topic, target, worker, START_TIMEOUT_S)
            await asyncio.sleep(rng.random() * 0.05)  # somewhere inside a batch, or between two
            worker.kill()
            print(f"kill {kill + 1}: SIGKILL after {reached} of {total} ticks")
        worker.start()
        await wait_progress(db, ticks_topic, total, worker, RUN_TIMEOUT_S)
    finally:
        worker.stop()

    # batches are fenced on the positions they start from; a refused one (a retried commit
    # that had in fact succeeded) reloads the state and changes nothing: checked below

    # bars: what the worker persisted (closed and still open) equals the offline result
    rows = await db.fetch(
        "SELECT symbol, window_start, open, high, low, close, volume, notional, tick_count,"
        " closed FROM market.bars_1m WHERE symbol = ANY($1::text[])",
        symbols,
    )
    persisted = sorted(
        (
            r["symbol"],
            to_us(r["window_start"]),
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
            r["notional"],
            r["tick_count"],
            r["closed"],
        )
        for r in rows
    )
    offline = sorted(
        [
            (b.symbol, b.start_us, b.open, b.high, b.low, b.close, b.volume, b.notional,
             b.tick_count, True)
            for b in expected.closed
        ]
        + [
            (b.symbol, b.start_us, b.open, b.high, b.low, b.close, b.volume, b.notional,
             b.tick_count, False)
            for b in expected.windows.open_bars.values()
        ]
    )  # fmt: skip
    assert persisted == offline

    # the latest price per symbol: the accepted tick with the latest exchange time
    rejected = {(p, o) for p, o, _ in expected.dead_letters} | set(expected.duplicates)
    latest: dict[str, d.Tick] = {}
    for t in ticks:
        if (t.partition, t.offset) not in rejected:
            prior = latest.get(t.symbol)
            if prior is None or (t.exchange_us, t.offset) >= (prior.exchange_us, prior.offset):
                latest[t.symbol] = t
    prices = await db.fetch(
        "SELECT symbol, price, source_partition, source_offset FROM market.prices"
        " WHERE symbol = ANY($1::text[])",
        symbols,
    )
    assert {
        (r["symbol"], r["price"], r["source_partition"], r["source_offset"]) for r in prices
    } == {(t.symbol, t.price, t.partition, t.offset) for t in latest.values()}

    # every tick once: in a bar, or one dead-letter row, or a dropped duplicate
    letters = await db.fetch("SELECT headers FROM market.outbox WHERE topic = $1", dlq_topic)
    dead = sorted(
        (
            int(h["x-dlq-source-partition"]),
            int(h["x-dlq-source-offset"]),
            h["x-dlq-reason"],
        )
        for h in (_headers(row["headers"]) for row in letters)
    )
    assert dead == sorted(expected.dead_letters)
    in_bars = sum(r["tick_count"] for r in rows)
    assert in_bars + len(dead) + len(expected.duplicates) == total
    bar_events = await db.fetchval(
        "SELECT count(*) FROM market.outbox WHERE topic = $1", bars_topic
    )
    assert bar_events == len(expected.closed)

    # and the relay published the dead letters with the original bytes
    published = read_topic(stack.kafka_bootstrap, dlq_topic, lambda ms: len(ms) >= len(dead))
    by_position = {(m.partition(), m.offset()): m.value() for m in messages}
    seen = set()
    for m in published:
        h = decode_headers(m.headers())
        position = (int(h["x-dlq-source-partition"]), int(h["x-dlq-source-offset"]))
        assert m.value() == by_position[position]
        seen.add(position)
    assert seen == {(p, o) for p, o, _ in dead}


def _headers(value: Any) -> dict[str, str]:
    return value if isinstance(value, dict) else dict(json.loads(value))
