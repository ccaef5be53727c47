"""Which proxies a service believes about the client's address (pure: no I/O)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tickertap.runtime.app import uvicorn_options
from tickertap.runtime.settings import ServiceSettings

REQUIRED = {
    "http_port": 8000,
    "db_host": "db",
    "db_port": 5432,
    "db_schema": "ledger",
    "kafka_bootstrap_servers": "kafka:9092",
    "vault_addr": "http://vault:8200",
    "vault_role": "ledger",
    "vault_role_id": "role",
    "vault_secret_id": "secret",
}


def settings(**values: str) -> ServiceSettings:
    return ServiceSettings(**(REQUIRED | values))  # type: ignore[arg-type]


def test_by_default_no_proxy_is_believed() -> None:
    options = uvicorn_options(settings())
    assert options["proxy_headers"] is False
    assert options["forwarded_allow_ips"] is None


def test_listed_proxies_are_believed() -> None:
    configured = settings(forwarded_allow_ips=" 10.0.0.0/8, 192.168.1.7 ,")
    assert configured.forwarded_allow_ips == "10.0.0.0/8,192.168.1.7"
    options = uvicorn_options(configured)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "10.0.0.0/8,192.168.1.7"
    assert uvicorn_options(settings(forwarded_allow_ips="*"))["forwarded_allow_ips"] == "*"


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.0/33", "300.1.1.1"])
def test_an_entry_that_is_no_address_is_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        settings(forwarded_allow_ips=value)
