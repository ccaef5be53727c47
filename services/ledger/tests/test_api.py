"""The ledger service over HTTP, against the running local stack (real Postgres, broker, Vault)."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from ledger_testkit import LedgerClient, new_id, snapshot

pytestmark = pytest.mark.stack


class Ledger(LedgerClient):
    """The ledger client, with deposits and transfers."""

    async def deposit(self, account_id: str, amount: str) -> httpx.Response:
        return await self.client.post(
            "/v1/deposits",
            json={"transfer_id": new_id(), "account_id": account_id, "amount": amount},
            headers=self.ops,
        )

    async def transfer(
        self,
        legs: list[tuple[str, str]],
        headers: dict[str, str] | None = None,
        key: str | None = None,
        transfer_id: str | None = None,
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/transfers",
            json={
                "transfer_id": transfer_id or new_id(),
                "legs": [{"account_id": a, "amount": x} for a, x in legs],
            },
            headers={**(headers or self.ops), "Idempotency-Key": key or f"k-{new_id()}"},
        )


@pytest.fixture
async def ledger(stack, mint_token):
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=stack.service_url("ledger"), timeout=30, limits=limits
    ) as client:
        yield Ledger(client, mint_token)


async def test_transfer_posts_balanced_legs_and_the_event(ledger: Ledger, db):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    assert (await ledger.deposit(alice, "100.00")).status_code == 201
    r = await ledger.transfer([(alice, "-30.5"), (bob, "30.50")])
    assert r.status_code == 201, r.text
    body = r.json()
    assert [(leg["amount"], leg["balance_after"]) for leg in body["legs"]] == [
        ("-30.50", "69.50"),
        ("30.50", "30.50"),
    ]
    assert await ledger.balance(alice) == Decimal("69.50")
    event = await db.fetchrow(
        "SELECT topic, key FROM ledger.outbox o JOIN ledger.transfers t ON t.event_id = o.event_id "
        "WHERE t.id = $1",
        uuid.UUID(body["id"]),
    )
    assert event["topic"] == "ledger.transfers.v1"


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unbalanced", 422, "unbalanced_transfer"),
        ("scale", 422, "scale_exceeded"),
        ("unknown_account", 422, "unknown_account"),
        ("zero", 422, "zero_amount"),
        ("too_many_legs", 422, "too_many_legs"),
        ("one_leg", 422, "too_few_legs"),
        ("duplicate_account", 422, "duplicate_account"),
        ("exponent", 422, "validation_error"),
        ("float", 422, "validation_error"),
        ("insufficient", 409, "insufficient_funds"),
        ("no_key", 422, "idempotency_key_required"),
    ],
)
async def test_rejected_transfers_get_their_code_and_change_nothing(
    ledger: Ledger, db, case: str, status: int, code: str
):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "10.00")
    legs: list[tuple[str, Any]] = {
        "unbalanced": [(alice, "-1.00"), (bob, "0.99")],
        "scale": [(alice, "-1.001"), (bob, "1.001")],
        "unknown_account": [(alice, "-1"), (new_id(), "1")],
        "zero": [(alice, "0"), (bob, "0")],
        "too_many_legs": [(alice, "-17")] + [(bob, "1")] * 17,
        "one_leg": [(alice, "-1")],
        "duplicate_account": [(alice, "-1"), (alice, "1")],
        "exponent": [(alice, "-1e2"), (bob, "1e2")],
        "float": [(alice, -1.5), (bob, 1.5)],
        "insufficient": [(alice, "-10.01"), (bob, "10.01")],
        "no_key": [(alice, "-1"), (bob, "1")],
    }[case]
    before = await snapshot(db)
    if case == "no_key":
        r = await ledger.client.post(
            "/v1/transfers",
            json={
                "transfer_id": new_id(),
                "legs": [{"account_id": a, "amount": x} for a, x in legs],
            },
            headers=ledger.ops,
        )
    else:
        r = await ledger.transfer(legs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    assert await snapshot(db) == before


async def test_idempotency_key_replays_and_refuses_another_body(ledger: Ledger, db):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "10.00")
    transfer_id, key = new_id(), f"k-{new_id()}"
    first = await ledger.transfer([(alice, "-1"), (bob, "1")], key=key, transfer_id=transfer_id)
    again = await ledger.transfer([(alice, "-1"), (bob, "1")], key=key, transfer_id=transfer_id)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    before = await snapshot(db)
    other = await ledger.transfer([(alice, "-2"), (bob, "2")], key=key, transfer_id=transfer_id)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    same_id = await ledger.transfer([(alice, "-1"), (bob, "1")], transfer_id=transfer_id)
    assert same_id.status_code == 409
    assert same_id.json()["code"] == "transfer_exists"
    assert await snapshot(db) == before
    assert await ledger.balance(alice) == Decimal("9.00")


async def test_the_same_request_sent_20_times_at_once_makes_one_transfer(ledger: Ledger, db):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "10.00")
    transfer_id, key = new_id(), f"k-{new_id()}"
    responses = await asyncio.gather(
        *(
            ledger.transfer([(alice, "-1"), (bob, "1")], key=key, transfer_id=transfer_id)
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], statuses
    assert len({r.json()["id"] for r in responses}) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM ledger.transfers WHERE id = $1", uuid.UUID(transfer_id)
        )
        == 1
    )
    assert await ledger.balance(alice) == Decimal("9.00")


async def test_200_withdrawals_race_on_funds_for_50_exactly_50_succeed(ledger: Ledger, db):
    owner = new_id()
    account = await ledger.account(owner)
    await ledger.deposit(account, "50.00")
    customer = ledger.as_customer(owner)

    async def withdraw() -> int:
        r = await ledger.client.post(
            "/v1/withdrawals",
            json={"transfer_id": new_id(), "account_id": account, "amount": "1.00"},
            headers=customer,
        )
        assert r.status_code in (201, 409), r.text
        if r.status_code == 409:
            assert r.json()["code"] == "insufficient_funds"
        return r.status_code

    statuses = await asyncio.gather(*(withdraw() for _ in range(200)))
    assert statuses.count(201) == 50
    assert statuses.count(409) == 150
    assert await ledger.balance(account) == Decimal("0.00")
    # concurrent batches wrote them: their times still follow their order (as-of is exact)
    times = await db.fetch(
        "SELECT posted_at FROM ledger.postings WHERE account_id = $1 ORDER BY id",
        uuid.UUID(account),
    )
    assert [t["posted_at"] for t in times] == sorted(t["posted_at"] for t in times)


async def test_random_leg_orders_never_deadlock_and_money_is_conserved(ledger: Ledger, db):
    accounts = [await ledger.account(new_id()) for _ in range(6)]
    for a in accounts:
        await ledger.deposit(a, "1000.00")
    rng = random.Random(7)

    async def shuffle_money() -> int:
        a, b, c = rng.sample(accounts, 3)
        legs = [(a, "-2.00"), (b, "1.00"), (c, "1.00")]
        rng.shuffle(legs)
        return (await ledger.transfer(legs)).status_code

    statuses = await asyncio.gather(*(shuffle_money() for _ in range(300)))
    assert set(statuses) == {201}
    total = sum([await ledger.balance(a) for a in accounts], Decimal(0))
    assert total == Decimal("6000.00")


async def test_customers_see_only_their_accounts_and_debit_only_their_own(ledger: Ledger):
    alice, bob = new_id(), new_id()
    a, b = await ledger.account(alice), await ledger.account(bob)
    await ledger.deposit(b, "5.00")
    as_alice = ledger.as_customer(alice)
    assert (await ledger.client.get(f"/v1/accounts/{a}", headers=as_alice)).status_code == 200
    hidden = await ledger.client.get(f"/v1/accounts/{b}", headers=as_alice)
    assert hidden.status_code == 404  # not 403: another customer's account does not exist for her
    listed = await ledger.client.get(f"/v1/accounts?owner={bob}", headers=as_alice)
    assert listed.status_code == 403
    # a machine client with the support role (its subject is not a customer id) reads all
    machine = {"Authorization": f"Bearer {ledger.mint('client:ops-tools', ('support',))}"}
    listed = await ledger.client.get(f"/v1/accounts?owner={bob}", headers=machine)
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [b]
    theft = await ledger.transfer([(b, "-5"), (a, "5")], headers=as_alice)
    assert theft.status_code == 403
    no_token = await ledger.client.get(f"/v1/accounts/{a}")
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")


async def test_row_level_security_hides_rows_from_a_login_that_names_no_owner(
    stack, ledger: Ledger
):
    """The service's own check is not the only line: Postgres filters rows too."""
    owner = new_id()
    await ledger.account(owner)
    import hvac

    root = hvac.Client(url=stack.vault_addr, token=stack.vault_root_token)
    creds = root.secrets.database.generate_credentials("ledger")["data"]
    conn = await asyncpg.connect(
        host=stack.pg_host,
        port=stack.pg_port,
        database=stack.database,
        user=creds["username"],
        password=creds["password"],
    )
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger.accounts") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('tickertap.owner_id', $1, true)", owner)
            assert await conn.fetchval("SELECT count(*) FROM ledger.accounts") == 1
        async with conn.transaction():
            await conn.execute("SELECT set_config('tickertap.scope', 'all', true)")
            assert await conn.fetchval("SELECT count(*) FROM ledger.accounts") >= 1
    finally:
        await conn.close()


async def test_reversal_undoes_a_transfer_once(ledger: Ledger):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "10.00")
    original = (await ledger.transfer([(alice, "-4"), (bob, "4")])).json()["id"]
    undo = await ledger.client.post(
        f"/v1/transfers/{original}/reversal", json={"reversal_id": new_id()}, headers=ledger.ops
    )
    assert undo.status_code == 201, undo.text
    assert undo.json()["reverses"] == original
    assert await ledger.balance(alice) == Decimal("10.00")
    twice = await ledger.client.post(
        f"/v1/transfers/{original}/reversal", json={"reversal_id": new_id()}, headers=ledger.ops
    )
    assert twice.status_code == 409
    assert twice.json()["code"] == "already_reversed"


async def test_racing_reversals_reverse_once_and_the_database_refuses_a_second(
    ledger: Ledger, db: asyncpg.Connection
):
    """Ten reversals of one transfer at once: one posts, nine are 409 already_reversed.
    Below the service, the unique index over reversals refuses a second one outright."""
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "10.00")
    original = (await ledger.transfer([(alice, "-4"), (bob, "4")])).json()["id"]
    replies = await asyncio.gather(
        *(
            ledger.client.post(
                f"/v1/transfers/{original}/reversal",
                json={"reversal_id": new_id()},
                headers=ledger.ops,
            )
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in replies) == [201] + [409] * 9
    assert {r.json()["code"] for r in replies if r.status_code == 409} == {"already_reversed"}
    assert await ledger.balance(alice) == Decimal("10.00")
    async with db.transaction():
        await db.execute("SELECT set_config('tickertap.scope', 'all', true)")
        with pytest.raises(asyncpg.UniqueViolationError, match="transfers_reversal"):
            await db.execute(
                "INSERT INTO ledger.transfers (id, kind, reverses, owner_ids, event_id)"
                " VALUES ($1, 'reversal', $2, '{}', $3)",
                uuid.uuid4(),
                uuid.UUID(original),
                uuid.uuid4(),
            )


async def test_bodies_over_the_bound_are_413(stack, ledger: Ledger):
    """Refused from the declared length, before the body is read; then the connection closes.

    (A client that keeps sending the body after the 413 may see the close as a write
    error, as HTTP allows; so this speaks HTTP over a socket and sends headers only.)
    """
    host, port = stack.service_url("ledger").removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/transfers HTTP/1.1\r\nHost: ledger\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2000000\r\n"
            + f"Authorization: {ledger.ops['Authorization']}\r\n\r\n".encode()
        )
        await writer.drain()
        # until the server closes (it says `connection: close`): head and body may come apart
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b'"code": "body_too_large"' in rest


async def test_postings_page_with_a_cursor_and_balance_as_of(ledger: Ledger):
    account = await ledger.account(new_id())
    for _ in range(5):
        await ledger.deposit(account, "1.00")
    page = (
        await ledger.client.get(f"/v1/accounts/{account}/postings?limit=3", headers=ledger.ops)
    ).json()
    assert [p["balance_after"] for p in page["items"]] == ["1.00", "2.00", "3.00"]
    rest = (
        await ledger.client.get(
            f"/v1/accounts/{account}/postings?limit=3&cursor={page['next_cursor']}",
            headers=ledger.ops,
        )
    ).json()
    assert [p["balance_after"] for p in rest["items"]] == ["4.00", "5.00"]
    assert rest["next_cursor"] is None
    as_of = page["items"][1]["posted_at"]
    past = await ledger.client.get(
        f"/v1/accounts/{account}/balance", params={"as_of": as_of}, headers=ledger.ops
    )
    assert Decimal(past.json()["balance"]) >= Decimal("2.00")


async def test_batch_endpoint_posts_each_transfer_on_its_own(ledger: Ledger):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "3.00")
    transfers = [
        {
            "transfer_id": new_id(),
            "legs": [{"account_id": alice, "amount": "-1"}, {"account_id": bob, "amount": "1"}],
        }
        for _ in range(5)
    ]
    r = await ledger.client.post(
        "/v1/transfers/batch", json={"transfers": transfers}, headers=ledger.ops
    )
    assert r.status_code == 200, r.text
    statuses = [item["status"] for item in r.json()["results"]]
    assert statuses == [201, 201, 201, 409, 409]
    assert await ledger.balance(alice) == Decimal("0.00")


async def test_concurrent_batches_share_transactions_and_keep_their_own_results(
    ledger: Ledger,
):
    """Four batches at once on the same accounts (funds for 25 of their 40 transfers):
    exactly 25 succeed, each response lists its own items in order, nothing goes below 0."""
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    await ledger.deposit(alice, "25.00")

    async def batch() -> list[dict[str, Any]]:
        transfers = [
            {
                "transfer_id": new_id(),
                "legs": [
                    {"account_id": alice, "amount": "-1.00"},
                    {"account_id": bob, "amount": "1.00"},
                ],
            }
            for _ in range(10)
        ]
        r = await ledger.client.post(
            "/v1/transfers/batch", json={"transfers": transfers}, headers=ledger.ops
        )
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        assert [item["index"] for item in results] == list(range(10))
        for item, sent in zip(results, transfers, strict=True):
            if item["status"] == 201:
                assert item["transfer"]["id"] == sent["transfer_id"]
        return results

    results = [
        item for items in await asyncio.gather(*(batch() for _ in range(4))) for item in items
    ]
    assert sorted({item["status"] for item in results}) == [201, 409]
    assert sum(item["status"] == 201 for item in results) == 25
    assert {item["code"] for item in results if item["status"] == 409} == {"insufficient_funds"}
    assert await ledger.balance(alice) == Decimal("0.00")
    assert await ledger.balance(bob) == Decimal("25.00")


async def test_transfer_batches_are_counted_on_metrics_by_how_they_were_written(ledger: Ledger):
    alice, bob = await ledger.account(new_id()), await ledger.account(new_id())
    assert (await ledger.deposit(alice, "10.00")).status_code == 201
    assert (await ledger.transfer([(alice, "-1.00"), (bob, "1.00")])).status_code == 201
    text = (await ledger.client.get("/metrics")).text
    line = r'^tickertap_ledger_transfer_batches_total\{how="(\w+)"\} (\S+)$'
    counted = {how: float(n) for how, n in re.findall(line, text, re.M)}
    hows = {"remembered", "optimistic", "locked", "balance_changed"}
    hows |= {"remembered_moved", "remembered_refused", "remembered_taken"}
    assert set(counted) == hows, text[-2000:]
    written = counted["remembered"] + counted["optimistic"] + counted["locked"]
    assert written >= 2  # one batch each, at least
