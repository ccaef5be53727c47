from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal

import pytest

from tickertap.money import (
    BTC,
    DIGITS_MAX,
    ETH,
    JPY,
    TEXT_CHARS_MAX,
    USD,
    FloatRefused,
    InvalidAmount,
    InvalidAsset,
    MoneyError,
    NotFinite,
    OutOfRange,
    ScaleExceeded,
    parse_amount,
    parse_price,
    round_to_scale,
    to_decimal,
)


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        ("12.34", 2, "12.34"),
        ("12.3", 2, "12.30"),
        ("12", 2, "12.00"),
        ("-12.34", 2, "-12.34"),
        ("0", 2, "0.00"),
        ("-0", 2, "0.00"),
        ("-0.00", 2, "0.00"),
        ("007.50", 2, "7.50"),
        ("1.500", 2, "1.50"),
        ("1000", 0, "1000"),
        ("0.00000001", 8, "0.00000001"),
        (Decimal("1.5"), 2, "1.50"),
        (Decimal("1E+3"), 2, "1000.00"),
        (Decimal("0E-40"), 2, "0.00"),
        (Decimal("0E+999999"), 2, "0.00"),
        (Decimal("-0"), 0, "0"),
        (42, 2, "42.00"),
        (-42, 0, "-42"),
    ],
)
def test_accepted_values_get_exactly_the_scale(
    value: str | Decimal | int, scale: int, expected: str
) -> None:
    parsed = parse_amount(value, scale)
    assert f"{parsed:f}" == expected
    assert parsed.as_tuple().exponent == -scale


def test_asset_or_scale() -> None:
    assert parse_amount("1", USD) == parse_amount("1", 2)
    assert parse_amount("1", JPY).as_tuple().exponent == 0
    assert parse_amount("0.000000000000000001", ETH) == Decimal("1E-18")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", InvalidAmount),
        (" ", InvalidAmount),
        (" 1.00", InvalidAmount),
        ("1.00 ", InvalidAmount),
        ("+1.00", InvalidAmount),
        ("1e3", InvalidAmount),
        ("1E-2", InvalidAmount),
        ("1_000", InvalidAmount),
        ("1,000.00", InvalidAmount),
        (".5", InvalidAmount),
        ("5.", InvalidAmount),
        ("--1", InvalidAmount),
        ("0x10", InvalidAmount),
        ("abc", InvalidAmount),
        ("١٢٣", InvalidAmount),
        ("１２", InvalidAmount),
        ("1" * (TEXT_CHARS_MAX + 1), InvalidAmount),
        ("NaN", NotFinite),
        ("-nan", NotFinite),
        ("sNaN", NotFinite),
        ("Infinity", NotFinite),
        ("-Infinity", NotFinite),
        ("inf", NotFinite),
        (Decimal("NaN"), NotFinite),
        (Decimal("sNaN"), NotFinite),
        (Decimal("Infinity"), NotFinite),
        (Decimal("-Infinity"), NotFinite),
        ("1.005", ScaleExceeded),
        ("0.001", ScaleExceeded),
        ("-0.001", ScaleExceeded),
        (Decimal("1E-999999"), ScaleExceeded),
        (Decimal("1.0000000000000000000000000000000000000000001"), ScaleExceeded),
        ("1" + "0" * 36, OutOfRange),
        (Decimal("1E+36"), OutOfRange),
        (Decimal("1E+999999"), OutOfRange),
        (10**36, OutOfRange),
        (1.5, FloatRefused),
        (1.0, FloatRefused),
        (float("nan"), FloatRefused),
        (float("inf"), FloatRefused),
        (True, InvalidAmount),
        (None, InvalidAmount),
        (b"1.00", InvalidAmount),
        ([1], InvalidAmount),
    ],
)
def test_rejections(value: object, error: type[MoneyError]) -> None:
    with pytest.raises(error) as raised:
        parse_amount(value, USD)  # type: ignore[arg-type]
    assert type(raised.value) is error
    assert raised.value.code == error.code


def test_integer_digits_are_bounded_by_the_column() -> None:
    widest = "9" * (DIGITS_MAX - 2) + ".99"
    assert f"{parse_amount(widest, USD):f}" == widest
    assert parse_amount("9" * 20, 18) == Decimal("9" * 20)
    with pytest.raises(OutOfRange):
        parse_amount("9" * 21, 18)
    assert parse_amount("999999.99", 2, digits_max=8) == Decimal("999999.99")
    with pytest.raises(OutOfRange):
        parse_amount("1000000", 2, digits_max=8)
    assert parse_amount("0.99", 2, digits_max=2) == Decimal("0.99")


@pytest.mark.parametrize("digits_max", [1, 39, 0, True])
def test_digits_max_must_fit_the_scale_and_precision(digits_max: int) -> None:
    with pytest.raises(ValueError, match="digits_max"):
        parse_amount("1", 2, digits_max=digits_max)


@pytest.mark.parametrize("scale", [-1, 19, True])
def test_scale_is_checked(scale: int) -> None:
    with pytest.raises(InvalidAsset):
        parse_amount("1", scale)


def test_parse_price_wants_a_positive_value() -> None:
    assert parse_price("187.1234", 4) == Decimal("187.1234")
    assert parse_price("0.0001", 4) == Decimal("0.0001")
    for value in ("0", "-0", "-1.00"):
        with pytest.raises(OutOfRange):
            parse_price(value, 4)
    with pytest.raises(ScaleExceeded):
        parse_price("187.12345", 4)
    with pytest.raises(FloatRefused):
        parse_price(1.5, 4)  # type: ignore[arg-type]


def test_to_decimal_keeps_the_value_and_refuses_the_rest() -> None:
    assert to_decimal("1.2345678") == Decimal("1.2345678")
    assert to_decimal(7) == Decimal(7)
    with pytest.raises(FloatRefused):
        to_decimal(0.1)  # type: ignore[arg-type]
    with pytest.raises(NotFinite):
        to_decimal(Decimal("NaN"))


@pytest.mark.parametrize(
    ("value", "scale", "rounding", "expected"),
    [
        ("0.125", 2, "ROUND_HALF_EVEN", "0.12"),
        ("0.135", 2, "ROUND_HALF_EVEN", "0.14"),
        ("2.5", 0, "ROUND_HALF_EVEN", "2"),
        ("0.125", 2, ROUND_HALF_UP, "0.13"),
        ("0.129", 2, ROUND_DOWN, "0.12"),
        ("0.121", 2, ROUND_CEILING, "0.13"),
        ("-0.004", 2, "ROUND_HALF_EVEN", "0.00"),
        ("1.00000000000000000000000000000000000001", 8, "ROUND_HALF_EVEN", "1.00000000"),
        ("12", 2, "ROUND_HALF_EVEN", "12.00"),
    ],
)
def test_round_to_scale(value: str, scale: int, rounding: str, expected: str) -> None:
    rounded = round_to_scale(Decimal(value), scale, rounding)  # type: ignore[arg-type]
    assert f"{rounded:f}" == expected


def test_round_to_scale_defaults_to_half_even_and_takes_ints() -> None:
    assert round_to_scale(Decimal("0.005"), 2) == Decimal("0.00")
    assert f"{round_to_scale(3, 2):f}" == "3.00"


def test_round_to_scale_refusals() -> None:
    with pytest.raises(FloatRefused):
        round_to_scale(0.125, 2)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        round_to_scale("0.125", 2)  # type: ignore[arg-type]
    with pytest.raises(NotFinite):
        round_to_scale(Decimal("Infinity"), 2)
    with pytest.raises(OutOfRange):
        round_to_scale(Decimal("1E+36"), 2)
    with pytest.raises(InvalidAsset):
        round_to_scale(Decimal(1), 19)
    with pytest.raises(ValueError, match="rounding"):
        round_to_scale(Decimal(1), 2, "HALF_EVEN")  # type: ignore[arg-type]


def test_btc_satoshi_and_eth_wei() -> None:
    assert parse_amount("21000000.00000000", BTC) == Decimal(21_000_000)
    with pytest.raises(ScaleExceeded):
        parse_amount("0.000000001", BTC)
    assert parse_amount("-1.000000000000000001", ETH) == Decimal("-1.000000000000000001")
