"""Daily valuations: the snapshot command stores today's valuation of every portfolio; the
API lists stored days and computes today live."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import TRANSFERS, Book, eventually, new_id, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120


async def test_snapshots_are_stored_and_listed(stack, mint_token) -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    book = Book()
    record = book.deposit("10.00")
    await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    me = {"Authorization": f"Bearer {mint_token(book.owner, ('customer',))}"}
    base = f"/v1/portfolios/{book.owner}"
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
        today = datetime.now(UTC).date()
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
            assert [(r["method"], r["total_value"]) for r in stored] == [
                ("average", Decimal("10.00")),
                ("fifo", Decimal("10.00")),
            ]
            # a past day, as the job would have stored it yesterday
            await db.execute(
                "INSERT INTO portfolio.valuations (owner_id, day, method, base_currency,"
                " market_value, cost_basis, unrealized_pnl, realized_pnl, cash_value,"
                " total_value, day_change, as_of) VALUES ($1, $2, 'fifo', 'USD', 0, 0, 0, 0,"
                " 7, 7, 0, $3)",
                book.owner,
                yesterday,
                datetime.now(UTC) - timedelta(days=1),
            )
        finally:
            await db.close()

        params = {"from": yesterday.isoformat(), "to": today.isoformat()}
        r = await api.get(base + "/valuations", params=params, headers=me)
        assert r.status_code == 200, r.text
        days = r.json()["valuations"]
        assert [(x["date"], x["final"], x["total_value"]) for x in days] == [
            (yesterday.isoformat(), True, "7.00"),
            (today.isoformat(), False, "10.00"),
        ]
        r = await api.get(base + "/valuations", params={**params, "method": "average"}, headers=me)
        assert [x["date"] for x in r.json()["valuations"]] == [today.isoformat()]
        other = {"Authorization": f"Bearer {mint_token(new_id(), ('customer',))}"}
        r = await api.get(base + "/valuations", params=params, headers=other)
        assert r.status_code == 403
