"""`ledger.balance_changed()`: raises a serialization failure (SQLSTATE 40001).

A batch posted in one statement (no explicit transaction) checks that each account's
balance is still the one it read; when one is not, the statement calls this function in
place of a value, which fails it as a whole: nothing of it is written, and the service
posts the batch again under row locks.

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
        "CREATE FUNCTION ledger.balance_changed() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$"
        " BEGIN RAISE EXCEPTION 'an account balance changed after the batch read it'"
        " USING ERRCODE = 'serialization_failure'; END $$"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger.balance_changed()")
