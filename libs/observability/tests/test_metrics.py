from __future__ import annotations

import httpx
import prometheus_client
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tickertap.observability import Metrics


def test_each_service_has_its_own_registry() -> None:
    first, second = Metrics("ledger"), Metrics("ledger")
    first.consumer_processed("ledger.transfers.v1", "applied")
    assert first.registry is not second.registry
    assert first.registry is not prometheus_client.REGISTRY
    labels = {"topic": "ledger.transfers.v1", "outcome": "applied"}
    assert first.registry.get_sample_value("tickertap_consumer_messages_total", labels) == 1
    assert second.registry.get_sample_value("tickertap_consumer_messages_total", labels) is None
    assert prometheus_client.REGISTRY.get_sample_value("tickertap_consumer_messages_total") is None


def test_consumer_outbox_and_dlq_helpers() -> None:
    metrics = Metrics("portfolio")
    metrics.set_consumer_lag("marketdata.prices.v1", 3, 120)
    metrics.set_consumer_lag("marketdata.prices.v1", 4, -1)
    metrics.set_outbox_backlog(17)
    metrics.dead_lettered("marketdata.ticks.v1", "undecodable")
    metrics.dead_lettered("marketdata.ticks.v1", "could not decode: password=hunter2")
    get = metrics.registry.get_sample_value
    lag = "tickertap_consumer_lag_messages"
    assert get(lag, {"topic": "marketdata.prices.v1", "partition": "3"}) == 120
    assert get(lag, {"topic": "marketdata.prices.v1", "partition": "4"}) == 0
    assert get("tickertap_outbox_backlog_messages") == 17
    dlq = "tickertap_dlq_messages_total"
    assert get(dlq, {"topic": "marketdata.ticks.v1", "reason": "undecodable"}) == 1
    assert get(dlq, {"topic": "marketdata.ticks.v1", "reason": "other"}) == 1


async def test_metrics_endpoint_parses(client: httpx.AsyncClient) -> None:
    await client.get("/v1/accounts/1")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    latency = families["tickertap_http_request_duration_seconds"]
    assert latency.type == "histogram"
    routes = {s.labels.get("route") for s in latency.samples}
    assert "/v1/accounts/{account_id}" in routes
    for name in (
        "tickertap_http_requests_in_flight",
        "tickertap_consumer_lag_messages",
        "tickertap_consumer_messages",
        "tickertap_outbox_backlog_messages",
        "tickertap_dlq_messages",
        "python_info",
        "process_cpu_seconds",
    ):
        assert name in families, name
    (target,) = families["target_info"].samples
    assert target.labels == {"service": "testsvc"}


async def test_metrics_endpoint_speaks_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = await client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = openmetrics_families(response.text)  # type: ignore[no-untyped-call]
    names = {f.name for f in families}
    assert "tickertap_http_request_duration_seconds" in names
