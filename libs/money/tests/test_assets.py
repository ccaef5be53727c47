import pytest

from tickertap.money import (
    BTC,
    DEFAULT_ASSETS,
    ETH,
    EUR,
    GBP,
    JPY,
    USD,
    Asset,
    AssetKind,
    AssetRegistry,
    InvalidAsset,
    UnknownAsset,
)


def test_known_assets_have_their_scales() -> None:
    scales = {asset.code: (asset.scale, asset.kind) for asset in DEFAULT_ASSETS}
    assert scales == {
        "USD": (2, AssetKind.FIAT),
        "EUR": (2, AssetKind.FIAT),
        "GBP": (2, AssetKind.FIAT),
        "JPY": (0, AssetKind.FIAT),
        "BTC": (8, AssetKind.CRYPTO),
        "ETH": (18, AssetKind.CRYPTO),
    }
    assert (USD, EUR, GBP, JPY, BTC, ETH) == DEFAULT_ASSETS


def test_constructors_set_kind_and_default_scale() -> None:
    assert Asset.fiat("CHF") == Asset("CHF", 2, AssetKind.FIAT)
    assert Asset.crypto("SOL", 9) == Asset("SOL", 9, AssetKind.CRYPTO)
    assert Asset.share("AAPL") == Asset("AAPL", 0, AssetKind.SHARE)
    assert Asset.share("BRK.B", 6).scale == 6
    assert str(Asset.share("BRK.B")) == "BRK.B"


def test_asset_is_immutable() -> None:
    with pytest.raises(AttributeError):
        USD.scale = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "code",
    ["", "usd", "US D", "USD\n", ".USD", "ABCDEFGHIJKLM", "U$D", "ÜSD", "１２３", None, 840],
)
def test_malformed_codes_are_refused(code: object) -> None:
    with pytest.raises(InvalidAsset) as raised:
        Asset(code, 2, AssetKind.FIAT)  # type: ignore[arg-type]
    assert raised.value.code == "invalid_asset"


@pytest.mark.parametrize("code", ["A", "USD", "BRK.B", "1INCH", "ABCDEFGHIJKL"])
def test_well_formed_codes_are_accepted(code: str) -> None:
    assert Asset.crypto(code, 8).code == code


@pytest.mark.parametrize("scale", [-1, 19, True, 2.0, "2", None])
def test_scales_outside_0_to_18_are_refused(scale: object) -> None:
    with pytest.raises(InvalidAsset):
        Asset("X", scale, AssetKind.CRYPTO)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [0, 18])
def test_scale_bounds_are_inclusive(scale: int) -> None:
    assert Asset.crypto("X", scale).scale == scale


def test_kind_must_be_an_asset_kind() -> None:
    with pytest.raises(InvalidAsset):
        Asset("X", 2, "fiat")  # type: ignore[arg-type]


def test_registry_holds_the_defaults_and_configured_assets() -> None:
    aapl = Asset.share("AAPL")
    registry = AssetRegistry([*DEFAULT_ASSETS, aapl, aapl])
    assert registry.get("USD") is USD
    assert registry.get("AAPL") is aapl
    assert "AAPL" in registry
    assert "MSFT" not in registry
    assert len(registry) == 7
    assert list(registry) == [*DEFAULT_ASSETS, aapl]
    assert list(AssetRegistry()) == list(DEFAULT_ASSETS)


def test_registry_refuses_unknown_and_malformed_codes() -> None:
    registry = AssetRegistry()
    with pytest.raises(UnknownAsset) as raised:
        registry.get("DOGE")
    assert raised.value.code == "unknown_asset"
    with pytest.raises(InvalidAsset) as malformed:
        registry.get("usd")
    assert malformed.value.code == "invalid_asset"


def test_registry_refuses_one_code_defined_twice() -> None:
    with pytest.raises(InvalidAsset):
        AssetRegistry([USD, Asset.fiat("USD", 4)])
    with pytest.raises(InvalidAsset):
        AssetRegistry([USD, "EUR"])  # type: ignore[list-item]
