"""Settings of the portfolio calculation service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, StringConstraints, model_validator

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

    # both consumers see a message within about this long, and ask the broker about that
    # often (tickertap.messaging.kafka.paced_fetches): librdkafka's default wait (500 ms)
    # is what the local broker (Tansu) holds a fetch even when messages arrive meanwhile,
    # which would add up to that to every price-to-update latency. It also sets the price
    # batches (one transaction and one announcement each): a consumer takes what arrived
    # at once (kafka.take_batch), so at 25 ms twice as many batches cost the publishers
    # ~10 % of their updates a second, for ~12 ms less latency
    consumer_fetch_interval_ms: int = Field(default=50, ge=1, le=500)
    transfer_consumer_batch_max: int = Field(default=200, ge=1, le=10_000)
    price_consumer_batch_max: int = Field(default=500, ge=1, le=10_000)
    # price events whose exchange time is further ahead of this clock are dead-lettered
    price_exchange_ts_skew_s_max: float = Field(default=30.0, ge=0, le=3600)

    # portfolio.updates.v1: at most one update per portfolio per interval, always its latest
    # state; the live publisher (live.py) wakes on every change, or after at most the poll
    # interval, and publishes up to batch_max due portfolios before it looks again
    update_interval_ms: int = Field(default=250, ge=0, le=3_600_000)
    update_poll_interval_ms: int = Field(default=50, ge=5, le=60_000)
    update_batch_max: int = Field(default=2000, ge=1, le=100_000)
    # 0: the live publisher runs in the service's process; N: in N child processes, each
    # publishing the portfolios of the updates topic's partitions i modulo N (the same N on
    # every replica; N should divide the partition count)
    update_publisher_processes: int = Field(default=0, ge=0, le=16)

    # daily valuations: every interval (0: never) today's valuation of every portfolio is
    # stored, batch_max portfolios per transaction; the day's last one stands for the day
    valuation_snapshot_interval_s: float = Field(default=300.0, ge=0, le=86_400)
    valuation_batch_max: int = Field(default=200, ge=1, le=10_000)

    # periodic reconciliation with the ledger (reconcile_job.py): every interval (0: never)
    # one replica (a Postgres advisory lock) compares every portfolio, and every customer
    # the ledger lists, with the ledger's API. Its token comes from auth's client-credentials
    # grant for a machine client with a role that reads all accounts (support); the secret
    # is read at each token request, so it may be rotated under a running service.
    reconcile_interval_s: float = Field(default=300.0, ge=0, le=86_400)
    reconcile_ledger_url: str | None = None
    reconcile_token_url: str | None = None  # auth's /oauth/token
    reconcile_client_id: str | None = None
    reconcile_client_secret: SecretStr | None = None
    reconcile_client_secret_file: Path | None = None
    reconcile_scope: str = "ledger:read"
    reconcile_settle_s: float = Field(default=2.0, ge=0, le=60)  # then a difference is drift
    reconcile_concurrency_max: int = Field(default=4, ge=1, le=64)  # ledger requests at once
    reconcile_batch_max: int = Field(default=200, ge=1, le=10_000)  # owners per transaction
    reconcile_http_timeout_s: float = Field(default=10.0, gt=0, le=120)

    # API bounds
    lots_page_max: int = Field(default=1000, ge=1, le=100_000)
    realized_page_max: int = Field(default=1000, ge=1, le=100_000)
    valuations_range_days_max: int = Field(default=366, ge=1, le=36_600)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.auth_jwks_url is None) == (self.auth_jwks_file is None):
            raise ValueError("set exactly one of TICKERTAP_AUTH_JWKS_URL or _FILE")
        return self

    @model_validator(mode="after")
    def _reconcile_complete(self) -> Self:
        given = [
            self.reconcile_ledger_url,
            self.reconcile_token_url,
            self.reconcile_client_id,
            self.reconcile_client_secret or self.reconcile_client_secret_file,
        ]
        if any(given) and not all(given):
            raise ValueError(
                "reconciliation needs all of TICKERTAP_RECONCILE_LEDGER_URL, _TOKEN_URL, "
                "_CLIENT_ID and _CLIENT_SECRET(_FILE), or none"
            )
        if self.reconcile_client_secret and self.reconcile_client_secret_file:
            raise ValueError("set one of TICKERTAP_RECONCILE_CLIENT_SECRET(_FILE)")
        return self

    def reconcile_configured(self) -> bool:
        return self.reconcile_ledger_url is not None

    def reconcile_client_secret_value(self) -> str:
        """The machine client's secret, read now (a file may have been rotated)."""
        if self.reconcile_client_secret is not None:
            return self.reconcile_client_secret.get_secret_value()
        assert self.reconcile_client_secret_file is not None
        return self.reconcile_client_secret_file.read_text().strip()

    def scales(self) -> Scales:
        return Scales(dict(self.currency_scales), self.currency_scale_default)
