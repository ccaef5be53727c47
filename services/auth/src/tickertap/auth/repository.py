"""SQL of the auth service. Every function takes the caller's open transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tickertap.auth.domain import LoginThrottle

USER_COLUMNS = (
    "id, email_index, email_ciphertext, password_hash, roles, mfa_secret_ciphertext, "
    "mfa_enabled, mfa_last_step, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: uuid.UUID
    email_index: str
    email_ciphertext: str
    password_hash: str
    roles: tuple[str, ...]
    mfa_secret_ciphertext: str | None
    mfa_enabled: bool
    mfa_last_step: int | None
    created_at: datetime
    updated_at: datetime


def _user(r: Any) -> UserRow:
    return UserRow(
        r.id,
        r.email_index,
        r.email_ciphertext,
        r.password_hash,
        tuple(r.roles),
        r.mfa_secret_ciphertext,
        r.mfa_enabled,
        r.mfa_last_step,
        r.created_at,
        r.updated_at,
    )


# -- users -----------------------------------------------------------------------------


async def insert_user(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    email_index: str,
    email_ciphertext: str,
    password_hash: str,
    roles: Sequence[str],
) -> UserRow | None:
    """The new user, or None when the email index is taken."""
    result = await conn.execute(
        text(
            "INSERT INTO auth.users (id, email_index, email_ciphertext, password_hash, roles) "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            "VALUES (:id, :idx, :ct, :ph, :roles) ON CONFLICT (email_index) DO NOTHING "
            f"RETURNING {USER_COLUMNS}"
        ),
        {
            "id": user_id,
            "idx": email_index,
            "ct": email_ciphertext,
            "ph": password_hash,
            "roles": list(roles),
        },
    )
    row = result.first()
    return None if row is None else _user(row)


async def user_by_email(
    conn: AsyncConnection, email_index: str, *, lock: bool = False
) -> UserRow | None:
    suffix = " FOR UPDATE" if lock else ""
    row = (
        await conn.execute(
            text(f"SELECT {USER_COLUMNS} FROM auth.users WHERE email_index = :idx{suffix}"),  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            {"idx": email_index},
        )
    ).first()
    return None if row is None else _user(row)


async def login_state(
    conn: AsyncConnection, email_index: str
) -> tuple[LoginThrottle, UserRow | None]:
    """The email's failed logins and its user, if any, in one round trip."""
    user_columns = ", ".join(f"u.{c.strip()}" for c in USER_COLUMNS.split(","))
    row = (
        await conn.execute(
            text(
                "SELECT t.failures, t.lockouts, t.locked_until, t.last_failure_at, "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
                f"{user_columns} FROM (SELECT CAST(:idx AS text) AS idx) k "
                "LEFT JOIN auth.login_throttles t ON t.email_index = k.idx "
                "LEFT JOIN auth.users u ON u.email_index = k.idx"
            ),
            {"idx": email_index},
        )
    ).one()
    state = LoginThrottle()
    if row.failures is not None:
        state = LoginThrottle(
            row.failures, row.lockouts, _epoch(row.locked_until), _epoch(row.last_failure_at)
        )
    return state, None if row.id is None else _user(row)


async def user_by_id(
    conn: AsyncConnection, user_id: uuid.UUID, *, lock: bool = False
) -> UserRow | None:
    suffix = " FOR UPDATE" if lock else ""
    row = (
        await conn.execute(
            text(f"SELECT {USER_COLUMNS} FROM auth.users WHERE id = :id{suffix}"),  # nosec B608
            {"id": user_id},
        )
    ).first()
    return None if row is None else _user(row)


async def update_user(conn: AsyncConnection, user_id: uuid.UUID, **values: Any) -> None:
    """Set the given columns (names are this module's constants, never user input)."""
    allowed = {
        "email_index",
        "email_ciphertext",
        "password_hash",
        "roles",
        "mfa_secret_ciphertext",
        "mfa_enabled",
        "mfa_last_step",
    }
    assert values
    assert set(values) <= allowed
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    extra = ", password_changed_at = now()" if "password_hash" in values else ""
    await conn.execute(
        text(f"UPDATE auth.users SET {assignments}, updated_at = now(){extra} WHERE id = :id"),  # nosec B608  # column names from this module's callers; values are bind parameters
        {**values, "id": user_id},
    )


async def delete_user(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM auth.users WHERE id = :id"), {"id": user_id})


# -- login throttles -------------------------------------------------------------------


def _epoch(value: datetime) -> float:
    return 0.0 if value.year < 2 else value.timestamp()


async def throttle(conn: AsyncConnection, email_index: str, *, lock: bool) -> LoginThrottle:
    suffix = " FOR UPDATE" if lock else ""
    row = (
        await conn.execute(
            text(
                "SELECT failures, lockouts, locked_until, last_failure_at "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
                f"FROM auth.login_throttles WHERE email_index = :idx{suffix}"
            ),
            {"idx": email_index},
        )
    ).first()
    if row is None:
        return LoginThrottle()
    return LoginThrottle(
        row.failures, row.lockouts, _epoch(row.locked_until), _epoch(row.last_failure_at)
    )


async def save_throttle(conn: AsyncConnection, email_index: str, state: LoginThrottle) -> None:
    await conn.execute(
        text(
            "INSERT INTO auth.login_throttles "
            "(email_index, failures, lockouts, locked_until, last_failure_at) "
            "VALUES (:idx, :f, :l, :until, :last) ON CONFLICT (email_index) DO UPDATE SET "
            "failures = :f, lockouts = :l, locked_until = :until, last_failure_at = :last"
        ),
        {
            "idx": email_index,
            "f": state.failures,
            "l": state.lockouts,
            "until": datetime.fromtimestamp(state.locked_until, UTC),
            "last": datetime.fromtimestamp(state.last_failure_at, UTC),
        },
    )


async def clear_throttle(conn: AsyncConnection, email_index: str) -> None:
    await conn.execute(
        text("DELETE FROM auth.login_throttles WHERE email_index = :idx"), {"idx": email_index}
    )


# -- sessions and refresh tokens -------------------------------------------------------


async def insert_session(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    scope: str,
    ttl_s: int,
    refresh_digest: bytes,
    refresh_ttl_s: int,
) -> None:
    """A session and its first refresh token, in one statement (one round trip a login)."""
    await conn.execute(
        text(
            "WITH s AS (INSERT INTO auth.sessions (id, user_id, scope, expires_at) "
            "VALUES (:id, :user, :scope, now() + make_interval(secs => :ttl)) RETURNING id) "
            "INSERT INTO auth.refresh_tokens (token_hash, session_id, expires_at) "
            "SELECT :h, s.id, now() + make_interval(secs => :rttl) FROM s"
        ),
        {"id": session_id, "user": user_id, "scope": scope, "ttl": ttl_s,
         "h": refresh_digest, "rttl": refresh_ttl_s},
    )  # fmt: skip


async def insert_refresh_token(
    conn: AsyncConnection, digest: bytes, session_id: uuid.UUID, ttl_s: int
) -> None:
    await conn.execute(
        text(
            "INSERT INTO auth.refresh_tokens (token_hash, session_id, expires_at) "
            "VALUES (:h, :sid, now() + make_interval(secs => :ttl))"
        ),
        {"h": digest, "sid": session_id, "ttl": ttl_s},
    )


@dataclass(frozen=True, slots=True)
class RefreshClaim:
    """What presenting a refresh token found: `claimed` is true only for the one caller
    that marked it used; everyone else sees a reuse."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    scope: str
    claimed: bool
    token_expired: bool
    session_active: bool


async def claim_refresh_token(conn: AsyncConnection, digest: bytes) -> RefreshClaim | None:
    """Mark a refresh token used, atomically (one UPDATE: of two concurrent callers one wins)."""
    claimed = (
        await conn.execute(
            text(
                "UPDATE auth.refresh_tokens SET used_at = now() "
                "WHERE token_hash = :h AND used_at IS NULL RETURNING session_id"
            ),
            {"h": digest},
        )
    ).first()
    row = (
        await conn.execute(
            text(
                "SELECT t.session_id, s.user_id, s.scope, t.expires_at <= now() AS token_expired, "
                "(s.revoked_at IS NULL AND s.expires_at > now()) AS session_active "
                "FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id "
                "WHERE t.token_hash = :h"
            ),
            {"h": digest},
        )
    ).first()
    if row is None:
        return None
    return RefreshClaim(
        row.session_id,
        row.user_id,
        row.scope,
        claimed is not None,
        row.token_expired,
        row.session_active,
    )


async def session_of_refresh_token(conn: AsyncConnection, digest: bytes) -> uuid.UUID | None:
    row = (
        await conn.execute(
            text("SELECT session_id FROM auth.refresh_tokens WHERE token_hash = :h"), {"h": digest}
        )
    ).first()
    return None if row is None else row.session_id


async def touch_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        text("UPDATE auth.sessions SET last_used_at = now() WHERE id = :id"), {"id": session_id}
    )


async def revoke_sessions(
    conn: AsyncConnection,
    reason: str,
    *,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Revoke one session or all of a user's; returns (session, user) of those revoked now."""
    assert (session_id is None) != (user_id is None)
    where = "id = :sid" if session_id is not None else "user_id = :uid"
    rows = await conn.execute(
        text(
            f"UPDATE auth.sessions SET revoked_at = now(), revoked_reason = :reason "  # nosec B608  # constant column lists and clauses; every value is a bind parameter
            f"WHERE {where} AND revoked_at IS NULL RETURNING id, user_id"
        ),
        {"sid": session_id, "uid": user_id, "reason": reason},
    )
    return [(r.id, r.user_id) for r in rows]


async def session_active(conn: AsyncConnection, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    row = (
        await conn.execute(
            text(
                "SELECT 1 FROM auth.sessions WHERE id = :sid AND user_id = :uid "
                "AND revoked_at IS NULL AND expires_at > now()"
            ),
            {"sid": session_id, "uid": user_id},
        )
    ).first()
    return row is not None


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime


async def active_sessions(
    conn: AsyncConnection, user_id: uuid.UUID, limit: int
) -> list[SessionRow]:
    rows = await conn.execute(
        text(
            "SELECT id, created_at, last_used_at, expires_at FROM auth.sessions "
            "WHERE user_id = :uid AND revoked_at IS NULL AND expires_at > now() "
            "ORDER BY created_at DESC LIMIT :limit"
        ),
        {"uid": user_id, "limit": limit},
    )
    return [SessionRow(r.id, r.created_at, r.last_used_at, r.expires_at) for r in rows]


# -- MFA -------------------------------------------------------------------------------


async def insert_mfa_challenge(
    conn: AsyncConnection, digest: bytes, user_id: uuid.UUID, scope: str | None, ttl_s: int
) -> None:
    await conn.execute(
        text(
            "INSERT INTO auth.mfa_challenges (token_hash, user_id, scope, expires_at) "
            "VALUES (:h, :uid, :scope, now() + make_interval(secs => :ttl))"
        ),
        {"h": digest, "uid": user_id, "scope": scope, "ttl": ttl_s},
    )


@dataclass(frozen=True, slots=True)
class MfaChallenge:
    user_id: uuid.UUID
    scope: str | None
    attempts: int


async def open_mfa_challenge(conn: AsyncConnection, digest: bytes) -> MfaChallenge | None:
    """A live challenge, locked, with one more attempt counted."""
    row = (
        await conn.execute(
            text(
                "UPDATE auth.mfa_challenges SET attempts = attempts + 1 "
                "WHERE token_hash = :h AND used_at IS NULL AND expires_at > now() "
                "RETURNING user_id, scope, attempts"
            ),
            {"h": digest},
        )
    ).first()
    return None if row is None else MfaChallenge(row.user_id, row.scope, row.attempts)


async def close_mfa_challenge(conn: AsyncConnection, digest: bytes) -> None:
    await conn.execute(
        text("UPDATE auth.mfa_challenges SET used_at = now() WHERE token_hash = :h"), {"h": digest}
    )


async def replace_recovery_codes(
    conn: AsyncConnection, user_id: uuid.UUID, digests: Iterable[bytes]
) -> None:
    await conn.execute(
        text("DELETE FROM auth.recovery_codes WHERE user_id = :uid"), {"uid": user_id}
    )
    rows = [{"h": d, "uid": user_id} for d in digests]
    if rows:
        await conn.execute(
            text("INSERT INTO auth.recovery_codes (code_hash, user_id) VALUES (:h, :uid)"), rows
        )


async def use_recovery_code(conn: AsyncConnection, user_id: uuid.UUID, digest: bytes) -> bool:
    row = (
        await conn.execute(
            text(
                "UPDATE auth.recovery_codes SET used_at = now() "
                "WHERE code_hash = :h AND user_id = :uid AND used_at IS NULL RETURNING 1"
            ),
            {"h": digest, "uid": user_id},
        )
    ).first()
    return row is not None


async def recovery_codes_left(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    return int(
        (
            await conn.execute(
                text(
                    "SELECT count(*) FROM auth.recovery_codes "
                    "WHERE user_id = :uid AND used_at IS NULL"
                ),
                {"uid": user_id},
            )
        ).scalar_one()
    )


# -- machine clients -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRow:
    client_id: str
    secret_hash: str
    scopes: frozenset[str]
    roles: tuple[str, ...]


async def insert_client(
    conn: AsyncConnection,
    client_id: str,
    secret_hash: str,
    scopes: Iterable[str],
    roles: Iterable[str],
) -> bool:
    result = await conn.execute(
        text(
            "INSERT INTO auth.clients (client_id, secret_hash, scopes, roles) "
            "VALUES (:id, :h, :scopes, :roles) ON CONFLICT (client_id) DO NOTHING"
        ),
        {"id": client_id, "h": secret_hash, "scopes": sorted(scopes), "roles": sorted(roles)},
    )
    return bool(result.rowcount)


async def upsert_client(
    conn: AsyncConnection,
    client_id: str,
    secret_hash: str,
    scopes: Iterable[str],
    roles: Iterable[str],
) -> bool:
    """Create the client, or give an existing one this secret, scopes and roles (and enable
    it); true when it was created."""
    row = (
        await conn.execute(
            text(
                "INSERT INTO auth.clients (client_id, secret_hash, scopes, roles) "
                "VALUES (:id, :h, :scopes, :roles) ON CONFLICT (client_id) DO UPDATE SET "
                "secret_hash = EXCLUDED.secret_hash, scopes = EXCLUDED.scopes, "
                "roles = EXCLUDED.roles, disabled_at = NULL "
                "RETURNING (xmax = 0) AS created"
            ),
            {"id": client_id, "h": secret_hash, "scopes": sorted(scopes), "roles": sorted(roles)},
        )
    ).one()
    return bool(row.created)


async def client(conn: AsyncConnection, client_id: str) -> ClientRow | None:
    row = (
        await conn.execute(
            text(
                "SELECT client_id, secret_hash, scopes, roles FROM auth.clients "
                "WHERE client_id = :id AND disabled_at IS NULL"
            ),
            {"id": client_id},
        )
    ).first()
    if row is None:
        return None
    return ClientRow(row.client_id, row.secret_hash, frozenset(row.scopes), tuple(row.roles))


# -- housekeeping ----------------------------------------------------------------------


PURGES = (
    # refresh tokens stay until they expire (a used one must still reveal a replay)
    "DELETE FROM auth.refresh_tokens WHERE ctid IN (SELECT ctid FROM auth.refresh_tokens "
    "WHERE expires_at < now() LIMIT :batch)",
    "DELETE FROM auth.mfa_challenges WHERE ctid IN (SELECT ctid FROM auth.mfa_challenges "
    "WHERE expires_at < now() LIMIT :batch)",
    "DELETE FROM auth.sessions WHERE ctid IN (SELECT ctid FROM auth.sessions "
    "WHERE expires_at < now() OR revoked_at < now() - make_interval(secs => :keep_s) "
    "LIMIT :batch)",
    "DELETE FROM auth.login_throttles WHERE ctid IN (SELECT ctid FROM auth.login_throttles "
    "WHERE locked_until < now() AND last_failure_at < now() - make_interval(secs => :keep_s) "
    "LIMIT :batch)",
)


async def purge(conn: AsyncConnection, batch_max: int, keep_s: float, buckets_idle_s: float) -> int:
    """Delete up to `batch_max` expired rows of each kind, and rate buckets idle for
    `buckets_idle_s` (refilled: like no row); returns how many went."""
    purged = 0
    for statement in PURGES:
        result = await conn.execute(text(statement), {"batch": batch_max, "keep_s": keep_s})
        purged += result.rowcount
    result = await conn.execute(
        text(
            "DELETE FROM auth.rate_buckets WHERE ctid IN (SELECT ctid FROM auth.rate_buckets "
            "WHERE updated_at < now() - make_interval(secs => :idle_s) LIMIT :batch)"
        ),
        {"batch": batch_max, "idle_s": buckets_idle_s},
    )
    return purged + result.rowcount


# -- rate limits -------------------------------------------------------------------------

# One statement spends a token of a bucket, atomically across replicas (the row lock of
# the upsert orders concurrent requests): the bucket refills at `rate_per_s` since its
# last request, up to `burst`; a request is granted when a whole token is there.
_REFILLED = (
    "LEAST(CAST(:burst AS double precision), b.tokens + CAST(:rate_per_s AS double precision)"
    " * GREATEST(0, EXTRACT(EPOCH FROM statement_timestamp() - b.updated_at)::double precision))"
)
_TAKE = text(
    "INSERT INTO auth.rate_buckets AS b (name, client, tokens, granted, updated_at)"  # nosec B608  # _REFILLED is a constant
    " VALUES (:name, :client, CAST(:burst AS double precision) - 1, true, statement_timestamp())"
    " ON CONFLICT (name, client) DO UPDATE SET"
    f" tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,"
    f" granted = {_REFILLED} >= 1,"
    " updated_at = GREATEST(b.updated_at, statement_timestamp())"
    " RETURNING tokens, granted"
)


async def take_token(
    conn: AsyncConnection, name: str, client: str, rate_per_s: float, burst: int
) -> tuple[bool, float]:
    """Spend one token of bucket (`name`, `client`): (granted, tokens left)."""
    row = (
        await conn.execute(
            _TAKE, {"name": name, "client": client, "rate_per_s": rate_per_s, "burst": burst}
        )
    ).one()
    return bool(row.granted), float(row.tokens)


# -- audit -----------------------------------------------------------------------------


async def audit(
    conn: AsyncConnection,
    action: str,
    result: str,
    *,
    actor_id: str | None,
    subject_id: uuid.UUID | None,
    ip: str | None,
    user_agent: str | None,
    details: dict[str, str] | None = None,
) -> None:
    await conn.execute(
        text(
            "INSERT INTO auth.audit (actor_id, subject_id, action, result, ip, user_agent, details)"
            " VALUES (:actor, :subject, :action, :result, :ip, :ua, CAST(:details AS jsonb))"
        ),
        {
            "actor": actor_id,
            "subject": subject_id,
            "action": action,
            "result": result,
            "ip": ip,
            "ua": (user_agent or "")[:512] or None,
            "details": json.dumps(details or {}),
        },
    )


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    occurred_at: datetime
    actor_id: str | None
    subject_id: uuid.UUID | None
    action: str
    result: str
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


async def audit_trail(
    conn: AsyncConnection, subject_id: uuid.UUID, after_id: int, limit: int
) -> list[AuditRow]:
    rows = await conn.execute(
        text(
            "SELECT id, occurred_at, actor_id, subject_id, action, result, ip, user_agent, details"
            " FROM auth.audit WHERE subject_id = :sid AND id > :after ORDER BY id LIMIT :limit"
        ),
        {"sid": subject_id, "after": after_id, "limit": limit},
    )
    return [
        AuditRow(
            r.id,
            r.occurred_at,
            r.actor_id,
            r.subject_id,
            r.action,
            r.result,
            r.ip,
            r.user_agent,
            dict(r.details),
        )
        for r in rows
    ]
