import operator
from collections.abc import Callable
from decimal import Decimal

import pytest

from tickertap.money import (
    BTC,
    ETH,
    EUR,
    JPY,
    USD,
    Asset,
    AssetMismatch,
    FloatRefused,
    InvalidAmount,
    InvalidAsset,
    Money,
    NotFinite,
    OutOfRange,
    Quantity,
    ScaleExceeded,
    round_to_scale,
)

AAPL = Asset.share("AAPL")


def usd(text: str) -> Money:
    return Money.parse(text, USD)


def test_money_keeps_exactly_the_asset_scale() -> None:
    assert Money(Decimal("1.5"), USD).amount.as_tuple().exponent == -2
    assert usd("1.5") == Money(Decimal("1.50"), USD)
    assert str(usd("1.5")) == usd("1.5").to_str() == "1.50"
    assert Money.parse("1000", JPY).to_str() == "1000"
    assert Money.parse("0.00000001", BTC).to_str() == "0.00000001"
    assert Money(Decimal("1E+3"), USD).to_str() == "1000.00"
    assert Money.zero(ETH).to_str() == "0." + "0" * 18
    assert Money(Decimal("-0.00"), USD).to_str() == "0.00"
    assert repr(usd("-3.2")) == "Money('-3.20', USD)"
    assert repr(Quantity.parse("3", AAPL)) == "Quantity('3', AAPL)"


def test_money_never_rounds_and_refuses_float() -> None:
    with pytest.raises(ScaleExceeded):
        Money(Decimal("1.005"), USD)
    with pytest.raises(ScaleExceeded):
        Quantity.parse("0.5", AAPL)
    with pytest.raises(FloatRefused):
        Money(1.5, USD)  # type: ignore[arg-type]
    with pytest.raises(FloatRefused):
        Quantity.parse(0.5, BTC)  # type: ignore[arg-type]
    with pytest.raises(NotFinite):
        Money(Decimal("NaN"), USD)
    with pytest.raises(OutOfRange):
        Money(Decimal("1E+36"), USD)
    with pytest.raises(InvalidAsset):
        Money(Decimal(1), "USD")  # type: ignore[arg-type]


def test_values_are_immutable_and_hashable() -> None:
    money = usd("1.00")
    with pytest.raises(AttributeError):
        money.amount = Decimal(2)  # type: ignore[misc]
    assert not hasattr(money, "__dict__")
    assert {usd("1"), usd("1.0"), usd("1.00")} == {usd("1")}


def test_equality_needs_the_same_type_asset_and_amount() -> None:
    assert usd("1") == usd("1.00")
    assert usd("1") != Money.parse("1", EUR)
    coins: object = Money.parse("1", BTC)
    assert coins != Quantity.parse("1", BTC)
    assert coins != Decimal(1)


def test_addition_subtraction_negation_within_one_asset() -> None:
    assert usd("1.10") + usd("2.25") == usd("3.35")
    assert usd("1.10") - usd("2.25") == usd("-1.15")
    assert -usd("1.10") == usd("-1.10")
    assert -Money.zero(USD) == Money.zero(USD)
    assert sum([usd("1"), usd("2")], Money.zero(USD)) == usd("3")
    assert Quantity.parse("2", AAPL) + Quantity.parse("3", AAPL) == Quantity.parse("5", AAPL)
    assert type(Quantity.parse("2", AAPL) - Quantity.parse("3", AAPL)) is Quantity


@pytest.mark.parametrize("operation", [operator.add, operator.sub, operator.lt, operator.ge])
def test_arithmetic_across_assets_is_refused(operation: Callable[[Money, Money], object]) -> None:
    with pytest.raises(AssetMismatch) as raised:
        operation(usd("1"), Money.parse("1", EUR))
    assert raised.value.code == "asset_mismatch"


def test_same_code_with_another_scale_is_another_asset() -> None:
    with pytest.raises(AssetMismatch):
        usd("1") + Money.parse("1", Asset.fiat("USD", 4))


def test_money_and_quantity_do_not_mix() -> None:
    with pytest.raises(TypeError):
        Money.parse("1", BTC) + Quantity.parse("1", BTC)  # type: ignore[operator]
    with pytest.raises(TypeError):
        usd("1") + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        usd("1") + Decimal(1)  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = usd("1") < Decimal(1)  # type: ignore[operator]


def test_sum_overflow_is_an_error_not_a_rounding() -> None:
    widest = usd("9" * 36 + ".99")
    with pytest.raises(OutOfRange):
        widest + usd("0.01")
    with pytest.raises(OutOfRange):
        -widest - usd("0.01")


def test_comparison_within_one_asset() -> None:
    assert usd("1.00") < usd("1.01") <= usd("1.01") < usd("2")
    assert usd("2") > usd("-2") >= usd("-2")
    assert max(usd("1"), usd("3"), usd("2")) == usd("3")
    assert sorted([usd("3"), usd("-1"), usd("2")]) == [usd("-1"), usd("2"), usd("3")]


def test_multiplication_gives_an_exact_decimal() -> None:
    price = Money.parse("187.12", USD)
    assert price * 3 == Decimal("561.36")
    assert 3 * price == Decimal("561.36")
    assert price * Decimal("0.5") == Decimal("93.560")
    assert Decimal("0.001") * price == Decimal("0.18712")
    shares = Quantity.parse("2.5", Asset.share("AAPL", 4))
    assert shares * Decimal("187.1234") == Decimal("467.808500")
    fee = Money(round_to_scale(price * Decimal("0.0025"), USD.scale), USD)
    assert fee == usd("0.47")


def test_multiplication_refuses_float_and_overflow() -> None:
    with pytest.raises(FloatRefused):
        usd("1") * 1.5  # type: ignore[operator]
    with pytest.raises(FloatRefused):
        1.5 * usd("1")  # type: ignore[operator]
    with pytest.raises(TypeError):
        usd("1") * True
    with pytest.raises(TypeError):
        usd("1") * usd("1")  # type: ignore[operator]
    with pytest.raises(OutOfRange):
        usd("12345678901234567890.12") * Decimal("1234567890123456789.01")
    for factor in ("NaN", "sNaN", "Infinity"):
        with pytest.raises(NotFinite):
            usd("1") * Decimal(factor)


def test_minor_units() -> None:
    assert usd("12.34").minor_units == 1234
    assert usd("-0.05").minor_units == -5
    assert Money.parse("1000", JPY).minor_units == 1000
    assert Money.parse("1", BTC).minor_units == 100_000_000
    assert Money.parse("1", ETH).minor_units == 10**18
    assert Money.from_minor_units(1234, USD) == usd("12.34")
    assert Money.from_minor_units(-1, BTC).to_str() == "-0.00000001"
    with pytest.raises(FloatRefused):
        Money.from_minor_units(12.0, USD)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money.from_minor_units(Decimal(12), USD)  # type: ignore[arg-type]
    with pytest.raises(OutOfRange):
        Money.from_minor_units(10**38, USD)
