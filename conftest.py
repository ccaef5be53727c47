"""Fixtures for tests that use the real local stack (Postgres, broker, OpenBao).

The stack is started by `make test` (profile `test`) before pytest runs; these
fixtures read its addresses from `.tickertap/<profile>/stack.json`. A test that
needs the stack and cannot reach it fails: it never skips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stack:
    info: dict[str, Any]
    secrets_dir: Path

    @property
    def pg_host(self) -> str:
        return str(self.info["postgres"]["host"])

    @property
    def pg_port(self) -> int:
        return int(self.info["postgres"]["port"])

    @property
    def database(self) -> str:
        return str(self.info["postgres"]["database"])

    @property
    def pg_admin_url(self) -> str:
        url = os.environ.get("TICKERTAP_PG_ADMIN_URL")
        if url:
            return urlsplit(url)._replace(path=f"/{self.database}").geturl()
        password = (self.secrets_dir / "pg_admin_password").read_text().strip()
        return f"postgresql://postgres:{password}@{self.pg_host}:{self.pg_port}/{self.database}"

    @property
    def kafka_bootstrap(self) -> str:
        return str(self.info["kafka"]["bootstrap_servers"])

    @property
    def vault_addr(self) -> str:
        return str(self.info["vault"]["addr"])

    @property
    def vault_root_token(self) -> str:
        return os.environ.get("TICKERTAP_VAULT_TOKEN") or (
            (self.secrets_dir / "vault_root_token").read_text().strip()
        )

    def role_id(self, role: str) -> str:
        return str(self.info["approle_role_ids"][role])

    def service_url(self, name: str) -> str:
        return str(self.info["services"][name]["url"])


@pytest.fixture(scope="session")
def stack() -> Stack:
    profile = os.environ.get("TICKERTAP_PROFILE", "test")
    state_dir = os.environ.get("TICKERTAP_STATE_DIR") or ROOT / ".tickertap" / profile
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        pytest.fail(
            f"the local stack ({profile}) is not running: no {path}. "
            f"`make test` starts it; by hand: TICKERTAP_PROFILE={profile} make up"
        )
    info = json.loads(path.read_text())
    return Stack(info=info, secrets_dir=Path(info["secrets_dir"]))


@pytest.fixture(scope="session")
def vault_root(stack: Stack) -> Iterator[Any]:
    import hvac

    client = hvac.Client(url=stack.vault_addr, token=stack.vault_root_token)
    assert client.is_authenticated(), "OpenBao root token rejected"
    yield client
    client.adapter.close()


@pytest.fixture(scope="session")
def mint_token(stack: Stack) -> Any:
    """Access tokens signed with the stack's dev key, as the auth service will sign them."""
    import sys

    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    from devkeys import mint

    key_path = stack.secrets_dir / "dev-signing-key.json"

    def make(subject: str, roles: tuple[str, ...] = ("customer",), **claims: Any) -> str:
        return str(mint(key_path, subject, roles, **claims))

    return make


@pytest.fixture
def approle_secret_id(vault_root: Any) -> Any:
    """A fresh AppRole secret_id for a service's role, as its deployment would hand it."""

    def make(role: str) -> str:
        return str(vault_root.auth.approle.generate_secret_id(role)["data"]["secret_id"])

    return make
