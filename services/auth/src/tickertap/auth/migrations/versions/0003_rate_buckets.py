"""Per-client-IP rate-limit buckets, shared by every replica of the auth service.

One row per (limit, client address): the tokens left after the last request and when
that was. A missing row is a full bucket, so rows idle long enough to have refilled
are purged.

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
        """
        CREATE TABLE auth.rate_buckets (
            name text NOT NULL,
            client text NOT NULL CHECK (length(client) <= 64),
            tokens double precision NOT NULL CHECK (tokens >= 0),
            granted boolean NOT NULL,
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (name, client)
        )
        """
    )
    op.execute("CREATE INDEX rate_buckets_updated ON auth.rate_buckets (updated_at)")


def downgrade() -> None:
    op.execute("DROP TABLE auth.rate_buckets")
