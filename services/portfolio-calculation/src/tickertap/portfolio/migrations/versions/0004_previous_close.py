"""Each symbol's previous close (its last price of an earlier UTC day), for day change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE portfolio.prices ADD COLUMN previous_close numeric(38, 18)"
        " CHECK (previous_close > 0), ADD COLUMN previous_close_ts timestamptz"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE portfolio.prices DROP COLUMN previous_close, DROP COLUMN previous_close_ts"
    )
