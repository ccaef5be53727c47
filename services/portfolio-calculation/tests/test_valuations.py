"""Daily valuations: the snapshot command stores today's valuation of every portfolio; the
API lists stored days and computes today live."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import TRANSFERS, Book, eventually, new_id, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120


ATTEMPTS_MAX = 2  # a second attempt only when the first straddled midnight UTC


def utc_today() -> date:
    return datetime.now(UTC).date()


async def test_snapshots_are_stored_and_listed(stack, mint_token) -> None:
    """The job stores and the API computes "today" by their own clocks: an attempt counts
    only if the UTC day did not change while it ran (else it is run again, whole)."""
    for _ in range(ATTEMPTS_MAX):
        today = utc_today()
        seen = await snapshot_and_list(stack, mint_token, today)
        if utc_today() == today:
            break
    else:
        pytest.fail(f"every one of {ATTEMPTS_MAX} attempts straddled midnight UTC")

    yesterday = today - timedelta(days=1)
    assert seen["stored"] == [("average", Decimal("10.00")), ("fifo", Decimal("10.00"))]
    assert seen["fifo"] == [
        (yesterday.isoformat(), True, "7.00"),
        (today.isoformat(), False, "10.00"),
    ]
    assert seen["average"] == [today.isoformat()]
    assert seen["other_status"] == 403


async def snapshot_and_list(stack, mint_token, today: date) -> dict[str, Any]:
    """One attempt with a new portfolio: run the snapshot job, store a past day by hand,
    and list both through the API; what was seen, for the caller to check."""
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    book = Book()
    record = book.deposit("10.00")
    await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    me = {"Authorization": f"Bearer {mint_token(book.owner, ('customer',))}"}
    base = f"/v1/portfolios/{book.owner}"
    seen: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=stack.service_url("portfolio-calculation")) as api:

        async def applied() -> bool:
            return (await api.get(base, headers=me)).status_code == 200

        await eventually(applied, "the deposit applied")
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(ROOT / "deploy" / "local" / "stack.py"),
                "exec",
                "portfolio-calculation",
                "--",
                "python",
                "-m",
                "tickertap.portfolio.valuations",
            ],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["portfolios"] >= 1
        yesterday = today - timedelta(days=1)
        db = await asyncpg.connect(stack.pg_admin_url)
        try:
            stored = await db.fetch(
                "SELECT method, total_value FROM portfolio.valuations"
                " WHERE owner_id = $1 AND day = $2 ORDER BY method",
                book.owner,
                today,
            )
            seen["stored"] = [(r["method"], r["total_value"]) for r in stored]
            # a past day, as the job would have stored it yesterday
            await db.execute(
                "INSERT INTO portfolio.valuations (owner_id, day, method, base_currency,"
                " market_value, cost_basis, unrealized_pnl, realized_pnl, cash_value,"
                " total_value, day_change, as_of) VALUES ($1, $2, 'fifo', 'USD', 0, 0, 0, 0,"
                " 7, 7, 0, $3)",
                book.owner,
                yesterday,
                datetime.combine(yesterday, time(12), UTC),
            )
        finally:
            await db.close()

        params = {"from": yesterday.isoformat(), "to": today.isoformat()}
        r = await api.get(base + "/valuations", params=params, headers=me)
        assert r.status_code == 200, r.text
        days = r.json()["valuations"]
        seen["fifo"] = [(x["date"], x["final"], x["total_value"]) for x in days]
        r = await api.get(base + "/valuations", params={**params, "method": "average"}, headers=me)
        seen["average"] = [x["date"] for x in r.json()["valuations"]]
        other = {"Authorization": f"Bearer {mint_token(new_id(), ('customer',))}"}
        r = await api.get(base + "/valuations", params=params, headers=other)
        seen["other_status"] = r.status_code
    return seen
