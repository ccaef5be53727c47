"""The live publisher's update bytes are the codec's bytes of `update_record` (pure)."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas
from tickertap.messaging.codec import SINGLE_OBJECT_HEADER_BYTES
from tickertap.portfolio import domain as d
from tickertap.portfolio import repository as repo
from tickertap.portfolio import wire
from tickertap.portfolio.handlers import UPDATES_TOPIC, update_record
from tickertap.portfolio.live import Book

CODEC = AvroCodec(load_schemas(find_schemas_dir()))
SCALES = d.Scales({"JPY": 0, "BTC": 8})
BASE = "USD"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]

amounts = st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False)
quantities = st.one_of(
    st.just(Decimal(0)),
    st.decimals(min_value=Decimal("0.00000001"), max_value=10**6, places=8, allow_nan=False),
)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=10**5, places=4, allow_nan=False)
times = st.integers(min_value=0, max_value=10**7).map(lambda s: T0 + timedelta(seconds=s))


@st.composite
def portfolios(draw: st.DrawFn) -> tuple[Book, uuid.UUID]:
    owner = uuid.uuid4()
    held = draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=4))
    figures = [
        d.PositionFigures(
            s,
            draw(st.sampled_from(["USD", "USD", "JPY", "BTC"])),
            draw(quantities),
            draw(amounts),
            draw(amounts),
            draw(amounts),
            draw(amounts),
        )
        for s in held
    ]
    cash = draw(st.dictionaries(st.sampled_from(["USD", "EUR", "JPY"]), amounts, max_size=3))
    sources = draw(
        st.lists(
            st.tuples(st.sampled_from(["ledger.transfers.v1", "marketdata.prices.v1"]),
                      st.integers(0, 5), st.integers(0, 10**12)),
            unique_by=lambda x: (x[0], x[1]),
            max_size=3,
        )
    )  # fmt: skip
    last_transfer = draw(st.one_of(st.none(), times))
    row = repo.PortfolioRow(owner, 3, last_transfer, T0, [repo.Source(*x) for x in sources])
    book = Book(0.25)
    book.put(row, figures, cash, 0.0)
    stored = {}
    for s in draw(st.lists(st.sampled_from(SYMBOLS), unique=True)):
        close = draw(st.one_of(st.none(), prices))
        quote = d.Quote(
            s,
            draw(prices),
            draw(times),
            "marketdata.ticks.v1",
            draw(st.integers(0, 7)),
            draw(st.integers(0, 10**12)),
            close,
            None if close is None else T0,
        )
        event = repo.Source(
            "marketdata.prices.v1", draw(st.integers(0, 5)), draw(st.integers(0, 10**9))
        )
        stored[s] = repo.StoredPrice(quote, event)
    book.set_prices(stored, 0.0)
    return book, owner


def codec_bytes(book: Book, owner: uuid.UUID, event_id: str, at: datetime) -> bytes:
    record = update_record(book.snapshot(owner, BASE, SCALES), at)
    return CODEC.encode(UPDATES_TOPIC, {**record, "event_id": event_id})


@settings(max_examples=300, deadline=None)
@given(portfolios(), times)
def test_the_same_bytes_as_the_codec_of_the_record(
    case: tuple[Book, uuid.UUID], at: datetime
) -> None:
    book, owner = case
    writer = wire.UpdateWriter(wire.framing_header(CODEC), BASE, SCALES)
    (event_id,) = wire.event_ids(1)
    key, fast = book.encode(owner, writer, event_id, wire.micros(at))
    assert key == str(owner).encode()
    assert fast == codec_bytes(book, owner, event_id, at)
    _, again = book.encode(owner, writer, event_id, wire.micros(at))  # parts, quotes cached
    assert again == fast
    schema = CODEC.schemas.get(UPDATES_TOPIC).parsed
    body = io.BytesIO(fast[SINGLE_OBJECT_HEADER_BYTES:])
    decoded = fastavro.schemaless_reader(body, schema, None)
    assert body.tell() == len(fast) - SINGLE_OBJECT_HEADER_BYTES
    assert uuid.UUID(str(decoded["portfolio_id"])) == owner


def test_a_price_move_changes_only_what_depends_on_it() -> None:
    owner = uuid.uuid4()
    row = repo.PortfolioRow(owner, 1, T0, T0, [])
    figure = d.PositionFigures("AAA", "USD", Decimal(10), Decimal("1000.00"), Decimal("1000.00"),
                               Decimal(0), Decimal(0))  # fmt: skip
    book = Book(0.25)
    book.put(row, [figure], {"USD": Decimal("5.00")}, 0.0)
    writer = wire.UpdateWriter(wire.framing_header(CODEC), BASE, SCALES)
    event_id = str(uuid.UUID(int=1))
    for n, price in enumerate(["101.5", "99.25"]):
        quote = d.Quote("AAA", Decimal(price), T0, "ticks", 0, n, Decimal(100), T0)
        book.set_prices({"AAA": repo.StoredPrice(quote, repo.Source("prices", 0, n))}, 0.0)
        _, fast = book.encode(owner, writer, event_id, wire.micros(T0))
        assert fast == codec_bytes(book, owner, event_id, T0)
        decoded = CODEC.decode(fast)
        assert decoded["totals"]["market_value"] == Decimal(price) * 10
        assert decoded["totals"]["total_value"] == Decimal(price) * 10 + 5


@pytest.mark.parametrize(
    "value", [Decimal("0.0000000000000000001"), Decimal(10) ** 20, Decimal("NaN")]
)
def test_a_value_the_schema_cannot_carry_is_refused(value: Decimal) -> None:
    with pytest.raises(wire.WireError):
        wire.decimal_bytes(value)


@pytest.mark.parametrize("unscaled", [0, 1, -1, 127, 128, -128, -129, 10**38 - 1, -(10**38) + 1])
def test_optional_decimals_are_branch_one_and_the_decimal(unscaled: int) -> None:
    assert wire.some_unscaled_bytes(unscaled) == b"\x02" + wire.unscaled_bytes(unscaled)
    out = io.BytesIO()
    schema = {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 18}
    fastavro.schemaless_writer(out, ["null", schema], Decimal(f"{unscaled}e-18"))
    assert wire.some_unscaled_bytes(unscaled) == out.getvalue()


@pytest.mark.parametrize("unscaled", [10**38, -(10**38), 2**200])
def test_an_optional_decimal_beyond_38_digits_is_refused(unscaled: int) -> None:
    with pytest.raises(wire.WireError):
        wire.some_unscaled_bytes(unscaled)


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1])
def test_longs_are_zigzag_varints(n: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    assert wire.long_bytes(n) == out.getvalue()


@pytest.mark.parametrize(
    ("quantity", "price", "places"),
    [
        ("0.5", "0.01", 2),  # 0.005: a tie, to the even 0.00
        ("1.5", "0.01", 2),  # 0.015: a tie, to the even 0.02
        ("-0.5", "0.03", 2),  # -0.015: a tie below zero, to -0.02
        ("-2.5", "1", 0),  # -2.5: to -2
        ("3.5", "1", 0),  # 3.5: to 4
        ("0.000000000000000001", "0.000000000000000001", 18),  # 1e-36: to 0
        ("123456789.123456789", "98765.4321", 8),
    ],
)
def test_products_round_half_even_as_the_domain(quantity: str, price: str, places: int) -> None:
    q, p = Decimal(quantity), Decimal(price)
    with localcontext(d.WORK):
        expected = d.round_to(q * p, places)
    assert wire.round_product(wire.scaled(q) * wire.scaled(p), places) == wire.scaled(expected)


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = wire.event_ids(1000)
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


@pytest.mark.parametrize(
    "unscaled", [10**38 - 1, -(10**38 - 1), 2**111 - 1, -(2**111), 0, -1, 127, -128]
)
def test_unscaled_values_up_to_38_digits_are_the_codecs_bytes(unscaled: int) -> None:
    value = Decimal(unscaled).scaleb(-wire.SCALE, d.WORK)  # exact: 80 digits
    record = {"asset": "X", "amount": value}
    schema = CODEC.schemas.get(UPDATES_TOPIC).parsed
    cash_schema = schema["fields"][7]["type"]["items"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, cash_schema, record)
    assert wire.string_bytes("X") + wire.unscaled_bytes(unscaled) == out.getvalue()


@pytest.mark.parametrize("unscaled", [10**38, -(10**38), 2**127])
def test_unscaled_values_beyond_38_digits_are_refused(unscaled: int) -> None:
    with pytest.raises(wire.WireError):
        wire.unscaled_bytes(unscaled)
