"""The ledger's rules, without I/O: examples for every error and hypothesis properties."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.ledger import domain as d
from tickertap.money import BTC, JPY, USD, Asset

AAPL = Asset.share("AAPL")
ASSETS = {a.code: a for a in (USD, JPY, BTC, AAPL)}


def account(asset: str, kind: d.AccountKind = d.AccountKind.CUSTOMER, overdraft: str = "0"):
    owner = uuid.uuid4() if kind is d.AccountKind.CUSTOMER else None
    return d.Account(uuid.uuid4(), owner, asset, kind, Decimal(overdraft))


def setup(*accounts_: d.Account, balances: dict | None = None):
    accounts = {a.id: a for a in accounts_}
    bal = {a.id: Decimal(0) for a in accounts_}
    bal.update(balances or {})
    return accounts, bal


def cmd(*legs: tuple[d.Account, str], kind=d.TransferKind.TRANSFER) -> d.PostTransfer:
    return d.PostTransfer(uuid.uuid4(), tuple(d.Leg(a.id, Decimal(x)) for a, x in legs), kind)


def test_a_balanced_transfer_posts_with_running_balances():
    alice, bob = account("USD"), account("USD")
    accounts, balances = setup(alice, bob, balances={alice.id: Decimal("10.00")})
    t = d.post(cmd((alice, "-2.50"), (bob, "2.5")), accounts, ASSETS, balances)
    assert [(p.amount, p.balance_after) for p in t.postings] == [
        (Decimal("-2.50"), Decimal("7.50")),
        (Decimal("2.50"), Decimal("2.50")),
    ]
    assert d.sum_by_asset(t.postings) == {"USD": Decimal("0.00")}


@pytest.mark.parametrize(
    ("legs", "error"),
    [
        ((("a", "-1.00"), ("b", "0.99")), d.UnbalancedTransfer),
        ((("a", "-1.001"), ("b", "1.001")), d.ScaleExceeded),
        ((("a", "-1"),), d.TooFewLegs),
        ((("a", "0"), ("b", "0")), d.ZeroAmount),
        ((("a", "-1"), ("a", "1")), d.DuplicateAccount),
        ((("a", "NaN"), ("b", "1")), d.InvalidAmount),
        ((("a", "-Infinity"), ("b", "1")), d.InvalidAmount),
    ],
)
def test_malformed_transfers_are_rejected_with_their_code(legs, error):
    a, b = account("USD"), account("USD")
    accounts, balances = setup(a, b, balances={a.id: Decimal(100)})
    named = {"a": a, "b": b}
    with pytest.raises(error) as raised:
        d.post(cmd(*((named[n], x) for n, x in legs)), accounts, ASSETS, balances)
    assert raised.value.status == 422
    assert raised.value.code == error.code


def test_unknown_accounts_too_many_legs_and_per_asset_balance():
    a, b, j = account("USD"), account("USD"), account("JPY")
    accounts, balances = setup(a, b, j)
    ghost = d.Account(uuid.uuid4(), None, "USD", d.AccountKind.OMNIBUS)
    with pytest.raises(d.UnknownAccount):
        d.post(cmd((a, "1"), (ghost, "-1")), accounts, ASSETS, balances)
    many = [account("USD", d.AccountKind.OMNIBUS) for _ in range(17)]
    accounts2, balances2 = setup(*many)
    with pytest.raises(d.TooManyLegs):
        d.post(cmd(*((m, "1") for m in many)), accounts2, ASSETS, balances2)
    # 1 USD against 1 JPY does not balance: each asset sums to zero on its own
    with pytest.raises(d.UnbalancedTransfer):
        d.post(cmd((a, "-1"), (j, "1")), accounts, ASSETS, balances)


def test_customer_accounts_stop_at_their_overdraft_limit_system_accounts_do_not():
    alice = account("USD", overdraft="5.00")
    omnibus = account("USD", d.AccountKind.OMNIBUS)
    accounts, balances = setup(alice, omnibus)
    d.post(cmd((alice, "-5.00"), (omnibus, "5.00")), accounts, ASSETS, balances)
    with pytest.raises(d.InsufficientFunds) as raised:
        d.post(cmd((alice, "-5.01"), (omnibus, "5.01")), accounts, ASSETS, balances)
    assert raised.value.status == 409
    t = d.post(cmd((omnibus, "-1000"), (alice, "1000")), accounts, ASSETS, balances)
    assert t.postings[0].balance_after == Decimal("-1000.00")


def test_reversal_negates_legs_once_and_never_reverses_a_reversal():
    a, b = account("USD"), account("USD")
    accounts, balances = setup(a, b, balances={a.id: Decimal(10)})
    original = d.post(cmd((a, "-3"), (b, "3")), accounts, ASSETS, balances)
    undo = d.reversal(original, uuid.uuid4(), {})
    assert undo.reverses == original.id
    assert [leg.amount for leg in undo.legs] == [Decimal("3.00"), Decimal("-3.00")]
    posted = d.post(undo, accounts, ASSETS, {a.id: Decimal(7), b.id: Decimal(3)})
    with pytest.raises(d.CannotReverseReversal):
        d.reversal(posted, uuid.uuid4(), {})


def test_deposits_and_withdrawals_need_a_customer_account_and_a_positive_amount():
    alice, omnibus = account("USD"), account("USD", d.AccountKind.OMNIBUS)
    with pytest.raises(d.NotACustomerAccount):
        d.deposit(uuid.uuid4(), omnibus, omnibus, Decimal(1), {})
    with pytest.raises(d.AmountNotPositive):
        d.withdrawal(uuid.uuid4(), alice, omnibus, Decimal(0), {})
    c = d.deposit(uuid.uuid4(), alice, omnibus, Decimal("12.34"), {})
    assert c.kind is d.TransferKind.DEPOSIT
    assert [leg.amount for leg in c.legs] == [Decimal("12.34"), Decimal("-12.34")]


def trade_accounts() -> d.TradeAccounts:
    return d.TradeAccounts(
        cash=account("USD"),
        securities=account("AAPL"),
        omnibus=account("USD", d.AccountKind.OMNIBUS),
        fees=account("USD", d.AccountKind.FEES),
        custody=account("AAPL", d.AccountKind.CUSTODY),
    )


def test_trade_notional_and_fee_are_computed_with_one_rounding_rule():
    acc = trade_accounts()
    schedule = d.FeeSchedule(rate_bps=Decimal(5), minimum=Decimal("1.00"))
    buy = d.trade(
        uuid.uuid4(), d.Side.BUY, Decimal(3), Decimal("187.1234"), acc, ASSETS, schedule, {}
    )
    assert buy.trade is not None
    assert buy.trade.notional == Decimal("561.37")  # 561.3702 half-even at 2 places
    assert buy.trade.fee == Decimal("1.00")  # 0.2807 < the 1.00 minimum
    amounts = {leg.account_id: leg.amount for leg in buy.legs}
    assert amounts[acc.cash.id] == Decimal("-562.37")
    assert amounts[acc.securities.id] == Decimal(3)
    sell = d.trade(
        uuid.uuid4(), d.Side.SELL, Decimal(3), Decimal("187.1234"), acc, ASSETS, schedule, {}
    )
    assert {leg.account_id: leg.amount for leg in sell.legs}[acc.cash.id] == Decimal("560.37")
    with pytest.raises(d.ScaleExceeded):  # whole shares only
        d.trade(uuid.uuid4(), d.Side.BUY, Decimal("0.5"), Decimal(10), acc, ASSETS, schedule, {})


def test_half_even_rounding_of_the_fee():
    assert d.FeeSchedule(rate_bps=Decimal(50)).fee(Decimal("1.00"), 2) == Decimal("0.00")
    assert d.FeeSchedule(rate_bps=Decimal(150)).fee(Decimal("1.00"), 2) == Decimal("0.02")
    assert d.FeeSchedule(rate_bps=Decimal(250)).fee(Decimal("1.00"), 2) == Decimal("0.02")
    assert d.FeeSchedule(rate_bps=Decimal(10), maximum=Decimal("5")).fee(
        Decimal("1000000"), 2
    ) == Decimal("5.00")


def test_locks_are_taken_in_one_global_order():
    ids = [uuid.uuid4() for _ in range(10)]
    assert d.lock_order(ids) == d.lock_order(reversed(ids)) == sorted(ids)


# -- properties ---------------------------------------------------------------------------

amounts = st.decimals(
    min_value=Decimal("-1000"),
    max_value=Decimal("1000"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(amounts, min_size=1, max_size=8),
    st.lists(amounts, min_size=1, max_size=8),
    st.booleans(),
)
def test_accepted_transfers_balance_per_asset_rejected_ones_change_nothing(usd, jpy_raw, close):
    jpy = [x.quantize(Decimal(1)) for x in jpy_raw]
    legs_usd = [(account("USD", d.AccountKind.OMNIBUS), x) for x in usd]
    legs_jpy = [(account("JPY", d.AccountKind.OMNIBUS), x) for x in jpy]
    if close:  # sometimes add the balancing legs
        legs_usd.append((account("USD", d.AccountKind.OMNIBUS), -sum(usd)))
        legs_jpy.append((account("JPY", d.AccountKind.OMNIBUS), -sum(jpy)))
    all_legs = legs_usd + legs_jpy
    accounts, balances = setup(*(a for a, _ in all_legs))
    before = dict(balances)
    command = d.PostTransfer(uuid.uuid4(), tuple(d.Leg(a.id, x) for a, x in all_legs))
    try:
        t = d.post(command, accounts, ASSETS, balances, legs_max=32)
    except d.LedgerError:
        assert balances == before  # nothing was changed
        return
    assert all(total == 0 for total in d.sum_by_asset(t.postings).values())
    assert all(p.amount != 0 for p in t.postings)
    assert balances == before  # post() computes, it never mutates its inputs


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(min_value=Decimal(1), max_value=Decimal(10_000), places=0),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal(5000), places=4),
    st.sampled_from(list(d.Side)),
)
def test_every_trade_balances_per_asset_and_posts(quantity, price, side):
    acc = trade_accounts()
    accounts, balances = setup(
        acc.cash,
        acc.securities,
        acc.omnibus,
        acc.fees,
        acc.custody,
        balances={acc.cash.id: Decimal(10**9), acc.securities.id: Decimal(10**5)},
    )
    command = d.trade(
        uuid.uuid4(),
        side,
        quantity,
        price,
        acc,
        ASSETS,
        d.FeeSchedule(rate_bps=Decimal(5), minimum=Decimal("0.01")),
        {},
    )
    t = d.post(command, accounts, ASSETS, balances)
    assert d.sum_by_asset(t.postings) == {"USD": 0, "AAPL": 0}
    assert t.trade is not None
    assert t.trade.notional == (quantity * price).quantize(Decimal("0.01"))
