"""Daily valuation snapshots: one row per portfolio, UTC day and cost-basis method; the
last snapshot taken during a day stands for that day. Row-level security as in 0002.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

VISIBLE = (
    "(current_setting('tickertap.scope', true) = 'all' "
    "OR owner_id = nullif(current_setting('tickertap.owner_id', true), '')::uuid)"
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE portfolio.valuations (
            owner_id uuid NOT NULL,
            day date NOT NULL,
            method text NOT NULL CHECK (method IN ('fifo', 'average')),
            base_currency text NOT NULL,
            market_value numeric(38, 18) NOT NULL,
            cost_basis numeric(38, 18) NOT NULL,
            unrealized_pnl numeric(38, 18) NOT NULL,
            realized_pnl numeric(38, 18) NOT NULL,
            cash_value numeric(38, 18) NOT NULL,
            total_value numeric(38, 18) NOT NULL,
            day_change numeric(38, 18) NOT NULL,
            as_of timestamptz NOT NULL,
            taken_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (owner_id, method, day)
        )
        """
    )
    op.execute("ALTER TABLE portfolio.valuations ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE portfolio.valuations FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY valuations_visible ON portfolio.valuations USING {VISIBLE} "
        f"WITH CHECK {VISIBLE}"
    )


def downgrade() -> None:
    op.execute("DROP TABLE portfolio.valuations")
