"""Composition root of the ledger service: `create_app(settings)` and `main()`."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tickertap.db import create_engine
from tickertap.ledger import api
from tickertap.ledger.consumer import PRICES_TOPIC, price_handler
from tickertap.ledger.domain import LedgerError
from tickertap.ledger.handlers import Ledger
from tickertap.ledger.reconcile import start_reconciler
from tickertap.ledger.repository import POSTING_SESSION
from tickertap.ledger.settings import LedgerSettings
from tickertap.messaging.kafka import paced_fetches
from tickertap.money import install_context
from tickertap.runtime import ServiceDefinition, ServiceRuntime, create_service_app, problem, serve
from tickertap.runtime.revocations import token_auth

PRICE_FETCH_INTERVAL_MS = 100


def create_app(settings: LedgerSettings) -> FastAPI:
    install_context()
    auth, follow_revocations = token_auth(settings)

    async def start_ledger(runtime: ServiceRuntime) -> None:
        poster = None
        if settings.transfer_optimistic:  # its own pool: its sessions see every row
            poster = create_engine(
                settings.database(),
                runtime.rotator,
                application_name="ledger-poster",
                session_settings=POSTING_SESSION,
                pool_size=settings.transfer_batch_workers + 1,  # and the batch endpoint's
            )
            runtime.on_stop(poster.dispose)
        ledger = Ledger(
            runtime.writer,
            runtime.reader,
            runtime.outbox,
            runtime.codec,
            batch_max=settings.transfer_batch_max,
            batch_workers=settings.transfer_batch_workers,
            remembered_max=settings.transfer_remembered_max,
            queue_max=settings.transfer_queue_max,
            trading=settings.trade_policy(),
            poster=poster,
        )
        runtime.state["ledger"] = ledger
        runtime.metrics.registry.register(BatchCollector(ledger))
        # What start-up made (modules, schemas, the app) lives as long as the process: frozen
        # out of the garbage collector's full collections, which a busy batch endpoint set
        # off every few requests, each walking all of it (~30 us a transfer measured)
        gc.freeze()
        runtime.spawn(ledger.run(), "transfer-batcher", graceful=False)
        runtime.start_consumer(
            name="prices",
            topics=[PRICES_TOPIC],
            handler=price_handler(settings.price_exchange_ts_skew_s_max),
            batch_max=settings.price_consumer_batch_max,
            # trades at market want a recent price, not the newest millisecond: a fetch a
            # tenth of a second gathers the feed into batches (one offset commit each) and
            # spares the broker the ~230 fetches a second an unpaced consumer makes of it
            consumer_overrides=paced_fetches(PRICE_FETCH_INTERVAL_MS),
        )

    definition = ServiceDefinition(
        name="ledger",
        title="tickerTap ledger",
        version="0.1.0",
        description=(
            "Double-entry, multi-asset ledger: accounts, idempotent transfers, "
            "deposits, withdrawals, reversals, trades, balances and history."
        ),
        migrations=Path(__file__).parent / "migrations",
        routers=[api.build_router(auth)],
        openapi_models=api.SELF_PARSED_BODIES,
        on_start=[start_ledger, start_reconciler(settings), follow_revocations],
    )
    app = create_service_app(definition, settings)

    async def on_ledger_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LedgerError)
        return problem(exc.status, exc.code, exc.detail, **exc.extra)

    app.add_exception_handler(LedgerError, on_ledger_error)
    return app


HOWS = (
    "remembered",
    "optimistic",
    "locked",
    "remembered_moved",
    "remembered_refused",
    "remembered_taken",
    "balance_changed",
)


class BatchCollector(Collector):
    """The ledger's transfer batches on /metrics, by how they were written."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily(
            "tickertap_ledger_transfer_batches",
            "Transfer batches written, by how: 'remembered' (one statement on the balances"
            " this process last read or wrote), 'optimistic' (one statement on balances read"
            " just before), 'locked' (in a transaction that locks the accounts: another"
            " batch was posting to one of them, a balance changed after the read, or a"
            " large batch); and attempts on remembered balances then read because a balance"
            " had moved ('remembered_moved'), a request was refused ('remembered_refused')"
            " or a key or transfer id was taken ('remembered_taken'), and optimistic ones"
            " that found a balance changed ('balance_changed', then locked).",
            labels=["how"],
        )
        counts = self._ledger.batch_counts
        for how in HOWS:
            batches.add_metric([how], counts[how])
        yield batches


def main() -> None:
    settings = LedgerSettings()  # type: ignore[call-arg]  # the rest comes from the environment
    serve(create_app(settings), settings)
