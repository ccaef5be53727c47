"""Exactly-once effects through crashes: events go through the outbox and the relay while
the consumer process is SIGKILLed at random points and restarted; in the end every event
has been applied once: none missing, none twice, each key's events in order."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from messaging_testkit import JsonCodec, count_rows, event, wait_for
from sqlalchemy import func, select

from tickertap.messaging.outbox import add_event
from tickertap.messaging.relay import OutboxRelay, replay

pytestmark = [pytest.mark.stack, pytest.mark.slow]

EVENTS = 2000
KEYS = 16
KILLS = 5
REPLAYED = 400  # the relay publishes the last REPLAYED events twice
TOTAL = EVENTS + KEYS  # the last KEYS events are one per key, added after the replay
TEST_S_MAX = 85.0
SCRIPT = Path(__file__).with_name("kill_consumer.py")


async def produce(engine: Any, outbox: Any, topic: str, seqs: range) -> list[int]:
    """Events `seqs` in transactions of 50, a little at a time; returns the outbox ids."""
    codec = JsonCodec()
    ids: list[int] = []
    for first in range(seqs.start, seqs.stop, 50):
        async with engine.begin() as conn:
            for seq in range(first, min(first + 50, seqs.stop)):
                record = event(f"key-{seq % KEYS}", seq)
                ids.append(
                    await add_event(
                        conn,
                        outbox,
                        codec,
                        schema_name="msgtest.event.v1",
                        record=record,
                        key=record["key"],
                        topic=topic,
                    )
                )
        await asyncio.sleep(0.05)
    return ids


@pytest.mark.slow
async def test_every_event_is_applied_exactly_once_through_consumer_kills(
    stack: Any, database: Any, tables: Any, topic: Callable[..., str], tmp_path: Path
) -> None:
    started = time.monotonic()
    deadline = started + TEST_S_MAX
    rng = random.Random()
    name = topic("killed", partitions=3)
    env = {
        **os.environ,
        "MSGTEST_DB_URL": database.url,
        "MSGTEST_BOOTSTRAP": stack.kafka_bootstrap,
        "MSGTEST_TOPIC": name,
        "MSGTEST_GROUP": f"msgtest-kill-{uuid.uuid4().hex[:8]}",
        "MSGTEST_INBOX": tables.inbox.name,
        "MSGTEST_EFFECTS": tables.effects.name,
    }
    log_path = tmp_path / "consumer.log"

    def start_consumer() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, str(SCRIPT)],
                env=env,
                cwd=SCRIPT.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def applied() -> int:
        return await count_rows(database.engine, tables.effects)

    async def replay_tail(ids: list[int]) -> None:
        async with database.engine.begin() as conn:
            assert await replay(conn, tables.outbox, since_id=ids[-REPLAYED]) == REPLAYED

    relay = OutboxRelay(
        database.engine, tables.outbox, stack.kafka_bootstrap, batch_max=200, poll_interval_s=0.05
    )
    relay_task = asyncio.create_task(relay.run())
    producing = asyncio.create_task(produce(database.engine, tables.outbox, name, range(EVENTS)))
    process = start_consumer()
    kill_log: list[tuple[float, int]] = []  # (seconds since start, events applied) per kill
    replayed = False
    try:
        # each kill comes after a random amount of fresh progress: mid-batch, often
        # between a database commit and the offset commit, sometimes mid-transaction
        for _ in range(KILLS):
            target = await applied() + rng.randint(10, 250)
            kill_by = min(deadline - 25, time.monotonic() + 20)
            while await applied() < target and time.monotonic() < kill_by:
                assert process.poll() is None, f"consumer exited early; see {log_path}"
                await asyncio.sleep(rng.uniform(0.005, 0.03))
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, 10)
            kill_log.append((round(time.monotonic() - started, 1), await applied()))
            if producing.done() and not replayed:
                await replay_tail(producing.result())
                replayed = True
            process = start_consumer()

        ids = await asyncio.wait_for(producing, max(1.0, deadline - time.monotonic()))
        if not replayed:
            await replay_tail(ids)
        # last, one more event per key: once all are applied, so is everything before them
        # on their partitions, replayed copies included (waiting on content, not offsets)
        await produce(database.engine, tables.outbox, name, range(EVENTS, TOTAL))
        await wait_for(
            lambda: _count_at_least(applied, TOTAL),
            max(1.0, deadline - time.monotonic() - 3),
            f"{TOTAL} applied events (kills at (s, applied): {kill_log}; log {log_path})",
            interval_s=0.1,
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0, f"unclean stop; see {log_path}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        producing.cancel()
        relay.stop()
        await asyncio.wait_for(relay_task, 15)

    print(f"kills at (s, applied): {kill_log}; done at {time.monotonic() - started:.1f} s")
    assert len(kill_log) == KILLS
    async with database.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    tables.effects.c.event_id, tables.effects.c.key, tables.effects.c.seq
                ).order_by(tables.effects.c.n)
            )
        ).all()
        claims = (await conn.execute(select(func.count()).select_from(tables.inbox))).scalar_one()
    assert len(rows) == TOTAL, f"{len(rows)} applications of {TOTAL} events"
    assert len({row.event_id for row in rows}) == TOTAL, "an event was applied twice"
    assert sorted(row.seq for row in rows) == list(range(TOTAL)), "an event is missing"
    assert claims == TOTAL
    by_key: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_key[row.key].append(row.seq)
    assert all(seqs == sorted(seqs) for seqs in by_key.values()), "a key's events out of order"
    assert time.monotonic() - started < TEST_S_MAX + 15


async def _count_at_least(counter: Callable[[], Any], expected: int) -> bool:
    return bool(await counter() >= expected)
