"""Market-data ingest throughput and latency, against a baseline measured in the same run.

On the bench profile's stack (infrastructure only; ports 274xx; started here if it is not up
and stopped at the end if so):

1. pre-produce `--ticks` (1,000,000) simulated ticks of `--symbols` (100) symbols into a fresh
   copy of the ticks topic (`bench.ticks-<tag>.v1`, 6 partitions), as the feed simulator makes
   them (`tickertap.marketdata.feed`, the project's codec), stamped with the time they are sent;
2. `--runs` times, interleaved:
   (a) the baseline: one confluent-kafka consumer (a process of its own) reading every
       partition from the start, decoding each tick (fastavro, after the 10-byte header) and
       producing a normalized price record, nothing else;
   (b) the ingest worker: the market-data-ingest service as `make run` starts it (one
       process, every validation rule on), from empty worker state (its tables but the
       instruments truncated), until every tick's offset is stored with its bars in Postgres
       (prices are published before that commit, so they are out too);
3. latency: the service on a second fresh topic, ticks sent at `--latency-rate` for
   `--latency-duration-s`; for each price record published, its Kafka timestamp minus the
   moment the tick it carries (source partition and offset) was handed to the producer.

Prints ticks/s (median of the runs, then each run), the worker/baseline ratio, CPU shares
(percent of one core: worker or baseline process, Postgres, broker, the rest of the machine),
a check that the persisted bars count every tick once, and the p50/p99 latency. Bounded: the
ticks, each run (`--run-timeout-s`) and every process start and stop have limits.

    .venv/bin/python tests/bench/marketdata_bench.py --runs 3
    .venv/bin/python tests/bench/marketdata_bench.py --ticks 200000 --runs 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "deploy" / "local"))
os.environ["TICKERTAP_PROFILE"] = "bench"  # before config reads it

import asyncpg  # noqa: E402
import devkeys  # noqa: E402
import harness  # noqa: E402
import hvac  # noqa: E402
from config import SERVICES, StackConfig  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from stack import service_env  # noqa: E402

from tickertap.marketdata.feed import SymbolSpec, default_symbols, simulate_labeled  # noqa: E402
from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas  # noqa: E402
from tickertap.messaging.kafka import producer_config  # noqa: E402

TICKS_SCHEMA = "marketdata.ticks.v1"
PRICES_SCHEMA = "marketdata.prices.v1"
PARTITIONS = 6
TICKS_MAX = 10_000_000
SYMBOLS_MAX = 1000
RUNS_MAX = 10
SEED = 20261126
PRODUCE_STEP_US = 10  # the simulated clock's step; wall time replaces it when sent
PRODUCER_OVERRIDES = {"linger.ms": 20, "batch.num.messages": 10_000}
PRODUCE_FLUSH_TIMEOUT_S = 120.0
CONSUME_BATCH_MAX = 5000
SERVICE_READY_TIMEOUT_S = 90.0
SERVICE_STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S_DEFAULT = 300.0
PROGRESS_POLL_S = 0.1
LATENCY_RATE_DEFAULT = 2000.0
LATENCY_DURATION_S_DEFAULT = 10.0
LATENCY_DRAIN_S = 20.0  # for the last prices after the paced ticks
HTTP_TIMEOUT_S = 5.0
QUIET_WAIT_S = 30.0
BAD_RATIO = Decimal("0.001")  # a few deliberately bad ticks: every rule runs, DLQ included


# -- topics and ticks -------------------------------------------------------------------------


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names], operation_timeout=10)
    for future in futures.values():
        future.result(timeout=30)


def topic_set(tag: str) -> dict[str, str]:
    """Fresh topics named like the real ones (the worker derives the DLQ's name)."""
    return {
        "ticks": f"bench.ticks-{tag}.v1",
        "dlq": f"bench.ticks-{tag}.dlq.v1",
        "prices": f"bench.prices-{tag}.v1",
        "bars": f"bench.bars-{tag}.v1",
    }


@dataclass
class Produced:
    """What a producer run put where: end offsets per partition, send times (µs) by
    (partition, offset) when asked for, and how many ticks were deliberately bad."""

    count: int = 0
    bad: int = 0
    ends: dict[int, int] = field(default_factory=dict)
    sent_us: dict[tuple[int, int], int] = field(default_factory=dict)
    errors: int = 0


def produce_ticks(
    bootstrap: str,
    topic: str,
    symbols: list[SymbolSpec],
    count: int,
    *,
    source_id: str,
    rate_per_s: float | None = None,
    keep_send_times: bool = False,
) -> Produced:
    """Send `count` simulated ticks, stamped with the wall clock; paced when `rate_per_s`."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer(producer_config(bootstrap, PRODUCER_OVERRIDES))
    out = Produced()

    def delivered(error: Any, message: Any, sent_us: int = 0) -> None:
        if error is not None:
            out.errors += 1
            return
        partition, offset = message.partition(), message.offset()
        out.ends[partition] = max(out.ends.get(partition, 0), offset + 1)
        if sent_us:
            out.sent_us[(partition, offset)] = sent_us

    started = time.monotonic()
    ticks = simulate_labeled(
        symbols,
        seed=SEED,
        source_id=source_id,
        start_us=time.time_ns() // 1000,
        step_us=PRODUCE_STEP_US,
        count=count,
        bad_ratio=BAD_RATIO,
    )
    for i, (tick, bad_kind) in enumerate(ticks):
        if rate_per_s:
            delay_s = started + i / rate_per_s - time.monotonic()
            if delay_s > 0:
                producer.poll(delay_s)
        out.bad += bad_kind is not None
        now_us = time.time_ns() // 1000
        tick["exchange_ts"] += now_us - tick["occurred_at"]  # keeps a far-future offset
        tick["occurred_at"] = now_us
        value = codec.encode(TICKS_SCHEMA, tick, topic=topic)
        on_delivery = delivered
        if keep_send_times:
            on_delivery = functools.partial(_with_time, delivered, now_us)
        while True:
            try:
                producer.produce(topic, value, tick["symbol"].encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        out.count += 1
    left = producer.flush(PRODUCE_FLUSH_TIMEOUT_S)
    out.errors += left
    assert out.errors == 0, f"{out.errors} ticks were not delivered"
    return out


def _with_time(delivered: Any, sent_us: int, error: Any, message: Any) -> None:
    delivered(error, message, sent_us)


# -- (a) the baseline: consume, decode, produce a normalized record ---------------------------


def strip_logical_types(node: Any) -> Any:
    """The schema with its logical types removed: decimals stay bytes, times integers."""
    if isinstance(node, list):
        return [strip_logical_types(n) for n in node]
    if isinstance(node, dict):
        if "logicalType" in node and node.get("type") in ("bytes", "long", "int", "string"):
            return node["type"]
        return {k: strip_logical_types(v) for k, v in node.items()}
    return node


def baseline_child(bootstrap: str, topic: str, out_topic: str, count: int) -> dict[str, float]:
    """Runs in its own process: the floor a worker is compared with. Decodes the way the
    worker's fast path does (the schema without logical types, decimals made Decimal from
    their unscaled bytes) and writes one price record per tick, decimals passed through."""
    import fastavro

    schemas = load_schemas(find_schemas_dir())
    reader = fastavro.parse_schema(strip_logical_types(json.loads(schemas.get(TICKS_SCHEMA).text)))
    prices_schema = schemas.get(PRICES_SCHEMA)
    writer = fastavro.parse_schema(strip_logical_types(json.loads(prices_schema.text)))
    header = b"\xc3\x01" + prices_schema.fingerprint
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-baseline-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    producer = Producer(producer_config(bootstrap, PRODUCER_OVERRIDES))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen = 0
    first = None
    cpu0 = time.process_time()
    deadline = time.monotonic() + RUN_TIMEOUT_S_DEFAULT
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(CONSUME_BATCH_MAX, 0.5):
            if message.error() is not None:
                continue
            if first is None:
                first = time.monotonic()
            body = io.BytesIO(message.value())
            body.seek(10)
            tick = fastavro.schemaless_reader(body, reader, None)
            for name in ("price", "size"):  # what decoding means: exact Decimals
                Decimal(int.from_bytes(tick[name], "big", signed=True)).scaleb(-18)
            record = {
                "event_id": str(uuid.uuid4()),
                "occurred_at": tick["occurred_at"],
                "symbol": tick["symbol"],
                "venue": tick["venue"],
                "price": tick["price"],
                "bid": tick["bid"],
                "ask": tick["ask"],
                "exchange_ts": tick["exchange_ts"],
                "received_at": message.timestamp()[1] * 1000,
                "source_topic": topic,
                "source_partition": message.partition(),
                "source_offset": message.offset(),
            }
            out = io.BytesIO()
            out.write(header)
            fastavro.schemaless_writer(out, writer, record)
            while True:
                try:
                    producer.produce(out_topic, out.getvalue(), message.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            seen += 1
    producer.flush(PRODUCE_FLUSH_TIMEOUT_S)
    end = time.monotonic()
    consumer.close()
    wall_s = end - (first or end)
    return {"ticks": seen, "wall_s": wall_s, "cpu_s": time.process_time() - cpu0}


@dataclass
class RunResult:
    label: str
    ticks: int
    wall_s: float
    shares: dict[str, float]
    cpu_s: float  # the measured process's CPU over the measured ticks
    check: str = ""

    @property
    def ticks_per_s(self) -> float:
        return self.ticks / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ticks_per_cpu_s(self) -> float:
        """Less sensitive to a busy machine than ticks/s: the work per tick, inverted."""
        return self.ticks / self.cpu_s if self.cpu_s > 0 else 0.0


def run_baseline(stack: Stack, topics: dict[str, str], count: int, run: int) -> RunResult:
    out_topic = f"bench.baseline-{uuid.uuid4().hex[:8]}.v1"
    create_topics(stack.bootstrap, [out_topic])
    harness.settle(QUIET_WAIT_S, "the baseline")
    argv = [sys.executable, __file__, "baseline-child", stack.bootstrap, topics["ticks"]]
    argv += [out_topic, str(count)]
    shares = Shares({"postgres": stack.postgres_pid, "broker": stack.broker_pid})
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, cwd=ROOT, preexec_fn=harness._die_with_parent
    )
    shares.add("baseline", proc.pid)
    try:
        stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S_DEFAULT + 30)
    except subprocess.TimeoutExpired:
        harness.stop_process(proc)
        raise
    result = json.loads(stdout)
    assert result["ticks"] == count, f"the baseline read {result['ticks']} of {count} ticks"
    cpu_s = result["cpu_s"]
    return RunResult(f"baseline #{run}", count, result["wall_s"], shares.stop(cpu_s), cpu_s)


# -- (b) the ingest worker --------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """The bench stack, as the service and this script need it."""

    cfg: StackConfig
    info: dict[str, Any]
    admin_url: str

    @property
    def bootstrap(self) -> str:
        return str(self.info["kafka"]["bootstrap_servers"])

    @property
    def postgres_pid(self) -> int | None:
        return self.info["postgres"].get("pid")

    @property
    def broker_pid(self) -> int | None:
        return self.info["kafka"].get("pid")


class Shares:
    """CPU of named process trees during a run, as percent of one core, and the rest."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: p for k, p in pids.items() if p}
        self.start = {k: harness.process_tree_cpu_s(p) for k, p in self.pids.items()}
        self.busy0 = harness.system_busy_s()
        self.t0 = time.monotonic()

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.start[name] = 0.0  # a new process: all its CPU is this run's

    def stop(self, own_cpu_s: dict[str, float] | float | None = None) -> dict[str, float]:
        wall_s = time.monotonic() - self.t0
        used = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, ProcessLookupError):
                used[name] = harness.process_tree_cpu_s(pid) - self.start[name]
        if isinstance(own_cpu_s, float):
            used["baseline"] = own_cpu_s  # the child has exited: its own count
        other_s = harness.system_busy_s() - self.busy0 - sum(used.values())
        shares = {f"{k}%": 100.0 * v / wall_s for k, v in used.items()}
        shares["other%"] = max(0.0, 100.0 * other_s / wall_s)
        return shares


def secret_id_file(stack: Stack, directory: Path) -> Path:
    """A fresh AppRole secret_id for the market role (the infra-only stack hands none out)."""
    token = (Path(stack.info["secrets_dir"]) / "vault_root_token").read_text().strip()
    client = hvac.Client(url=stack.info["vault"]["addr"], token=token)
    secret_id = client.auth.approle.generate_secret_id("market")["data"]["secret_id"]
    path = directory / "market.secret_id"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret_id)
    return path


@contextlib.contextmanager
def ingest_service(
    stack: Stack, topics: dict[str, str], secret_file: Path, *, ingest: bool, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The market-data-ingest service, with the launcher's environment and fresh topics."""
    spec = next(svc for svc in SERVICES if svc.name == "market-data-ingest")
    env = service_env(
        stack.cfg,
        spec,
        stack.info["approle_role_ids"]["market"],
        secret_file,
        without_auth=True,  # the bench runs this service alone
    )
    env.update(
        TICKERTAP_INGEST_ENABLED="true" if ingest else "false",
        TICKERTAP_INGEST_TICKS_TOPIC=topics["ticks"],
        TICKERTAP_INGEST_PRICES_TOPIC=topics["prices"],
        TICKERTAP_INGEST_BARS_TOPIC=topics["bars"],
        TICKERTAP_INGEST_GROUP_ID=f"bench-{uuid.uuid4().hex[:8]}",
    )
    url = stack.cfg.service_url(spec)
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
    try:
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ingest service did not get ready; see {log}")
            time.sleep(0.1)
        yield proc
    finally:
        harness.stop_process(proc, SERVICE_STOP_TIMEOUT_S)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def list_instruments(stack: Stack, symbols: list[SymbolSpec]) -> None:
    spec = next(svc for svc in SERVICES if svc.name == "market-data-ingest")
    token = devkeys.mint(devkeys.private_key_path(stack.cfg), "bench", roles=["admin"])
    for symbol in symbols:
        body = {"symbol": symbol.symbol, "currency": "USD", "price_scale": symbol.scale}
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{stack.cfg.service_url(spec)}/v1/instruments",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            assert response.status in (200, 201), response.status


async def reset_worker_state(admin_url: str) -> None:
    """Empty the market schema's tables but the instruments (and migrations): a fresh worker."""
    conn = await asyncpg.connect(admin_url)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'market'")
            if r["tablename"] not in ("instruments", "alembic_version")
        ]
        if names:
            await conn.execute(f"TRUNCATE {', '.join('market.' + n for n in names)}")
    finally:
        await conn.close()


async def stored_offsets(conn: asyncpg.Connection, topic: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM market.ingest_partitions WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] or 0 for r in rows}


async def follow_worker(
    admin_url: str, topic: str, ends: dict[int, int], timeout_s: float, pid: int | None = None
) -> tuple[int, float, int, float]:
    """Poll the stored offsets until they reach `ends`; returns (ticks measured, seconds,
    sum of the bars' tick counts, CPU seconds of process `pid` meanwhile). The clock starts
    at the first progress seen."""
    total = sum(ends.values())
    conn = await asyncpg.connect(admin_url)
    try:
        deadline = time.monotonic() + timeout_s
        start_done, start_t, start_cpu_s = 0, 0.0, 0.0
        while True:
            offsets = await stored_offsets(conn, topic)
            now = time.monotonic()
            done = sum(min(offsets.get(p, 0), end) for p, end in ends.items())
            if not start_t and done > 0:
                start_done, start_t = done, now
                start_cpu_s = harness.process_tree_cpu_s(pid) if pid else 0.0
            if done >= total:
                end_cpu_s = harness.process_tree_cpu_s(pid) if pid else 0.0
                if not start_t:  # all done before the first look: nothing was measured
                    start_done, start_t, start_cpu_s = total, now, end_cpu_s
                break
            if now > deadline:
                raise TimeoutError(f"the worker stored {done} of {total} offsets in {timeout_s} s")
            await asyncio.sleep(PROGRESS_POLL_S)
        counted = await conn.fetchval(
            "SELECT coalesce(sum(tick_count), 0) FROM market.bars_1m WHERE source_topic = $1",
            topic,
        )
        return total - start_done, now - start_t, int(counted), end_cpu_s - start_cpu_s
    finally:
        await conn.close()


def run_worker(
    stack: Stack,
    topics: dict[str, str],
    produced: Produced,
    secret_file: Path,
    run: int,
    timeout_s: float,
) -> RunResult:
    asyncio.run(reset_worker_state(stack.admin_url))
    harness.settle(QUIET_WAIT_S, "the ingest worker")
    log = stack.cfg.logs_dir / "bench-ingest.log"
    shares = Shares({"postgres": stack.postgres_pid, "broker": stack.broker_pid})
    with ingest_service(stack, topics, secret_file, ingest=True, log=log) as proc:
        shares.add("worker", proc.pid)
        ticks, wall_s, counted, cpu_s = asyncio.run(
            follow_worker(stack.admin_url, topics["ticks"], produced.ends, timeout_s, proc.pid)
        )
        cpu = shares.stop()
    good = produced.count - produced.bad
    check = "ok" if counted == good else f"bars count {counted} ticks, expected {good}"
    return RunResult(f"worker #{run}", ticks, wall_s, cpu, cpu_s, check)


# -- latency: tick publish to price publish ----------------------------------------------


def measure_latency(
    stack: Stack,
    symbols: list[SymbolSpec],
    secret_file: Path,
    rate_per_s: float,
    duration_s: float,
) -> list[float]:
    """Latencies (ms) of the price records of a paced run, one per price record."""
    tag = uuid.uuid4().hex[:8]
    topics = topic_set(f"lat-{tag}")
    create_topics(stack.bootstrap, list(topics.values()))
    prices: list[tuple[int, int, int]] = []  # (source partition, source offset, price ts ms)
    stop = threading.Event()
    codec = AvroCodec(load_schemas(find_schemas_dir()))

    def read_prices() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": stack.bootstrap,
                "group.id": f"bench-lat-{tag}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign(
            [TopicPartition(topics["prices"], p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        try:
            while not stop.is_set():
                for message in consumer.consume(1000, 0.2):
                    if message.error() is None:
                        record = codec.decode(message.value())
                        prices.append(
                            (
                                record["source_partition"],
                                record["source_offset"],
                                message.timestamp()[1],
                            )
                        )
        finally:
            consumer.close()

    reader = threading.Thread(target=read_prices, daemon=True)
    reader.start()
    asyncio.run(reset_worker_state(stack.admin_url))
    log = stack.cfg.logs_dir / "bench-ingest.log"
    count = int(rate_per_s * duration_s)
    try:
        with ingest_service(stack, topics, secret_file, ingest=True, log=log):
            produced = produce_ticks(
                stack.bootstrap,
                topics["ticks"],
                symbols,
                count,
                source_id=f"bench-lat-{tag}",
                rate_per_s=rate_per_s,
                keep_send_times=True,
            )
            asyncio.run(
                follow_worker(stack.admin_url, topics["ticks"], produced.ends, LATENCY_DRAIN_S)
            )
            time.sleep(1.0)  # the last price records reach the reader
    finally:
        stop.set()
        reader.join(10)
    latencies = []
    for partition, offset, price_ms in prices:
        sent_us = produced.sent_us.get((partition, offset))
        if sent_us:
            latencies.append(price_ms - sent_us / 1000)
    return latencies


# -- the report -------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def print_report(
    baseline: list[RunResult], worker: list[RunResult], latencies: list[float], args: Any
) -> None:
    base_rate = statistics.median(r.ticks_per_s for r in baseline) if baseline else 0.0
    work_rate = statistics.median(r.ticks_per_s for r in worker) if worker else 0.0
    base_cpu = statistics.median(r.ticks_per_cpu_s for r in baseline) if baseline else 0.0
    work_cpu = statistics.median(r.ticks_per_cpu_s for r in worker) if worker else 0.0
    print(
        f"\nmarket-data ingest: {args.ticks:,} ticks, {args.symbols} symbols, "
        f"{PARTITIONS} partitions; median of {args.runs} run(s)"
    )
    print("                                            ticks/s   ticks per CPU-second")
    print(f"  baseline (consume, decode, produce)  {base_rate:12,.0f} {base_cpu:14,.0f}")
    print(f"  ingest worker (to bars and prices)   {work_rate:12,.0f} {work_cpu:14,.0f}")
    if base_rate and base_cpu:
        print(
            f"  ratio worker / baseline              {work_rate / base_rate:12.2f} "
            f"{work_cpu / base_cpu:14.2f}"
        )
    if latencies:
        print(
            f"  tick publish -> price publish        p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms "
            f"({len(latencies)} prices; {args.latency_rate:.0f} ticks/s for "
            f"{args.latency_duration_s:.0f} s)"
        )
    print(
        "\n  run                 ticks/s  ticks/CPU-s  seconds  CPU (% of one core)"
        "                       check"
    )
    for result in [r for pair in zip(baseline, worker, strict=False) for r in pair]:
        shares = "  ".join(f"{k} {v:.0f}" for k, v in sorted(result.shares.items()))
        print(
            f"  {result.label:<14} {result.ticks_per_s:12,.0f} {result.ticks_per_cpu_s:12,.0f}"
            f" {result.wall_s:8.1f}  {shares:<44} {result.check}"
        )


def _figures(result: RunResult) -> dict[str, Any]:
    return result.__dict__ | {
        "ticks_per_s": result.ticks_per_s,
        "ticks_per_cpu_s": result.ticks_per_cpu_s,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "baseline-child":
        _, _, bootstrap, topic, out_topic, count = sys.argv
        print(json.dumps(baseline_child(bootstrap, topic, out_topic, int(count))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--run-timeout-s", type=float, default=RUN_TIMEOUT_S_DEFAULT)
    parser.add_argument("--latency-rate", type=float, default=LATENCY_RATE_DEFAULT)
    parser.add_argument("--latency-duration-s", type=float, default=LATENCY_DURATION_S_DEFAULT)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.ticks <= TICKS_MAX or not 1 <= args.symbols <= SYMBOLS_MAX:
        parser.error(f"--ticks in 1..{TICKS_MAX}, --symbols in 1..{SYMBOLS_MAX}")
    if not 1 <= args.runs <= RUNS_MAX or not 0 < args.run_timeout_s <= 600:
        parser.error(f"--runs in 1..{RUNS_MAX}, --run-timeout-s in (0, 600]")
    if not 0 <= args.latency_rate <= 50_000 or not 0 < args.latency_duration_s <= 60:
        parser.error("--latency-rate in 0..50000 (0: skip), --latency-duration-s in (0, 60]")

    symbols = default_symbols(args.symbols)
    with harness.bench_stack() as bench, tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.from_env()
        info = json.loads(cfg.stack_file.read_text())
        stack = Stack(cfg, info, bench.admin_url)
        secret_file = secret_id_file(stack, Path(tmp))
        topics = topic_set(uuid.uuid4().hex[:8])
        create_topics(stack.bootstrap, list(topics.values()))
        print(f"listing {len(symbols)} instruments through the ingest API ...", flush=True)
        log = cfg.logs_dir / "bench-ingest.log"
        with ingest_service(stack, topics, secret_file, ingest=False, log=log):
            list_instruments(stack, symbols)
        print(f"producing {args.ticks:,} ticks into {topics['ticks']} ...", flush=True)
        started = time.monotonic()
        produced = produce_ticks(
            stack.bootstrap, topics["ticks"], symbols, args.ticks, source_id=f"bench-{SEED}"
        )
        print(
            f"  {produced.count:,} ticks ({produced.bad} deliberately bad) in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        baseline: list[RunResult] = []
        worker: list[RunResult] = []
        for run in range(1, args.runs + 1):
            baseline.append(run_baseline(stack, topics, produced.count, run))
            print(f"  {baseline[-1].label}: {baseline[-1].ticks_per_s:,.0f} ticks/s", flush=True)
            worker.append(run_worker(stack, topics, produced, secret_file, run, args.run_timeout_s))
            print(
                f"  {worker[-1].label}: {worker[-1].ticks_per_s:,.0f} ticks/s ({worker[-1].check})",
                flush=True,
            )
        latencies: list[float] = []
        if args.latency_rate > 0:
            print("measuring latency (paced) ...", flush=True)
            latencies = measure_latency(
                stack, symbols, secret_file, args.latency_rate, args.latency_duration_s
            )
        asyncio.run(reset_worker_state(stack.admin_url))
    print_report(baseline, worker, latencies, args)
    if args.json:
        figures = {
            "baseline": [_figures(r) for r in baseline],
            "worker": [_figures(r) for r in worker],
            "latency_ms": {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "count": len(latencies),
            },
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
