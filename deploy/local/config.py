"""What the local stack is made of, and where each part listens.

Every value comes from the environment with a local default, so `make run`
needs no configuration and pointing a part at a real cluster is one variable:

- TICKERTAP_PROFILE          dev (default) or test; each has its own state folder and ports
- TICKERTAP_PORT_BASE        first port of the profile (dev 25400, test 26400, bench 27400)
- TICKERTAP_STATE_DIR        where state and logs go (default .tickertap/<profile>)
- TICKERTAP_PG_ADMIN_URL     an existing Postgres (superuser URL); then none is started
- TICKERTAP_KAFKA_BOOTSTRAP_SERVERS  an existing Kafka cluster; then no broker is started
- TICKERTAP_VAULT_ADDR + TICKERTAP_VAULT_TOKEN  an existing Vault/OpenBao; then none is started
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[2]

# below Linux's ephemeral range (32768-60999), so an outgoing connection never holds one
PROFILE_PORT_BASES = {"dev": 25400, "test": 26400, "bench": 27400}
DATABASE_NAME = "tickertap"


@dataclass(frozen=True)
class ServiceSpec:
    """One deployable: its name, Python module, Postgres schema and port offset."""

    name: str
    module: str
    schema: str
    port_offset: int

    @property
    def owner_role(self) -> str:
        return f"{self.schema}_owner"


SERVICES = (
    ServiceSpec("auth", "tickertap.auth", "auth", 1),
    ServiceSpec("ledger", "tickertap.ledger", "ledger", 2),
    ServiceSpec("market-data-ingest", "tickertap.marketdata", "market", 3),
    ServiceSpec("portfolio-calculation", "tickertap.portfolio", "portfolio", 4),
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def load_topics(path: Path = ROOT / "schemas" / "topics.toml") -> list[TopicSpec]:
    data = tomllib.loads(path.read_text())
    return [
        TopicSpec(name, int(spec["partitions"]), dict(spec.get("config", {})))
        for name, spec in data["topics"].items()
    ]


@dataclass(frozen=True)
class StackConfig:
    profile: str
    state_dir: Path
    port_base: int
    pg_admin_url: str | None  # set: use that server, start none
    kafka_bootstrap_servers: str | None
    vault_addr: str | None
    vault_token: str | None

    @classmethod
    def from_env(cls) -> StackConfig:
        profile = os.environ.get("TICKERTAP_PROFILE", "dev")
        if profile not in PROFILE_PORT_BASES:
            raise SystemExit(f"TICKERTAP_PROFILE must be one of {sorted(PROFILE_PORT_BASES)}")
        port_base = int(os.environ.get("TICKERTAP_PORT_BASE", PROFILE_PORT_BASES[profile]))
        vault_addr = os.environ.get("TICKERTAP_VAULT_ADDR") or None
        vault_token = os.environ.get("TICKERTAP_VAULT_TOKEN") or None
        if bool(vault_addr) != bool(vault_token):
            raise SystemExit("set both TICKERTAP_VAULT_ADDR and TICKERTAP_VAULT_TOKEN, or neither")
        return cls(
            profile=profile,
            # absolute: Postgres runs in a folder of its own, where a relative path breaks
            state_dir=Path(
                os.environ.get("TICKERTAP_STATE_DIR") or ROOT / ".tickertap" / profile
            ).absolute(),
            port_base=port_base,
            pg_admin_url=os.environ.get("TICKERTAP_PG_ADMIN_URL") or None,
            kafka_bootstrap_servers=os.environ.get("TICKERTAP_KAFKA_BOOTSTRAP_SERVERS") or None,
            vault_addr=vault_addr,
            vault_token=vault_token,
        )

    # -- where each part listens ---------------------------------------------------
    @property
    def pg_port(self) -> int:
        if self.pg_admin_url:
            return urlsplit(self.pg_admin_url).port or 5432
        return self.port_base + 32

    @property
    def pg_host(self) -> str:
        if self.pg_admin_url:
            return urlsplit(self.pg_admin_url).hostname or "127.0.0.1"
        return "127.0.0.1"

    @property
    def pg_sslmode(self) -> str:
        """TLS from Vault to Postgres: off on loopback, else as the admin URL asks (require)."""
        if not self.pg_admin_url:
            return "disable"
        query = dict(parse_qsl(urlsplit(self.pg_admin_url).query))
        return query.get("sslmode", "require")

    @property
    def kafka_port(self) -> int:
        return self.port_base + 92

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def vault_port(self) -> int:
        return self.port_base + 20

    @property
    def vault_url(self) -> str:
        return self.vault_addr or f"http://127.0.0.1:{self.vault_port}"

    def service_port(self, spec: ServiceSpec) -> int:
        return self.port_base + spec.port_offset

    def service_url(self, spec: ServiceSpec) -> str:
        return f"http://127.0.0.1:{self.service_port(spec)}"

    # -- files -----------------------------------------------------------------------
    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pg_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def stack_file(self) -> Path:
        """Written when the stack is ready: addresses and pids, read by tests and `down`."""
        return self.state_dir / "stack.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "supervisor.pid"
