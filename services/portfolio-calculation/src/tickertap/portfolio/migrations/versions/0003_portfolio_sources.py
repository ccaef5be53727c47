"""Each portfolio keeps the last offset per input partition of its transfers, so an
update event names its sources without scanning the portfolio's history.

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
        "ALTER TABLE portfolio.portfolios ADD COLUMN sources jsonb NOT NULL DEFAULT '[]'::jsonb"
    )
    op.execute("SELECT set_config('tickertap.scope', 'all', true)")  # row-level security
    op.execute(
        """
        UPDATE portfolio.portfolios p SET sources = coalesce((
            SELECT jsonb_agg(jsonb_build_array(topic, partition, last_offset)
                             ORDER BY topic, partition)
            FROM (SELECT source_topic AS topic, source_partition AS partition,
                         max(source_offset) AS last_offset
                  FROM portfolio.transfers t WHERE t.owner_id = p.owner_id
                  GROUP BY 1, 2) AS s), '[]'::jsonb)
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE portfolio.portfolios DROP COLUMN sources")
