"""Settings of the market-data ingest service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from tickertap.runtime import ServiceSettings


class MarketDataSettings(ServiceSettings):
    http_port: int = Field(default=25403, ge=1, le=65535)
    db_schema: str = "market"
    vault_role: str = "market"
