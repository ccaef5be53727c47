"""The live publisher's book: which portfolios are due for an update and when (pure)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio.handlers import UPDATES_TOPIC
from tickertap.portfolio.live import Book, LivePublisher, _Changes
from tickertap.portfolio.metrics import PortfolioMetrics

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


def test_a_changed_portfolio_keeps_one_place_and_its_holdings_follow_the_change() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    book = book_of((a, [holding("AAA")]), (b, [holding("AAA")]))
    book.put(row(a), [holding("BBB")], {"USD": D("5.00")}, 0.1)  # waiting: the same place
    assert book.waiting == 2
    assert book.take_due(0.0, 10) == [a, b]
    assert book.waiting == 0
    assert book.symbols() == {"AAA", "BBB"}
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 1.0) == 1  # b only: a sold it
    assert book.set_prices({"BBB": stored("BBB", "50", 2)}, 1.0) == 1  # a
    assert book.take_due(2.0, 10) == [b, a]
    assert book.snapshot(a, "USD", d.Scales()).fifo.cash["USD"] == D("5.00")


def test_a_portfolio_dropped_while_waiting_and_put_back_waits_once() -> None:
    a = uuid.uuid4()
    book = book_of((a, [holding("AAA")]))
    book.drop(a)
    assert (book.waiting, book.backlog(1.0).dirty) == (0, 0)
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 0.5) == 0  # no holder now
    book.put(row(a), [holding("AAA")], {"USD": D("1.00")}, 1.0)
    assert book.waiting == 1
    assert book.backlog(1.5).oldest_s == 0.5
    assert book.take_due(1.0, 10) == [a]  # once: the dropped entry's place is void
    assert book.take_due(9.0, 10) == []


class _Metadata:
    """What `Producer.list_topics` returns, for the partition count check."""

    def __init__(self, partitions: int | None) -> None:
        topic = None
        if partitions is not None:
            topic = SimpleNamespace(error=None, partitions=dict.fromkeys(range(partitions)))
        self.topics = {} if topic is None else {UPDATES_TOPIC: topic}


class _Producer:
    def __init__(self, *answers: int | Exception | None) -> None:
        self.answers = list(answers)

    def list_topics(self, _topic: str, _timeout: float) -> _Metadata:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return _Metadata(answer)


async def test_only_a_partition_count_seen_to_change_ends_a_leadership() -> None:
    """A failed look (the broker away, the topic missing) tells nothing: the leader goes on."""
    live = LivePublisher(
        None,  # type: ignore[arg-type]  # no database: only the check is called
        AvroCodec(load_schemas(find_schemas_dir())),
        bootstrap_servers="127.0.0.1:1",
        interval_ms=250,
        poll_interval_ms=50,
        batch_max=100,
        base_currency="USD",
        scales=d.Scales(),
        metrics=PortfolioMetrics(CollectorRegistry()),
    )
    live._partitions = 6
    producer = _Producer(6, KafkaException(KafkaError(KafkaError._TRANSPORT)), None, 8)
    changed = [await live._partitions_changed(producer) for _ in range(4)]  # type: ignore[arg-type]
    assert changed == [False, False, False, True]


# -- prices in change announcements (repo.announcements, live._Changes) ---------------------


def test_a_stored_price_comes_back_exactly_from_its_announcement() -> None:
    plain = stored("AAA", "101.25", 7)
    no_close = repo.StoredPrice(
        d.Quote("B.B-1", D("0.000000000000000001"), AT, "ticks", 3, 2**63 - 1),
        repo.Source("marketdata.prices.v1", 5, 0),
        AT.replace(microsecond=123456),
    )
    for price in (plain, no_close):
        (payload,) = repo.announcements([], [], [price])
        assert [repo.price_of_payload(i) for i in json.loads(payload)["prices"]] == [price]


def test_announcements_stay_under_the_limit_and_fall_back_to_names_then_to_everything() -> None:
    many = [stored(f"S{n:04d}", "1", n) for n in range(500)]
    huge_name = "X" * repo.NOTIFY_BYTES_MAX
    too_big = repo.StoredPrice(  # its price does not fit in a payload, its name alone does
        d.Quote("Y" * 3000, D(2), AT, "t" * 3000, 0, 1), repo.Source("p" * 3000, 0, 1)
    )
    payloads = repo.announcements([uuid.uuid4()], [huge_name], [*many, too_big])
    assert all(len(p.encode()) <= repo.NOTIFY_BYTES_MAX for p in payloads)
    changes = [json.loads(p) for p in payloads]
    prices = [repo.price_of_payload(i) for c in changes for i in c.get("prices", ())]
    assert prices == many
    assert [s for c in changes for s in c.get("symbols", ())] == ["Y" * 3000]
    assert changes[-1] == {"all": True}  # the name too long for any payload


def test_announced_prices_are_taken_in_order_and_an_unreadable_one_reloads_everything() -> None:
    changes = _Changes()
    first, second = stored("AAA", "101", 1), stored("AAA", "102", 2)
    for price in (first, second):
        (payload,) = repo.announcements([], [], [price])
        changes.add(payload)
    taken = changes.take()
    assert taken.prices == {"AAA": (second, 0)}
    assert not taken.everything
    assert not changes
    at = "2026-03-02T12:00:00+00:00"
    good = ["AAA", "1", at, "t", 0, 0, "p", 0, 0, None, None, at]
    changes.add(json.dumps({"prices": [good]}))
    assert not changes.take().everything
    for bad in (
        [*good[:1], "Infinity", *good[2:]],
        [*good[:1], "NaN", *good[2:]],
        [*good[:1], "abc", *good[2:]],
        [*good[:2], "2026-03-02T12:00:00", *good[3:]],  # no time zone
        [*good[:4], "0", *good[5:]],
        [*good[:9], "sNaN", "2026-03-01T12:00:00+00:00", at],
        [*good[:11], "2026-03-02T12:00:01"],  # no time zone
        [*good, None],
        good[:2],
        {"symbol": "AAA"},
        "AAA",
    ):
        changes.add(json.dumps({"prices": [bad]}))
        assert changes.take().everything, bad


def test_an_announced_price_older_than_the_books_is_left_out() -> None:
    """An announcement can come after a read of the database that saw a later price."""
    a = uuid.uuid4()
    book = book_of((a, [holding("AAA")]))
    book.take_due(0.0, 10)
    later = repo.StoredPrice(
        d.Quote("AAA", D("102"), AT.replace(minute=1), "ticks", 0, 2),
        repo.Source("marketdata.prices.v1", 0, 2),
    )
    assert book.set_prices({"AAA": later}, 1.0) == 1  # read from the database
    book.take_due(2.0, 10)
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 3.0, announced=True) == 0
    assert book.snapshot(a, "USD", d.Scales()).prices["AAA"] == later
    assert book.set_prices({"AAA": stored("AAA", "101", 1)}, 3.0) == 1  # the database's word


def test_of_two_prices_at_the_same_exchange_time_the_later_received_is_newer() -> None:
    a = uuid.uuid4()
    book = book_of((a, [holding("AAA")]))
    book.take_due(0.0, 10)
    first, second = (
        repo.StoredPrice(
            stored("AAA", price, n).quote, repo.Source("p", 0, n), AT.replace(second=n)
        )
        for n, price in ((1, "101"), (2, "102"))
    )
    assert second.newer_than(first)
    assert not first.newer_than(second)
    assert book.set_prices({"AAA": second}, 1.0) == 1
    assert book.set_prices({"AAA": first}, 2.0, announced=True) == 0
    assert book.snapshot(a, "USD", d.Scales()).prices["AAA"] == second
    unknown = repo.StoredPrice(first.quote, first.event)  # no receipt: not newer, not older
    assert not unknown.newer_than(second)
    assert not second.newer_than(unknown)
