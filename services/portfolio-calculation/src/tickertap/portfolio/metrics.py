"""The portfolio service's own Prometheus metrics (next to the runtime's standard ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HISTORY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PortfolioMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates_published = Counter(
            "tickertap_portfolio_updates_published_total",
            "portfolio.updates.v1 events handed to the Kafka producer by the live publisher.",
            registry=registry,
        )
        self.update_batch_duration = Histogram(
            "tickertap_portfolio_update_batch_duration_seconds",
            "Time to value, encode and produce one batch of due portfolios.",
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
        self.prices_moved = Counter(
            "tickertap_portfolio_prices_moved_total",
            "Symbols whose stored price a price batch replaced.",
            registry=registry,
        )
        self.live_leader = Gauge(
            "tickertap_portfolio_live_leader",
            "1 while this replica publishes the live updates (one replica at a time).",
            registry=registry,
        )
        self.live_dirty = Gauge(
            "tickertap_portfolio_live_dirty_portfolios",
            "Portfolios changed since their last update (the live publisher's backlog).",
            registry=registry,
        )
        self.live_oldest_dirty = Gauge(
            "tickertap_portfolio_live_oldest_dirty_seconds",
            "How long the longest-waiting changed portfolio has waited for its update.",
            registry=registry,
        )
