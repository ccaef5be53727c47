"""Postgres access for tickerTap services: engines on Vault credentials, units of work, retries.

Writer and reader engines share the same rotating credentials; the reader opens
read-only transactions (and may point at a replica).
"""

from tickertap.db.engine import DatabaseSettings, create_engine
from tickertap.db.migrations import upgrade_to_head
from tickertap.db.uow import (
    CommitOutcomeUnknown,
    DriverTransaction,
    RetryPolicy,
    UnitOfWork,
    is_retryable,
    sqlstate,
    with_retries,
)

__all__ = [
    "CommitOutcomeUnknown",
    "DatabaseSettings",
    "DriverTransaction",
    "RetryPolicy",
    "UnitOfWork",
    "create_engine",
    "is_retryable",
    "sqlstate",
    "upgrade_to_head",
    "with_retries",
]
