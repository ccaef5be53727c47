"""A consumer process for test_kill_consumer.py: an InboxConsumer that applies each event
by inserting a row into an effects table, until SIGTERM (graceful) or SIGKILL (not).

Settings come from the environment (the database URL carries a password, so not argv):
MSGTEST_DB_URL, MSGTEST_BOOTSTRAP, MSGTEST_TOPIC, MSGTEST_GROUP, MSGTEST_INBOX,
MSGTEST_EFFECTS. Exits 0 after a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from messaging_testkit import SCHEMA, JsonCodec, effects_handler, effects_table
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from tickertap.messaging.consumer import InboxConsumer, inbox_table


async def main() -> None:
    env = os.environ
    engine = create_async_engine(env["MSGTEST_DB_URL"], pool_size=2)
    metadata = MetaData()
    consumer = InboxConsumer(
        engine,
        inbox_table(metadata, SCHEMA, env["MSGTEST_INBOX"]),
        JsonCodec().decode,
        effects_handler(effects_table(metadata, env["MSGTEST_EFFECTS"])),
        bootstrap_servers=env["MSGTEST_BOOTSTRAP"],
        group_id=env["MSGTEST_GROUP"],
        topics=[env["MSGTEST_TOPIC"]],
        batch_max=200,
        poll_timeout_s=0.2,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, consumer.stop)
    try:
        await consumer.run()
    finally:
        await engine.dispose()
    stats = consumer.stats
    print(
        f"stopped: processed={stats.processed} duplicates={stats.duplicates} "
        f"dead_lettered={stats.dead_lettered} retries={stats.retries}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main())
