"""Report jobs against the real stack: submitted over HTTP, run by job worker processes
(faust-streaming, started here through the launcher as an operator would), fetched over
HTTP; the figures match the domain computed independently on the same transfers and a
table computed by hand; a worker killed mid-job leaves the job to the next one, which
finishes it exactly once.

Joining the consumer group on the local broker takes several seconds, so each wait
for a worker is bounded by WORKER_WAIT_S."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from portfolio_testkit import TRANSFERS, Book, new_id, new_symbol, produce, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging import headers as h
from tickertap.portfolio import domain as d
from tickertap.portfolio import jobs

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]
WORKER_WAIT_S = 90.0
APPLY_WAIT_S = 60.0
STOP_WAIT_S = 30.0
D = Decimal
EFFECTIVE = 6  # transfers of history_book that count: 8 less a buy and its reversal


@contextlib.contextmanager
def worker(log_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A job worker process, as an operator starts one (the launcher execs it: the pid is the
    worker's own); stopped at the end (SIGTERM, then SIGKILL)."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "deploy" / "local" / "stack.py"),
                "exec",
                "portfolio-calculation",
                "--",
                "python",
                "-m",
                "tickertap.portfolio.jobs_worker",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_WAIT_S)


async def until(check: Any, what: str, wait_s: float = WORKER_WAIT_S) -> Any:
    deadline = time.monotonic() + wait_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {wait_s} s: {what}")
        await asyncio.sleep(0.25)


def history_book() -> tuple[Book, str, list[dict[str, Any]]]:
    """Buys at two prices, a sale on each side of new year 2026, a buy and its reversal."""
    book = Book(t0=datetime(2025, 12, 31, 23, 59, 55, tzinfo=UTC))
    symbol = new_symbol()
    reversed_buy = None
    records = [
        book.deposit("10000.00"),  # 23:59:56
        book.trade(symbol, "buy", "10", "100.00", "1.00"),  # 23:59:57, cost 1001.00
        book.trade(symbol, "buy", "10", "120.00", "1.00"),  # 23:59:58, cost 1201.00
        book.trade(symbol, "sell", "5", "130.00", "0.50"),  # 23:59:59
        book.trade(symbol, "sell", "8", "110.00", "0.40"),  # 2026-01-01 00:00:00
        (reversed_buy := book.trade(symbol, "buy", "4", "95.00", "1.00")),
    ]
    records.append(book.reversal(reversed_buy))
    records.append(book.trade(symbol, "sell", "2", "140.00", "0.20"))
    return book, symbol, records


# Hand-computed (see the comments in history_book): per sale, (FIFO pnl, average pnl).
#   5 @ 130 - 0.50 = 649.50;  FIFO 5 of lot 1 = 500.50 -> 149.00; average 2202 * 5/20
#       = 550.50 -> 99.00
#   8 @ 110 - 0.40 = 879.60;  FIFO 5 left of lot 1 (500.50) + 3/10 of 1201 (360.30) = 860.80
#       -> 18.80; average 1651.50 * 8/15 = 880.80 -> -1.20
#   2 @ 140 - 0.20 = 279.80;  FIFO 2/7 of 840.70 = 240.20 -> 39.60; average 770.70 * 2/7
#       = 220.20 -> 59.60   (the reversed buy changes nothing)
HAND = {
    ("fifo", 2025): ("149.00", ["149.00"]),
    ("fifo", 2026): ("58.40", ["18.80", "39.60"]),
    ("average", 2025): ("99.00", ["99.00"]),
    ("average", 2026): ("58.40", ["-1.20", "59.60"]),
}


def domain_entries(records: list[dict[str, Any]], owner: str, method: str, year: int) -> list[Any]:
    """The same transfers through the pure domain, independently of the service."""
    history = []
    for r in records:
        trade = r["trade"]
        split = d.split_transfer(
            uuid.UUID(r["transfer_id"]),
            r["occurred_at"],
            r["kind"],
            [d.LedgerLeg(uuid.UUID(x["owner_id"]), x["asset"], x["amount"]) for x in r["legs"]],
            None
            if trade is None
            else d.Trade(
                trade["symbol"],
                d.Side(trade["side"]),
                trade["quantity"],
                trade["price"],
                trade["notional"],
                trade["fee"],
                trade["currency"],
            ),
            None if r["reverses_transfer_id"] is None else uuid.UUID(r["reverses_transfer_id"]),
        )
        history.append(split[uuid.UUID(owner)])
    holdings = d.compute(history, d.Scales({}, 2))
    return d.realized_between(holdings, d.Method(method), date(year, 1, 1), date(year, 12, 31))


@dataclass(frozen=True)
class History:
    book: Book
    symbol: str
    records: list[dict[str, Any]]

    @property
    def owner(self) -> str:
        return self.book.owner

    def headers(self, mint_token: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.book.owner)}"}


@pytest.fixture(scope="module")
async def history(stack: Any, mint_token: Any) -> History:
    """One customer's history_book, published and applied (once for the module: every
    wait on the shared machine counts)."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    book, symbol, records = history_book()
    for record in records:
        await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    owner = {"Authorization": f"Bearer {mint_token(book.owner)}"}
    async with httpx.AsyncClient(base_url=stack.service_url("portfolio-calculation")) as api:

        async def applied() -> bool:
            r = await api.get(f"/v1/portfolios/{book.owner}", headers=owner)
            return r.status_code == 200 and r.json()["transfers_applied"] == EFFECTIVE

        await until(applied, "the transfers applied", APPLY_WAIT_S)
    return History(book, symbol, records)


@pytest.fixture
async def api(stack: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.service_url("portfolio-calculation"), timeout=10
    ) as client:
        yield client


async def job_of(api: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> Any:
    r = await api.get(f"/v1/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_idempotency_key(api: httpx.AsyncClient, history: History, mint_token: Any) -> None:
    owner = history.headers(mint_token)
    url = f"/v1/portfolios/{history.owner}/reports"
    body = {"kind": "realized_pnl", "from": "2026-01-01", "to": "2026-01-31"}
    headers = {**owner, "Idempotency-Key": f"report-{new_id()}"}
    first = await api.post(url, json=body, headers=headers)
    again = await api.post(url, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["job_id"] == again.json()["job_id"]
    other = await api.post(url, json={**body, "method": "average"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    fresh = await api.post(url, json=body, headers=owner)
    assert fresh.json()["job_id"] != first.json()["job_id"]
    bad_key = await api.post(url, json=body, headers={**owner, "Idempotency-Key": "x"})
    assert bad_key.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"kind": "realized_pnl"},  # no period
        {"kind": "unrealized_pnl", "year": 2026},
        {"kind": "realized_pnl", "year": 2026, "method": "lifo"},
        {"kind": "realized_pnl", "year": "2026"},
        {"kind": "realized_pnl", "year": 2026.0},
        {"kind": "realized_pnl", "year": 0},
        {"kind": "realized_pnl", "year": 9999},
        {"kind": "realized_pnl", "year": 2026, "from": "2026-01-01", "to": "2026-02-01"},
        {"kind": "realized_pnl", "from": "2026-01-01"},
        {"kind": "realized_pnl", "from": "2026-02-30", "to": "2026-03-01"},
        {"kind": "realized_pnl", "from": "2026-1-1", "to": "2026-03-01"},
        {"kind": "realized_pnl", "from": "2026-03-02", "to": "2026-03-01"},
        {"kind": "realized_pnl", "from": "9999-12-31", "to": "9999-12-31"},
        {"kind": "realized_pnl", "year": 2026, "extra": 1},
        [],
    ],
)
async def test_bad_bodies_are_422(stack: Any, mint_token: Any, body: Any) -> None:
    owner = new_id()
    async with httpx.AsyncClient(base_url=stack.service_url("portfolio-calculation")) as api:
        r = await api.post(
            f"/v1/portfolios/{owner}/reports",
            json=body,
            headers={"Authorization": f"Bearer {mint_token(owner)}"},
        )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] in {"validation_error", "invalid_range"}


async def test_who_may_submit_and_read(
    api: httpx.AsyncClient, history: History, mint_token: Any
) -> None:
    owner = history.headers(mint_token)
    url = f"/v1/portfolios/{history.owner}/reports"
    body = {"kind": "realized_pnl", "year": 2026}
    stranger = {"Authorization": f"Bearer {mint_token(new_id())}"}
    r = await api.post(url, json=body, headers=stranger)
    assert (r.status_code, r.json()["code"]) == (403, "not_your_portfolio")
    assert (await api.post(url, json=body)).status_code == 401
    support = {"Authorization": f"Bearer {mint_token(new_id(), ('support',))}"}
    r = await api.post(url, json=body, headers=support)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert (await job_of(api, owner, job_id))["portfolio_id"] == history.owner
    for headers in (stranger, {"Authorization": f"Bearer {mint_token('a-machine')}"}):
        r = await api.get(f"/v1/jobs/{job_id}", headers=headers)
        assert (r.status_code, r.json()["code"]) == (404, "job_not_found")
    r = await api.get(f"/v1/jobs/{new_id()}", headers=support)
    assert (r.status_code, r.json()["code"]) == (404, "job_not_found")
    nobody = new_id()
    r = await api.post(
        f"/v1/portfolios/{nobody}/reports",
        json=body,
        headers={"Authorization": f"Bearer {mint_token(nobody)}"},
    )
    assert (r.status_code, r.json()["code"]) == (404, "portfolio_not_found")


def dead_letters(bootstrap: str) -> dict[bytes, dict[str, str]]:
    """Every message on portfolio.jobs.dlq.v1 (read by assignment), value -> headers."""
    topic = h.dead_letter_topic(jobs.JOBS_TOPIC)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"jobs-test-{new_id()}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: dict[bytes, dict[str, str]] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = consumer.consume(500, 1.0)
            if not batch and found:
                break
            for m in batch:
                if m.error() is None and m.value() is not None:
                    found[m.value()] = {k: v.decode() for k, v in m.headers() or []}
        return found
    finally:
        consumer.close()


async def submit(api: httpx.AsyncClient, history: History, headers: Any, body: Any) -> str:
    r = await api.post(f"/v1/portfolios/{history.owner}/reports", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"
    assert r.json()["status"] == "queued"
    return str(r.json()["job_id"])


async def test_workers_run_each_job_once_and_a_killed_workers_job_is_finished_by_the_next(
    api: httpx.AsyncClient, history: History, stack: Any, mint_token: Any, tmp_path: Path
) -> None:
    """Worker A claims a job and pauses before writing its result (the test-only
    --result-delay-s, for that job only: A also runs jobs other tests left queued) and is
    SIGKILLed; worker B (started once A is gone: workers share the topic, so A would take
    some of the other jobs) finishes it: one result, written by attempt 2, attempt 1
    recorded as expired. B also dead-letters an undecodable event and runs four report
    jobs submitted after it; their figures match the table computed by hand and the domain
    computed independently on the same transfers. (One test: each worker start joins the
    consumer group, seconds each on the local broker.)"""
    owner = history.headers(mint_token)
    fifo_2026 = {"kind": "realized_pnl", "year": 2026, "method": "fifo"}
    killed = await submit(api, history, owner, fifo_2026)
    delay = ("--result-delay-s", "600", "--result-delay-job", killed)  # not jobs left queued
    with worker(tmp_path / "a.log", *delay, "--lease-s", "2") as a:

        async def running() -> bool:
            job = await job_of(api, owner, killed)
            return job["status"] == "running" and job["attempts"] == 1

        await until(running, "worker A claimed the job")
        a.send_signal(signal.SIGKILL)
        a.wait(STOP_WAIT_S)

    submitted = {
        (method, year): await submit(
            api, history, owner, {"kind": "realized_pnl", "year": year, "method": method}
        )
        for method, year in HAND
    }
    queued = await job_of(api, owner, submitted["fifo", 2026])
    assert (queued["status"], queued["attempts"], queued["result"]) == ("queued", 0, None)
    garbage = f"not avro {new_id()}".encode()  # on the jobs' partition, before them
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    await asyncio.to_thread(produce, producer, jobs.JOBS_TOPIC, history.owner, garbage)
    with worker(tmp_path / "b.log", "--lease-s", "2", "--sweep-interval-s", "1"):

        async def all_done() -> bool:
            for job_id in [killed, *submitted.values()]:
                if (await job_of(api, owner, job_id))["status"] != "succeeded":
                    return False
            return True

        await until(all_done, "worker B finished the jobs")

    job = await job_of(api, owner, killed)
    assert job["attempts"] == 2
    assert job["result"]["total"] == {"USD": HAND["fifo", 2026][0]}
    db = await asyncpg.connect(stack.pg_admin_url)
    try:
        row = await db.fetchrow(
            "SELECT status, attempts, result_attempt FROM portfolio.jobs WHERE job_id = $1",
            uuid.UUID(killed),
        )
        attempts = await db.fetch(
            "SELECT attempt, outcome FROM portfolio.job_attempts WHERE job_id = $1"
            " ORDER BY attempt",
            uuid.UUID(killed),
        )
    finally:
        await db.close()
    assert tuple(row) == ("succeeded", 2, 2)
    assert [tuple(a) for a in attempts] == [(1, "expired"), (2, "succeeded")]
    dead = await asyncio.to_thread(dead_letters, stack.kafka_bootstrap)
    assert garbage in dead, "the undecodable event was not dead-lettered"
    assert dead[garbage][h.DLQ_SOURCE_TOPIC] == jobs.JOBS_TOPIC
    assert dead[garbage][h.DLQ_REASON] == "undecodable"

    for (method, year), job_id in submitted.items():
        job = await job_of(api, owner, job_id)
        report = job["result"]
        assert (job["attempts"], job["error"]) == (1, None)
        assert job["params"] == {"method": method, "from": f"{year}-01-01", "to": f"{year}-12-31"}
        total, pnls = HAND[method, year]
        assert report["total"] == {"USD": total}
        assert [e["pnl"] for e in report["entries"]] == pnls
        expected = domain_entries(history.records, history.owner, method, year)
        assert [
            (e["sale_transfer_id"], D(e["proceeds"]), D(e["cost"]), D(e["pnl"]))
            for e in report["entries"]
        ] == [(str(x.sale_transfer_id), x.proceeds, x.cost, x.pnl) for x in expected]
        assert report["by_symbol"][0]["symbol"] == history.symbol
        assert D(report["by_symbol"][0]["pnl"]) == sum((x.pnl for x in expected), D(0))
        assert (report["transfers_replayed"], report["method"]) == (EFFECTIVE, method)
