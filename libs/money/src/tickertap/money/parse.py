"""From outside values to Decimals of an exact scale, and the one explicit way to round.

Accepted input: `str`, `Decimal` or `int` (not `bool`); `float` raises FloatRefused.
Text must be plain decimal notation, `-?[0-9]+(.[0-9]+)?`, at most TEXT_CHARS_MAX long:
no '+' (one canonical spelling, like JSON), no exponent, no spaces, no '_', no '.5' or
'5.', ASCII digits only. A Decimal may carry any exponent; only its value is checked.
Places beyond the scale must be zeros ('1.50' and '1.500' are both 1.50 for USD); a value
that would need rounding raises ScaleExceeded. '-0' becomes 0. The result always has
exactly `scale` places, so it fits `NUMERIC(digits_max, scale)`.
"""

import re
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, get_args

from tickertap.money.assets import Asset, check_scale
from tickertap.money.context import DIGITS_MAX, library_context
from tickertap.money.errors import (
    FloatRefused,
    InvalidAmount,
    NotFinite,
    OutOfRange,
    ScaleExceeded,
)

TEXT_CHARS_MAX: Final = 64
_TEXT: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")

Rounding = Literal[
    "ROUND_HALF_EVEN",
    "ROUND_HALF_UP",
    "ROUND_HALF_DOWN",
    "ROUND_UP",
    "ROUND_DOWN",
    "ROUND_CEILING",
    "ROUND_FLOOR",
    "ROUND_05UP",
]
_ROUNDINGS: Final = frozenset(get_args(Rounding))


def to_decimal(value: str | Decimal | int) -> Decimal:
    """`value` as a finite Decimal, unchanged in value; no scale or range check."""
    if isinstance(value, float):
        raise FloatRefused("floats are refused: give amounts as str, Decimal or int")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        number = _from_text(value)
    else:
        raise InvalidAmount(f"an amount must be str, Decimal or int, not {type(value).__name__}")
    if not number.is_finite():
        raise NotFinite("an amount must be a finite number, not NaN or Infinity")
    return number


def _from_text(text: str) -> Decimal:
    if len(text) > TEXT_CHARS_MAX:
        raise InvalidAmount(f"an amount must be at most {TEXT_CHARS_MAX} characters")
    if _TEXT.fullmatch(text) is not None:
        return Decimal(text)
    try:  # only to tell NaN and Infinity apart from garbage
        with library_context():
            number = Decimal(text)
    except InvalidOperation:
        number = Decimal(0)
    if not number.is_finite():
        raise NotFinite("an amount must be a finite number, not NaN or Infinity")
    raise InvalidAmount("an amount must be written as digits with an optional '-' and '.'")


def _to_scale(value: Decimal, scale: int, digits_max: int = DIGITS_MAX) -> Decimal:
    """Finite `value` with exactly `scale` places, or ScaleExceeded/OutOfRange; never rounds."""
    if value.is_zero():
        return Decimal((0, (0,), -scale))
    integer_digits_max = digits_max - scale
    if value.adjusted() >= integer_digits_max:
        raise OutOfRange(f"an amount may have at most {integer_digits_max} integer digits")
    with library_context():
        scaled = value.quantize(Decimal((0, (1,), -scale)))
    if scaled != value:
        raise ScaleExceeded(f"an amount may have at most {scale} decimal places")
    return scaled


def parse_amount(
    value: str | Decimal | int, asset_or_scale: Asset | int, *, digits_max: int = DIGITS_MAX
) -> Decimal:
    """`value` as a Decimal with exactly the asset's (or the given) scale; never rounds.

    `digits_max` is the precision `p` of the `NUMERIC(p, scale)` column it must fit.
    """
    scale = asset_or_scale.scale if isinstance(asset_or_scale, Asset) else asset_or_scale
    check_scale(scale)
    if type(digits_max) is not int or not scale <= digits_max <= DIGITS_MAX:
        raise ValueError(f"digits_max must be an int from the scale to {DIGITS_MAX}")
    return _to_scale(to_decimal(value), scale, digits_max)


def parse_price(value: str | Decimal | int, scale: int, *, digits_max: int = DIGITS_MAX) -> Decimal:
    """Like `parse_amount`, for a price or quantity that must be greater than zero."""
    price = parse_amount(value, scale, digits_max=digits_max)
    if price <= 0:
        raise OutOfRange("a price or quantity must be greater than zero")
    return price


def round_to_scale(
    value: Decimal | int, scale: int, rounding: Rounding = "ROUND_HALF_EVEN"
) -> Decimal:
    """Round a server-side result (notional, fee) to `scale` places: the only rounding there is.

    Runs in the project context whatever the caller's is; OutOfRange past DIGITS_MAX digits.
    """
    if isinstance(value, str):
        raise InvalidAmount("round_to_scale takes a Decimal or int; parse text instead")
    number = to_decimal(value)
    check_scale(scale)
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {sorted(_ROUNDINGS)}")
    try:
        with library_context():
            rounded = number.quantize(Decimal((0, (1,), -scale)), rounding=rounding)
    except InvalidOperation:
        raise OutOfRange(f"result needs more than {DIGITS_MAX} significant digits") from None
    return rounded.copy_abs() if rounded.is_zero() else rounded
