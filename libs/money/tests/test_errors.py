import pytest

from tickertap.money import (
    AssetMismatch,
    FloatRefused,
    InvalidAmount,
    InvalidAsset,
    MoneyError,
    NotFinite,
    OutOfRange,
    ScaleExceeded,
    UnknownAsset,
)


@pytest.mark.parametrize(
    ("error", "code", "parent"),
    [
        (MoneyError, "money_error", ValueError),
        (InvalidAmount, "invalid_amount", MoneyError),
        (FloatRefused, "float_refused", InvalidAmount),
        (NotFinite, "not_finite", InvalidAmount),
        (ScaleExceeded, "scale_exceeded", InvalidAmount),
        (OutOfRange, "out_of_range", InvalidAmount),
        (InvalidAsset, "invalid_asset", MoneyError),
        (UnknownAsset, "unknown_asset", InvalidAsset),
        (AssetMismatch, "asset_mismatch", MoneyError),
    ],
)
def test_each_error_has_a_code_and_a_place_in_the_tree(
    error: type[MoneyError], code: str, parent: type[Exception]
) -> None:
    raised = error("the rule")
    assert raised.code == code
    assert isinstance(raised, parent)
    assert isinstance(raised, ValueError)
    assert raised.message == str(raised) == "the rule"


def test_codes_are_unique() -> None:
    errors = [MoneyError, InvalidAmount, FloatRefused, NotFinite, ScaleExceeded, OutOfRange]
    errors += [InvalidAsset, UnknownAsset, AssetMismatch]
    assert len({error.code for error in errors}) == len(errors)


def test_float_refused_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        raise FloatRefused("no floats")
