"""The portfolio projection: applied transfers, derived state, prices; row-level security.

`transfers` is the history each portfolio's state is computed from (one row per
portfolio and ledger transfer, the portfolio's net amount per asset); `balances`,
`positions`, `lots` and `realized` are derived from it by `domain.compute` and
rewritten together whenever a transfer of the portfolio is applied. `prices` holds
the latest price per symbol with its source; `portfolios` one row per portfolio,
with the coalescing state of its portfolio.updates.v1 events.

Row-level security (FORCE, since the service's role owns the tables), as in the
ledger: a transaction sees every row only after `set_config('tickertap.scope',
'all', true)`, else only the rows of the owner in `tickertap.owner_id`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VISIBLE = (
    "(current_setting('tickertap.scope', true) = 'all' "
    "OR owner_id = nullif(current_setting('tickertap.owner_id', true), '')::uuid)"
)

STATEMENTS = [
    """
    CREATE TABLE portfolio.portfolios (
        owner_id uuid PRIMARY KEY,
        transfers_applied integer NOT NULL DEFAULT 0,
        last_transfer_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        dirty boolean NOT NULL DEFAULT true,
        dirty_since timestamptz DEFAULT now(),
        last_published_at timestamptz
    )
    """,
    "CREATE INDEX portfolios_dirty ON portfolio.portfolios (dirty_since) WHERE dirty",
    """
    CREATE TABLE portfolio.transfers (
        owner_id uuid NOT NULL,
        transfer_id uuid NOT NULL,
        occurred_at timestamptz NOT NULL,
        kind text NOT NULL
            CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'trade', 'reversal')),
        reverses uuid,
        amounts jsonb NOT NULL,
        trade jsonb,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        source_offset bigint NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (owner_id, transfer_id),
        CHECK ((kind = 'reversal') = (reverses IS NOT NULL))
    )
    """,
    """
    CREATE TABLE portfolio.balances (
        owner_id uuid NOT NULL,
        asset text NOT NULL,
        amount numeric(38, 18) NOT NULL,
        PRIMARY KEY (owner_id, asset)
    )
    """,
    """
    CREATE TABLE portfolio.positions (
        owner_id uuid NOT NULL,
        symbol text NOT NULL,
        currency text NOT NULL,
        quantity numeric(38, 18) NOT NULL,
        cost_fifo numeric(38, 18) NOT NULL,
        cost_average numeric(38, 18) NOT NULL,
        realized_fifo numeric(38, 18) NOT NULL,
        realized_average numeric(38, 18) NOT NULL,
        PRIMARY KEY (owner_id, symbol)
    )
    """,
    "CREATE INDEX positions_held ON portfolio.positions (symbol) WHERE quantity <> 0",
    """
    CREATE TABLE portfolio.lots (
        owner_id uuid NOT NULL,
        symbol text NOT NULL,
        seq integer NOT NULL,
        transfer_id uuid NOT NULL,
        acquired_at timestamptz NOT NULL,
        quantity_acquired numeric(38, 18) NOT NULL,
        quantity numeric(38, 18) NOT NULL CHECK (quantity > 0),
        price numeric(38, 18) NOT NULL,
        fees numeric(38, 18) NOT NULL,
        cost numeric(38, 18) NOT NULL,
        PRIMARY KEY (owner_id, symbol, seq)
    )
    """,
    """
    CREATE TABLE portfolio.realized (
        owner_id uuid NOT NULL,
        method text NOT NULL CHECK (method IN ('fifo', 'average')),
        seq integer NOT NULL,
        symbol text NOT NULL,
        currency text NOT NULL,
        sale_transfer_id uuid NOT NULL,
        occurred_at timestamptz NOT NULL,
        quantity numeric(38, 18) NOT NULL,
        proceeds numeric(38, 18) NOT NULL,
        cost numeric(38, 18) NOT NULL,
        pnl numeric(38, 18) NOT NULL,
        uncovered_quantity numeric(38, 18) NOT NULL,
        lots jsonb NOT NULL,
        PRIMARY KEY (owner_id, method, seq)
    )
    """,
    "CREATE INDEX realized_by_time ON portfolio.realized (owner_id, method, occurred_at)",
    """
    CREATE TABLE portfolio.prices (
        symbol text PRIMARY KEY,
        price numeric(38, 18) NOT NULL CHECK (price > 0),
        exchange_ts timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        source_offset bigint NOT NULL,
        event_topic text NOT NULL,
        event_partition integer NOT NULL,
        event_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
]

OWNED = ("portfolios", "transfers", "balances", "positions", "lots", "realized")


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in OWNED:
        op.execute(f"ALTER TABLE portfolio.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE portfolio.{table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_visible ON portfolio.{table} "
            f"USING {VISIBLE} WITH CHECK {VISIBLE}"
        )


def downgrade() -> None:
    for table in ("prices", *reversed(OWNED)):
        op.execute(f"DROP TABLE portfolio.{table}")
