"""Settings of the market-data ingest service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from tickertap.marketdata.domain import US_PER_S, IngestPolicy
from tickertap.runtime import ServiceSettings


class MarketDataSettings(ServiceSettings):
    http_port: int = Field(default=25403, ge=1, le=65535)
    db_schema: str = "market"
    vault_role: str = "market"

    # access tokens: verified against the auth service's published keys
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None  # a JWKS document on disk (the local stack's dev keys)
    auth_issuer: str
    auth_audience: str = "tickertap"
    auth_algorithms: tuple[str, ...] = ("Ed25519", "EdDSA", "ES256")

    # the ingest worker (worker.py); off: the service only serves its API
    ingest_enabled: bool = True
    ingest_ticks_topic: str = "marketdata.ticks.v1"
    ingest_prices_topic: str = "marketdata.prices.v1"
    ingest_bars_topic: str = "marketdata.bars.v1"
    ingest_group_id: str = "market-data-ingest.ticks"  # offsets are also committed here
    ingest_batch_max: int = Field(default=5000, ge=1, le=100_000)  # messages per batch
    # a batch is what arrived within this wait (or batch_max): it bounds the tick-to-price
    # delay at low rates (0.2 s gave a 200 ms p50), and costs little idle CPU
    ingest_poll_timeout_s: float = Field(default=0.05, gt=0, le=10)
    ingest_publish_timeout_s: float = Field(default=30.0, gt=0, le=600)
    ingest_retry_backoff_s_max: float = Field(default=10.0, gt=0, le=600)
    ingest_topic_wait_s: float = Field(default=60.0, gt=0, le=3600)  # for the topic to exist
    ingest_instruments_refresh_s: float = Field(default=1.0, gt=0, le=300)
    ingest_instruments_max: int = Field(default=100_000, ge=1)
    # clock checks, against the broker's timestamp of the tick's message
    tick_future_s_max: float = Field(default=5.0, ge=0, le=86_400)
    tick_age_s_max: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    # a 1-minute window stays open this long (in exchange time) after its end
    bar_grace_s: float = Field(default=5.0, ge=0, le=3600)
    # sources whose missing sequence numbers are tracked (a metric)
    sequence_sources_max: int = Field(default=10_000, ge=1)

    # the HTTP API's bounds
    prices_symbols_max: int = Field(default=100, ge=1, le=1000)
    bars_page_max: int = Field(default=1000, ge=1, le=10_000)
    bars_range_intervals_max: int = Field(default=10_000, ge=1, le=1_000_000)
    bars_source_rows_max: int = Field(default=50_000, ge=60, le=1_000_000)
    instruments_page_max: int = Field(default=500, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.auth_jwks_url is None) == (self.auth_jwks_file is None):
            raise ValueError("set exactly one of TICKERTAP_AUTH_JWKS_URL or _FILE")
        return self

    def ingest_policy(self) -> IngestPolicy:
        return IngestPolicy(
            future_us_max=round(self.tick_future_s_max * US_PER_S),
            age_us_max=round(self.tick_age_s_max * US_PER_S),
            grace_us=round(self.bar_grace_s * US_PER_S),
        )
