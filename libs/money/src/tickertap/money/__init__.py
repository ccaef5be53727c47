"""Money, prices and quantities as Decimal: the project-wide context, assets and their scales.

    from tickertap.money import USD, Asset, Money, Quantity, parse_price, round_to_scale

    price = parse_price("187.1234", 4)              # Decimal; '187.12345' raises ScaleExceeded
    shares = Quantity.parse("3", Asset.share("AAPL"))
    notional = Money(round_to_scale(shares * price, USD.scale), USD)  # the one way to round

Errors: see `tickertap.money.errors`. Nothing happens at import; a service calls
`install_context()` once in its composition root.
"""

from tickertap.money.assets import (
    BTC,
    CODE_PATTERN,
    DEFAULT_ASSETS,
    ETH,
    EUR,
    GBP,
    JPY,
    USD,
    Asset,
    AssetKind,
    AssetRegistry,
)
from tickertap.money.context import (
    CONTEXT,
    DIGITS_MAX,
    SCALE_MAX,
    install_context,
    money_context,
)
from tickertap.money.errors import (
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
from tickertap.money.parse import (
    TEXT_CHARS_MAX,
    Rounding,
    parse_amount,
    parse_price,
    round_to_scale,
    to_decimal,
)
from tickertap.money.values import Money, Quantity

__all__ = [
    "BTC",
    "CODE_PATTERN",
    "CONTEXT",
    "DEFAULT_ASSETS",
    "DIGITS_MAX",
    "ETH",
    "EUR",
    "GBP",
    "JPY",
    "SCALE_MAX",
    "TEXT_CHARS_MAX",
    "USD",
    "Asset",
    "AssetKind",
    "AssetMismatch",
    "AssetRegistry",
    "FloatRefused",
    "InvalidAmount",
    "InvalidAsset",
    "Money",
    "MoneyError",
    "NotFinite",
    "OutOfRange",
    "Quantity",
    "Rounding",
    "ScaleExceeded",
    "UnknownAsset",
    "install_context",
    "money_context",
    "parse_amount",
    "parse_price",
    "round_to_scale",
    "to_decimal",
]
