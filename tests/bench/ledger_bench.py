"""The ledger's throughput through HTTP, against two floors measured in the same run.

On the bench profile's stack (ports 274xx; restarted here, and stopped at the end),
with the ledger service as `make run` starts it (its outbox relay in a child process)
and, as the other services' benches do, no other service: the portfolio service
consuming the ledger's events would otherwise take a core of this 2-core machine
during the loads and for a minute after them, the floors' runs included
(`--full-stack` measures with every service running):

- `POST /v1/transfers`: 2 legs, an Idempotency-Key each, the outbox event, at 16
  connections, between 1,000 accounts ("spread") and between 10 ("hot");
- `POST /v1/transfers/batch`: 100 transfers (200 postings) per request;
- the same spread load over two ledger replicas (a second ledger process, as a
  deployment scales out; 8 connections each), to see what a second process buys
  on this machine;
- the floors, on the same Postgres: a plain FastAPI endpoint doing one INSERT +
  COMMIT per request, and raw asyncpg INSERT + COMMIT at 16 connections.

Each run loads every target in turn (interleaved), `--runs` times; the table
shows the median of the runs, then each run. Bounded: each load lasts
`--duration-s`; everything stops by itself.

    .venv/bin/python tests/bench/ledger_bench.py --runs 3 --duration-s 10

`--only batch` loads the batch endpoint and the two floors alone (no second replica);
`--only transfers` the single-transfer loads and the floors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import baselines  # noqa: E402
import harness  # noqa: E402
import loadgen  # noqa: E402
from devkeys import mint  # noqa: E402

STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
ENV = {**os.environ, "TICKERTAP_PROFILE": "bench"}
STATE = Path(os.environ.get("TICKERTAP_STATE_DIR") or ROOT / ".tickertap" / "bench")
ACCOUNTS_SPREAD = 1000
ACCOUNTS_HOT = 10
BATCH_TRANSFERS = 100
CONNECTIONS = 16
BATCH_CONNECTIONS = 4
FUNDS = "1000000.00"
REPLICA_START_S_MAX = 60.0
REPLICA_STOP_S_MAX = 15.0
PARTS = ("all", "transfers", "batch")


# what the runs write; emptied before them (assets and prices stay)
LEDGER_TABLES = ("postings", "transfers", "idempotency_keys", "outbox", "accounts")
LEDGER_DATA = ", ".join(f"ledger.{table}" for table in LEDGER_TABLES)


def start_stack(marker: Path, full: bool) -> dict[str, object]:
    """The bench stack, restarted on an empty ledger: the floors insert into a new table,
    and a ledger grown by earlier runs (millions of rows, past Postgres' 256 MB of shared
    buffers) would make the figures depend on how often the bench ran before."""
    subprocess.run([*STACK, "down"], env=ENV, check=False, stdout=subprocess.DEVNULL)
    subprocess.run([*STACK, "up", "--no-services"], env=ENV, check=True, stdout=subprocess.DEVNULL)
    loadgen.run_async(empty_ledger(harness.read_bench_stack().admin_url))
    subprocess.run([*STACK, "down"], env=ENV, check=True, stdout=subprocess.DEVNULL)
    services = [] if full else ["--services", "ledger"]
    subprocess.run(
        [*STACK, "up", "--started-marker", str(marker), *services],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return dict(json.loads((STATE / "stack.json").read_text()))


async def empty_ledger(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval("SELECT to_regclass('ledger.postings') IS NOT NULL"):
            await conn.execute(f"TRUNCATE {LEDGER_DATA}")
    finally:
        await conn.close()


async def setup_accounts(url: str, ops: str, count: int) -> list[str]:
    """`count` customer accounts in USD, each funded, through the API itself."""
    accounts: list[str] = []
    owners = [str(uuid.uuid4()) for _ in range(count)]
    headers = {"Authorization": f"Bearer {ops}", "Content-Type": "application/json"}

    def open_account(i: int) -> loadgen.Request:
        body = json.dumps({"asset": "USD", "owner_id": owners[i]}).encode()
        return ("POST", "/v1/accounts", headers, body)

    def opened(_i: int, status: int, body: bytes) -> None:
        if status != 201:
            print(f"open account: {status} {body[:300]!r}", file=sys.stderr)
        assert status == 201, body[:200]
        accounts.append(json.loads(body)["id"])

    opening = await loadgen.run_load(
        f"{url}/v1/accounts",
        make_request=open_account,
        on_response=opened,
        connections=8,
        requests=count,
        label="setup",
    )
    if len(accounts) != count:
        raise SystemExit(f"opened {len(accounts)} of {count} accounts: {opening.errors}")

    def deposit(i: int) -> loadgen.Request:
        body = json.dumps(
            {"transfer_id": str(uuid.uuid4()), "account_id": accounts[i], "amount": FUNDS}
        ).encode()
        return ("POST", "/v1/deposits", headers, body)

    def deposited(_i: int, status: int, body: bytes) -> None:
        assert status == 201, body[:200]

    await loadgen.run_load(
        f"{url}/v1/deposits",
        make_request=deposit,
        on_response=deposited,
        connections=8,
        requests=count,
        label="setup",
    )
    return accounts


def transfer_requests(accounts: Sequence[str], ops: str, run_tag: str) -> loadgen.MakeRequest:
    rng = random.Random(run_tag)
    pairs = [tuple(rng.sample(list(accounts), 2)) for _ in range(4096)]
    auth = f"Bearer {ops}"

    def make(i: int) -> loadgen.Request:
        a, b = pairs[i % len(pairs)]
        transfer_id = uuid.uuid4()
        body = (
            f'{{"transfer_id":"{transfer_id}","legs":[{{"account_id":"{a}","amount":"-0.01"}},'
            f'{{"account_id":"{b}","amount":"0.01"}}]}}'
        ).encode()
        headers = {
            "Authorization": auth,
            "Content-Type": "application/json",
            "Idempotency-Key": f"{run_tag}-{i}",
        }
        return ("POST", "/v1/transfers", headers, body)

    return make


def batch_requests(accounts: Sequence[str], ops: str, run_tag: str) -> loadgen.MakeRequest:
    rng = random.Random(run_tag)
    auth = f"Bearer {ops}"

    def make(_i: int) -> loadgen.Request:
        transfers = []
        for _ in range(BATCH_TRANSFERS):
            a, b = rng.sample(list(accounts), 2)
            transfers.append(
                {
                    "transfer_id": str(uuid.uuid4()),
                    "legs": [
                        {"account_id": a, "amount": "-0.01"},
                        {"account_id": b, "amount": "0.01"},
                    ],
                }
            )
        body = json.dumps({"transfers": transfers}).encode()
        return (
            "POST",
            "/v1/transfers/batch",
            {"Authorization": auth, "Content-Type": "application/json"},
            body,
        )

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def second_replica(port: int) -> Iterator[tuple[str, int]]:
    """Another ledger process on `port`, with the environment the launcher gives the
    ledger (`stack.py exec ledger`); stopped by its PID at the end."""
    argv = [*STACK, "exec", "ledger", "--", "env", f"TICKERTAP_HTTP_PORT={port}"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process ends
    process = subprocess.Popen(
        [*argv, "python", "-m", "tickertap.ledger"], env=ENV, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + REPLICA_START_S_MAX
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the second ledger exited: {log.read()[-2000:]!r}")
            if _ready(f"{url}/readyz"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the second ledger was not ready in time")
            time.sleep(0.2)
        yield url, process.pid  # `exec` replaced itself with the ledger: the same PID
    finally:
        process.terminate()
        try:
            process.wait(REPLICA_STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


def transfer_batches(url: str) -> dict[str, float]:
    """The transfer batches the ledger at `url` has written (its /metrics), by how: so a
    load's transfers per batch (the group commit's batch size, which its CPU per transfer
    follows) and the share written on remembered balances (one round trip)."""
    return {
        labels["how"]: value
        for name, labels, value in harness.metric_samples(url)
        if name == "tickertap_ledger_transfer_batches_total"
    }


def with_batches(load: Callable[[], loadgen.LoadResult], urls: Sequence[str]) -> loadgen.LoadResult:
    """`load()` with its transfers per batch (every request it completed, warm-up included,
    over the batches the ledgers at `urls` wrote meanwhile), the percentage of batches
    written on remembered balances, and the statements sent on remembered balances that
    wrote nothing (a balance had moved, or a key or transfer id was taken) per 100 batches."""
    before = [transfer_batches(url) for url in urls]
    result = load()
    after = [transfer_batches(url) for url in urls]
    written: dict[str, float] = {}
    for old, new in zip(before, after, strict=True):
        for how, n in new.items():
            written[how] = written.get(how, 0.0) + n - old.get(how, 0.0)
    batches = sum(written.get(how, 0.0) for how in ("remembered", "optimistic", "locked"))
    missed = sum(written.get(f"remembered_{why}", 0.0) for why in ("moved", "taken"))
    if not batches:
        return result
    figures = {
        "per_batch": result.client_requests / batches,
        "remembered_pct": 100.0 * written.get("remembered", 0.0) / batches,
        "missed_pct": 100.0 * missed / batches,
    }
    return dataclasses.replace(result, extra={**result.extra, **figures})


def with_cpu(
    load: Callable[[], loadgen.LoadResult], server_pids: Sequence[int], stack: harness.BenchStack
) -> loadgen.LoadResult:
    """`load()`, with the CPU its servers and Postgres used: percent of one core, and the
    servers' CPU per successful request, which a busy machine distorts far less than
    requests per second."""
    t0 = time.perf_counter()
    busy0 = harness.system_busy_s()
    server0 = sum(harness.process_tree_cpu_s(p) for p in server_pids)
    pg0 = stack.postgres_cpu_s()
    result = load()
    wall_s = time.perf_counter() - t0
    server_s = sum(harness.process_tree_cpu_s(p) for p in server_pids) - server0
    pg_s = stack.postgres_cpu_s() - pg0
    other_s = harness.system_busy_s() - busy0 - server_s - pg_s - result.client_cpu_s
    figures = {
        "server_cpu_pct": 100.0 * server_s / wall_s,
        "postgres_cpu_pct": 100.0 * pg_s / wall_s,
        "other_cpu_pct": max(0.0, 100.0 * other_s / wall_s),
        "server_us_per_ok": server_cpu_us_per_ok(100.0 * server_s / wall_s, result),
    }
    return dataclasses.replace(result, extra={**result.extra, **figures})


def server_cpu_us_per_ok(server_cpu_pct: float, result: loadgen.LoadResult) -> float:
    rate = result.ok / result.duration_s if result.duration_s > 0 else 0.0
    return server_cpu_pct / 100.0 / rate * 1e6 if rate > 0 else math.nan


def merged(label: str, results: Sequence[loadgen.LoadResult]) -> loadgen.LoadResult:
    """Loads that ran side by side for the same time, as one."""
    status: dict[int, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r.status_counts.items():
            status[code] = status.get(code, 0) + n
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return loadgen.LoadResult(
        label=label,
        concurrency=sum(r.concurrency for r in results),
        duration_s=max(r.duration_s for r in results),
        latencies_ns=array("q", sorted(x for r in results for x in r.latencies_ns)),
        status_counts=status,
        errors=errors,
        client_cpu_s=max(r.client_cpu_s for r in results),  # one process ran both
        client_wall_s=max(r.client_wall_s for r in results),
        client_requests=sum(r.client_requests for r in results),
    )


async def spread_over(
    urls: Sequence[str], accounts: Sequence[str], ops: str, tag: str, args: argparse.Namespace
) -> loadgen.LoadResult:
    label = f"transfers, 1,000 accounts, {len(urls)} replicas"
    results = await asyncio.gather(
        *(
            loadgen.run_load(
                f"{url}/v1/transfers",
                make_request=transfer_requests(accounts, ops, f"{tag}-replica{n}"),
                on_response=check_created,
                connections=CONNECTIONS // len(urls),
                duration_s=args.duration_s,
                warmup_s=args.warmup_s,
                label=label,
            )
            for n, url in enumerate(urls)
        )
    )
    return merged(label, results)


def check_created(_i: int, status: int, body: bytes) -> None:
    if status != 201:
        raise AssertionError(f"{status}: {body[:200]!r}")


def check_batch(_i: int, status: int, body: bytes) -> None:
    if status != 200:
        raise AssertionError(f"{status}: {body[:200]!r}")
    results = json.loads(body)["results"]
    failed = [r for r in results if r["status"] != 201]
    if failed:
        raise AssertionError(f"batch items failed: {failed[:2]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument(
        "--only",
        choices=PARTS,
        default="all",
        help="batch: the batch endpoint and the floors; transfers: single transfers and "
        "the floors (default: everything)",
    )
    parser.add_argument(
        "--full-stack",
        action="store_true",
        help="run every service of the stack, not the ledger alone",
    )
    args = parser.parse_args()
    assert 1 <= args.runs <= 10
    assert 1 <= args.duration_s <= 120

    with tempfile.TemporaryDirectory(prefix="tickertap-ledger-bench-") as tmp:
        marker = Path(tmp) / "started"
        info = start_stack(marker, args.full_stack)
        try:
            return run(info, args)
        finally:
            if marker.exists():
                subprocess.run([*STACK, "down"], env=ENV, check=False, stdout=subprocess.DEVNULL)


def run(info: dict[str, object], args: argparse.Namespace) -> int:
    services = info["services"]
    assert isinstance(services, dict)
    url = str(services["ledger"]["url"])
    ops = mint(STATE / "secrets" / "dev-signing-key.json", str(uuid.uuid4()), ("ops",), ttl_s=3600)
    accounts = loadgen.run_async(setup_accounts(url, ops, ACCOUNTS_SPREAD))
    stack = harness.read_bench_stack()
    spec = baselines.RunSpec(duration_s=args.duration_s, warmup_s=args.warmup_s)
    rows: dict[str, list[loadgen.LoadResult]] = {}
    postings_per_s: list[float] = []
    ledger_pid = int(services["ledger"]["pid"])
    with contextlib.ExitStack() as scope:
        second = scope.enter_context(second_replica(free_port())) if args.only != "batch" else None
        for run_no in range(args.runs):
            measure_once(
                run_no,
                (url, ledger_pid),
                second,
                accounts,
                ops,
                stack,
                spec,
                args,
                rows,
                postings_per_s,
            )
    report(rows, postings_per_s, args)
    loadgen.run_async(baselines.drop_schema(stack.admin_url))
    return 0


def measure_once(
    run_no: int,
    ledger: tuple[str, int],
    second: tuple[str, int] | None,
    accounts: list[str],
    ops: str,
    stack: harness.BenchStack,
    spec: baselines.RunSpec,
    args: argparse.Namespace,
    rows: dict[str, list[loadgen.LoadResult]],
    postings_per_s: list[float],
) -> None:
    url, ledger_pid = ledger
    hot = accounts[:ACCOUNTS_HOT]
    tag = f"r{run_no}-{uuid.uuid4().hex[:8]}"
    if args.only != "batch":
        measure_transfers(url, ledger_pid, second, accounts, hot, ops, stack, spec, args, rows, tag)
    if args.only != "transfers":
        measure_batch(url, ledger_pid, accounts, ops, stack, spec, args, rows, postings_per_s, tag)
    loadgen.run_async(baselines.reset_schema(stack.admin_url))
    floor = baselines.http_insert_baseline(stack, spec)
    floor_cpu = floor.extra.get("server_cpu_pct", math.nan)
    floor.extra["server_us_per_ok"] = server_cpu_us_per_ok(floor_cpu, floor)
    rows.setdefault("floor: FastAPI INSERT+COMMIT", []).append(floor)
    rows.setdefault("floor: asyncpg INSERT+COMMIT", []).append(
        baselines.pg_insert_baseline(stack, spec)
    )


def measure_transfers(
    url: str,
    ledger_pid: int,
    second: tuple[str, int] | None,
    accounts: list[str],
    hot: list[str],
    ops: str,
    stack: harness.BenchStack,
    spec: baselines.RunSpec,
    args: argparse.Namespace,
    rows: dict[str, list[loadgen.LoadResult]],
    tag: str,
) -> None:
    assert second is not None
    replica, replica_pid = second
    for label, name, pool in (
        ("transfers, 1,000 accounts", "spread", accounts),
        ("transfers, 10 hot accounts", "hot", hot),
    ):
        harness.settle(spec.quiet_wait_s, label)
        result = with_cpu(
            lambda pool=pool, name=name, label=label: with_batches(
                lambda: loadgen.run_async(
                    loadgen.run_load(
                        f"{url}/v1/transfers",
                        make_request=transfer_requests(pool, ops, f"{tag}-{name}"),
                        on_response=check_created,
                        connections=CONNECTIONS,
                        duration_s=args.duration_s,
                        warmup_s=args.warmup_s,
                        label=label,
                    )
                ),
                [url],
            ),
            [ledger_pid],
            stack,
        )
        rows.setdefault(label, []).append(result)
    harness.settle(spec.quiet_wait_s, "two replicas")
    both = with_cpu(
        lambda: with_batches(
            lambda: loadgen.run_async(spread_over([url, replica], accounts, ops, tag, args)),
            [url, replica],
        ),
        [ledger_pid, replica_pid],
        stack,
    )
    rows.setdefault(both.label, []).append(both)


def measure_batch(
    url: str,
    ledger_pid: int,
    accounts: list[str],
    ops: str,
    stack: harness.BenchStack,
    spec: baselines.RunSpec,
    args: argparse.Namespace,
    rows: dict[str, list[loadgen.LoadResult]],
    postings_per_s: list[float],
    tag: str,
) -> None:
    harness.settle(spec.quiet_wait_s, "batch")
    batch = with_cpu(
        lambda: loadgen.run_async(
            loadgen.run_load(
                f"{url}/v1/transfers/batch",
                make_request=batch_requests(accounts, ops, tag),
                on_response=check_batch,
                connections=BATCH_CONNECTIONS,
                duration_s=args.duration_s,
                warmup_s=args.warmup_s,
                label=f"batch of {BATCH_TRANSFERS} transfers",
            )
        ),
        [ledger_pid],
        stack,
    )
    rows.setdefault(batch.label, []).append(batch)
    postings_per_s.append(batch.ok / batch.duration_s * BATCH_TRANSFERS * 2)


def report(
    rows: dict[str, list[loadgen.LoadResult]],
    postings_per_s: list[float],
    args: argparse.Namespace,
) -> None:
    print(
        loadgen.format_table(
            list(rows.items()),
            extra=[
                "server_cpu_pct",
                "postgres_cpu_pct",
                "other_cpu_pct",
                "server_us_per_ok",
                "per_batch",
                "remembered_pct",
                "missed_pct",
            ],
        )
    )
    med = {
        label: statistics.median(r.ok / r.duration_s for r in results)
        for label, results in rows.items()
    }
    p99 = {
        label: statistics.median(r.latency_ms(99) for r in results)
        for label, results in rows.items()
    }
    floor_http = med["floor: FastAPI INSERT+COMMIT"]
    floor_pg = med["floor: asyncpg INSERT+COMMIT"]
    print()
    print(f"medians of {args.runs} runs, {CONNECTIONS} connections, {args.duration_s:.0f} s each:")
    lines: list[tuple[str, float, float | None, str]] = []
    spread = med.get("transfers, 1,000 accounts")
    if spread is not None:
        hot_rate = med["transfers, 10 hot accounts"]
        two = med["transfers, 1,000 accounts, 2 replicas"]
        lines += [
            (
                "transfers/s, 1,000 accounts",
                spread,
                p99["transfers, 1,000 accounts"],
                f"= {spread / floor_http:.2f}x the FastAPI floor, "
                f"{spread / floor_pg:.2f}x raw INSERT",
            ),
            (
                "transfers/s, 10 hot accounts",
                hot_rate,
                p99["transfers, 10 hot accounts"],
                f"= {hot_rate / spread:.2f}x the spread case",
            ),
            (
                "transfers/s, 2 replicas",
                two,
                p99["transfers, 1,000 accounts, 2 replicas"],
                f"= {two / spread:.2f}x one replica, {two / floor_http:.2f}x the FastAPI floor",
            ),
        ]
    if postings_per_s:
        lines.append(("postings/s, batch endpoint", statistics.median(postings_per_s), None, ""))
    lines += [
        ("floor: FastAPI INSERT+COMMIT", floor_http, p99["floor: FastAPI INSERT+COMMIT"], ""),
        ("floor: asyncpg INSERT+COMMIT", floor_pg, None, ""),
    ]
    for name, rate, p99_ms, note in lines:
        latency = f"p99 {p99_ms:6.1f} ms" if p99_ms is not None else " " * 13
        print(f"  {name:<30} {rate:8.0f}   {latency}   {note}")
    cpu = {
        label: statistics.median(r.extra.get("server_us_per_ok", math.nan) for r in results)
        for label, results in rows.items()
    }
    floor = cpu["floor: FastAPI INSERT+COMMIT"]
    if spread is not None:
        one = cpu["transfers, 1,000 accounts"]
        print(
            f"  server CPU per request: transfer {one:.0f} us, FastAPI INSERT floor {floor:.0f} us"
            f" (= {floor / one:.2f}x the floor's efficiency; a busy machine distorts this least)"
        )
    if postings_per_s:
        per_batch = cpu[f"batch of {BATCH_TRANSFERS} transfers"]
        print(
            f"  server CPU per batch request: {per_batch:.0f} us"
            f" (= {per_batch / BATCH_TRANSFERS:.0f} us a transfer)"
        )


if __name__ == "__main__":
    sys.exit(main())
