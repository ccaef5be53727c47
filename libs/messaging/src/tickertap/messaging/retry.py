"""Bounded exponential backoff with jitter, and which database errors are worth a retry."""

from __future__ import annotations

import random

from sqlalchemy import exc as sa_exc

__all__ = ["TRANSIENT_SQLSTATE_PREFIXES", "backoff_delay_s", "is_transient_error"]

TRANSIENT_SQLSTATE_PREFIXES = (
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources: too many connections, out of memory, disk full
    "57P",  # operator intervention: admin shutdown, crash shutdown, cannot connect now
    "55P03",  # lock not available
    "58",  # system error (I/O)
)


def backoff_delay_s(attempt: int, *, delay_s_min: float, delay_s_max: float) -> float:
    """The wait before retry `attempt` (1, 2, ...): doubling from `delay_s_min`, capped at
    `delay_s_max`, the upper half jittered so that replicas spread out."""
    assert attempt >= 1
    assert 0 < delay_s_min <= delay_s_max
    ceiling_s = min(delay_s_max, delay_s_min * 2.0 ** min(attempt - 1, 32))
    return ceiling_s / 2 + random.uniform(0, ceiling_s / 2)  # noqa: S311 - jitter, not crypto  # nosec B311


def sqlstate(error: BaseException) -> str | None:
    """The Postgres SQLSTATE behind a SQLAlchemy error (asyncpg or psycopg), if any."""
    orig = getattr(error, "orig", None)
    for source in (orig, error):
        code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_transient_error(error: BaseException) -> bool:
    """True when retrying the same work later may succeed: a lost or refused connection,
    a serialization failure or deadlock, a pool timeout, a server shutting down."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = sqlstate(error)
        if code is not None:
            return code.startswith(TRANSIENT_SQLSTATE_PREFIXES)
        return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    code = sqlstate(error)  # asyncpg's own errors, on a raw connection
    if code is not None:
        return code.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if type(error).__module__.startswith("asyncpg") and "closed" in str(error):
        return True  # asyncpg.InterfaceError: the connection is closed
    return isinstance(error, OSError | TimeoutError)
