"""What a ledger process remembers of its accounts (`Remembered`): pure, no I/O. How the
batches use it against Postgres is in test_optimistic.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from tickertap.ledger import domain as d
from tickertap.ledger.handlers import (
    REMEMBERED_BACKOFF_MAX,
    Remembered,
    TransferRequest,
    _Plan,
)
from tickertap.ledger.repository import BatchContext


def account() -> d.Account:
    return d.Account(uuid.uuid4(), uuid.uuid4(), "USD", d.AccountKind.CUSTOMER)


def between(a: d.Account, b: d.Account, reverses: uuid.UUID | None = None) -> TransferRequest:
    legs = (d.Leg(a.id, Decimal("-1.00")), d.Leg(b.id, Decimal("1.00")))
    return TransferRequest(d.PostTransfer(uuid.uuid4(), legs, reverses=reverses), None, b"")


def read(remembered: Remembered, *balances: tuple[d.Account, str]) -> None:
    accounts = {a.id: a for a, _ in balances}
    amounts = {a.id: Decimal(b) for a, b in balances}
    remembered.read(BatchContext({}, set(), set(), accounts, amounts, datetime.now(UTC)))


def test_a_context_comes_from_memory_only_when_every_account_is_remembered() -> None:
    a, b, c = account(), account(), account()
    remembered = Remembered()
    read(remembered, (a, "5.00"), (b, "0.00"))

    ctx = remembered.context([between(a, b)])
    assert ctx is not None
    assert ctx.accounts == {a.id: a, b.id: b}
    assert ctx.balances == {a.id: Decimal("5.00"), b.id: Decimal("0.00")}
    assert (ctx.idempotency, ctx.existing, ctx.reversed) == ({}, set(), set())
    assert remembered.context([between(a, b), between(a, c)]) is None  # c is not known
    assert remembered.context([between(a, b, reverses=uuid.uuid4())]) is None


def test_a_moved_balance_is_forgotten_and_memory_steps_aside_longer_each_time() -> None:
    a, b = account(), account()
    remembered = Remembered()
    read(remembered, (a, "5.00"), (b, "0.00"))
    remembered.moved([a.id])
    remembered.context([between(a, b)])  # the one batch it steps aside for
    assert remembered.context([between(a, b)]) is None  # a is forgotten: read it
    read(remembered, (a, "4.00"))
    assert remembered.context([between(a, b)]) is not None

    stepped_aside = []
    for _ in range(8):  # it keeps moving: 1, 2, 4... batches read theirs
        remembered.moved([a.id])
        read(remembered, (a, "4.00"))
        n = 0
        while remembered.context([between(a, b)]) is None:
            n += 1
        stepped_aside.append(n)
    assert stepped_aside == [2, 4, 8, 16, 32, 64, REMEMBERED_BACKOFF_MAX, REMEMBERED_BACKOFF_MAX]

    plan = _Plan({}, [])  # a batch written on remembered balances: back to 1
    remembered.written(plan, {}, remembered=True)
    remembered.moved([a.id])
    read(remembered, (a, "4.00"))
    assert remembered.context([between(a, b)]) is None
    assert remembered.context([between(a, b)]) is not None


def test_nothing_is_remembered_at_size_zero() -> None:
    a, b = account(), account()
    remembered = Remembered(0)
    read(remembered, (a, "5.00"), (b, "0.00"))
    assert remembered.context([between(a, b)]) is None
