"""The errors of tickertap.money: one tree, each with a machine-readable `code`.

    MoneyError (ValueError)       money_error     base: map any of them to a 4xx
    ├── InvalidAmount             invalid_amount  wrong type, empty, garbage, '+1', '1e3'
    │   ├── FloatRefused          float_refused   a float (also a TypeError)
    │   ├── NotFinite             not_finite      NaN, sNaN, Infinity, -Infinity
    │   ├── ScaleExceeded         scale_exceeded  more places than the scale; never rounded
    │   └── OutOfRange            out_of_range    too many digits, a result past the precision,
    │                                             a price or quantity that is not positive
    ├── InvalidAsset              invalid_asset   bad asset code, scale or kind
    │   └── UnknownAsset          unknown_asset   a well-formed code that is not registered
    └── AssetMismatch             asset_mismatch  arithmetic or comparison across two assets

Every error is a ValueError, so a Pydantic validator that raises one yields a 422, not a 500.
Messages state the rule that was broken; they never echo the rejected amount.
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
