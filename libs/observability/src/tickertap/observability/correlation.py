"""The correlation id of the work in progress: one per HTTP request or consumed message.

It lives in a `ContextVar`, so each asyncio task (and each thread started through
`anyio.to_thread` / `asyncio.to_thread`, which copy the context) sees its own value.
Inbound ids come from untrusted clients and brokers: `coerce_correlation_id` keeps a
well-formed one and replaces anything else with a fresh UUID4.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

CORRELATION_ID_HEADER = "X-Correlation-ID"
"""HTTP request and response header (and Kafka header) that carries the id."""

CORRELATION_ID_LENGTH_MAX = 128
_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{CORRELATION_ID_LENGTH_MAX}}}")
_PATTERN_BYTES = re.compile(_PATTERN.pattern.encode("ascii"))

correlation_id: ContextVar[str | None] = ContextVar("tickertap_correlation_id", default=None)


def get_correlation_id() -> str | None:
    """The id bound to the current context, or None outside any request or message."""
    return correlation_id.get()


def new_correlation_id() -> str:
    """A fresh id (a UUID4 in its canonical text form)."""
    return str(uuid.uuid4())


def is_valid_correlation_id(value: str | bytes) -> bool:
    """True when `value` is 1 to 128 characters of `[A-Za-z0-9._-]`."""
    if isinstance(value, bytes):
        return _PATTERN_BYTES.fullmatch(value) is not None
    return _PATTERN.fullmatch(value) is not None


def coerce_correlation_id(candidate: str | bytes | None) -> str:
    """`candidate` when it is a valid id (bytes are decoded as ASCII), else a new id."""
    if candidate is None or not is_valid_correlation_id(candidate):
        return new_correlation_id()
    if isinstance(candidate, bytes):
        return candidate.decode("ascii")
    return candidate


@contextmanager
def bind_correlation_id(value: str) -> Iterator[str]:
    """Bind `value` as the correlation id for the body of the `with` block.

    Raises ValueError when `value` is malformed; pass inbound values through
    `coerce_correlation_id` first.
    """
    if not is_valid_correlation_id(value):
        raise ValueError("malformed correlation id")
    token = correlation_id.set(value)
    try:
        yield value
    finally:
        correlation_id.reset(token)
