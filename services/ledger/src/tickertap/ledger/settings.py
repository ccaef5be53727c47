"""Settings of the ledger service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from tickertap.runtime import ServiceSettings


class LedgerSettings(ServiceSettings):
    http_port: int = Field(default=25402, ge=1, le=65535)
    db_schema: str = "ledger"
    vault_role: str = "ledger"
