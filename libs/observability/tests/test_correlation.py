from __future__ import annotations

import asyncio
import uuid

import pytest

from tickertap.observability import (
    bind_correlation_id,
    coerce_correlation_id,
    get_correlation_id,
    is_valid_correlation_id,
    new_correlation_id,
)


def test_new_ids_are_uuid4() -> None:
    value = new_correlation_id()
    assert uuid.UUID(value).version == 4
    assert value != new_correlation_id()


@pytest.mark.parametrize("value", ["a", "A.b_c-9", "x" * 128, b"req-1"])
def test_valid_ids(value: str | bytes) -> None:
    assert is_valid_correlation_id(value)
    assert coerce_correlation_id(value) == (value.decode() if isinstance(value, bytes) else value)


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a\n", "é", "a/b", "<script>", b"\xff"])
def test_malformed_ids_are_replaced(value: str | bytes) -> None:
    assert not is_valid_correlation_id(value)
    replaced = coerce_correlation_id(value)
    assert uuid.UUID(replaced).version == 4


def test_bind_sets_and_restores() -> None:
    assert get_correlation_id() is None
    with bind_correlation_id("outer") as outer:
        assert outer == "outer"
        with bind_correlation_id("inner"):
            assert get_correlation_id() == "inner"
        assert get_correlation_id() == "outer"
    assert get_correlation_id() is None


def test_bind_refuses_malformed_ids() -> None:
    with pytest.raises(ValueError, match="malformed"), bind_correlation_id("bad id"):
        pass


async def test_tasks_do_not_share_ids() -> None:
    async def handle(value: str) -> str | None:
        with bind_correlation_id(value):
            await asyncio.sleep(0)
            return get_correlation_id()

    assert list(await asyncio.gather(handle("a"), handle("b"))) == ["a", "b"]
