"""The demo feed of `make run`: only in the dev profile, and it lists its instruments
through the real ingest API with a dev admin token."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import demo_feed  # noqa: E402
import devkeys  # noqa: E402
from config import StackConfig  # noqa: E402
from stack import demo_feed_child  # noqa: E402


def config(profile: str) -> StackConfig:
    return StackConfig(
        profile=profile,
        state_dir=Path("/nonexistent"),
        port_base=1000,
        pg_admin_url=None,
        kafka_bootstrap_servers=None,
        vault_addr=None,
        vault_token=None,
    )


def test_the_demo_feed_never_runs_in_the_test_or_bench_stacks(monkeypatch):
    assert demo_feed_child(config("test")) is None
    assert demo_feed_child(config("bench")) is None
    monkeypatch.setenv("TICKERTAP_DEMO_FEED", "off")
    assert demo_feed_child(config("dev")) is None


def test_listing_an_instrument_is_idempotent_and_needs_the_admin_role(stack):
    url = stack.service_url("market-data-ingest")
    key = stack.secrets_dir / "dev-signing-key.json"
    symbol = f"DEMO{uuid.uuid4().hex[:6].upper()}"
    body = {"symbol": symbol, "currency": "USD", "price_scale": 2}
    customer = devkeys.mint(key, str(uuid.uuid4()), roles=["customer"])
    assert demo_feed.list_instrument(url, customer, body) == 403
    admin = devkeys.mint(key, "demo-feed", roles=["admin"])
    assert demo_feed.list_instrument(url, admin, body) == 201
    assert demo_feed.list_instrument(url, admin, body) == 200
    listed = httpx.get(
        f"{url}/v1/instruments/{symbol}", headers={"Authorization": f"Bearer {customer}"}
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["price_scale"] == 2
    assert demo_feed.list_instrument("http://127.0.0.1:9", admin, body) == 0  # unreachable
