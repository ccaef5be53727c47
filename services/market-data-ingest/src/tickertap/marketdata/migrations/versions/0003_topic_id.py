"""The broker's id of the consumed topic, to notice it was deleted and created again;
watermarks are per symbol (the latest price's exchange time), not per partition.

A broker that loses its topics (Tansu, the local broker, after a restart) or a topic
recreated by an operator starts the partitions again at offset 0: the stored positions
and source sequences of the old topic then mean nothing. The worker compares this id with
the broker's at start and resets them when it differs.

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
    op.execute("ALTER TABLE market.ingest_partitions ADD COLUMN topic_id text")
    op.execute("ALTER TABLE market.ingest_partitions DROP COLUMN watermark")


def downgrade() -> None:
    op.execute("ALTER TABLE market.ingest_partitions ADD COLUMN watermark timestamptz")
    op.execute("ALTER TABLE market.ingest_partitions DROP COLUMN topic_id")
