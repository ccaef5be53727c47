"""Settings of the portfolio calculation service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from tickertap.runtime import ServiceSettings


class PortfolioSettings(ServiceSettings):
    http_port: int = Field(default=25404, ge=1, le=65535)
    db_schema: str = "portfolio"
    vault_role: str = "portfolio"
