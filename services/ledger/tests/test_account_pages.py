"""Paging of `GET /v1/accounts?owner=` and `GET /v1/owners`, against the running stack.

An owner may hold more accounts than one page (a reconciliation must still see every
one), so the list is a cursor page: `items` as before, plus `next_cursor`.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from ledger_testkit import LedgerClient, new_id

pytestmark = pytest.mark.stack

PAGED_ASSETS = 205  # more than one page of the largest size (200)
CONCURRENCY = 16
PAGES_MAX = 1000


@pytest.fixture
async def ledger(stack, mint_token):
    async with httpx.AsyncClient(base_url=stack.service_url("ledger"), timeout=30) as client:
        yield LedgerClient(client, mint_token)


async def paged_assets(ledger: LedgerClient, count: int) -> list[str]:
    """`count` crypto assets with fixed codes (creating one that exists changes nothing)."""
    codes = [f"PGT{i:04d}" for i in range(count)]
    for start in range(0, count, CONCURRENCY):
        responses = await asyncio.gather(
            *(
                ledger.client.post(
                    "/v1/assets",
                    json={"code": code, "scale": 8, "kind": "crypto"},
                    headers=ledger.ops,
                )
                for code in codes[start : start + CONCURRENCY]
            )
        )
        assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    return codes


async def ordered(ledger: LedgerClient, owner: str, ids: list[str]) -> list[str]:
    """`ids` in the list's order (accounts opened at once have no order of their own)."""
    items, _ = await all_pages(ledger, "/v1/accounts", {"owner": owner, "limit": 200}, ledger.ops)
    wanted = set(ids)
    return [a["id"] for a in items if a["id"] in wanted]  # type: ignore[index]


async def all_pages(
    ledger: LedgerClient, path: str, params: dict[str, object], headers: dict[str, str]
) -> tuple[list[object], int]:
    items: list[object] = []
    cursor = None
    for pages in range(1, PAGES_MAX + 1):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await ledger.client.get(path, params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
    raise AssertionError(f"more than {PAGES_MAX} pages")


async def test_an_owners_accounts_come_in_pages_oldest_first(ledger: LedgerClient):
    owner = new_id()
    codes = await paged_assets(ledger, PAGED_ASSETS)
    opened = []  # in creation order: one batch after the other, each in its order
    for start in range(0, len(codes), CONCURRENCY):
        batch = codes[start : start + CONCURRENCY]
        ids = await asyncio.gather(*(ledger.account(owner, code) for code in batch))
        opened += await ordered(ledger, owner, ids)
    # the largest page is not enough; pages of it plus the rest are
    first = await ledger.client.get(
        "/v1/accounts", params={"owner": owner, "limit": 200}, headers=ledger.ops
    )
    assert first.status_code == 200
    assert len(first.json()["items"]) == 200
    assert first.json()["next_cursor"] == opened[199]
    items, pages = await all_pages(ledger, "/v1/accounts", {"owner": owner}, ledger.ops)
    assert pages == 3  # 100 + 100 + 5
    assert [a["id"] for a in items] == opened  # type: ignore[index]
    # a customer pages through her own the same way
    mine, _ = await all_pages(ledger, "/v1/accounts", {"limit": 150}, ledger.as_customer(owner))
    assert [a["id"] for a in mine] == opened  # type: ignore[index]


async def test_a_short_list_keeps_its_shape_and_a_foreign_cursor_is_422(ledger: LedgerClient):
    alice, bob = new_id(), new_id()
    a = await ledger.account(alice)
    b = await ledger.account(bob)
    r = await ledger.client.get("/v1/accounts", params={"owner": alice}, headers=ledger.ops)
    assert r.json()["next_cursor"] is None
    assert [x["id"] for x in r.json()["items"]] == [a]
    # a cursor from another owner's list, or no account at all: a clear 422, not a page
    for cursor in (b, new_id(), "not-a-uuid"):
        r = await ledger.client.get(
            "/v1/accounts", params={"owner": alice, "cursor": cursor}, headers=ledger.ops
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await ledger.client.get(
        "/v1/accounts", params={"owner": alice, "cursor": b}, headers=ledger.ops
    )
    assert r.json()["code"] == "invalid_cursor"
    r = await ledger.client.get("/v1/accounts", params={"owner": alice, "limit": 201})
    assert r.status_code in (401, 422)


async def test_owners_are_listed_in_pages_for_readers_of_all(ledger: LedgerClient, mint_token):
    owners = sorted(new_id() for _ in range(3))
    for owner in owners:
        await ledger.account(owner)
    support = {"Authorization": f"Bearer {mint_token('client:recon-test', ('support',))}"}
    # small pages follow on from each other (the stack holds other tests' owners too)
    first = (await ledger.client.get("/v1/owners", params={"limit": 2}, headers=support)).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"] == first["items"][-1]
    second = await ledger.client.get(
        "/v1/owners", params={"limit": 2, "cursor": first["next_cursor"]}, headers=support
    )
    assert second.status_code == 200
    assert second.json()["items"][0] > first["items"][-1]
    listed, _ = await all_pages(ledger, "/v1/owners", {"limit": 500}, support)
    assert listed == sorted(listed)
    assert len(set(listed)) == len(listed)
    assert set(owners) <= set(listed)
    # customers may not enumerate the others
    r = await ledger.client.get("/v1/owners", headers=ledger.as_customer(owners[0]))
    assert r.status_code == 403
