"""Settings of the auth service (`TICKERTAP_*` environment variables).

Every bound of the service is here with its unit. The Argon2id defaults are the
OWASP Password Storage Cheat Sheet's first recommendation (m=19 MiB, t=2, p=1);
raising them makes stored hashes rehash at their owners' next login.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from tickertap.auth.domain import LockoutPolicy
from tickertap.runtime import ServiceSettings


class AuthSettings(ServiceSettings):
    http_port: int = Field(default=25401, ge=1, le=65535)
    db_schema: str = "auth"
    vault_role: str = "auth"

    # the tokens this service issues: `iss` and `aud` (the local stack names the same
    # values for every service: TICKERTAP_AUTH_ISSUER / _AUDIENCE)
    auth_issuer: str = Field(min_length=1, max_length=255)
    auth_audience: str = Field(default="tickertap", min_length=1, max_length=255)
    access_token_ttl_s: int = Field(default=600, ge=300, le=900)
    refresh_token_ttl_s: int = Field(default=14 * 86_400, ge=3600, le=90 * 86_400)
    session_ttl_s_max: int = Field(default=30 * 86_400, ge=3600, le=365 * 86_400)
    client_token_ttl_s: int = Field(default=600, ge=300, le=900)

    # signing keys: a Vault transit ed25519 key; rotated when its newest version is older
    # than the period (0: only on demand), checked every interval
    signing_key: str = "auth-jwt"
    signing_key_rotation_s: float = Field(default=7 * 86_400, ge=0)
    signing_key_check_interval_s: float = Field(default=60.0, gt=0, le=3600)
    jwks_cache_s: float = Field(default=5.0, ge=0, le=300)  # how stale a served JWKS may be
    jwks_max_age_s: int = Field(default=60, ge=0, le=3600)  # Cache-Control for clients
    # a JWKS file whose keys are published too (the local stack's dev key); never in prod
    jwks_include_file: Path | None = None

    # emails are looked up by a transit HMAC of this key version (a newer version needs
    # a re-index of every user before this setting moves to it)
    email_index_key_version: int = Field(default=1, ge=1)

    # Argon2id
    argon2_memory_kib: int = Field(default=19_456, ge=19_456, le=4_194_304)
    argon2_time_cost: int = Field(default=2, ge=2, le=100)
    argon2_parallelism: int = Field(default=1, ge=1, le=16)
    password_chars_min: int = Field(default=12, ge=8, le=128)
    password_chars_max: int = Field(default=256, ge=64, le=1024)
    # concurrent Argon2 computations (each takes argon2_memory_kib of memory)
    password_hashing_concurrency_max: int = Field(default=4, ge=1, le=64)

    # lockout: after `lockout_failures_max` failed logins in a row an email is locked for
    # base * 2^(lockouts so far), at most `lockout_s_max`
    lockout_failures_max: int = Field(default=5, ge=1, le=100)
    lockout_base_s: float = Field(default=60.0, gt=0, le=86_400)
    lockout_s_max: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    lockout_reset_s: float = Field(default=86_400.0, gt=0)  # quiet time that forgets lockouts

    # per-client-IP rate limits (token buckets in Postgres, shared by the replicas):
    # sustained rate and burst
    login_rate_per_min: float = Field(default=60.0, gt=0, le=1_000_000)
    login_burst: int = Field(default=20, ge=1, le=1_000_000)
    register_rate_per_min: float = Field(default=10.0, gt=0, le=1_000_000)
    register_burst: int = Field(default=10, ge=1, le=1_000_000)

    # MFA
    totp_issuer: str = Field(default="tickerTap", min_length=1, max_length=64)
    totp_window_steps: int = Field(default=1, ge=0, le=3)
    mfa_challenge_ttl_s: int = Field(default=300, ge=30, le=900)
    mfa_attempts_max: int = Field(default=5, ge=1, le=20)
    recovery_codes_count: int = Field(default=10, ge=4, le=20)

    audit_page_max: int = Field(default=200, ge=1, le=1000)

    # expired tokens, challenges, sessions and throttles are deleted every interval
    purge_interval_s: float = Field(default=600.0, gt=0, le=86_400)
    purge_batch_max: int = Field(default=5_000, ge=100, le=100_000)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.lockout_s_max < self.lockout_base_s:
            raise ValueError("lockout_s_max must not be below lockout_base_s")
        if self.password_chars_max < self.password_chars_min:
            raise ValueError("password_chars_max must not be below password_chars_min")
        if self.environment == "production" and self.jwks_include_file is not None:
            raise ValueError("jwks_include_file publishes dev keys: not in production")
        return self

    def lockout_policy(self) -> LockoutPolicy:
        return LockoutPolicy(
            failures_max=self.lockout_failures_max,
            base_s=self.lockout_base_s,
            s_max=self.lockout_s_max,
            reset_s=self.lockout_reset_s,
        )
