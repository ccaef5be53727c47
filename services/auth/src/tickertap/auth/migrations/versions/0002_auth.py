"""Users, login throttles, sessions, refresh tokens, MFA, machine clients, the audit trail.

Emails are stored only as Vault transit ciphertext plus a transit HMAC (the blind
index the unique constraint and lookups use). Refresh tokens, MFA tokens and
client secrets are stored as hashes only.

The audit table is append-only for the service's own role: its UPDATE, DELETE
and TRUNCATE privileges are revoked, and a trigger refuses the same statements
should they ever be granted again (or come from a superuser).

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
    """
    CREATE TABLE auth.users (
        id uuid PRIMARY KEY,
        email_index text NOT NULL UNIQUE,
        email_ciphertext text NOT NULL,
        password_hash text NOT NULL,
        roles text[] NOT NULL DEFAULT '{customer}'
            CHECK (roles <@ ARRAY['customer', 'support', 'admin']::text[]),
        mfa_secret_ciphertext text,
        mfa_enabled boolean NOT NULL DEFAULT false,
        mfa_last_step bigint,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        password_changed_at timestamptz NOT NULL DEFAULT now(),
        CHECK (NOT mfa_enabled OR mfa_secret_ciphertext IS NOT NULL)
    )
    """,
    """
    CREATE TABLE auth.login_throttles (
        email_index text PRIMARY KEY,
        failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
        lockouts integer NOT NULL DEFAULT 0 CHECK (lockouts >= 0),
        locked_until timestamptz NOT NULL DEFAULT '-infinity',
        last_failure_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE auth.sessions (
        id uuid PRIMARY KEY,
        user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        last_used_at timestamptz NOT NULL DEFAULT now(),
        scope text NOT NULL,
        revoked_at timestamptz,
        revoked_reason text
    )
    """,
    "CREATE INDEX sessions_user ON auth.sessions (user_id) WHERE revoked_at IS NULL",
    """
    CREATE TABLE auth.refresh_tokens (
        token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
        session_id uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
        issued_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        used_at timestamptz
    )
    """,
    "CREATE INDEX refresh_tokens_session ON auth.refresh_tokens (session_id)",
    """
    CREATE TABLE auth.mfa_challenges (
        token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
        user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
        scope text,
        expires_at timestamptz NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        used_at timestamptz
    )
    """,
    """
    CREATE TABLE auth.recovery_codes (
        code_hash bytea PRIMARY KEY CHECK (length(code_hash) = 32),
        user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
        used_at timestamptz
    )
    """,
    "CREATE INDEX recovery_codes_user ON auth.recovery_codes (user_id)",
    """
    CREATE TABLE auth.clients (
        client_id text PRIMARY KEY CHECK (client_id ~ '^[a-z0-9][a-z0-9._-]{2,63}$'),
        secret_hash text NOT NULL,
        scopes text[] NOT NULL,
        roles text[] NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now(),
        disabled_at timestamptz
    )
    """,
    """
    CREATE TABLE auth.audit (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        actor_id text,
        subject_id uuid,
        action text NOT NULL,
        result text NOT NULL CHECK (result IN ('success', 'failure', 'denied')),
        ip text,
        user_agent text CHECK (length(user_agent) <= 512),
        details jsonb NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX audit_subject ON auth.audit (subject_id, id)",
    """
    CREATE FUNCTION auth.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'auth.audit is append-only' USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON auth.audit
    FOR EACH ROW EXECUTE FUNCTION auth.audit_is_append_only()
    """,
    """
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON auth.audit
    FOR EACH STATEMENT EXECUTE FUNCTION auth.audit_is_append_only()
    """,
    "REVOKE UPDATE, DELETE, TRUNCATE ON auth.audit FROM auth_owner",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in (
        "audit",
        "clients",
        "recovery_codes",
        "mfa_challenges",
        "refresh_tokens",
        "sessions",
        "login_throttles",
        "users",
    ):
        op.execute(f"DROP TABLE auth.{table}")
    op.execute("DROP FUNCTION auth.audit_is_append_only()")
