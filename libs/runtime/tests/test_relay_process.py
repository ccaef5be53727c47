"""The child relay process gets the service's settings back from its environment (no I/O)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from tickertap.runtime import ServiceSettings
from tickertap.runtime.app import _settings_env


def test_settings_built_in_code_reach_the_child_relay_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServiceSettings(
        http_port=8080,
        db_host="db.internal",
        db_port=5433,
        db_schema="ledger",
        kafka_bootstrap_servers="k1:9092,k2:9092",
        vault_addr="http://vault:8200",
        vault_role="ledger",
        vault_role_id="role-id",
        vault_secret_id=SecretStr("s3cret"),
        schemas_dir=Path("/srv/schemas"),
        outbox_relay_process=True,
        readiness_timeout_s=1.5,
    )
    env = _settings_env(settings)
    assert env["TICKERTAP_VAULT_SECRET_ID"] == "s3cret"
    assert env["TICKERTAP_OUTBOX_RELAY_PROCESS"] == "true"
    for name in list(os.environ):
        if name.startswith("TICKERTAP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings() == settings  # type: ignore[call-arg]
