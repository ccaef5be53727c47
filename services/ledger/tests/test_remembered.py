"""What a ledger process remembers of its accounts (`Remembered`): pure, no I/O. How the
batches use it against Postgres is in test_optimistic.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tickertap.ledger import domain as d
from tickertap.ledger.handlers import (
    REMEMBERED_BACKOFF_MAX,
    REMEMBERED_PROBE_EVERY,
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


def read(
    remembered: Remembered,
    *balances: tuple[d.Account, str],
    skew: timedelta = timedelta(0),
    clock: bool = True,
) -> datetime:
    """A read of these balances on a database whose clock is `skew` ahead (`clock`: an
    optimistic read's, not a locked transaction's); its time."""
    accounts = {a.id: a for a, _ in balances}
    amounts = {a.id: Decimal(b) for a, b in balances}
    now = datetime.now(UTC) + skew
    ctx = remembered.read(BatchContext({}, set(), set(), accounts, amounts, now), clock=clock)
    return ctx.now


def stamp(remembered: Remembered, request: TransferRequest) -> datetime:
    ctx = remembered.context([request])
    assert ctx is not None
    return ctx.now


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


def test_a_batch_from_memory_is_stamped_on_the_databases_clock_after_its_accounts() -> None:
    a, b, c = account(), account(), account()
    remembered = Remembered()
    read_at = read(remembered, (a, "5.00"), (b, "0.00"), skew=timedelta(hours=1))
    assert read_at < stamp(remembered, between(a, b)) < read_at + timedelta(seconds=5)

    later = read_at + timedelta(hours=1)  # a and b last written then, by this process
    posted = _Plan({}, [], posted=[(0, transfer(a, b))])
    remembered.written(posted, {a.id: a, b.id: b}, later, remembered=False)
    assert stamp(remembered, between(a, b)) == later + timedelta(microseconds=1)
    read(remembered, (c, "1.00"))  # no skew now: the clocks agree again
    assert stamp(remembered, between(a, c)) == later + timedelta(microseconds=1)  # after a's
    assert stamp(remembered, between(c, c)) < read_at
    # a read is stamped after what is remembered of its accounts too
    assert read(remembered, (a, "4.00"), (c, "1.00")) == later + timedelta(microseconds=1)
    assert read(remembered, (c, "1.00"), skew=timedelta(hours=3)) > later
    e = account()  # a locked read's time is its accounts', not the clock of memory's
    locked_at = read(remembered, (e, "1.00"), skew=timedelta(hours=9), clock=False)
    assert stamp(remembered, between(e, e)) == locked_at + timedelta(microseconds=1)
    assert stamp(remembered, between(c, c)) < read_at + timedelta(hours=3)


def test_an_account_that_moved_is_read_for_longer_each_time_it_moves_again() -> None:
    a, b, c = account(), account(), account()
    remembered = Remembered()
    read(remembered, (a, "5.00"), (b, "0.00"), (c, "0.00"))
    remembered.moved([a.id])
    assert remembered.context([between(a, b)]) is None  # a is forgotten
    assert remembered.context([between(b, c)]) is not None  # the others are not

    read(remembered, (a, "4.00"))  # read back
    assert remembered.context([between(a, b)]) is not None  # after the one batch on a

    stepped_aside = []
    for _ in range(7):  # it keeps moving: the next 2, 4... batches on it read
        remembered.moved([a.id])
        read(remembered, (a, "4.00"))
        n = 0
        while remembered.context([between(a, b)]) is None:
            n += 1
        stepped_aside.append(n)
    assert stepped_aside == [2, 4, 8, 16, 32, REMEMBERED_BACKOFF_MAX, REMEMBERED_BACKOFF_MAX]

    read(remembered, (a, "4.00"))
    while remembered.context([between(a, b)]) is None:
        pass
    posted = _Plan({}, [], posted=[(0, transfer(a, b))])
    remembered.written(posted, {a.id: a, b.id: b}, datetime.now(UTC), remembered=True)
    remembered.moved([a.id])  # held still once: back to one batch
    read(remembered, (a, "4.00"))
    assert remembered.context([between(a, b)]) is None
    assert remembered.context([between(a, b)]) is not None


def test_the_longest_unused_are_forgotten_beyond_the_size_and_all_at_size_zero() -> None:
    a, b, c = account(), account(), account()
    remembered = Remembered(2)
    read(remembered, (a, "5.00"), (b, "0.00"))
    read(remembered, (a, "5.00"))  # a used again
    read(remembered, (c, "0.00"))  # b goes
    assert remembered.context([between(a, c)]) is not None
    assert remembered.context([between(a, b)]) is None

    nothing = Remembered(0)
    read(nothing, (a, "5.00"), (b, "0.00"))
    assert nothing.context([between(a, b)]) is None


def transfer(a: d.Account, b: d.Account) -> d.Transfer:
    """A posted transfer of 1.00 from a to b (balances 3.00 and 1.00 after)."""
    return d.Transfer(
        uuid.uuid4(),
        d.TransferKind.TRANSFER,
        (
            d.Posting(uuid.uuid4(), a.id, "USD", Decimal("-1.00"), Decimal("3.00")),
            d.Posting(uuid.uuid4(), b.id, "USD", Decimal("1.00"), Decimal("1.00")),
        ),
        {},
        None,
        None,
    )


def test_where_writes_from_memory_mostly_miss_memory_is_tried_only_now_and_then() -> None:
    a, b = account(), account()
    remembered = Remembered()
    read(remembered, (a, "5.00"), (b, "0.00"))
    tried = 0
    for _ in range(20 * REMEMBERED_PROBE_EVERY):  # every try misses (another replica)
        if remembered.context([between(a, b)]) is not None:
            tried += 1
            remembered.missed()
    # about 22 misses bring the share that held under a half; then one try in 32
    assert 22 + 19 <= tried <= 23 + 20

    c = account()  # a probe due on a batch that cannot use memory waits for one that can
    while remembered.context([between(a, b)]) is None:
        pass
    remembered.missed()
    for _ in range(REMEMBERED_PROBE_EVERY):
        assert remembered.context([between(a, c)]) is None  # c is not remembered
    assert remembered.context([between(a, b)]) is not None
    remembered.missed()

    posted = _Plan({}, [], posted=[(0, transfer(a, b))])
    while remembered.context([between(a, b)]) is None:
        pass
    remembered.written(posted, {a.id: a, b.id: b}, datetime.now(UTC), remembered=True)
    for _ in range(3 * REMEMBERED_PROBE_EVERY):  # it held: memory on every batch again
        assert remembered.context([between(a, b)]) is not None
        remembered.written(posted, {a.id: a, b.id: b}, datetime.now(UTC), remembered=True)
    remembered.missed()  # one miss: the share that held is above a half by now
    assert remembered.context([between(a, b)]) is not None
