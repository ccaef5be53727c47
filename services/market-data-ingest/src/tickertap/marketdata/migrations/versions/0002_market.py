"""Instruments, 1-minute bars, latest prices and the ingest worker's position.

The worker commits, in one transaction per batch, the bars it touched (open and closed),
the latest prices, the next offset and watermark of each partition and the last sequence
number of each source: after a crash it starts from exactly that state, so bars are
neither lost nor counted twice. Open bars are kept as rows too (`closed = false`), which
is all the window state there is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATEMENTS = [
    r"""
    CREATE TABLE market.instruments (
        symbol text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9][A-Z0-9.\-]{0,19}$'),
        currency text NOT NULL CHECK (currency ~ '^[A-Z0-9]{3,12}$'),
        price_scale smallint NOT NULL CHECK (price_scale BETWEEN 0 AND 18),
        status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'halted')),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE market.bars_1m (
        symbol text NOT NULL,
        window_start timestamptz NOT NULL,
        open numeric(38, 18) NOT NULL,
        high numeric(38, 18) NOT NULL,
        low numeric(38, 18) NOT NULL,
        close numeric(38, 18) NOT NULL,
        volume numeric(38, 18) NOT NULL CHECK (volume >= 0),
        notional numeric NOT NULL,
        tick_count bigint NOT NULL CHECK (tick_count > 0),
        open_ts timestamptz NOT NULL,
        close_ts timestamptz NOT NULL,
        closed boolean NOT NULL,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (symbol, window_start),
        CHECK (low <= open AND open <= high AND low <= close AND close <= high)
    )
    """,
    "CREATE INDEX bars_1m_open ON market.bars_1m (source_topic) WHERE NOT closed",
    """
    CREATE TABLE market.prices (
        symbol text PRIMARY KEY,
        venue text NOT NULL,
        price numeric(38, 18) NOT NULL CHECK (price > 0),
        bid numeric(38, 18),
        ask numeric(38, 18),
        exchange_ts timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        source_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE market.ingest_partitions (
        topic text NOT NULL,
        partition integer NOT NULL CHECK (partition >= 0),
        next_offset bigint CHECK (next_offset >= 0),
        watermark timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (topic, partition)
    )
    """,
    """
    CREATE TABLE market.source_sequences (
        topic text NOT NULL,
        partition integer NOT NULL,
        source_id text NOT NULL,
        last_seq bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (topic, partition, source_id)
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("source_sequences", "ingest_partitions", "prices", "bars_1m", "instruments"):
        op.execute(f"DROP TABLE market.{table}")
