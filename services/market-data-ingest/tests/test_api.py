"""The HTTP API against the running service of the local stack: every error code, and the
prices and bars the in-service worker makes of ticks published to marketdata.ticks.v1."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_testkit import Api, fresh_symbol, now_us, produce, read_topic, wait_for

from tickertap.marketdata.feed import SymbolSpec, simulate
from tickertap.messaging.headers import decode_headers

pytestmark = pytest.mark.stack
REFRESH_S = (
    1.5  # the worker rereads instruments every second (TICKERTAP_INGEST_INSTRUMENTS_REFRESH_S)
)


@pytest.fixture
async def api(stack: Any, mint_token: Any) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(
        base_url=stack.service_url("market-data-ingest"), timeout=10
    ) as client:
        yield Api(client, mint_token)


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code, r.text


# -- instruments -------------------------------------------------------------------------------


async def test_instruments_add_read_halt_resume(api: Api) -> None:
    symbol = fresh_symbol()
    body = {"symbol": symbol, "currency": "USD", "price_scale": 2}
    r = await api.client.post("/v1/instruments", json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    r = await api.client.post("/v1/instruments", json=body, headers=api.admin)
    assert r.status_code == 200  # the same again: nothing changes
    r = await api.client.post("/v1/instruments", json={**body, "price_scale": 4}, headers=api.admin)
    problem(r, 409, "instrument_exists")
    r = await api.client.get(f"/v1/instruments/{symbol}", headers=api.reader)
    assert r.status_code == 200
    assert r.json()["price_scale"] == 2
    r = await api.client.post(f"/v1/instruments/{symbol}/halt", headers=api.admin)
    assert r.json()["status"] == "halted"
    r = await api.client.post(f"/v1/instruments/{symbol}/resume", headers=api.admin)
    assert r.json()["status"] == "active"


async def test_instruments_list_pages(api: Api) -> None:
    for _ in range(3):
        await api.instrument(fresh_symbol("P"))
    seen: list[str] = []
    cursor = None
    for _ in range(1000):  # bounded
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await api.client.get("/v1/instruments", params=params, headers=api.reader)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [i["symbol"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) >= 3


@pytest.mark.parametrize(
    "body",
    [
        {"symbol": "aapl", "currency": "USD", "price_scale": 2},
        {"symbol": "A" * 21, "currency": "USD", "price_scale": 2},
        {"symbol": "OK1", "currency": "usd", "price_scale": 2},
        {"symbol": "OK1", "currency": "USD", "price_scale": 19},
        {"symbol": "OK1", "currency": "USD", "price_scale": "2"},
        {"symbol": "OK1", "currency": "USD", "price_scale": 2, "extra": 1},
        {"symbol": "OK1", "currency": "USD"},
    ],
)
async def test_bad_instrument_bodies_are_422(api: Api, body: dict[str, Any]) -> None:
    r = await api.client.post("/v1/instruments", json=body, headers=api.admin)
    problem(r, 422, "validation_error")


async def test_auth_errors(api: Api) -> None:
    problem(await api.client.get("/v1/instruments"), 401, "invalid_token")
    r = await api.client.get("/v1/prices/AAPL", headers={"Authorization": "Bearer nope"})
    problem(r, 401, "invalid_token")
    body = {"symbol": fresh_symbol(), "currency": "USD", "price_scale": 2}
    r = await api.client.post("/v1/instruments", json=body, headers=api.reader)
    problem(r, 403, "insufficient_scope")
    r = await api.client.post("/v1/instruments/AAPL/halt", headers=api.reader)
    problem(r, 403, "insufficient_scope")


async def test_not_found_and_bad_paths(api: Api) -> None:
    missing = fresh_symbol("X")
    problem(
        await api.client.get(f"/v1/instruments/{missing}", headers=api.reader),
        404,
        "instrument_not_found",
    )
    problem(
        await api.client.post(f"/v1/instruments/{missing}/halt", headers=api.admin),
        404,
        "instrument_not_found",
    )
    problem(
        await api.client.get(f"/v1/bars/{missing}", headers=api.reader),
        404,
        "instrument_not_found",
    )
    problem(
        await api.client.get("/v1/instruments/bad%20symbol", headers=api.reader),
        422,
        "validation_error",
    )
    symbol = fresh_symbol()
    await api.instrument(symbol)
    problem(
        await api.client.get(f"/v1/prices/{symbol}", headers=api.reader), 404, "price_not_found"
    )
    problem(
        await api.client.get("/v1/instruments", params={"cursor": "%%%"}, headers=api.reader),
        400,
        "invalid_cursor",
    )


async def test_prices_query_bounds(api: Api) -> None:
    many = ",".join(f"S{i}" for i in range(101))
    problem(
        await api.client.get("/v1/prices", params={"symbols": many}, headers=api.reader),
        422,
        "too_many_symbols",
    )
    problem(
        await api.client.get("/v1/prices", params={"symbols": "OK,bad!"}, headers=api.reader),
        422,
        "invalid_symbol",
    )
    problem(await api.client.get("/v1/prices", headers=api.reader), 422, "validation_error")
    r = await api.client.get("/v1/prices", params={"symbols": "NOPRICE1"}, headers=api.reader)
    assert r.status_code == 200
    assert r.json() == {"items": [], "missing": ["NOPRICE1"]}


def crafted_cursor(symbol: str, **fields: int) -> str:
    payload = {"sym": symbol, "i": "1m", "f": 0, "t": 60_000_000, "n": 0, **fields}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


async def test_bars_query_bounds(api: Api) -> None:
    symbol = fresh_symbol()
    await api.instrument(symbol)
    url = f"/v1/bars/{symbol}"
    t = "2026-11-26T10:00:00Z"
    cases = [
        ({"from": t, "to": t}, 422, "invalid_range"),
        ({"from": "2026-11-26T10:00:00", "to": t}, 422, "invalid_range"),
        ({"from": "2026-01-01T00:00:00Z", "to": t}, 422, "range_too_large"),
        ({"interval": "2m"}, 422, "validation_error"),
        ({"limit": 0}, 422, "validation_error"),
        ({"from": "yesterday"}, 422, "validation_error"),
        ({"cursor": "bm9wZQ=="}, 400, "invalid_cursor"),
        # the edges of the calendar, and a crafted cursor, are refused, never a 500
        ({"from": "9999-12-31T23:00:00-05:00"}, 422, "invalid_range"),
        ({"to": "0001-01-01T00:01:00Z"}, 422, "invalid_range"),
        ({"cursor": crafted_cursor(symbol, t=10**20)}, 422, "invalid_range"),
    ]
    for params, status, code in cases:
        problem(await api.client.get(url, params=params, headers=api.reader), status, code)


# -- the worker, seen through the API and the topics ------------------------------------------


async def test_ticks_become_prices_bars_and_dead_letters(api: Api, stack: Any) -> None:
    good, halted = fresh_symbol("G"), fresh_symbol("H")
    await api.instrument(good)
    await api.instrument(halted)
    r = await api.client.post(f"/v1/instruments/{halted}/halt", headers=api.admin)
    assert r.status_code == 200
    spec = SymbolSpec(good, Decimal("100.00"), 2, Decimal(5), Decimal(4))
    start = now_us() - 600_000_000  # ten minutes of exchange time, ending now
    start -= start % 60_000_000
    ticks = list(
        simulate([spec], seed=4, source_id=good, start_us=start, step_us=2_000_000, count=300)
    )
    bad = [
        {**ticks[0], "price": Decimal("100.001"), "source_seq": 1001},
        {**ticks[0], "size": Decimal(-1), "source_seq": 1002},
        {**ticks[0], "bid": Decimal("100.02"), "ask": Decimal("100.01"), "source_seq": 1003},
        {**ticks[0], "symbol": halted, "source_seq": 1004},
        {**ticks[0], "symbol": fresh_symbol("U"), "source_seq": 1005},
        {**ticks[0], "price": Decimal(0), "source_seq": 1006},
        {**ticks[0], "exchange_ts": now_us() + 3600_000_000, "source_seq": 1007},
        {**ticks[0], "exchange_ts": now_us() - 7200_000_000, "source_seq": 1008},
        {**ticks[0], "exchange_ts": start - 120_000_000, "source_seq": 1009},  # late
    ]
    duplicate = dict(ticks[-1])
    produce(stack.kafka_bootstrap, "marketdata.ticks.v1", [*ticks, *bad, duplicate])
    garbage = b"\x00garbage-" + good.encode()
    produce(stack.kafka_bootstrap, "marketdata.ticks.v1", [garbage])
    last = ticks[-1]

    async def price() -> dict[str, Any] | None:
        r = await api.client.get(f"/v1/prices/{good}", headers=api.reader)
        body = r.json() if r.status_code == 200 else None
        return body if body and body["exchange_ts"] == _iso(last["exchange_ts"]) else None

    body = await wait_for(price, "the latest price")
    assert body["price"] == str(last["price"])
    assert body["source_topic"] == "marketdata.ticks.v1"

    # 1-minute bars: every good tick counted once; pages of 4 cover them all
    params: dict[str, Any] = {
        "interval": "1m",
        "from": _iso(start),
        "to": _iso(now_us() + 60_000_000),
        "limit": 4,
    }
    bars = await pages(api, good, params)
    assert sum(b["tick_count"] for b in bars) == len(ticks)
    assert len({b["window_start"] for b in bars}) == len(bars) == 10
    assert sum(Decimal(b["volume"]) for b in bars) == sum(t["size"] for t in ticks)
    r = await api.client.get(
        f"/v1/bars/{good}",
        params={**params, "interval": "5m", "limit": 100},
        headers=api.reader,
    )
    five = r.json()["items"]
    assert sum(b["tick_count"] for b in five) == len(ticks)
    for interval in ("5m", "1h"):  # one bar a page: pages still cover every tick once
        paged = await pages(api, good, {**params, "interval": interval, "limit": 1})
        assert sum(b["tick_count"] for b in paged) == len(ticks)
        assert len({b["window_start"] for b in paged}) == len(paged)
    assert five[0]["open"] == bars[0]["open"]
    assert five[-1]["close"] == bars[-1]["close"]

    # dead letters: one per bad tick, original bytes, reason in the headers
    reasons = {
        "price_scale_exceeded", "size_negative", "bid_above_ask", "halted", "unknown_symbol",
        "price_not_positive", "future_timestamp", "stale_timestamp", "late", "undecodable",
    }  # fmt: skip
    keys = {good.encode(), halted.encode(), bad[4]["symbol"].encode(), b"RAW"}

    def ours(messages: list[Any]) -> list[Any]:
        return [
            m for m in messages
            if m.key() in keys and (m.key() != b"RAW" or m.value() == garbage)
        ]  # fmt: skip

    letters = read_topic(
        stack.kafka_bootstrap, "marketdata.ticks.dlq.v1", lambda ms: len(ours(ms)) >= len(reasons)
    )
    by_position = {  # the relay may publish one twice: one per source position counts
        (h["x-dlq-source-partition"], h["x-dlq-source-offset"]): h
        for h in (decode_headers(m.headers()) for m in ours(letters))
    }
    found = list(by_position.values())
    assert sorted(h["x-dlq-reason"] for h in found) == sorted(reasons)
    for h in found:
        assert h["x-dlq-source-topic"] == "marketdata.ticks.v1"
        assert int(h["x-dlq-source-offset"]) >= 0

    # the price topic has our symbol's last price with its source offset; the bars topic
    # the closed bars (the last minute may still be open)
    prices = read_topic(
        stack.kafka_bootstrap,
        "marketdata.prices.v1",
        lambda ms: any(m.key() == good.encode() for m in ms),
    )
    assert any(m.key() == good.encode() for m in prices)
    closed = [b for b in bars if b["closed"]]
    published = read_topic(
        stack.kafka_bootstrap,
        "marketdata.bars.v1",
        lambda ms: len([m for m in ms if m.key() == good.encode()]) >= len(closed),
    )
    ids = {decode_headers(m.headers())["x-event-id"] for m in published if m.key() == good.encode()}
    assert len(ids) == len(closed)  # one event per closed bar (the relay may repeat one)


async def pages(api: Api, symbol: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):  # bounded
        r = await api.client.get(
            f"/v1/bars/{symbol}",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=api.reader,
        )
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("more than 50 pages")


def _iso(us: int) -> str:
    ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return ts.isoformat().replace("+00:00", "Z")


async def test_halt_and_resume_reach_the_running_worker(api: Api, stack: Any) -> None:
    symbol = fresh_symbol("Q")
    await api.instrument(symbol)
    spec = SymbolSpec(symbol, Decimal("50.00"), 2, Decimal(5), Decimal(4))
    feed = simulate(
        [spec], seed=9, source_id=symbol, start_us=now_us() - 10_000_000, step_us=1000, count=500
    )
    key = symbol.encode()

    async def until(what: str, done: Any) -> None:
        """Send the next tick every 0.25 s until `done()` (the worker rereads instruments
        every second, so a halt or a resume reaches it within a few ticks)."""
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            produce(stack.kafka_bootstrap, "marketdata.ticks.v1", [next(feed)])
            await asyncio.sleep(0.25)
            if await done():
                return
        raise AssertionError(f"timed out waiting for {what}")

    async def halted_letters() -> bool:
        letters = read_topic(
            stack.kafka_bootstrap, "marketdata.ticks.dlq.v1", lambda ms: False, timeout_s=0.5
        )
        return any(
            m.key() == key and decode_headers(m.headers())["x-dlq-reason"] == "halted"
            for m in letters
        )

    async def priced_after(offset: int) -> bool:
        r = await api.client.get(f"/v1/prices/{symbol}", headers=api.reader)
        return r.status_code == 200 and int(r.json()["source_offset"]) > offset

    await until("a first price", lambda: priced_after(-1))
    r = await api.client.post(f"/v1/instruments/{symbol}/halt", headers=api.admin)
    assert r.json()["status"] == "halted"
    await until("a halted dead letter", halted_letters)
    r = await api.client.get(f"/v1/prices/{symbol}", headers=api.reader)
    offset_halted = int(r.json()["source_offset"])
    r = await api.client.post(f"/v1/instruments/{symbol}/resume", headers=api.admin)
    assert r.json()["status"] == "active"
    await until("a price after the resume", lambda: priced_after(offset_halted))
