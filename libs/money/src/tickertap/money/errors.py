"""The errors of tickertap.money: one tree, each with a machine-readable `code`.

    MoneyError (ValueError)        money_error      base: catch this to map any of them to a 4xx
    ├── InvalidAmount              invalid_amount   not an amount: wrong type, empty, garbage, '+1', '1e3'
    │   ├── FloatRefused (+TypeError) float_refused  a float was given; use str, Decimal or int
    │   ├── NotFinite              not_finite       NaN, sNaN, Infinity, -Infinity
    │   ├── ScaleExceeded          scale_exceeded   more decimal places than the scale (never rounded)
    │   └── OutOfRange             out_of_range     too many digits, or a result beyond the precision
    ├── InvalidAsset               invalid_asset    bad asset code, scale or kind
    │   └── UnknownAsset           unknown_asset    a well-formed code that is not registered
    └── AssetMismatch              asset_mismatch   arithmetic or comparison across two assets

Every error is a ValueError, so a Pydantic validator that raises one yields a 422, not a 500.
Messages never echo the rejected input; they say what the rule is.
"""

from typing import ClassVar


class MoneyError(ValueError):
    code: ClassVar[str] = "money_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidAmount(MoneyError):
    code = "invalid_amount"


class FloatRefused(InvalidAmount, TypeError):
    code = "float_refused"


class NotFinite(InvalidAmount):
    code = "not_finite"


class ScaleExceeded(InvalidAmount):
    code = "scale_exceeded"


class OutOfRange(InvalidAmount):
    code = "out_of_range"


class InvalidAsset(MoneyError):
    code = "invalid_asset"


class UnknownAsset(InvalidAsset):
    code = "unknown_asset"


class AssetMismatch(MoneyError):
    code = "asset_mismatch"
