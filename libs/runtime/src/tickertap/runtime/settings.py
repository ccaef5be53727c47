"""Settings every service shares, read from `TICKERTAP_*` environment variables.

Nothing is read at import: a service builds its settings in `main()` and tests
pass their own. Where the database, the broker and Vault are has no default:
a deployment that forgets one fails at start instead of reaching for localhost.
Secrets (the AppRole secret_id) come from a file or the environment, never a default.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tickertap.db import DatabaseSettings


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKERTAP_", extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    http_host: str = "127.0.0.1"
    http_port: int = Field(ge=1, le=65535)
    request_body_bytes_max: int = Field(default=1_048_576, ge=1024)
    # the proxies (comma-separated addresses or networks, or "*") whose X-Forwarded-For
    # and X-Forwarded-Proto are believed: the client address of per-IP rate limits and
    # audit rows then comes from the header. Empty (the default): the TCP peer is the
    # client and the headers are ignored, so a client cannot choose its own address.
    forwarded_allow_ips: str = ""

    db_host: str
    db_port: int = Field(ge=1, le=65535)
    db_name: str = "tickertap"
    db_schema: str
    db_reader_host: str | None = None
    db_reader_port: int | None = None
    db_pool_size: int = Field(default=10, ge=1, le=100)
    db_pool_overflow_max: int = Field(default=10, ge=0, le=100)
    db_statement_timeout_ms: int = Field(default=15_000, ge=100)

    kafka_bootstrap_servers: str
    kafka_schema_registry_url: str | None = None

    vault_addr: str
    vault_role: str  # the database/creds role and transit key, e.g. "ledger"
    vault_role_id: str
    vault_secret_id: SecretStr | None = None
    vault_secret_id_file: Path | None = None
    db_credential_grace_s: float = Field(default=30.0, ge=0)

    schemas_dir: Path | None = None  # defaults to the repository's schemas/avro

    readiness_timeout_s: float = Field(default=2.0, gt=0)
    # publish the outbox from a child process (tickertap.runtime.relay_process) instead of
    # the API's event loop: the relay's CPU then runs beside the requests, not among them
    outbox_relay_process: bool = False
    # after a short batch the relay waits this long for more rows (fewer, larger batches:
    # less CPU per event; events are later by up to this much). 0: publish at once
    outbox_relay_linger_s: float = Field(default=0.0, ge=0, le=1)

    # consumed event ids are kept this long to drop redeliveries, then forgotten
    inbox_retention_s: float = Field(default=7 * 24 * 3600, ge=3600)
    inbox_purge_interval_s: float = Field(default=3600, gt=0)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry != "*":
                ipaddress.ip_network(entry, strict=False)  # ValueError: not an address
        return ",".join(entries)

    @model_validator(mode="after")
    def _one_secret_id(self) -> Self:
        if (self.vault_secret_id is None) == (self.vault_secret_id_file is None):
            raise ValueError("set exactly one of TICKERTAP_VAULT_SECRET_ID(_FILE)")
        return self

    def secret_id(self) -> str:
        if self.vault_secret_id is not None:
            return self.vault_secret_id.get_secret_value()
        assert self.vault_secret_id_file is not None
        return self.vault_secret_id_file.read_text().strip()

    def database(self) -> DatabaseSettings:
        return DatabaseSettings(
            host=self.db_host,
            port=self.db_port,
            name=self.db_name,
            schema=self.db_schema,
            pool_size=self.db_pool_size,
            pool_overflow_max=self.db_pool_overflow_max,
            statement_timeout_ms=self.db_statement_timeout_ms,
            reader_host=self.db_reader_host,
            reader_port=self.db_reader_port,
        )
