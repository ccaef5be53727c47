"""The portfolio service's own Prometheus metrics (next to the runtime's standard ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

HISTORY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PortfolioMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates_published = Counter(
            "tickertap_portfolio_updates_published_total",
            "portfolio.updates.v1 events added to the outbox.",
            registry=registry,
        )
        self.update_batch_duration = Histogram(
            "tickertap_portfolio_update_batch_duration_seconds",
            "Time to value and publish one batch of due portfolios (one transaction).",
            buckets=BATCH_BUCKETS_S,
            registry=registry,
        )
        # a late transfer or a reversal recomputes its portfolio from the whole history
        self.recompute_transfers = Histogram(
            "tickertap_portfolio_recompute_transfers",
            "Transfers replayed per portfolio and transfer event (1 when appended in order).",
            buckets=HISTORY_BUCKETS,
            registry=registry,
        )
        self.holders_marked = Counter(
            "tickertap_portfolio_price_holders_marked_total",
            "Portfolios marked for an update by a price move of a symbol they hold.",
            registry=registry,
        )
