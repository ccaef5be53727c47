"""Batches written optimistically (one statement on balances read just before, or
remembered from the ledger's last read or write of the account), by two ledgers side by
side as two replicas would run: a balance that changed between the read and the write
fails the statement whole, and the batch is posted again under row locks; a remembered
balance that moved, a refusal on remembered balances, and a key or transfer id taken send
the batch to read its context after all.

The ledgers run in this process, on the stack's Postgres with the ledger's own Vault
credentials; each has its own posting pool, as each replica does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tickertap.db import DatabaseSettings, create_engine
from tickertap.ledger import domain as d
from tickertap.ledger import repository as repo
from tickertap.ledger.handlers import Ledger, Posted, Remembered, TransferRequest
from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.money import install_context
from tickertap.runtime import messaging_tables
from tickertap.secrets import AppRoleLogin, CredentialRotator, Vault


@pytest.fixture
async def ledgers(stack: Any, approle_secret_id: Any) -> AsyncIterator[tuple[Ledger, Ledger]]:
    install_context()
    vault = Vault(stack.vault_addr)
    await vault.login_approle(AppRoleLogin(stack.role_id("ledger"), approle_secret_id("ledger")))
    rotator = CredentialRotator(vault, "ledger")
    await rotator.start()
    db = DatabaseSettings(
        host=stack.pg_host, port=stack.pg_port, name=stack.database, schema="ledger"
    )
    engines = []

    def engine(name: str, **options: Any) -> Any:
        engines.append(create_engine(db, rotator, application_name=name, **options))
        return engines[-1]

    codec = AvroCodec(load_schemas(find_schemas_dir()))
    outbox, _ = messaging_tables("ledger")
    pair = tuple(
        Ledger(
            engine(f"ledger-test-{n}"),
            engine(f"ledger-test-{n}-reader", read_only=True),
            outbox,
            codec,
            batch_workers=2,
            poster=engine(f"ledger-test-{n}-poster", session_settings=repo.POSTING_SESSION),
        )
        for n in range(2)
    )
    running = [asyncio.create_task(ledger.run()) for ledger in pair]
    try:
        yield pair[0], pair[1]
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for each in engines:
            await each.dispose()
        await rotator.stop()
        vault.close()


def request(cmd: d.PostTransfer, key: str | None = None) -> TransferRequest:
    return TransferRequest(cmd, key, uuid.uuid4().bytes)


async def funded(ledger: Ledger, amount: str) -> uuid.UUID:
    row, _ = await ledger.open_account(uuid.uuid4(), "USD")
    account = row.account.id
    await ledger.post(
        request(await ledger.deposit_command(uuid.uuid4(), account, Decimal(amount), {}))
    )
    return account


async def withdrawal(ledger: Ledger, account: uuid.UUID, amount: str) -> TransferRequest:
    cmd = await ledger.deposit_command(uuid.uuid4(), account, Decimal(amount), {}, withdraw=True)
    return request(cmd, key=f"test:{uuid.uuid4()}")


async def history(db: Any, account: uuid.UUID) -> list[Decimal]:
    """The account's balance after each of its postings, in order."""
    rows = await db.fetch(
        "SELECT balance_after FROM ledger.postings WHERE account_id = $1 ORDER BY id", account
    )
    return [r["balance_after"] for r in rows]


async def stored_balance(db: Any, account: uuid.UUID) -> Decimal:
    balance: Decimal = await db.fetchval(
        "SELECT balance FROM ledger.accounts WHERE id = $1", account
    )
    return balance


async def events_of(db: Any, transfer_ids: list[uuid.UUID]) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM ledger.outbox o JOIN ledger.transfers t USING (event_id)"
        " WHERE t.id = ANY($1::uuid[])",
        transfer_ids,
    )
    return count


async def test_a_balance_changed_after_the_read_fails_the_write_whole_then_it_posts_locked(
    ledgers: tuple[Ledger, Ledger], db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ledgers
    first.remembered = Remembered(0)  # every batch reads its context
    account = await funded(first, "100.00")
    read, raced = repo.batch_context, []

    async def read_then_race(pg: Any, *args: Any, lock: bool) -> repo.BatchContext:
        """The first ledger's read, then the second ledger withdraws from the account
        before the first one writes: its write finds the balance changed."""
        ctx = await read(pg, *args, lock=lock)
        if not raced:
            raced.append(None)
            raced.append(await second.post(await withdrawal(second, account, "30.00")))
        return ctx

    monkeypatch.setattr(repo, "batch_context", read_then_race)
    late = await withdrawal(first, account, "50.00")
    posted = await first.post(late)
    monkeypatch.undo()

    assert first.batch_counts["balance_changed"] == 1  # its optimistic write found 70, not 100
    assert first.batch_counts["locked"] == 1  # then it posted under locks, on 70
    assert second.batch_counts["optimistic"] == 1
    assert await history(db, account) == [Decimal("100.00"), Decimal("70.00"), Decimal("20.00")]
    assert await stored_balance(db, account) == Decimal("20.00")
    # the failed statement left nothing: one transfer, one event, one key each
    assert await events_of(db, [posted.transfer.id, raced[1].transfer.id]) == 2
    keys = await db.fetchval(
        "SELECT count(*) FROM ledger.idempotency_keys WHERE transfer_id = $1", posted.transfer.id
    )
    assert keys == 1
    assert (await first.post(late)).replayed  # and its key replays it


async def test_a_write_waiting_on_the_row_lock_rechecks_the_balance_it_finds_changed(
    ledgers: tuple[Ledger, Ledger], db: Any, stack: Any
) -> None:
    """Both ledgers' writes wait for the account's row lock, their snapshots taken: the
    second to get it re-checks the balance on the row's newest version (Postgres'
    EvalPlanQual), finds the first one's change and posts again under locks."""
    first, second = ledgers
    first.remembered, second.remembered = Remembered(0), Remembered(0)  # every batch reads
    account = await funded(first, "100.00")
    watcher = await asyncpg.connect(stack.pg_admin_url)

    async def waiting(application: str) -> None:
        for _ in range(500):
            if await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND wait_event_type = 'Lock' AND query LIKE 'WITH l AS%'",
                application,
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{application} never waited for the lock")

    try:
        async with db.transaction():  # holds the account's row lock until the block ends
            await db.execute("SELECT 1 FROM ledger.accounts WHERE id = $1 FOR UPDATE", account)
            ahead = asyncio.ensure_future(first.post(await withdrawal(first, account, "30.00")))
            await waiting("ledger-test-0-poster")
            behind = asyncio.ensure_future(second.post(await withdrawal(second, account, "50.00")))
            await waiting("ledger-test-1-poster")
        await asyncio.gather(ahead, behind)
    finally:
        await watcher.close()

    assert (first.batch_counts["optimistic"], first.batch_counts["balance_changed"]) == (2, 0)
    assert second.batch_counts["balance_changed"] == 1
    assert second.batch_counts["locked"] == 1
    assert await history(db, account) == [Decimal("100.00"), Decimal("70.00"), Decimal("20.00")]


async def test_two_ledgers_race_200_withdrawals_on_funds_for_50_exactly_50_succeed(
    ledgers: tuple[Ledger, Ledger], db: Any
) -> None:
    account = await funded(ledgers[0], "50.00")
    requests = [await withdrawal(ledgers[n % 2], account, "1.00") for n in range(200)]
    outcomes = await asyncio.gather(
        *(ledgers[n % 2].post(r) for n, r in enumerate(requests)), return_exceptions=True
    )
    posted = [o for o in outcomes if isinstance(o, Posted)]
    refused = [o for o in outcomes if isinstance(o, d.InsufficientFunds)]
    assert (len(posted), len(refused)) == (50, 150), outcomes
    assert await stored_balance(db, account) == 0
    assert min(await history(db, account)) == 0  # never below
    assert await events_of(db, [p.transfer.id for p in posted]) == 50
    both = ledgers[0].batch_counts + ledgers[1].batch_counts
    written = both["remembered"] + both["optimistic"] + both["locked"]
    assert written >= 2, both  # every batch was written one way


async def test_two_ledgers_with_random_leg_orders_never_deadlock_and_conserve_money(
    ledgers: tuple[Ledger, Ledger], db: Any
) -> None:
    accounts = [await funded(ledgers[0], "100.00") for _ in range(5)]
    rng = random.Random(7)
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    deadlocks_before = await db.fetchval(deadlocks)

    def shuffle() -> d.PostTransfer:
        payer, payee, third = rng.sample(accounts, 3)
        legs = [
            d.Leg(payer, Decimal("-2.00")),
            d.Leg(payee, Decimal("1.50")),
            d.Leg(third, Decimal("0.50")),
        ]
        rng.shuffle(legs)
        return d.PostTransfer(uuid.uuid4(), tuple(legs))

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(
                ledgers[n % 2].post(request(shuffle(), key=f"test:{n}:{uuid.uuid4()}"))
                for n in range(120)
            ),
            return_exceptions=True,
        ),
        timeout=60,
    )
    assert all(isinstance(o, Posted | d.InsufficientFunds) for o in outcomes), outcomes
    await asyncio.sleep(0.6)  # the statistics are sent every 500 ms at most
    assert await db.fetchval(deadlocks) == deadlocks_before  # none met, none retried
    balances = [await stored_balance(db, a) for a in accounts]
    assert sum(balances) == Decimal("500.00")
    for account, balance in zip(accounts, balances, strict=True):
        total = await db.fetchval(
            "SELECT sum(amount) FROM ledger.postings WHERE account_id = $1", account
        )
        assert (total, (await history(db, account))[-1]) == (balance, balance)


def counted(ledger: Ledger) -> dict[str, int]:
    return dict(ledger.batch_counts)


def grown(before: dict[str, int], ledger: Ledger) -> dict[str, int]:
    return {
        how: n - before.get(how, 0)
        for how, n in ledger.batch_counts.items()
        if n != before.get(how, 0)
    }


async def test_a_remembered_balance_that_moved_fails_the_write_whole_then_it_is_read(
    ledgers: tuple[Ledger, Ledger], db: Any
) -> None:
    first, second = ledgers
    account = await funded(first, "100.00")  # first remembers 100
    await second.post(await withdrawal(second, account, "30.00"))  # 70, unknown to first
    before = counted(first)
    posted = await first.post(await withdrawal(first, account, "50.00"))

    # its write on 100 found 70 and wrote nothing; read, it posted on 70
    assert grown(before, first) == {"remembered_moved": 1, "optimistic": 1}
    assert await history(db, account) == [Decimal("100.00"), Decimal("70.00"), Decimal("20.00")]
    assert await events_of(db, [posted.transfer.id]) == 1
    # balances moving under it: the next batch reads too, then it remembers again
    before = counted(first)
    await first.post(await withdrawal(first, account, "1.00"))
    assert grown(before, first) == {"optimistic": 1}
    await first.post(await withdrawal(first, account, "1.00"))
    assert grown(before, first) == {"optimistic": 1, "remembered": 1}
    assert await stored_balance(db, account) == Decimal("18.00")
    # stamped on Postgres' clock or on the ledger's view of it: in posting order either way
    stamps = await db.fetch(
        "SELECT t.created_at FROM ledger.postings p JOIN ledger.transfers t"
        " ON t.id = p.transfer_id WHERE p.account_id = $1 ORDER BY p.id",
        account,
    )
    created = [r["created_at"] for r in stamps]
    assert len(created) == 5
    assert created == sorted(created)
    assert len(set(created)) == len(created)


async def test_a_refusal_on_remembered_balances_is_checked_on_read_ones(
    ledgers: tuple[Ledger, Ledger], db: Any
) -> None:
    """A balance that may have grown since it was remembered proves no refusal."""
    first, second = ledgers
    account = await funded(first, "100.00")
    await first.post(await withdrawal(first, account, "100.00"))  # first remembers 0
    deposit = await second.deposit_command(uuid.uuid4(), account, Decimal("50.00"), {})
    await second.post(request(deposit))  # 50, unknown to first
    before = counted(first)
    posted = await first.post(await withdrawal(first, account, "30.00"))

    assert isinstance(posted, Posted)  # not insufficient_funds on the remembered 0
    assert grown(before, first) == {"remembered_refused": 1, "optimistic": 1}
    assert await history(db, account) == [
        Decimal("100.00"),
        Decimal("0.00"),
        Decimal("50.00"),
        Decimal("20.00"),
    ]
    # refused on a balance read, it stays refused
    with pytest.raises(d.InsufficientFunds):
        await first.post(await withdrawal(first, account, "20.01"))
    assert await stored_balance(db, account) == Decimal("20.00")


async def test_a_retry_and_a_taken_transfer_id_on_remembered_balances_are_read(
    ledgers: tuple[Ledger, Ledger], db: Any
) -> None:
    """The statement's unique keys refuse them whole; read, they are what they are."""
    first, _ = ledgers
    account = await funded(first, "100.00")
    once = await withdrawal(first, account, "10.00")
    before = counted(first)
    posted = await first.post(once)
    assert grown(before, first) == {"remembered": 1}

    before = counted(first)
    again = await first.post(once)  # the same key and body: the original, not a second
    assert (again.replayed, again.transfer.id) == (True, posted.transfer.id)
    taken = await withdrawal(first, account, "5.00")  # a new key, a taken transfer id
    taken_id = dataclasses.replace(taken.cmd, transfer_id=posted.transfer.id)
    taken = request(taken_id, f"test:{uuid.uuid4()}")
    with pytest.raises(d.TransferExists):
        await first.post(taken)
    # each tried on memory, refused whole by the unique keys, then read
    assert grown(before, first) == {"remembered_taken": 2, "optimistic": 2}
    assert await history(db, account) == [Decimal("100.00"), Decimal("90.00")]
    assert await events_of(db, [posted.transfer.id]) == 1
