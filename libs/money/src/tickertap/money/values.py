"""Money and Quantity: immutable amounts of one asset, always at exactly the asset's scale."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Self

from tickertap.money.assets import Asset
from tickertap.money.context import exact
from tickertap.money.errors import AssetMismatch, FloatRefused, InvalidAmount, InvalidAsset
from tickertap.money.parse import parse_amount, to_decimal


@dataclass(frozen=True, slots=True, repr=False)
class _Amount:
    """What Money and Quantity share. Values of the two types never mix."""

    amount: Decimal
    asset: Asset

    def __post_init__(self) -> None:
        if not isinstance(self.asset, Asset):
            raise InvalidAsset("asset must be an Asset")
        object.__setattr__(self, "amount", parse_amount(self.amount, self.asset))

    @classmethod
    def parse(cls, value: str | Decimal | int, asset: Asset) -> Self:
        """From API or config input; refuses float and anything that would need rounding."""
        return cls(parse_amount(value, asset), asset)

    @classmethod
    def zero(cls, asset: Asset) -> Self:
        return cls(Decimal(0), asset)

    @classmethod
    def from_minor_units(cls, units: int, asset: Asset) -> Self:
        """From an int count of the smallest unit (cents, satoshi, wei)."""
        if isinstance(units, float):
            raise FloatRefused("floats are refused: minor units are an int")
        if type(units) is not int:
            raise InvalidAmount("minor units must be an int")
        with exact():
            amount = Decimal(units).scaleb(-asset.scale)
        return cls(amount, asset)

    @property
    def minor_units(self) -> int:
        """The amount as an int count of the smallest unit: 12.34 USD is 1234."""
        with exact():
            return int(self.amount.scaleb(self.asset.scale))

    def to_str(self) -> str:
        """Canonical text with exactly `scale` places and no exponent: '0.00000001', '-5'."""
        return f"{self.amount:f}"

    def __str__(self) -> str:
        return self.to_str()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_str()!r}, {self.asset.code})"

    def _same_asset(self, other: Self) -> None:
        if self.asset != other.asset:
            raise AssetMismatch(f"cannot combine {self.asset} with {other.asset}")

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        with exact():
            total = self.amount + other.amount
        return type(self)(total, self.asset)

    def __sub__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        with exact():
            difference = self.amount - other.amount
        return type(self)(difference, self.asset)

    def __neg__(self) -> Self:
        return type(self)(self.amount.copy_negate(), self.asset)  # copy_negate never rounds

    def __mul__(self, factor: Decimal | int) -> Decimal:
        """Exact product (a notional before `round_to_scale`); OutOfRange past 38 digits."""
        if isinstance(factor, float):
            raise FloatRefused("floats are refused: multiply by a Decimal or int")
        if not isinstance(factor, Decimal | int) or isinstance(factor, bool):
            return NotImplemented
        number = to_decimal(factor)  # refuses NaN and Infinity
        with exact():
            return self.amount * number

    __rmul__ = __mul__

    def __lt__(self, other: Self) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        return self.amount < other.amount

    def __le__(self, other: Self) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        return self.amount <= other.amount

    def __gt__(self, other: Self) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        return self.amount > other.amount

    def __ge__(self, other: Self) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        self._same_asset(other)
        return self.amount >= other.amount


@dataclass(frozen=True, slots=True, repr=False)
class Money(_Amount):
    """An amount of a currency or coin (balance, transfer, fee): `Money.parse("12.34", USD)`."""


@dataclass(frozen=True, slots=True, repr=False)
class Quantity(_Amount):
    """A number of units traded or held: shares, coins. `Quantity.parse("0.5", BTC)`."""
