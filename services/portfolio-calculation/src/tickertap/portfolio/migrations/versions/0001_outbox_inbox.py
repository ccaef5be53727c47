"""The transactional outbox and the consumer inbox of the portfolio schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from tickertap.messaging import create_statements
from tickertap.runtime import messaging_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in messaging_tables("portfolio"):
        for statement in create_statements(table):
            op.execute(statement)


def downgrade() -> None:
    for table in messaging_tables("portfolio"):
        op.drop_table(table.name, schema="portfolio")
