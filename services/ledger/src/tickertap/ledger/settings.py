"""Settings of the ledger service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from tickertap.runtime import ServiceSettings


class LedgerSettings(ServiceSettings):
    http_port: int = Field(default=25402, ge=1, le=65535)
    db_schema: str = "ledger"
    vault_role: str = "ledger"

    # access tokens: verified against the auth service's published keys
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None  # a JWKS document on disk (the local stack's dev keys)
    auth_issuer: str
    auth_audience: str = "tickertap"
    auth_algorithms: tuple[str, ...] = ("Ed25519", "EdDSA", "ES256")

    transfer_batch_max: int = Field(default=64, ge=1, le=1000)
    transfer_queue_max: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.auth_jwks_url is None) == (self.auth_jwks_file is None):
            raise ValueError("set exactly one of TICKERTAP_AUTH_JWKS_URL or _FILE")
        return self
