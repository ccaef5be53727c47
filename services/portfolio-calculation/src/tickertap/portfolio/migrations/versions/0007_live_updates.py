"""Live updates leave the database: the update publisher now keeps the portfolios it
values in memory and learns of changes from LISTEN/NOTIFY (live.py), so the flags that
queued portfolios for an update (`dirty`, `dirty_since`, `last_published_at`) and their
index go.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX portfolio.portfolios_dirty")
    op.execute(
        "ALTER TABLE portfolio.portfolios DROP COLUMN dirty, DROP COLUMN dirty_since,"
        " DROP COLUMN last_published_at"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE portfolio.portfolios ADD COLUMN dirty boolean NOT NULL DEFAULT true,"
        " ADD COLUMN dirty_since timestamptz DEFAULT now(),"
        " ADD COLUMN last_published_at timestamptz"
    )
    op.execute("CREATE INDEX portfolios_dirty ON portfolio.portfolios (dirty_since) WHERE dirty")
