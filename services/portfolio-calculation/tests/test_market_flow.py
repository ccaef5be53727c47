"""Market data to portfolio, on the real stack: ticks go through market-data-ingest (prices),
trades at market through the ledger (transfers), and the portfolio's positions, P&L and
updates follow, with values computed independently here; reconciliation passes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from portfolio_testkit import UpdatesReader, eventually, new_id, publish

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

pytestmark = pytest.mark.stack
D = Decimal
TICKS = "marketdata.ticks.v1"
ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 120


class Feed:
    """Ticks of one symbol from one source, numbered from 1."""

    def __init__(self, producer: Producer, codec: AvroCodec, symbol: str) -> None:
        self.producer, self.codec, self.symbol = producer, codec, symbol
        self.source_id = f"portfolio-test-{uuid.uuid4().hex[:8]}"
        self.seq = 0

    async def tick(self, price: str) -> None:
        self.seq += 1
        now = datetime.now(UTC)
        p = D(price)
        record = {
            "event_id": new_id(),
            "occurred_at": now,
            "symbol": self.symbol,
            "venue": "XNAS",
            "price": p,
            "size": D(100),
            "bid": p - D("0.01"),
            "ask": p + D("0.01"),
            "exchange_ts": now,
            "source_id": self.source_id,
            "source_seq": self.seq,
        }
        await publish(self.producer, self.codec, TICKS, self.symbol, record)


async def post(client: httpx.AsyncClient, path: str, body: Any, headers: Any) -> httpx.Response:
    return await client.post(path, json=body, headers=headers)


async def test_ticks_trades_and_updates_end_to_end(stack, mint_token) -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    symbol = "E" + uuid.uuid4().hex[:7].upper()
    owner = new_id()
    admin = {"Authorization": f"Bearer {mint_token(new_id(), ('admin',))}"}
    ops = {"Authorization": f"Bearer {mint_token(new_id(), ('ops',))}"}
    me = {"Authorization": f"Bearer {mint_token(owner, ('customer',))}"}
    updates = UpdatesReader(stack.kafka_bootstrap, codec)
    async with (
        httpx.AsyncClient(base_url=stack.service_url("market-data-ingest"), timeout=30) as market,
        httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as ledger,
        httpx.AsyncClient(
            base_url=stack.service_url("portfolio-calculation"), timeout=30
        ) as portfolio,
    ):
        instrument = {"symbol": symbol, "currency": "USD", "price_scale": 2}
        assert (await post(market, "/v1/instruments", instrument, admin)).status_code == 201
        asset = {"code": symbol, "scale": 0, "kind": "share", "quote_currency": "USD"}
        assert (await post(ledger, "/v1/assets", asset, ops)).status_code == 201
        r = await post(ledger, "/v1/accounts", {"asset": "USD", "owner_id": owner}, ops)
        cash = r.json()["id"]
        deposit = {"transfer_id": new_id(), "account_id": cash, "amount": "10000.00"}
        assert (await post(ledger, "/v1/deposits", deposit, ops)).status_code == 201

        feed = Feed(producer, codec, symbol)
        await feed.tick("100.00")

        async def bought() -> Any:  # at market: once the ledger has seen the price
            body = {"trade_id": new_id(), "symbol": symbol, "side": "buy", "quantity": "10"}
            r = await post(ledger, "/v1/trades", body, me)
            return r.json() if r.status_code == 201 else None

        buy = (await eventually(bought, "a buy at market"))["trade"]
        assert D(buy["price"]) == D("100.00")
        paid = D(buy["notional"]) + D(buy["fee"])

        await feed.tick("101.00")
        await feed.tick("104.50")  # the latest: 10 x 104.50 = 1045.00

        def priced_at(price: str, quantity: int) -> Any:
            def check(u: dict[str, Any]) -> bool:
                return bool(u["positions"]) and (
                    u["positions"][0]["quantity"] == quantity
                    and u["positions"][0]["price"] == D(price)
                )

            return check

        last = await updates.until(owner, priced_at("104.50", 10), "the update at 104.50")
        (p,) = last["positions"]
        assert p["market_value"] == D("1045.00")
        assert p["cost_basis"] == paid
        assert p["unrealized_pnl"] == D("1045.00") - paid
        assert p["price_source_topic"] == TICKS
        assert last["cash"] == [{"asset": "USD", "amount": D("10000.00") - paid}]
        assert last["totals"]["total_value"] == D("10000.00") - paid + D("1045.00")

        body = {"trade_id": new_id(), "symbol": symbol, "side": "sell", "quantity": "4"}
        r = await post(ledger, "/v1/trades", body, me)
        assert r.status_code == 201, r.text
        sale = r.json()["trade"]
        proceeds = D(sale["notional"]) - D(sale["fee"])
        realized = proceeds - (paid * 4 / 10).quantize(D("0.01"))
        last = await updates.until(owner, priced_at("104.50", 6), "the update after the sale")
        assert last["positions"][0]["realized_pnl"] == realized
        r = await portfolio.get(f"/v1/portfolios/{owner}/realized", headers=me)
        assert r.json()["total"] == {"USD": str(realized)}
    updates.close()

    token = mint_token(new_id(), ("ops",))
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
            "tickertap.portfolio.reconcile",
            f"--ledger-url={stack.service_url('ledger')}",
            f"--portfolio={owner}",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "RECONCILE_LEDGER_TOKEN": token},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["drifting"] == 0
