"""Properties over many generated values: parse never rounds, floats never pass."""

from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertap.money import (
    DIGITS_MAX,
    SCALE_MAX,
    Asset,
    FloatRefused,
    Money,
    OutOfRange,
    ScaleExceeded,
    money_context,
    parse_amount,
    round_to_scale,
)

PROPERTY = settings(database=None, deadline=None, max_examples=300)

scales = st.integers(min_value=0, max_value=SCALE_MAX)
assets = st.builds(Asset.crypto, st.sampled_from(["USD", "BTC", "ETH", "X.Y"]), scales)


@st.composite
def moneys(draw: st.DrawFn, asset: Asset, digits_max: int = DIGITS_MAX) -> Money:
    units_max = 10**digits_max - 1
    units = draw(st.integers(min_value=-units_max, max_value=units_max))
    return Money.from_minor_units(units, asset)


@st.composite
def canonical_texts(draw: st.DrawFn) -> tuple[str, Asset]:
    asset = draw(assets)
    integer_digits_max = DIGITS_MAX - asset.scale
    whole = draw(st.integers(min_value=0, max_value=10**integer_digits_max - 1))
    places = draw(st.text("0123456789", min_size=asset.scale, max_size=asset.scale))
    sign = draw(st.sampled_from(["", "-"])) if whole or places.strip("0") else ""
    return f"{sign}{whole}{'.' if places else ''}{places}", asset


@PROPERTY
@given(canonical_texts())
def test_canonical_text_round_trips(case: tuple[str, Asset]) -> None:
    text, asset = case
    money = Money.parse(text, asset)
    assert money.to_str() == text
    assert Money.parse(money.to_str(), asset) == money
    assert Money.from_minor_units(money.minor_units, asset) == money


@PROPERTY
@given(st.data())
def test_addition_is_commutative_and_associative(data: st.DataObject) -> None:
    asset = data.draw(assets)
    a, b, c = (data.draw(moneys(asset, DIGITS_MAX - 2)) for _ in range(3))
    assert a + b == b + a
    assert (a + b) + c == a + (b + c)
    assert a - b == a + (-b)
    assert a + Money.zero(asset) == a
    with localcontext(money_context()):
        assert (a + b).amount == a.amount + b.amount


@PROPERTY
@given(
    st.decimals(allow_nan=False, allow_infinity=False) | st.integers().map(Decimal),
    scales,
)
def test_parse_never_rounds(value: Decimal, scale: int) -> None:
    try:
        parsed = parse_amount(value, scale)
    except (ScaleExceeded, OutOfRange):
        return
    assert parsed == value
    assert parsed.as_tuple().exponent == -scale


@PROPERTY
@given(st.data())
def test_text_with_too_many_places_is_refused(data: st.DataObject) -> None:
    scale = data.draw(st.integers(min_value=0, max_value=SCALE_MAX - 1))
    whole = data.draw(st.integers(min_value=0, max_value=10**6))
    extra = data.draw(st.integers(min_value=1, max_value=9))
    text = f"{whole}.{'0' * scale}{extra}"
    with pytest.raises(ScaleExceeded):
        parse_amount(text, scale)


@PROPERTY
@given(st.floats(), scales)
def test_floats_are_always_refused(value: float, scale: int) -> None:
    asset = Asset.crypto("X", scale)
    with pytest.raises(FloatRefused):
        parse_amount(value, scale)  # type: ignore[arg-type]
    with pytest.raises(FloatRefused):
        Money(value, asset)  # type: ignore[arg-type]
    with pytest.raises(FloatRefused):
        Money.zero(asset) * value  # type: ignore[operator]
    with pytest.raises(FloatRefused):
        round_to_scale(value, scale)  # type: ignore[arg-type]


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False, places=30), scales)
def test_round_to_scale_is_within_half_a_unit(value: Decimal, scale: int) -> None:
    try:
        rounded = round_to_scale(value, scale)
    except OutOfRange:
        return
    assert rounded.as_tuple().exponent == -scale
    assert abs(rounded - value) <= Decimal(1).scaleb(-scale) / 2
