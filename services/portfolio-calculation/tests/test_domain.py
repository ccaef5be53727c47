"""The portfolio rules without I/O: hand-computed cases to the cent, and properties."""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.portfolio import domain as d

D = Decimal
OWNER = uuid.UUID("11111111-1111-4111-8111-111111111111")
T0 = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def deposit(minutes: int, amount: str, currency: str = "USD") -> d.PortfolioTransfer:
    return d.PortfolioTransfer(uuid.uuid4(), at(minutes), "deposit", {currency: D(amount)})


def trade(
    minutes: int, side: str, quantity: str, price: str, fee: str, symbol: str = "AAPL"
) -> d.PortfolioTransfer:
    """A trade as the ledger posts it: notional = quantity x price at 2 places."""
    q, p, f = D(quantity), D(price), D(fee)
    notional = d.round_to(q * p, 2)
    sign = 1 if side == "buy" else -1
    return d.PortfolioTransfer(
        uuid.uuid4(),
        at(minutes),
        "trade",
        {"USD": -sign * notional - f, symbol: sign * q},
        d.Trade(symbol, d.Side(side), q, p, notional, f, "USD"),
    )


def reversal(minutes: int, original: d.PortfolioTransfer) -> d.PortfolioTransfer:
    return d.PortfolioTransfer(
        uuid.uuid4(),
        at(minutes),
        "reversal",
        {a: -v for a, v in original.amounts.items()},
        original.trade,
        original.transfer_id,
    )


def quote(price: str, symbol: str = "AAPL") -> dict[str, d.Quote]:
    return {symbol: d.Quote(symbol, D(price), at(1000), "marketdata.prices.v1", 3, 42)}


def figures(history: list[d.PortfolioTransfer], price: str, method: d.Method) -> dict[str, str]:
    holdings = d.compute(history)
    v = d.valuate(holdings, quote(price), method, "USD")
    (position,) = v.positions
    return {
        "quantity": str(position.quantity.normalize()),
        "cost": str(position.cost_basis),
        "realized": str(position.realized_pnl),
        "market_value": str(position.market_value),
        "unrealized": str(position.unrealized_pnl),
        "cash": str(v.cash["USD"]),
        "total": str(v.total_value),
    }


B1 = trade(1, "buy", "10", "100.00", "1.00")  # costs 1001.00
B2 = trade(2, "buy", "10", "120.00", "1.20")  # costs 1201.20
CASH = deposit(0, "5000.00")

# (name, history, price, FIFO figures, average figures); every figure computed by hand
CASES = [
    (
        "two buys at different prices, one partial sale across both lots",
        [CASH, B1, B2, trade(3, "sell", "15", "130.00", "1.95")],
        "140.00",
        # FIFO: lot 1 whole 1001.00 + 5/10 of lot 2 (600.60) = 1601.60; 1948.05 - 1601.60
        {"quantity": "5", "cost": "600.60", "realized": "346.45", "market_value": "700.00",
         "unrealized": "99.40", "cash": "4745.85", "total": "5445.85"},
        # average: 2202.20 x 15/20 = 1651.65; 1948.05 - 1651.65; pool left 550.55
        {"quantity": "5", "cost": "550.55", "realized": "296.40", "market_value": "700.00",
         "unrealized": "149.45", "cash": "4745.85", "total": "5445.85"},
    ),
    (
        "a third of a lot: the cost taken is rounded to the cent, the rest kept exactly",
        [CASH, trade(1, "buy", "3", "10.00", "1.00"), trade(2, "sell", "1", "12.00", "0")],
        "11.00",
        # 31.00 / 3 = 10.333... -> 10.33 taken, 20.67 left; 12.00 - 10.33
        {"quantity": "2", "cost": "20.67", "realized": "1.67", "market_value": "22.00",
         "unrealized": "1.33", "cash": "4981.00", "total": "5003.00"},
        {"quantity": "2", "cost": "20.67", "realized": "1.67", "market_value": "22.00",
         "unrealized": "1.33", "cash": "4981.00", "total": "5003.00"},
    ),
    (
        "two partial sales, the second closing the position",
        [CASH, trade(1, "buy", "3", "10.00", "1.00"), trade(2, "sell", "1", "12.00", "0"),
         trade(3, "sell", "2", "11.00", "0.50")],
        "11.00",
        # 21.50 - 20.67 = 0.83; realized in all 1.67 + 0.83 = 2.50 = 33.50 - 31.00
        {"quantity": "0", "cost": "0.00", "realized": "2.50", "market_value": "0.00",
         "unrealized": "0.00", "cash": "5002.50", "total": "5002.50"},
        {"quantity": "0", "cost": "0.00", "realized": "2.50", "market_value": "0.00",
         "unrealized": "0.00", "cash": "5002.50", "total": "5002.50"},
    ),
    (
        "a reversed buy after a sale: its lot goes, cash returns, the sale is recomputed",
        [CASH, B1, B2, trade(3, "sell", "5", "130.00", "0.65"), reversal(4, B1)],
        "140.00",
        # only lot 2 is left to sell from: 1201.20 x 5/10 = 600.60; 649.35 - 600.60
        {"quantity": "5", "cost": "600.60", "realized": "48.75", "market_value": "700.00",
         "unrealized": "99.40", "cash": "4448.15", "total": "5148.15"},
        {"quantity": "5", "cost": "600.60", "realized": "48.75", "market_value": "700.00",
         "unrealized": "99.40", "cash": "4448.15", "total": "5148.15"},
    ),
    (
        "the same without the reversal",
        [CASH, B1, B2, trade(3, "sell", "5", "130.00", "0.65")],
        "140.00",
        # FIFO 1001.00 x 5/10 = 500.50 -> 148.85; average 2202.20 x 5/20 = 550.55 -> 98.80
        {"quantity": "15", "cost": "1701.70", "realized": "148.85", "market_value": "2100.00",
         "unrealized": "398.30", "cash": "3447.15", "total": "5547.15"},
        {"quantity": "15", "cost": "1651.65", "realized": "98.80", "market_value": "2100.00",
         "unrealized": "448.35", "cash": "3447.15", "total": "5547.15"},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "history", "price", "fifo", "average"), CASES)
def test_hand_computed_cases(
    name: str, history: list[d.PortfolioTransfer], price: str, fifo: dict, average: dict
) -> None:
    assert figures(history, price, d.Method.FIFO) == fifo, name
    assert figures(history, price, d.Method.AVERAGE) == average, name


def test_a_sale_names_the_lots_it_consumed() -> None:
    sale = trade(3, "sell", "15", "130.00", "1.95")
    holdings = d.compute([CASH, B1, B2, sale])
    (fifo,) = holdings.realizations(d.Method.FIFO)
    assert fifo.sale_transfer_id == sale.transfer_id
    assert [(u.transfer_id, u.quantity, u.cost) for u in fifo.lots] == [
        (B1.transfer_id, D(10), D("1001.00")),
        (B2.transfer_id, D(5), D("600.60")),
    ]
    (lot,) = holdings.positions["AAPL"].lots
    assert (lot.transfer_id, lot.quantity, lot.cost, lot.fees) == (
        B2.transfer_id,
        D(5),
        D("600.60"),
        D("0.60"),
    )
    assert (lot.quantity_acquired, lot.price, lot.acquired_at) == (D(10), D("120.00"), at(2))


def test_a_reversed_sale_restores_the_lot() -> None:
    sale = trade(3, "sell", "4", "110.00", "0.44")
    holdings = d.compute([CASH, B1, sale, reversal(5, sale)])
    assert holdings.positions["AAPL"].realized[d.Method.FIFO] == []
    assert holdings.positions["AAPL"].cost_basis(d.Method.FIFO) == D("1001.00")
    assert holdings.balances == {"AAPL": D(10), "USD": D("3999.00")}


def test_a_reversal_that_arrives_first_still_removes_its_original() -> None:
    rev = reversal(9, B1)
    assert d.compute([CASH, rev, B1]) == d.compute([CASH])


def test_a_duplicate_counts_once() -> None:
    assert d.compute([CASH, B1, B1, CASH]) == d.compute([CASH, B1])


def test_shares_moved_without_a_trade_come_in_at_zero_cost_and_leave_without_pnl() -> None:
    moved_in = d.PortfolioTransfer(uuid.uuid4(), at(5), "transfer", {"AAPL": D(2)})
    moved_out = d.PortfolioTransfer(uuid.uuid4(), at(6), "transfer", {"AAPL": D(-11)})
    holdings = d.compute([CASH, B1, moved_in, moved_out])
    position = holdings.positions["AAPL"]
    assert position.quantity == D(1)
    assert position.cost_basis(d.Method.FIFO) == D(0)  # the zero-cost lot is the last one
    assert position.realized[d.Method.FIFO] == []
    assert holdings.cash() == {"USD": D("3999.00")}


def test_split_transfer_leaves_out_house_accounts_and_nets_per_asset() -> None:
    other = uuid.uuid4()
    legs = [
        d.LedgerLeg(OWNER, "USD", D("-10.00")),
        d.LedgerLeg(OWNER, "USD", D("-1.00")),
        d.LedgerLeg(other, "USD", D("11.00")),
        d.LedgerLeg(d.SYSTEM_OWNER, "USD", D("0")),
    ]
    split = d.split_transfer(uuid.uuid4(), T0, "transfer", legs, None, None)
    assert {o: t.amounts for o, t in split.items()} == {
        OWNER: {"USD": D("-11.00")},
        other: {"USD": D("11.00")},
    }


def test_split_transfer_refuses_inconsistent_events() -> None:
    with pytest.raises(d.InvalidTransfer) as info:
        d.split_transfer(uuid.uuid4(), T0, "trade", [], None, None)
    assert info.value.reason == "invalid_event"
    with pytest.raises(d.InvalidTransfer):
        d.split_transfer(uuid.uuid4(), T0, "reversal", [], None, None)
    with pytest.raises(d.InvalidTransfer):
        d.split_transfer(uuid.uuid4(), T0.replace(tzinfo=None), "deposit", [], None, None)


def test_totals_leave_other_currencies_out() -> None:
    eur = d.PortfolioTransfer(uuid.uuid4(), at(1), "deposit", {"EUR": D("50.00")})
    v = d.valuate(d.compute([CASH, eur]), {}, d.Method.FIFO, "USD")
    assert v.cash == {"EUR": D("50.00"), "USD": D("5000.00")}
    assert v.total_value == D("5000.00")


def test_realized_between_days() -> None:
    early = trade(3, "sell", "1", "110.00", "0")
    late = d.PortfolioTransfer(
        uuid.uuid4(),
        T0 + timedelta(days=3),
        "trade",
        {"USD": D("110.00"), "AAPL": D(-1)},
        d.Trade("AAPL", d.Side.SELL, D(1), D("110.00"), D("110.00"), D(0), "USD"),
    )
    holdings = d.compute([CASH, B1, early, late])
    day = T0.date()
    assert [r.sale_transfer_id for r in d.realized_between(holdings, d.Method.FIFO, day, day)] == [
        early.transfer_id
    ]
    assert len(d.realized_between(holdings, d.Method.AVERAGE, None, None)) == 2


# -- properties ------------------------------------------------------------------------------

prices = st.integers(min_value=1, max_value=50_000).map(lambda cents: D(cents) / 100)
fees = st.integers(min_value=0, max_value=500).map(lambda cents: D(cents) / 100)
steps = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=1, max_value=40), prices, fees),
    min_size=1,
    max_size=25,
)


def history_of(raw: list[tuple[bool, int, Decimal, Decimal]]) -> list[d.PortfolioTransfer]:
    """Buys and sells that never sell more than is held (as the ledger guarantees)."""
    history, held = [deposit(0, "10000000.00")], 0
    for i, (is_buy, quantity, price, fee) in enumerate(raw, start=1):
        if not is_buy:
            quantity = min(quantity, held)
            if quantity == 0:
                continue
        held += quantity if is_buy else -quantity
        history.append(trade(i, "buy" if is_buy else "sell", str(quantity), str(price), str(fee)))
    return history


@settings(max_examples=200, deadline=None)
@given(steps, prices)
def test_fifo_and_average_agree_on_total_pnl(raw: list, last: Decimal) -> None:
    holdings = d.compute(history_of(raw))
    totals = []
    for method in d.Method:
        v = d.valuate(holdings, quote(str(last)), method, "USD")
        totals.append(v.realized_pnl + v.unrealized_pnl)
    assert totals[0] == totals[1]
    # and both equal what came in minus what went out plus what is held
    v = d.valuate(holdings, quote(str(last)), d.Method.FIFO, "USD")
    assert v.total_value - D("10000000.00") == totals[0]


@settings(max_examples=200, deadline=None)
@given(steps, st.data())
def test_a_transfer_then_its_reversal_restores_the_state(raw: list, data: st.DataObject) -> None:
    history = history_of(raw)
    target = data.draw(st.sampled_from(history))
    later = data.draw(st.integers(min_value=0, max_value=100))
    undone = d.compute([*history, reversal(len(history) + later, target)])
    assert undone == d.compute([t for t in history if t is not target])


@settings(max_examples=100, deadline=None)
@given(steps, st.randoms(use_true_random=False))
def test_arrival_order_changes_nothing(raw: list, rnd: random.Random) -> None:
    history = history_of(raw)
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert d.compute(shuffled) == d.compute(history)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_cost_taken_plus_cost_left_is_what_was_paid(raw: list) -> None:
    history = history_of(raw)
    holdings = d.compute(history)
    paid = sum(
        (t.trade.notional + t.trade.fee for t in history if t.trade and t.trade.side == "buy"), D(0)
    )
    position = holdings.positions.get("AAPL")
    if position is None:
        return
    for method in d.Method:
        taken = sum((r.cost for r in position.realized[method]), D(0))
        assert taken + position.cost_basis(method) == paid


def test_day_change_values_the_quantity_held_at_the_previous_close() -> None:
    holdings = d.compute([CASH, B1, B2, trade(3, "sell", "15", "130.00", "1.95")])
    q = d.Quote("AAPL", D("140.00"), at(1000), previous_close=D("135.125"))
    v = d.valuate(holdings, {"AAPL": q}, d.Method.FIFO, "USD")
    assert v.positions[0].day_change == D("24.38")  # 700.00 - 675.625 at the cent (675.62)
    assert v.day_change == D("24.38")
    assert d.valuate(holdings, quote("140.00"), d.Method.FIFO, "USD").day_change == 0


def test_appendable() -> None:
    holdings = d.compute([CASH, B1])
    assert d.appendable(holdings, trade(5, "sell", "1", "110.00", "0"))
    assert not d.appendable(holdings, reversal(5, B1))
    moved_in = d.PortfolioTransfer(uuid.uuid4(), at(3), "transfer", {"MSFT": D(2)})
    with_msft = d.compute([CASH, B1, moved_in])
    assert not d.appendable(with_msft, trade(5, "buy", "1", "300.00", "0", symbol="MSFT"))


def reloaded(h: d.Holdings, t: d.PortfolioTransfer) -> d.Holdings:
    """What the repository loads to append `t`: every balance, the positions `t` moves with
    their lots and average pool, their realized entries folded into carried totals."""
    positions = {}
    for symbol in t.amounts:
        p = h.positions.get(symbol)
        if p is not None:
            positions[symbol] = d.Position(
                p.symbol,
                p.currency,
                [dataclasses.replace(lot) for lot in p.lots],
                p.average_cost_pool,
                realized_carried={m: p.realized_pnl(m) for m in d.Method},
            )
    return d.Holdings(dict(h.balances), positions, h.transfers_applied, h.last_transfer_at)


@settings(max_examples=100, deadline=None)
@given(steps)
def test_appending_in_order_equals_recomputing(raw: list) -> None:
    history = history_of(raw)
    full = d.compute(history)
    live = d.Holdings()
    realized: dict[d.Method, list[d.Realization]] = {m: [] for m in d.Method}
    for t in history:
        step = reloaded(live, t)
        assert d.appendable(step, t)
        currency_of = {s: p.currency for s, p in step.positions.items()}
        if t.trade is not None:
            currency_of.setdefault(t.trade.symbol, t.trade.currency)
        d.apply(step, t, currency_of, d.Scales())
        for p in step.positions.values():
            for m in d.Method:
                realized[m] += p.realized[m]
        live.balances = step.balances
        live.positions.update(step.positions)
        live.transfers_applied, live.last_transfer_at = step.transfers_applied, t.occurred_at
    assert live.balances == full.balances
    assert (live.transfers_applied, live.last_transfer_at) == (
        full.transfers_applied,
        full.last_transfer_at,
    )
    for symbol, p in full.positions.items():
        assert d.PositionFigures.of(live.positions[symbol]) == d.PositionFigures.of(p)
        assert live.positions[symbol].lots == p.lots
    for m in d.Method:
        assert realized[m] == full.realizations(m)
