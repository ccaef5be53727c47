"""The rebuild command recomputes every portfolio from its stored transfers: identical to
the live state after the consumer's work; a corrupted row is found, named and repaired."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import TRANSFERS, Book, eventually, new_id, new_symbol, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120


async def run_rebuild(*args: str) -> tuple[int, dict[str, Any]]:
    """The command as an operator runs it: through the launcher, as the service's role."""
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
            "tickertap.portfolio.rebuild",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env=os.environ,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


async def test_rebuild_finds_and_repairs_a_difference(stack, mint_token) -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    book, symbol = Book(), new_symbol()
    records = [
        book.deposit("900.00"),
        book.trade(symbol, "buy", "3", "100.00", "1.00"),
        book.trade(symbol, "sell", "1", "110.00", "0.50"),
    ]
    for record in records:
        await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    support = {"Authorization": f"Bearer {mint_token(new_id(), ('support',))}"}
    async with httpx.AsyncClient(base_url=stack.service_url("portfolio-calculation")) as api:

        async def applied() -> bool:
            r = await api.get(f"/v1/portfolios/{book.owner}", headers=support)
            return r.status_code == 200 and r.json()["transfers_applied"] == len(records)

        await eventually(applied, "the transfers applied")

    code, report = await run_rebuild()
    assert book.owner not in {i["portfolio_id"] for i in report["items"]}
    assert (code, report["differing"]) == (0, 0), report

    db = await asyncpg.connect(stack.pg_admin_url)
    try:
        await db.execute(
            "UPDATE portfolio.lots SET cost = cost + 0.01 WHERE owner_id = $1", book.owner
        )
        await db.execute(
            "UPDATE portfolio.balances SET amount = amount - 1 WHERE owner_id = $1 AND asset = $2",
            book.owner,
            "USD",
        )
        code, report = await run_rebuild()
        assert code == 1
        assert {"portfolio_id": book.owner, "differs_in": ["balances", "lots"]} in report["items"]

        code, report = await run_rebuild("--repair")
        assert (code, report["repaired"]) == (1, report["differing"])
        code, report = await run_rebuild()
        assert (code, report["differing"]) == (0, 0)
        cost = await db.fetchval(
            "SELECT sum(cost) FROM portfolio.lots WHERE owner_id = $1", book.owner
        )
        assert cost == Decimal("200.67")  # 301.00 paid - 100.33 (a third, to the cent) sold
    finally:
        await db.close()
