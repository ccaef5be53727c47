"""Settings of the portfolio calculation service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from tickertap.portfolio.domain import Scales
from tickertap.runtime import ServiceSettings

CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9.]{0,11}$")]


class PortfolioSettings(ServiceSettings):
    http_port: int = Field(default=25404, ge=1, le=65535)
    db_schema: str = "portfolio"
    vault_role: str = "portfolio"

    # access tokens: verified against the auth service's published keys
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None  # a JWKS document on disk (the local stack's dev keys)
    auth_issuer: str
    auth_audience: str = "tickertap"
    auth_algorithms: tuple[str, ...] = ("Ed25519", "EdDSA", "ES256")

    # valuation: totals are in the base currency; figures round at each currency's scale
    base_currency: CurrencyCode = "USD"
    currency_scales: dict[CurrencyCode, Annotated[int, Field(ge=0, le=18)]] = Field(
        default_factory=lambda: {"JPY": 0, "BTC": 8, "ETH": 18}
    )
    currency_scale_default: int = Field(default=2, ge=0, le=18)

    transfer_consumer_batch_max: int = Field(default=200, ge=1, le=10_000)
    price_consumer_batch_max: int = Field(default=500, ge=1, le=10_000)
    # price events whose exchange time is further ahead of this clock are dead-lettered
    price_exchange_ts_skew_s_max: float = Field(default=30.0, ge=0, le=3600)

    # portfolio.updates.v1: at most one update per portfolio per interval, always its latest
    # state; the publisher looks for due portfolios every poll interval, at most batch_max
    # portfolios per transaction
    update_interval_ms: int = Field(default=250, ge=0, le=3_600_000)
    update_poll_interval_ms: int = Field(default=50, ge=5, le=60_000)
    update_batch_max: int = Field(default=200, ge=1, le=10_000)

    # daily valuations: every interval (0: never) today's valuation of every portfolio is
    # stored, batch_max portfolios per transaction; the day's last one stands for the day
    valuation_snapshot_interval_s: float = Field(default=300.0, ge=0, le=86_400)
    valuation_batch_max: int = Field(default=200, ge=1, le=10_000)

    # API bounds
    lots_page_max: int = Field(default=1000, ge=1, le=100_000)
    realized_page_max: int = Field(default=1000, ge=1, le=100_000)
    valuations_range_days_max: int = Field(default=366, ge=1, le=36_600)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.auth_jwks_url is None) == (self.auth_jwks_file is None):
            raise ValueError("set exactly one of TICKERTAP_AUTH_JWKS_URL or _FILE")
        return self

    def scales(self) -> Scales:
        return Scales(dict(self.currency_scales), self.currency_scale_default)
