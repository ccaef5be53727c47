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
    driver_statements,
    is_retryable,
    sqlstate,
    statement_outcome,
    with_retries,
)

__all__ = [
    "CommitOutcomeUnknown",
    "DatabaseSettings",
    "DriverTransaction",
    "RetryPolicy",
    "UnitOfWork",
    "create_engine",
    "driver_statements",
    "is_retryable",
    "sqlstate",
    "statement_outcome",
    "upgrade_to_head",
    "with_retries",
]
