"""The auth service's use cases, one method each, called by the HTTP routes.

`Auth` holds the ports: the writer engine, Vault (transit for emails, the blind
index and TOTP secrets), the signing keys, the Argon2 hasher, the outbox. A
failure that must leave a trace (a failed login counts towards a lockout, a
reused refresh token revokes its family) commits that trace first, then raises.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tickertap.auth import domain as d
from tickertap.auth import repository as repo
from tickertap.auth.keys import SigningKeys
from tickertap.auth.settings import AuthSettings
from tickertap.authn import Principal, TokenVerifier
from tickertap.messaging import AvroCodec, add_event
from tickertap.secrets import Vault

log = logging.getLogger(__name__)

EVENTS_SCHEMA = "auth.events.v1"
MFA_GRANT = "urn:tickertap:params:oauth:grant-type:mfa-otp"
SESSIONS_LIST_MAX = 100


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request came from, for the audit trail and the rate limits."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",  # nosec B105  # the OAuth token type's name
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(frozen=True, slots=True)
class UserView:
    id: uuid.UUID
    email: str
    roles: tuple[str, ...]
    mfa_enabled: bool
    created_at: datetime
    updated_at: datetime


class Passwords:
    """Argon2id hashing off the event loop, a bounded number at a time.

    `verify(None, password)` checks a dummy hash made at start with the same
    parameters, so an unknown email costs what a wrong password costs.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._slots = asyncio.Semaphore(settings.password_hashing_concurrency_max)
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored or self._dummy, password, stored)

    def _verify(self, stored: str, password: str, real: str | None) -> bool:
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return real is not None

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


CLIENT_CHARS_MAX = 64  # the longest client address kept as its own bucket's key


class RateLimiter:
    """Token buckets per client IP, kept in Postgres so that every replica spends from the
    same buckets: `burst` requests at once, then `rate_per_min`."""

    def __init__(self, writer: AsyncEngine, name: str, rate_per_min: float, burst: int) -> None:
        self._writer = writer
        self.name = name
        self.rate_per_s = rate_per_min / 60.0
        self.burst = burst

    @property
    def refill_s(self) -> float:
        """How long an emptied bucket takes to be full again."""
        return self.burst / self.rate_per_s

    async def take(self, client: str | None) -> None:
        """Spend one token of `client`'s bucket; `Throttled` with the wait when empty."""
        # an address is at most 45 characters (IPv6 with IPv4); anything else shares one
        key = client if client and len(client) <= CLIENT_CHARS_MAX else "unknown"
        async with self._writer.begin() as conn:
            granted, tokens = await repo.take_token(
                conn, self.name, key, self.rate_per_s, self.burst
            )
        if not granted:
            raise d.Throttled((1.0 - tokens) / self.rate_per_s)


def _now() -> datetime:
    return datetime.now(UTC)


def _oauth_throttled(error: d.Throttled) -> d.OAuthError:
    seconds = int(error.headers["Retry-After"])
    return d.OAuthError("too_many_requests", error.detail, status=429, retry_after_s=seconds)


class Auth:
    def __init__(
        self,
        settings: AuthSettings,
        writer: AsyncEngine,
        vault: Vault,
        keys: SigningKeys,
        outbox: Table,
        codec: AvroCodec,
        verifier: TokenVerifier,
        passwords: Passwords | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self._writer = writer
        self._vault = vault
        self.keys = keys
        self._outbox = outbox
        self._codec = codec
        self.passwords = passwords or Passwords(settings)
        self._transit_key = settings.vault_role
        self._lockout = settings.lockout_policy()
        self.login_limit = RateLimiter(
            writer, "login", settings.login_rate_per_min, settings.login_burst
        )
        self.register_limit = RateLimiter(
            writer, "register", settings.register_rate_per_min, settings.register_burst
        )

    # -- helpers -----------------------------------------------------------------------

    async def _email_index(self, email: str) -> str:
        return await self._vault.hmac(
            self._transit_key,
            d.normalize_email(email).encode("utf-8"),
            key_version=self.settings.email_index_key_version,
        )

    async def _event(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        event_type: str,
        *,
        session_id: uuid.UUID | None = None,
        actor_id: uuid.UUID | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        record = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": _now(),
            "user_id": str(user_id),
            "event_type": event_type,
            "session_id": None if session_id is None else str(session_id),
            "actor_id": None if actor_id is None else str(actor_id),
            "details": details or {},
        }
        await add_event(
            conn,
            self._outbox,
            self._codec,
            schema_name=EVENTS_SCHEMA,
            record=record,
            key=str(user_id),
            notify=True,
        )

    async def _audit(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        action: str,
        result: str,
        *,
        subject_id: uuid.UUID | None,
        actor_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        await repo.audit(
            conn,
            action,
            result,
            actor_id=actor_id
            if actor_id is not None
            else (None if subject_id is None else str(subject_id)),
            subject_id=subject_id,
            ip=ctx.ip,
            user_agent=ctx.user_agent,
            details=details,
        )

    async def _revoke_all(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        reason: str,
        *,
        actor_id: uuid.UUID | None = None,
        emit: bool = True,
    ) -> None:
        for session_id, _ in await repo.revoke_sessions(conn, reason, user_id=user_id):
            if emit:
                await self._event(
                    conn,
                    user_id,
                    "session_revoked",
                    session_id=session_id,
                    actor_id=actor_id,
                    details={"reason": reason},
                )

    async def _issue(
        self, conn: AsyncConnection, user: repo.UserRow, scope: str | None
    ) -> TokenPair:
        """A new session with its first refresh token, and an access token for it."""
        scopes = d.grant_scopes(scope, d.allowed_scopes(user.roles))
        session_id = uuid.uuid4()
        refresh = d.opaque_token()
        await repo.insert_session(
            conn, session_id, user.id, " ".join(sorted(scopes)),
            self.settings.session_ttl_s_max, d.token_digest(refresh),
            self.settings.refresh_token_ttl_s,
        )  # fmt: skip
        return await self._pair(conn, user, session_id, scopes, refresh)

    async def _pair(
        self,
        conn: AsyncConnection,
        user: repo.UserRow,
        session_id: uuid.UUID,
        scopes: frozenset[str],
        refresh: str | None = None,
    ) -> TokenPair:
        """An access token, and a new refresh token of the session unless `refresh` (one
        written with the session) is given."""
        if refresh is None:
            refresh = d.opaque_token()
            await repo.insert_refresh_token(
                conn, d.token_digest(refresh), session_id, self.settings.refresh_token_ttl_s
            )
        ttl_s = self.settings.access_token_ttl_s
        claims = d.access_token_claims(
            issuer=self.settings.auth_issuer,
            audience=self.settings.auth_audience,
            subject=str(user.id),
            roles=user.roles,
            scopes=scopes,
            session_id=session_id,
            now_s=int(time.time()),
            ttl_s=ttl_s,
        )
        # signed before the commit: when Vault cannot sign, nothing was rotated or created
        access = await self.keys.sign(claims)
        return TokenPair(access, ttl_s, claims["scope"], refresh)

    def _check_password(self, password: str) -> None:
        d.check_password(
            password, self.settings.password_chars_min, self.settings.password_chars_max
        )

    # -- users -------------------------------------------------------------------------

    async def register(self, email: str, password: str, ctx: RequestContext) -> UserView:
        await self.register_limit.take(ctx.ip)
        self._check_password(password)
        index = await self._email_index(email)
        ciphertext = await self._vault.encrypt(self._transit_key, email.strip().encode())
        password_hash = await self.passwords.hash(password)
        async with self._writer.begin() as conn:
            row = await repo.insert_user(
                conn, uuid.uuid4(), index, ciphertext, password_hash, d.DEFAULT_ROLES
            )
            if row is None:
                raise d.EmailTaken()
            await self._audit(conn, ctx, "user.register", "success", subject_id=row.id)
            await self._event(conn, row.id, "user_registered")
        return UserView(
            row.id, email.strip(), row.roles, row.mfa_enabled, row.created_at, row.updated_at
        )

    async def current_user(self, principal: Principal) -> repo.UserRow:
        """The user of an access token whose session is still active (logout, password
        change, deletion and refresh-token reuse end it): `SessionInvalid` otherwise."""
        try:
            user_id = uuid.UUID(principal.subject)
            session_id = uuid.UUID(principal.session_id or "")
        except ValueError:
            raise d.SessionInvalid() from None
        async with self._writer.connect() as conn:
            if not await repo.session_active(conn, session_id, user_id):
                raise d.SessionInvalid()
            user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise d.SessionInvalid()
        return user

    async def view(self, user: repo.UserRow) -> UserView:
        email = (await self._vault.decrypt(self._transit_key, user.email_ciphertext)).decode()
        return UserView(
            user.id, email, user.roles, user.mfa_enabled, user.created_at, user.updated_at
        )

    async def _reauthenticate(
        self,
        conn: AsyncConnection,
        user: repo.UserRow,
        password: str,
        ctx: RequestContext,
        action: str,
    ) -> bool:
        ok = await self.passwords.verify(user.password_hash, password)
        if not ok:
            await self._audit(
                conn,
                ctx,
                action,
                "failure",
                subject_id=user.id,
                details={"reason": "wrong_password"},
            )
        return ok

    async def change_email(
        self, principal: Principal, email: str, password: str, ctx: RequestContext
    ) -> UserView:
        user = await self.current_user(principal)
        index = await self._email_index(email)
        ciphertext = await self._vault.encrypt(self._transit_key, email.strip().encode())
        async with self._writer.begin() as conn:
            ok = await self._reauthenticate(conn, user, password, ctx, "user.email_change")
            if ok:
                if await repo.user_by_email(conn, index) is not None:
                    raise d.EmailTaken()
                await repo.update_user(
                    conn, user.id, email_index=index, email_ciphertext=ciphertext
                )
                await self._audit(conn, ctx, "user.email_change", "success", subject_id=user.id)
        if not ok:
            raise d.InvalidCredentials()
        return await self.view(await self.current_user(principal))

    async def change_password(
        self, principal: Principal, current: str, new: str, ctx: RequestContext
    ) -> None:
        user = await self.current_user(principal)
        self._check_password(new)
        new_hash = await self.passwords.hash(new)
        async with self._writer.begin() as conn:
            ok = await self._reauthenticate(conn, user, current, ctx, "user.password_change")
            if ok:
                await repo.update_user(conn, user.id, password_hash=new_hash)
                await self._revoke_all(conn, user.id, "password_changed")
                await self._audit(conn, ctx, "user.password_change", "success", subject_id=user.id)
                await self._event(conn, user.id, "password_changed")
        if not ok:
            raise d.InvalidCredentials()

    async def delete(self, principal: Principal, password: str, ctx: RequestContext) -> None:
        user = await self.current_user(principal)
        async with self._writer.begin() as conn:
            ok = await self._reauthenticate(conn, user, password, ctx, "user.delete")
            if ok:
                await self._revoke_all(conn, user.id, "user_deleted")
                await repo.delete_user(conn, user.id)  # sessions, tokens, codes cascade
                await self._audit(conn, ctx, "user.delete", "success", subject_id=user.id)
                await self._event(conn, user.id, "user_deleted")
        if not ok:
            raise d.InvalidCredentials()

    async def sessions(self, principal: Principal) -> list[repo.SessionRow]:
        user = await self.current_user(principal)
        async with self._writer.connect() as conn:
            return await repo.active_sessions(conn, user.id, SESSIONS_LIST_MAX)

    async def logout(self, principal: Principal, ctx: RequestContext) -> None:
        user = await self.current_user(principal)
        session_id = uuid.UUID(principal.session_id or "")
        async with self._writer.begin() as conn:
            await self._end_session(conn, user.id, session_id, "logout", ctx)

    async def _end_session(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        reason: str,
        ctx: RequestContext,
    ) -> None:
        if await repo.revoke_sessions(conn, reason, session_id=session_id):
            await self._audit(
                conn,
                ctx,
                "session.revoke",
                "success",
                subject_id=user_id,
                details={"reason": reason},
            )
            await self._event(
                conn, user_id, "session_revoked", session_id=session_id, details={"reason": reason}
            )

    # -- the token endpoint ------------------------------------------------------------

    async def password_grant(
        self, email: str, password: str, scope: str | None, ctx: RequestContext
    ) -> TokenPair:
        try:
            await self.login_limit.take(ctx.ip)
        except d.Throttled as error:
            raise _oauth_throttled(error) from None
        index = await self._email_index(email)
        async with self._writer.connect() as conn:
            state, user = await repo.login_state(conn, index)
        now_s = time.time()
        if state.retry_after_s(now_s) > 0:
            raise _oauth_throttled(d.Throttled(state.retry_after_s(now_s)))
        ok = await self.passwords.verify(None if user is None else user.password_hash, password)
        subject = None if user is None else user.id
        failure: Exception | None = None
        pair: TokenPair | None = None
        async with self._writer.begin() as conn:
            if not ok:
                state = (await repo.throttle(conn, index, lock=True)).failed(
                    self._lockout, time.time()
                )
                await repo.save_throttle(conn, index, state)
                await self._audit(
                    conn,
                    ctx,
                    "login",
                    "failure",
                    subject_id=subject,
                    details={"reason": "invalid_credentials"},
                )
                failure = d.OAuthError("invalid_grant", "the email or the password is wrong")
                if state.retry_after_s(time.time()) > 0:
                    await self._audit(
                        conn,
                        ctx,
                        "login.lockout",
                        "denied",
                        subject_id=subject,
                        details={"lockouts": str(state.lockouts)},
                    )
                    failure = _oauth_throttled(d.Throttled(state.retry_after_s(time.time())))
            else:
                assert user is not None
                # failures are forgotten once every factor passed (a right password with a
                # wrong code keeps counting: the password alone must not reset the lockout)
                if state != d.LoginThrottle() and not user.mfa_enabled:
                    await repo.clear_throttle(conn, index)
                if self.passwords.needs_rehash(user.password_hash):
                    await repo.update_user(
                        conn, user.id, password_hash=await self.passwords.hash(password)
                    )
                if user.mfa_enabled:
                    token = d.opaque_token()
                    await repo.insert_mfa_challenge(
                        conn,
                        d.token_digest(token),
                        user.id,
                        scope,
                        self.settings.mfa_challenge_ttl_s,
                    )
                    await self._audit(
                        conn, ctx, "login.mfa_required", "success", subject_id=user.id
                    )
                    failure = d.OAuthError(
                        "mfa_required",
                        "a one-time code is required",
                        status=403,
                        mfa_token=token,
                        mfa_grant_type=MFA_GRANT,
                    )
                else:
                    pair = await self._issue(conn, user, scope)
                    await self._audit(conn, ctx, "login", "success", subject_id=user.id)
        if failure is not None:
            raise failure
        assert pair is not None
        return pair

    async def mfa_grant(
        self, mfa_token: str, otp: str | None, recovery_code: str | None, ctx: RequestContext
    ) -> TokenPair:
        if (otp is None) == (recovery_code is None):
            raise d.OAuthError("invalid_request", "send exactly one of otp or recovery_code")
        try:
            await self.login_limit.take(ctx.ip)
        except d.Throttled as error:
            raise _oauth_throttled(error) from None
        digest = d.token_digest(mfa_token)
        failure: Exception | None = None
        pair: TokenPair | None = None
        async with self._writer.begin() as conn:
            challenge = await repo.open_mfa_challenge(conn, digest)
            if challenge is None:
                raise d.OAuthError("invalid_grant", "the MFA token is unknown or expired")
            user = await repo.user_by_id(conn, challenge.user_id, lock=True)
            if user is None or not user.mfa_enabled or user.mfa_secret_ciphertext is None:
                raise d.OAuthError("invalid_grant", "the MFA token is unknown or expired")
            ok = False
            method = "otp" if otp is not None else "recovery_code"
            # wrong codes count towards the email's lockout, like wrong passwords
            throttle = await repo.throttle(conn, user.email_index, lock=True)
            if throttle.retry_after_s(time.time()) > 0:
                raise _oauth_throttled(d.Throttled(throttle.retry_after_s(time.time())))
            if challenge.attempts > self.settings.mfa_attempts_max:
                await repo.close_mfa_challenge(conn, digest)
            elif otp is not None:
                secret = await self._vault.decrypt(self._transit_key, user.mfa_secret_ciphertext)
                step = d.verify_totp(
                    secret,
                    otp,
                    time.time(),
                    window_steps=self.settings.totp_window_steps,
                    last_step=user.mfa_last_step,
                )
                if step is not None:
                    ok = True
                    await repo.update_user(conn, user.id, mfa_last_step=step)
            else:
                assert recovery_code is not None
                ok = await repo.use_recovery_code(
                    conn, user.id, d.recovery_digest(user.id, recovery_code)
                )
            if ok:
                await repo.close_mfa_challenge(conn, digest)
                if throttle != d.LoginThrottle():
                    await repo.clear_throttle(conn, user.email_index)
                pair = await self._issue(conn, user, challenge.scope)
                await self._audit(
                    conn,
                    ctx,
                    "login.mfa",
                    "success",
                    subject_id=user.id,
                    details={"method": method},
                )
            else:
                await self._audit(
                    conn,
                    ctx,
                    "login.mfa",
                    "failure",
                    subject_id=user.id,
                    details={"method": method},
                )
                failure = d.OAuthError("invalid_grant", "the one-time code is not valid")
                throttle = throttle.failed(self._lockout, time.time())
                await repo.save_throttle(conn, user.email_index, throttle)
                if throttle.retry_after_s(time.time()) > 0:
                    await self._audit(
                        conn,
                        ctx,
                        "login.lockout",
                        "denied",
                        subject_id=user.id,
                        details={"lockouts": str(throttle.lockouts)},
                    )
                    failure = _oauth_throttled(d.Throttled(throttle.retry_after_s(time.time())))
        if failure is not None:
            raise failure
        assert pair is not None
        return pair

    async def refresh_grant(
        self, refresh_token: str, scope: str | None, ctx: RequestContext
    ) -> TokenPair:
        digest = d.token_digest(refresh_token)
        invalid = d.OAuthError("invalid_grant", "the refresh token is not valid")
        failure: Exception | None = None
        pair: TokenPair | None = None
        async with self._writer.begin() as conn:
            claim = await repo.claim_refresh_token(conn, digest)
            if claim is None:
                raise invalid
            if not claim.claimed:
                # an old refresh token again: stolen or replayed; end the whole family
                if await repo.revoke_sessions(
                    conn, "refresh_token_reused", session_id=claim.session_id
                ):
                    await self._audit(
                        conn, ctx, "refresh.reuse", "denied", subject_id=claim.user_id
                    )
                    await self._event(
                        conn, claim.user_id, "refresh_token_reused", session_id=claim.session_id
                    )
                failure = invalid
            elif claim.token_expired or not claim.session_active:
                failure = invalid
            else:
                user = await repo.user_by_id(conn, claim.user_id)
                assert user is not None  # sessions cascade with their user
                granted = frozenset(claim.scope.split()) & d.allowed_scopes(user.roles)
                scopes = d.grant_scopes(scope, granted) if scope else granted
                await repo.touch_session(conn, claim.session_id)
                pair = await self._pair(conn, user, claim.session_id, scopes)
        if failure is not None:
            raise failure
        assert pair is not None
        return pair

    async def client_grant(
        self, client_id: str, client_secret: str, scope: str | None, ctx: RequestContext
    ) -> TokenPair:
        async with self._writer.connect() as conn:
            found = await repo.client(conn, client_id)
        # client secrets are 256 random bits: a SHA-256 digest is a sufficient hash
        digest = d.token_digest(client_secret).hex()
        if found is None or not hmac.compare_digest(found.secret_hash, digest):
            async with self._writer.begin() as conn:
                await self._audit(
                    conn, ctx, "client.token", "failure", subject_id=None, actor_id=client_id[:64]
                )
            raise d.OAuthError("invalid_client", "client authentication failed", status=401)
        scopes = d.grant_scopes(scope, found.scopes)
        ttl_s = self.settings.client_token_ttl_s
        claims = d.access_token_claims(
            issuer=self.settings.auth_issuer,
            audience=self.settings.auth_audience,
            subject=f"client:{found.client_id}",
            roles=found.roles,
            scopes=scopes,
            session_id=None,
            now_s=int(time.time()),
            ttl_s=ttl_s,
            client_id=found.client_id,
        )
        return TokenPair(await self.keys.sign(claims), ttl_s, claims["scope"])

    async def revoke_token(
        self, token: str, principal: Principal | None, ctx: RequestContext
    ) -> None:
        """RFC 7009: a refresh token, or a verified access token, ends its session; an
        unknown token changes nothing (and is not an error)."""
        async with self._writer.begin() as conn:
            session_id = await repo.session_of_refresh_token(conn, d.token_digest(token))
            user_id: uuid.UUID | None = None
            if session_id is None and principal is not None and principal.session_id:
                try:
                    session_id = uuid.UUID(principal.session_id)
                    user_id = uuid.UUID(principal.subject)
                except ValueError:
                    return
            if session_id is None:
                return
            revoked = await repo.revoke_sessions(conn, "revoked", session_id=session_id)
            for sid, uid in revoked:
                if user_id is not None and uid != user_id:
                    raise AssertionError("a token's session belongs to its subject")
                await self._audit(
                    conn,
                    ctx,
                    "session.revoke",
                    "success",
                    subject_id=uid,
                    details={"reason": "revoked"},
                )
                await self._event(
                    conn, uid, "session_revoked", session_id=sid, details={"reason": "revoked"}
                )

    # -- MFA ---------------------------------------------------------------------------

    async def mfa_enroll(self, principal: Principal, ctx: RequestContext) -> tuple[str, str]:
        """A new TOTP secret (pending until confirmed): its base32 form and otpauth URI,
        returned this once."""
        user = await self.current_user(principal)
        if user.mfa_enabled:
            raise d.MfaState("TOTP is enabled already; disable it first")
        secret = d.new_totp_secret()
        ciphertext = await self._vault.encrypt(self._transit_key, secret)
        email = (await self.view(user)).email
        async with self._writer.begin() as conn:
            await repo.update_user(
                conn, user.id, mfa_secret_ciphertext=ciphertext, mfa_last_step=None
            )
            await self._audit(conn, ctx, "mfa.enroll", "success", subject_id=user.id)
        return d.b32(secret), d.otpauth_uri(secret, email, self.settings.totp_issuer)

    async def mfa_confirm(self, principal: Principal, code: str, ctx: RequestContext) -> list[str]:
        user = await self.current_user(principal)
        if user.mfa_enabled or user.mfa_secret_ciphertext is None:
            raise d.MfaState("no TOTP enrollment is pending")
        secret = await self._vault.decrypt(self._transit_key, user.mfa_secret_ciphertext)
        step = d.verify_totp(
            secret, code, time.time(), window_steps=self.settings.totp_window_steps, last_step=None
        )
        codes = d.new_recovery_codes(self.settings.recovery_codes_count)
        async with self._writer.begin() as conn:
            if step is None:
                await self._audit(conn, ctx, "mfa.confirm", "failure", subject_id=user.id)
            else:
                await repo.update_user(conn, user.id, mfa_enabled=True, mfa_last_step=step)
                await repo.replace_recovery_codes(
                    conn, user.id, [d.recovery_digest(user.id, c) for c in codes]
                )
                await self._audit(conn, ctx, "mfa.confirm", "success", subject_id=user.id)
        if step is None:
            raise d.InvalidOtp()
        return codes

    async def mfa_disable(
        self, principal: Principal, password: str, code: str, ctx: RequestContext
    ) -> None:
        user = await self.current_user(principal)
        if not user.mfa_enabled or user.mfa_secret_ciphertext is None:
            raise d.MfaState("TOTP is not enabled")
        secret = await self._vault.decrypt(self._transit_key, user.mfa_secret_ciphertext)
        error: Exception | None = None
        async with self._writer.begin() as conn:
            if not await self._reauthenticate(conn, user, password, ctx, "mfa.disable"):
                error = d.InvalidCredentials()
            else:
                step = d.verify_totp(
                    secret,
                    code,
                    time.time(),
                    window_steps=self.settings.totp_window_steps,
                    last_step=user.mfa_last_step,
                )
                used = step is None and await repo.use_recovery_code(
                    conn, user.id, d.recovery_digest(user.id, code)
                )
                if step is None and not used:
                    await self._audit(conn, ctx, "mfa.disable", "failure", subject_id=user.id)
                    error = d.InvalidOtp()
                else:
                    await repo.update_user(
                        conn,
                        user.id,
                        mfa_enabled=False,
                        mfa_secret_ciphertext=None,
                        mfa_last_step=None,
                    )
                    await repo.replace_recovery_codes(conn, user.id, [])
                    await self._audit(conn, ctx, "mfa.disable", "success", subject_id=user.id)
        if error is not None:
            raise error

    # -- housekeeping ------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Expired refresh tokens, MFA challenges, sessions, login throttles and refilled
        rate buckets, in bounded batches (revoked sessions are kept a day, for their
        owners' lists)."""
        total = 0
        while True:
            async with self._writer.begin() as conn:
                purged = await repo.purge(
                    conn,
                    self.settings.purge_batch_max,
                    self.settings.lockout_reset_s,
                    max(self.login_limit.refill_s, self.register_limit.refill_s),
                )
            total += purged
            if purged < self.settings.purge_batch_max:
                return total

    async def run_purge(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("expired auth rows purged", extra={"rows": purged})
            except Exception as exc:  # housekeeping must never take the service down
                log.warning("auth purge failed", extra={"error": type(exc).__name__})

    # -- administration ----------------------------------------------------------------

    async def set_role(
        self, admin: Principal, user_id: uuid.UUID, role: str, grant: bool, ctx: RequestContext
    ) -> UserView:
        actor = await self.current_user(admin)
        d.check_role(role)
        async with self._writer.begin() as conn:
            user = await repo.user_by_id(conn, user_id, lock=True)
            if user is None:
                raise d.NotFound("no such user")
            roles = set(user.roles) | {role} if grant else set(user.roles) - {role}
            if roles != set(user.roles):
                await repo.update_user(conn, user.id, roles=sorted(roles))
                if not grant:  # a session must not keep refreshing into a revoked role
                    await self._revoke_all(conn, user.id, "role_revoked", actor_id=actor.id)
                await self._event(
                    conn,
                    user.id,
                    "role_granted" if grant else "role_revoked",
                    actor_id=actor.id,
                    details={"role": role},
                )
            await self._audit(
                conn,
                ctx,
                "role.grant" if grant else "role.revoke",
                "success",
                subject_id=user.id,
                actor_id=str(actor.id),
                details={"role": role},
            )
            updated = await repo.user_by_id(conn, user.id)
        assert updated is not None
        return await self.view(updated)

    async def set_role_by_email(
        self, email: str, role: str, grant: bool, operator: str
    ) -> UserView:
        """An operator's grant or revocation (the first admin has nobody to ask), audited
        with `operator` as the actor."""
        d.check_role(role)
        index = await self._email_index(email)
        ctx = RequestContext(ip=None, user_agent="tickertap.auth.cli")
        async with self._writer.begin() as conn:
            user = await repo.user_by_email(conn, index, lock=True)
            if user is None:
                raise d.NotFound("no such user")
            roles = set(user.roles) | {role} if grant else set(user.roles) - {role}
            if roles != set(user.roles):
                await repo.update_user(conn, user.id, roles=sorted(roles))
                if not grant:
                    await self._revoke_all(conn, user.id, "role_revoked")
                await self._event(
                    conn,
                    user.id,
                    "role_granted" if grant else "role_revoked",
                    details={"role": role, "operator": operator[:64]},
                )
            await self._audit(
                conn,
                ctx,
                "role.grant" if grant else "role.revoke",
                "success",
                subject_id=user.id,
                actor_id=f"operator:{operator[:64]}",
                details={"role": role},
            )
            updated = await repo.user_by_id(conn, user.id)
        assert updated is not None
        return await self.view(updated)

    async def user_for_support(self, principal: Principal, user_id: uuid.UUID) -> UserView:
        await self.current_user(principal)
        async with self._writer.connect() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise d.NotFound("no such user")
        return await self.view(user)

    async def audit_trail(
        self, principal: Principal, user_id: uuid.UUID, after_id: int, limit: int
    ) -> list[repo.AuditRow]:
        await self.current_user(principal)
        async with self._writer.connect() as conn:
            return await repo.audit_trail(conn, user_id, after_id, limit)

    async def create_client(
        self,
        admin: Principal,
        client_id: str,
        scopes: list[str],
        roles: list[str],
        ctx: RequestContext,
    ) -> str:
        actor = await self.current_user(admin)
        secret = d.opaque_token()
        async with self._writer.begin() as conn:
            created = await repo.insert_client(
                conn, client_id, d.token_digest(secret).hex(), scopes, roles
            )
            if not created:
                raise d.AuthError("a client with this id exists")
            await self._audit(
                conn,
                ctx,
                "client.create",
                "success",
                subject_id=None,
                actor_id=str(actor.id),
                details={"client_id": client_id},
            )
        return secret

    async def set_client(
        self, client_id: str, scopes: list[str], roles: list[str], operator: str
    ) -> tuple[str, bool]:
        """An operator's provisioning of a machine client (a deployment's bootstrap): made
        if new, else given a new secret (the old one stops working) with these scopes and
        roles; audited with `operator` as the actor. Returns the secret and whether new."""
        secret = d.opaque_token()
        ctx = RequestContext(ip=None, user_agent="tickertap.auth.cli")
        async with self._writer.begin() as conn:
            created = await repo.upsert_client(
                conn, client_id, d.token_digest(secret).hex(), scopes, roles
            )
            await self._audit(
                conn,
                ctx,
                "client.create" if created else "client.rotate",
                "success",
                subject_id=None,
                actor_id=f"operator:{operator[:64]}",
                details={"client_id": client_id},
            )
        return secret, created

    async def rotate_signing_key(self, admin: Principal, ctx: RequestContext) -> str:
        actor = await self.current_user(admin)
        current = await self.keys.rotate()
        async with self._writer.begin() as conn:
            await self._audit(
                conn,
                ctx,
                "signing_key.rotate",
                "success",
                subject_id=None,
                actor_id=str(actor.id),
                details={"kid": current.kid},
            )
        return current.kid
