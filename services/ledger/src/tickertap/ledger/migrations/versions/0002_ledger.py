"""Assets, accounts, transfers, postings, idempotency keys, the price cache; row-level security.

Amounts are NUMERIC(38, 18) and every row that holds one also holds its asset's
scale, with a CHECK that the amount has no more places than that scale: the
database enforces scales too, never rounding.

Row-level security (FORCE, since the service's role owns the tables): a
transaction sees every row only after `set_config('tickertap.scope', 'all', true)`,
else only the rows of the owner in `tickertap.owner_id`; with neither, nothing.

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
    "OR {owner} = nullif(current_setting('tickertap.owner_id', true), '')::uuid)"
)

STATEMENTS = [
    """
    CREATE TABLE ledger.assets (
        code text PRIMARY KEY CHECK (code ~ '^[A-Z0-9][A-Z0-9.]{0,11}$'),
        scale smallint NOT NULL CHECK (scale BETWEEN 0 AND 18),
        kind text NOT NULL CHECK (kind IN ('fiat', 'crypto', 'share')),
        quote_currency text REFERENCES ledger.assets (code),
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((kind = 'share') = (quote_currency IS NOT NULL))
    )
    """,
    """
    CREATE TABLE ledger.accounts (
        id uuid PRIMARY KEY,
        owner_id uuid,
        asset text NOT NULL REFERENCES ledger.assets (code),
        scale smallint NOT NULL,
        kind text NOT NULL CHECK (kind IN ('customer', 'omnibus', 'fees', 'custody')),
        overdraft_limit numeric(38, 18) NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
        balance numeric(38, 18) NOT NULL DEFAULT 0,
        postings_count bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((kind = 'customer') = (owner_id IS NOT NULL)),
        CHECK (balance = round(balance, scale)),
        CHECK (kind <> 'customer' OR balance >= -overdraft_limit)
    )
    """,
    "CREATE UNIQUE INDEX accounts_customer_asset ON ledger.accounts (owner_id, asset) "
    "WHERE kind = 'customer'",
    "CREATE UNIQUE INDEX accounts_system_asset ON ledger.accounts (kind, asset) "
    "WHERE kind <> 'customer'",
    """
    CREATE TABLE ledger.transfers (
        id uuid PRIMARY KEY,
        kind text NOT NULL
            CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'trade', 'reversal')),
        reverses uuid UNIQUE REFERENCES ledger.transfers (id),
        owner_ids uuid[] NOT NULL,
        trade jsonb,
        metadata jsonb NOT NULL DEFAULT '{}',
        event_id uuid NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((kind = 'reversal') = (reverses IS NOT NULL))
    )
    """,
    "CREATE INDEX transfers_created_at ON ledger.transfers (created_at)",
    """
    CREATE TABLE ledger.postings (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        transfer_id uuid NOT NULL REFERENCES ledger.transfers (id),
        account_id uuid NOT NULL REFERENCES ledger.accounts (id),
        owner_id uuid,
        asset text NOT NULL,
        scale smallint NOT NULL,
        amount numeric(38, 18) NOT NULL CHECK (amount <> 0),
        balance_after numeric(38, 18) NOT NULL,
        posted_at timestamptz NOT NULL DEFAULT now(),
        CHECK (amount = round(amount, scale)),
        UNIQUE (transfer_id, account_id)
    )
    """,
    "CREATE INDEX postings_account ON ledger.postings (account_id, id)",
    """
    CREATE TABLE ledger.idempotency_keys (
        owner_key text PRIMARY KEY,
        request_hash bytea NOT NULL,
        transfer_id uuid NOT NULL,
        status smallint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX idempotency_keys_created_at ON ledger.idempotency_keys (created_at)",
    """
    CREATE TABLE ledger.prices (
        symbol text PRIMARY KEY,
        price numeric(38, 18) NOT NULL CHECK (price > 0),
        exchange_ts timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # system-wide rows: the assets every deployment has
    """
    INSERT INTO ledger.assets (code, scale, kind) VALUES
        ('USD', 2, 'fiat'), ('EUR', 2, 'fiat'), ('GBP', 2, 'fiat'), ('JPY', 0, 'fiat'),
        ('BTC', 8, 'crypto'), ('ETH', 18, 'crypto')
    """,
]

ROW_SECURITY = {
    "accounts": "owner_id",
    "postings": "owner_id",
    "transfers": "ANY(owner_ids)",
}


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table, owner in ROW_SECURITY.items():
        op.execute(f"ALTER TABLE ledger.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE ledger.{table} FORCE ROW LEVEL SECURITY")
        if owner.startswith("ANY"):
            predicate = (
                "(current_setting('tickertap.scope', true) = 'all' OR "
                "nullif(current_setting('tickertap.owner_id', true), '')::uuid = ANY(owner_ids))"
            )
        else:
            predicate = VISIBLE.format(owner=owner)
        op.execute(
            f"CREATE POLICY {table}_visible ON ledger.{table} "
            f"USING {predicate} WITH CHECK {predicate}"
        )


def downgrade() -> None:
    for table in ("prices", "idempotency_keys", "postings", "transfers", "accounts", "assets"):
        op.execute(f"DROP TABLE ledger.{table}")
