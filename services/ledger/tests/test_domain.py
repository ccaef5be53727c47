"""The ledger's rules, without I/O: examples for every error and hypothesis properties."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.ledger import domain as d
from tickertap.money import BTC, ETH, JPY, USD, Asset

AAPL = Asset.share("AAPL")
ASSETS = {a.code: a for a in (USD, JPY, BTC, ETH, AAPL)}


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


# -- trades: prices, quote currencies, bounds ---------------------------------------------

BTC_USD = d.TradePolicy(crypto_quote_currency="USD")
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_a_share_trades_in_its_listed_currency_crypto_only_with_a_configured_one():
    assert d.quote_currency(AAPL, "USD", d.TradePolicy()) == "USD"
    assert d.quote_currency(BTC, None, BTC_USD) == "USD"
    for asset, listed, policy in [
        (BTC, None, d.TradePolicy()),  # no crypto quote currency configured
        (USD, None, BTC_USD),  # fiat is not traded
        (AAPL, None, BTC_USD),  # a share without a listing currency
        (BTC, None, d.TradePolicy(crypto_quote_currency="BTC")),  # quoted in itself
    ]:
        with pytest.raises(d.UnknownAsset):
            d.quote_currency(asset, listed, policy)


def test_prices_are_positive_at_most_18_places_and_never_rounded():
    assert d.check_price(Decimal("187.123400")) == Decimal("187.1234")
    assert f"{d.check_price(Decimal('100.00')):f}" == "100"
    with pytest.raises(d.ScaleExceeded):
        d.check_price(Decimal("1." + "1" * 19))
    with pytest.raises(d.AmountNotPositive):
        d.check_price(Decimal(0))
    with pytest.raises(d.InvalidAmount):
        d.check_price(Decimal(10) ** 20)


def test_amounts_fit_the_columns_and_the_notional_is_rounded_once_from_the_exact_product():
    with pytest.raises(d.InvalidAmount):  # NUMERIC(38, 18): at most 20 integer digits
        d.check_amount(Decimal(10) ** 20, USD)
    assert d.check_amount(Decimal(10) ** 20 - 1, USD) == Decimal(10) ** 20 - 1
    acc = d.TradeAccounts(
        cash=account("USD"),
        securities=account("ETH"),  # 18 places
        omnibus=account("USD", d.AccountKind.OMNIBUS),
        fees=account("USD", d.AccountKind.FEES),
        custody=account("ETH", d.AccountKind.CUSTODY),
    )
    # the exact product is 150000000000000100.014999999999999999999999999999999999, below
    # the half: 100.01; rounded to 38 digits first it would be ...100.015, then 100.02
    quantity = Decimal("10.000000000000000001")
    price = Decimal("15000000000000009.999999999999999999")
    t = d.trade(uuid.uuid4(), d.Side.BUY, quantity, price, acc, ASSETS, d.FeeSchedule(), {})
    assert t.trade is not None
    assert t.trade.notional == Decimal("150000000000000100.01")
    with pytest.raises(d.InvalidAmount):
        d.trade(
            uuid.uuid4(),
            d.Side.BUY,
            Decimal(10) ** 19,
            Decimal(10) ** 19,
            acc,
            ASSETS,
            d.FeeSchedule(),
            {},
        )


def test_the_reversal_of_a_trade_carries_its_details():
    acc = trade_accounts()
    accounts, balances = setup(
        acc.cash,
        acc.securities,
        acc.omnibus,
        acc.fees,
        acc.custody,
        balances={acc.cash.id: Decimal(100)},
    )
    cmd_ = d.trade(
        uuid.uuid4(), d.Side.BUY, Decimal(1), Decimal(10), acc, ASSETS, d.FeeSchedule(), {}
    )
    original = d.post(cmd_, accounts, ASSETS, balances)
    assert d.reversal(original, uuid.uuid4(), {}).trade == original.trade


def market(symbol: str = "AAPL", price: str = "10", age_s: float = 0) -> d.MarketPrice:
    ts = NOW - timedelta(seconds=age_s)
    return d.MarketPrice(symbol, Decimal(price), ts, ts)


def test_a_market_price_is_usable_while_younger_than_the_limit():
    assert d.usable_price(market(price="10.50000"), "AAPL", NOW, 60) == Decimal("10.5")
    assert d.usable_price(market(age_s=60), "AAPL", NOW, 60) == Decimal(10)
    with pytest.raises(d.NoPrice) as raised:
        d.usable_price(market(age_s=60.5), "AAPL", NOW, 60)
    assert raised.value.status == 409
    with pytest.raises(d.NoPrice):
        d.usable_price(None, "AAPL", NOW, 60)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (market(symbol="aapl"), "invalid_symbol"),
        (market(symbol="A B"), "invalid_symbol"),
        (market(price="0"), "invalid_price"),
        (market(price="-1"), "invalid_price"),
        (market(price="1." + "1" * 19), "invalid_price"),
        (market(age_s=-31), "exchange_ts_in_future"),
        (
            d.MarketPrice("AAPL", Decimal(1), datetime(2026, 11, 26), NOW),
            "invalid_exchange_ts",
        ),
    ],
)
def test_unusable_price_events_say_why(update: d.MarketPrice, reason: str):
    with pytest.raises(d.InvalidMarketPrice) as raised:
        d.check_market_price(update, NOW, skew_s_max=30)
    assert raised.value.reason == reason


def test_a_usable_price_event_is_kept_without_trailing_zeros():
    checked = d.check_market_price(market(price="187.120000", age_s=-29), NOW, skew_s_max=30)
    assert f"{checked.price:f}" == "187.12"


def test_sums_are_exact_even_where_38_digits_would_round():
    """Found in review: under a 38-digit context these ETH legs summed to zero."""
    from tickertap.money import ETH

    a = Decimal("99999999999999999999.000000000000000001")
    y = Decimal("99999999999999999998.999999999999999999")
    legs = [account("ETH", d.AccountKind.OMNIBUS) for _ in range(4)]
    accounts, balances = setup(*legs)
    command = d.PostTransfer(
        uuid.uuid4(),
        (d.Leg(legs[0].id, a), d.Leg(legs[1].id, a), d.Leg(legs[2].id, -a), d.Leg(legs[3].id, -y)),
    )
    with pytest.raises(d.UnbalancedTransfer):
        d.post(command, accounts, {**ASSETS, "ETH": ETH}, balances)


def test_a_balance_beyond_what_the_columns_hold_is_refused():
    big = "99999999999999999999"
    alice, omnibus = account("USD"), account("USD", d.AccountKind.OMNIBUS)
    accounts, balances = setup(alice, omnibus, balances={alice.id: Decimal(big)})
    with pytest.raises(d.InvalidAmount):
        d.post(cmd((omnibus, "-" + big), (alice, big)), accounts, ASSETS, balances)
