"""The ledger's event ids: version 7 UUIDs (RFC 9562), time-ordered, never repeated."""

from __future__ import annotations

import time
import uuid

from tickertap.ledger.handlers import new_ids


def test_event_ids_are_version_7_and_carry_the_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(1000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for value in ids:
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after  # the first 48 bits: Unix milliseconds


def test_later_ids_sort_after_earlier_ones() -> None:
    first = new_ids(50)
    time.sleep(0.002)
    second = new_ids(50)
    assert max(first) < min(second)  # so the unique indexes grow at their right edge
