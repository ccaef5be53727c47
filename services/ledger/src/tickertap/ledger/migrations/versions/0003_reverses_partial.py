"""A transfer is reversed at most once: enforced by a unique index on `reverses` over the
reversals only. The UNIQUE constraint it replaces indexed every transfer's NULL as well,
one more index entry to write per transfer (and its fetch of the batch context
looks reversals up by this column, which the partial index serves alike).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE UNIQUE INDEX transfers_reversal ON ledger.transfers (reverses)"
        " WHERE reverses IS NOT NULL"
    )
    op.execute("ALTER TABLE ledger.transfers DROP CONSTRAINT transfers_reverses_key")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE ledger.transfers ADD CONSTRAINT transfers_reverses_key UNIQUE (reverses)"
    )
    op.execute("DROP INDEX ledger.transfers_reversal")
