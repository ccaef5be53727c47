"""Background report jobs: one row per job (what was asked, its status, lease, result) and
one row per attempt (which worker claimed it when, and how the attempt ended).

A worker claims a job with a conditional UPDATE (queued, or running with an expired
lease; `attempts` + 1), and writes the result only where status and `attempts` still
match its claim, so two workers never both run an attempt and a result is written once.
`idempotency_key` is scoped to the caller ("<len>:<subject>:<key>"), as in the ledger.
Row-level security on both tables as in 0002.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VISIBLE = (
    "(current_setting('tickertap.scope', true) = 'all' "
    "OR owner_id = nullif(current_setting('tickertap.owner_id', true), '')::uuid)"
)

STATEMENTS = [
    """
    CREATE TABLE portfolio.jobs (
        job_id uuid PRIMARY KEY,
        owner_id uuid NOT NULL,
        kind text NOT NULL CHECK (kind IN ('realized_pnl')),
        params jsonb NOT NULL,
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
        attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        lease_expires_at timestamptz,
        worker text,
        requested_by text NOT NULL,
        idempotency_key text UNIQUE,
        request_hash text NOT NULL,
        result jsonb,
        result_attempt integer,
        error_code text,
        error_detail text,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((status = 'succeeded') = (result IS NOT NULL)),
        CHECK ((result IS NULL) = (result_attempt IS NULL)),
        CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
    )
    """,
    "CREATE INDEX jobs_owner ON portfolio.jobs (owner_id, created_at)",
    "CREATE INDEX jobs_leases ON portfolio.jobs (lease_expires_at) WHERE status = 'running'",
    """
    CREATE TABLE portfolio.job_attempts (
        job_id uuid NOT NULL REFERENCES portfolio.jobs (job_id),
        attempt integer NOT NULL CHECK (attempt >= 1),
        owner_id uuid NOT NULL,
        worker text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        outcome text CHECK (outcome IN ('succeeded', 'failed', 'retry', 'expired')),
        error_code text,
        PRIMARY KEY (job_id, attempt)
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in ("jobs", "job_attempts"):
        op.execute(f"ALTER TABLE portfolio.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE portfolio.{table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_visible ON portfolio.{table} USING {VISIBLE} "
            f"WITH CHECK {VISIBLE}"
        )


def downgrade() -> None:
    op.execute("DROP TABLE portfolio.job_attempts")
    op.execute("DROP TABLE portfolio.jobs")
