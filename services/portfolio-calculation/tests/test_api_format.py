"""How the API shows numbers and checks day ranges, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tickertap.portfolio import api
from tickertap.portfolio import domain as d

D = Decimal
SCALES = d.Scales({"JPY": 0, "BTC": 8})


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [
        (D("10"), "USD", "10.00"),
        (D("1.5"), "USD", "1.50"),
        (D("1.230000000000000000"), "USD", "1.23"),  # NUMERIC(38, 18) as Postgres returns it
        (D("-7"), "JPY", "-7"),
        (D("0.1"), "BTC", "0.10000000"),
        # more places than the scale: shown exactly, never rounded (USDC is not configured
        # and takes the default of 2; shares transferred in but never traded are cash too)
        (D("0.123456"), "USDC", "0.123456"),
        (D("0.123456000000000000"), "USDC", "0.123456"),
        (D("1.5"), "JPY", "1.5"),
        (D("1E+2"), "USD", "100.00"),
    ],
)
def test_money_is_padded_to_its_scale_and_never_rounded(
    value: Decimal, currency: str, shown: str
) -> None:
    assert api.money(value, currency, SCALES) == shown


def test_a_cost_with_more_places_than_its_scale_is_kept() -> None:
    """A buy priced in USDC (not configured: default scale 2) costs what was paid."""
    buy = d.PortfolioTransfer(
        uuid.uuid4(),
        datetime(2026, 11, 2, 14, 30, tzinfo=UTC),
        "trade",
        {"USDC": D("-10.123456"), "XYZ": D("1")},
        d.Trade("XYZ", d.Side.BUY, D("1"), D("10.123456"), D("10.123456"), D("0"), "USDC"),
    )
    v = d.valuate(d.compute([buy], SCALES), {}, d.Method.FIFO, "USD", SCALES)
    (position,) = v.positions
    assert position.cost_basis == D("10.123456")
    assert api.money(position.cost_basis, "USDC", SCALES) == "10.123456"
    assert str(d.at_scale(D("10.1"), 2)) == "10.10"
    assert str(d.at_scale(D("0"), 2)) == "0.00"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, date.max),  # its end (the next midnight) is not a datetime: was a 500
        (date.max, None),
        (date.max, date.max),
    ],
)
def test_days_whose_end_overflows_are_an_invalid_range(
    start: date | None, end: date | None
) -> None:
    with pytest.raises(api.InvalidRange):
        api.check_range(start, end)


def test_the_extreme_representable_days_are_accepted() -> None:
    api.check_range(date.min, api.DAY_MAX)
    assert date(9999, 12, 30) == api.DAY_MAX
