"""Settings of the auth service (`TICKERTAP_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from tickertap.runtime import ServiceSettings


class AuthSettings(ServiceSettings):
    http_port: int = Field(default=25401, ge=1, le=65535)
    db_schema: str = "auth"
    vault_role: str = "auth"
