"""The live publisher's book: which portfolios are due for an update and when (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.live import Book

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
INTERVAL_S = 0.25
D = Decimal


def row(owner: uuid.UUID) -> repo.PortfolioRow:
    return repo.PortfolioRow(owner, 2, AT, AT, [repo.Source("ledger.transfers.v1", 0, 7)])


def holding(symbol: str, quantity: str = "10") -> d.PositionFigures:
    cost = D(quantity) * 100
    return d.PositionFigures(symbol, "USD", D(quantity), cost, cost, D(0), D(0))


def stored(symbol: str, price: str, offset: int) -> repo.StoredPrice:
    quote = d.Quote(symbol, D(price), AT, "ticks", 0, offset, D("100"), AT)
    return repo.StoredPrice(quote, repo.Source("marketdata.prices.v1", 0, offset))


def book_of(*holdings: tuple[uuid.UUID, list[d.PositionFigures]]) -> Book:
    book = Book(INTERVAL_S)
    for owner, figures in holdings:
        book.put(row(owner), figures, {"USD": D("1000.00")}, 0.0)
    return book


def test_a_new_portfolio_is_due_at_once_and_then_not_before_the_interval() -> None:
    a = uuid.uuid4()
    book = book_of((a, [holding("AAA")]))
    assert book.take_due(0.0, 10) == [a]
    assert book.take_due(0.0, 10) == []  # published, nothing changed
    book.set_prices({"AAA": stored("AAA", "101", 1)}, 0.1)
    assert book.next_due_in(0.1) == INTERVAL_S - 0.1
    assert book.take_due(0.2, 10) == []  # changed, but updated 0.2 s ago
    assert book.take_due(INTERVAL_S, 10) == [a]


def test_changes_within_an_interval_make_one_update_of_the_latest_state() -> None:
    a = uuid.uuid4()
    book = book_of((a, [holding("AAA")]))
    book.take_due(0.0, 10)
    for n in range(1, 6):
        book.set_prices({"AAA": stored("AAA", str(100 + n), n)}, n / 100)
    book.put(row(a), [holding("AAA", "20")], {"USD": D("0.00")}, 0.06)
    assert book.backlog(0.1).dirty == 1
    assert book.take_due(1.0, 10) == [a]
    assert book.take_due(2.0, 10) == []
    s = book.snapshot(a, "USD", d.Scales())
    (position,) = s.fifo.positions
    assert (position.quantity, position.market_value) == (D(20), D("2100.00"))
    assert s.prices["AAA"].event.offset == 5  # the price it carries, for tracing


def test_only_holders_of_a_moved_symbol_are_due_and_an_unchanged_price_moves_nothing() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    book = book_of((a, [holding("AAA")]), (b, [holding("BBB")]), (c, [holding("AAA", "0")]))
    assert sorted(book.take_due(0.0, 10)) == sorted([a, b, c])
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 1.0) == 1  # c holds none
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 1.0) == 0  # the same price
    assert book.take_due(1.0, 10) == [a]


def test_the_longest_waiting_go_first_and_the_limit_holds() -> None:
    owners = [uuid.uuid4() for _ in range(5)]
    book = book_of(*((o, [holding("AAA")]) for o in owners))
    first = book.take_due(0.0, 2)
    rest = book.take_due(0.0, 10)
    assert first + rest == owners
    backlog = book.backlog(0.0)
    assert (backlog.dirty, backlog.oldest_s) == (0, 0.0)


def test_a_dropped_portfolio_is_never_handed_out_and_a_failed_one_comes_back() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    book = book_of((a, [holding("AAA")]), (b, [holding("AAA")]))
    book.drop(a)
    assert book.take_due(0.0, 10) == [b]
    assert len(book) == 1
    assert book.symbols() == {"AAA"}
    book.mark(b, 0.1)  # its update was not delivered
    assert book.take_due(INTERVAL_S, 10) == [b]
    book.drop(b)
    assert book.symbols() == set()
    assert book.next_due_in(1.0) is None


def test_marking_again_while_waiting_keeps_its_place() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    book = book_of((a, [holding("AAA")]), (b, [holding("AAA")]))
    book.mark(a, 5.0)  # waiting already: no second entry, no new place
    assert book.take_due(0.0, 10) == [a, b]
    assert book.take_due(10.0, 10) == []
