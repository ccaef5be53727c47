"""The outbox relay in a process of its own, next to a service's API process.

With `TICKERTAP_OUTBOX_RELAY_PROCESS=true` a service does not publish its outbox from
its own event loop: `create_service_app`'s lifespan starts this module as a child
process (`python -m tickertap.runtime.relay_process <service>`), with the service's
environment. The child logs in to Vault with the same AppRole, keeps its own
short-lived database credentials and runs one `OutboxRelay` until SIGTERM; the
relay's advisory lock still lets one publisher per outbox run at a time, whatever
the number of replicas.

Why: the relay's fetches, marks, Kafka producer and librdkafka threads took 10-15 %
of a busy ledger process's CPU, on the same core and GIL as its requests. In a
process of its own it runs beside them. The parent supervises it: the child's exit
makes `/readyz` fail, and it is stopped (SIGTERM, then SIGKILL) with the service.
The child stops by itself when its parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from tickertap.db import create_engine
from tickertap.messaging import OutboxRelay
from tickertap.observability import configure_logging
from tickertap.runtime.app import messaging_tables
from tickertap.runtime.login import service_login
from tickertap.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

PARENT_POLL_INTERVAL_S = 1.0


async def run_relay(service: str, settings: ServiceSettings) -> None:
    """Publish `settings.db_schema`'s outbox until SIGTERM/SIGINT or the parent's exit."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with contextlib.AsyncExitStack() as stack:
        login = await stack.enter_async_context(service_login(settings, keep_alive=True))
        writer = create_engine(
            settings.database(), login.rotator, application_name=f"{service}-relay"
        )
        stack.push_async_callback(writer.dispose)
        outbox, _ = messaging_tables(settings.db_schema)
        relay = OutboxRelay(
            writer,
            outbox,
            settings.kafka_bootstrap_servers,
            listen=True,
            linger_s=settings.outbox_relay_linger_s,
        )
        task = asyncio.ensure_future(relay.run())
        watcher = asyncio.ensure_future(_parent_gone(os.getppid()))
        log.info("outbox relay process started", extra={"schema": settings.db_schema})
        stopper = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({task, watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        relay.stop()
        for waiter in (watcher, stopper):
            waiter.cancel()
        await task  # finishes the batch in flight; raises if the relay failed
    log.info("outbox relay process stopped")


async def _parent_gone(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event tells of a parent's exit
        await asyncio.sleep(PARENT_POLL_INTERVAL_S)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tickertap.runtime.relay_process <service>")
    service = sys.argv[1]
    settings = ServiceSettings()  # type: ignore[call-arg]  # the parent's environment
    configure_logging(f"{service}-relay", settings.log_level)
    try:
        import uvloop

        uvloop.run(run_relay(service, settings))
    except ImportError:  # pragma: no cover - uvloop is in the lock; kept for other installs
        asyncio.run(run_relay(service, settings))


if __name__ == "__main__":
    main()
