"""Assets and their scales: fiat, crypto and shares, and a registry built from settings."""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from tickertap.money.context import SCALE_MAX
from tickertap.money.errors import InvalidAsset, UnknownAsset

CODE_PATTERN: Final = re.compile(r"[A-Z0-9][A-Z0-9.]{0,11}")
"""1 to 12 of A-Z, 0-9 and '.', not starting with '.' ('BRK.B'); matched in full."""


class AssetKind(StrEnum):
    FIAT = "fiat"
    CRYPTO = "crypto"
    SHARE = "share"


def check_scale(scale: object) -> int:
    """Return `scale` if it is an int in 0..SCALE_MAX; raise InvalidAsset otherwise."""
    if type(scale) is not int or not 0 <= scale <= SCALE_MAX:
        raise InvalidAsset(f"scale must be an int from 0 to {SCALE_MAX}")
    return scale


def check_code(code: object) -> str:
    """Return `code` if it matches CODE_PATTERN; raise InvalidAsset otherwise."""
    if not isinstance(code, str) or CODE_PATTERN.fullmatch(code) is None:
        raise InvalidAsset("asset code must be 1 to 12 of A-Z, 0-9 and '.', not starting with '.'")
    return code


@dataclass(frozen=True, slots=True)
class Asset:
    """A currency, coin or share, with the number of decimal places its amounts carry."""

    code: str
    scale: int
    kind: AssetKind

    def __post_init__(self) -> None:
        check_code(self.code)
        check_scale(self.scale)
        if not isinstance(self.kind, AssetKind):
            raise InvalidAsset("asset kind must be an AssetKind")

    @classmethod
    def fiat(cls, code: str, scale: int = 2) -> "Asset":
        return cls(code, scale, AssetKind.FIAT)

    @classmethod
    def crypto(cls, code: str, scale: int) -> "Asset":
        return cls(code, scale, AssetKind.CRYPTO)

    @classmethod
    def share(cls, code: str, scale: int = 0) -> "Asset":
        """A share; scale 0 trades whole shares only, a larger scale allows fractions."""
        return cls(code, scale, AssetKind.SHARE)

    def __str__(self) -> str:
        return self.code


USD: Final = Asset.fiat("USD")
EUR: Final = Asset.fiat("EUR")
GBP: Final = Asset.fiat("GBP")
JPY: Final = Asset.fiat("JPY", 0)
BTC: Final = Asset.crypto("BTC", 8)
ETH: Final = Asset.crypto("ETH", 18)
DEFAULT_ASSETS: Final = (USD, EUR, GBP, JPY, BTC, ETH)


class AssetRegistry:
    """The assets a service knows, by code. Immutable; build it once from settings:

    `AssetRegistry([*DEFAULT_ASSETS, Asset.share("AAPL"), Asset.crypto("SOL", 9)])`
    """

    __slots__ = ("_by_code",)

    def __init__(self, assets: Iterable[Asset] = DEFAULT_ASSETS) -> None:
        by_code: dict[str, Asset] = {}
        for asset in assets:
            if not isinstance(asset, Asset):
                raise InvalidAsset("a registry holds Asset values only")
            if by_code.setdefault(asset.code, asset) != asset:
                raise InvalidAsset(f"asset {asset.code} is defined twice, differently")
        self._by_code: Final = by_code

    def get(self, code: str) -> Asset:
        """The asset with this code; InvalidAsset if malformed, UnknownAsset if not registered."""
        asset = self._by_code.get(check_code(code))
        if asset is None:
            raise UnknownAsset(f"unknown asset {code}")
        return asset

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[Asset]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    def __repr__(self) -> str:
        return f"AssetRegistry({', '.join(self._by_code)})"
