"""Prometheus metrics of one service, on a registry of its own.

    metrics = Metrics("ledger")
    metrics.consumer_processed(topic, "applied")
    trades = Counter("ledger_trades_total", "Trades booked.", registry=metrics.registry)

Nothing is registered on prometheus_client's global REGISTRY, so a process (a test
session) can build as many apps as it likes. The service name is exposed once, as
`target_info{service="..."}`; Prometheus adds `job`/`instance` at scrape time, so the
metric names are the same in every service and dashboards can aggregate across them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.gc_collector import GCCollector

ConsumerOutcome = Literal["applied", "duplicate", "dead_lettered"]

LATENCY_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Request latency buckets in seconds: fine below 50 ms, where a healthy API answers."""

REASON_OTHER: Final = "other"
_REASON_PATTERN: Final = re.compile(r"[a-z0-9_.-]{1,64}")
_SERVICE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class Metrics:
    """The standard metrics of a tickerTap service, plus `registry` for its own ones.

    Label values must come from small, fixed sets: route templates (never raw paths),
    topic names, partition numbers, outcome and reason codes.
    """

    def __init__(
        self,
        service: str,
        *,
        namespace: str = "tickertap",
        latency_buckets_s: Sequence[float] = LATENCY_BUCKETS_S,
        process_metrics: bool = True,
    ) -> None:
        assert _SERVICE_PATTERN.fullmatch(service), f"bad service name {service!r}"
        self.service = service
        self.registry = CollectorRegistry(target_info={"service": service})
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ["method", "route", "status"],
            namespace=namespace,
            buckets=tuple(latency_buckets_s),
            registry=r,
        )
        self.http_requests_in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being served now.",
            namespace=namespace,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages between the committed offset and the end of the partition.",
            ["topic", "partition"],
            namespace=namespace,
            registry=r,
        )
        self.consumer_messages = Counter(
            "consumer_messages",
            "Consumed messages by outcome (applied, duplicate, dead_lettered).",
            ["topic", "outcome"],
            namespace=namespace,
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "outbox_backlog_messages",
            "Outbox rows written but not yet published.",
            namespace=namespace,
            registry=r,
        )
        self.dlq_messages = Counter(
            "dlq_messages",
            "Messages sent to a dead-letter topic, by source topic and reason code.",
            ["topic", "reason"],
            namespace=namespace,
            registry=r,
        )
        self.readiness_check_up = Gauge(
            "readiness_check_up",
            "1 when the named dependency passed its last readiness check, else 0.",
            ["check"],
            namespace=namespace,
            registry=r,
        )

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Record the lag the broker reports for one partition (clamped at 0)."""
        assert partition >= 0, partition
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(lag, 0))

    def consumer_processed(self, topic: str, outcome: ConsumerOutcome) -> None:
        """Count one consumed message."""
        self.consumer_messages.labels(topic=topic, outcome=outcome).inc()

    def dead_lettered(self, topic: str, reason: str) -> None:
        """Count one message sent to the dead-letter topic of `topic`.

        `reason` should be a short code (`undecodable`, `invalid_schema`); anything
        else (free text, an exception message) is counted as `other` so the label
        stays bounded.
        """
        label = reason if _REASON_PATTERN.fullmatch(reason) else REASON_OTHER
        self.dlq_messages.labels(topic=topic, reason=label).inc()

    def set_outbox_backlog(self, rows: int) -> None:
        """Record the number of unpublished outbox rows."""
        assert rows >= 0, rows
        self.outbox_backlog.set(rows)
