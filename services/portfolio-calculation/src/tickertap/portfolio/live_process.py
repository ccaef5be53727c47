"""One shard of the live publisher (live.py) in a process of its own.

`python -m tickertap.portfolio.live_process <shard> <shards>`, started by the service
(main.py) when `TICKERTAP_UPDATE_PUBLISHER_PROCESSES` is above zero, with the service's
environment. It logs in to Vault with the service's AppRole, keeps its own short-lived
database credentials and runs the shard's `LivePublisher` until SIGTERM or its parent's
exit. Every second it writes its figures as one JSON line to standard output (its logs go
to standard error), which the parent turns into its own metrics (`ShardFigures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tickertap.db import create_engine
from tickertap.messaging.outbox import Encoder
from tickertap.money import install_context
from tickertap.observability import configure_logging
from tickertap.portfolio.live import LivePublisher
from tickertap.portfolio.metrics import PortfolioMetrics
from tickertap.portfolio.settings import PortfolioSettings
from tickertap.runtime.app import load_codec
from tickertap.runtime.login import service_login

log = logging.getLogger(__name__)

SERVICE = "portfolio-calculation"
REPORT_INTERVAL_S = 1.0
PARENT_POLL_INTERVAL_S = 1.0
FIGURES = {
    "leader": "tickertap_portfolio_live_leader",
    "dirty": "tickertap_portfolio_live_dirty_portfolios",
    "oldest_s": "tickertap_portfolio_live_oldest_dirty_seconds",
    "published": "tickertap_portfolio_updates_published_total",
}


def publisher_for(
    settings: PortfolioSettings,
    engine: AsyncEngine,
    codec: Encoder,
    metrics: PortfolioMetrics,
    *,
    shard: int = 0,
    shards: int = 1,
) -> LivePublisher:
    """The live publisher of `shard` (of `shards`) as the settings say."""
    return LivePublisher(
        engine,
        codec,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        interval_ms=settings.update_interval_ms,
        poll_interval_ms=settings.update_poll_interval_ms,
        batch_max=settings.update_batch_max,
        base_currency=settings.base_currency,
        scales=settings.scales(),
        metrics=metrics,
        shard=shard,
        shards=shards,
    )


async def run_shard(shard: int, shards: int, settings: PortfolioSettings) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        login = await stack.enter_async_context(service_login(settings, keep_alive=True))
        engine = create_engine(
            settings.database(), login.rotator, application_name=f"{SERVICE}-live-{shard}"
        )
        stack.push_async_callback(engine.dispose)
        publisher = publisher_for(
            settings,
            engine,
            load_codec(settings),
            PortfolioMetrics(registry),
            shard=shard,
            shards=shards,
        )
        workers = {
            asyncio.ensure_future(publisher.run()),
            asyncio.ensure_future(_report(shard, registry)),
            asyncio.ensure_future(_parent_gone(os.getppid())),
            asyncio.ensure_future(stopping.wait()),
        }
        log.info("live publisher shard started", extra={"shard": shard, "shards": shards})
        done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a publisher that failed fails the process
    log.info("live publisher shard stopped", extra={"shard": shard})


async def _report(shard: int, registry: CollectorRegistry) -> None:
    while True:
        figures = {k: registry.get_sample_value(name) or 0.0 for k, name in FIGURES.items()}
        sys.stdout.write(json.dumps({"shard": shard, **figures}) + "\n")
        sys.stdout.flush()
        await asyncio.sleep(REPORT_INTERVAL_S)


async def _parent_gone(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event tells of a parent's exit
        await asyncio.sleep(PARENT_POLL_INTERVAL_S)


@dataclass
class ShardFigures:
    """The parent's view of its shards, from their report lines, as its own metrics: the
    shards it leads, their waiting portfolios (sum), the longest wait (max), and the
    updates they produced."""

    metrics: PortfolioMetrics
    latest: dict[int, dict[str, float]] = field(default_factory=dict)

    def take(self, line: str) -> None:
        try:
            report = json.loads(line)
            shard = int(report["shard"])
            figures = {k: float(report[k]) for k in FIGURES}
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable line from a live publisher shard: %.200s", line)
            return
        before = self.latest.get(shard, {}).get("published", 0.0)
        self.latest[shard] = figures
        if figures["published"] > before:
            self.metrics.updates_published.inc(figures["published"] - before)
        shards = self.latest.values()
        self.metrics.live_leader.set(sum(f["leader"] for f in shards))
        self.metrics.live_dirty.set(sum(f["dirty"] for f in shards))
        self.metrics.live_oldest_dirty.set(max(f["oldest_s"] for f in shards))


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tickertap.portfolio.live_process <shard> <shards>")
    shard, shards = int(sys.argv[1]), int(sys.argv[2])
    if not 0 <= shard < shards:
        raise SystemExit("the shard must be in 0..shards-1")
    settings = PortfolioSettings()  # type: ignore[call-arg]  # the parent's environment
    configure_logging(f"{SERVICE}-live", settings.log_level)
    install_context()
    try:
        import uvloop

        uvloop.run(run_shard(shard, shards, settings))
    except ImportError:  # pragma: no cover - uvloop is in the lock; kept for other installs
        asyncio.run(run_shard(shard, shards, settings))


if __name__ == "__main__":
    main()
