"""Request and response bodies of the auth API: strict, bounded, one family per entity."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# a pragmatic address check (no mail is sent): one @, a dot in the domain, no spaces
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=254,
        pattern=r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$",
    ),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
TotpCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
OtpOrRecovery = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 -]{6,40}$")]
ScopeToken = Annotated[str, StringConstraints(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{1,31}$")]
ClientId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{2,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UserCreate(Strict):
    email: Email
    password: Password


class UserPublic(BaseModel):
    id: uuid.UUID
    email: str
    roles: list[str]
    mfa_enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: Any) -> UserPublic:
        return cls(
            id=view.id,
            email=view.email,
            roles=sorted(view.roles),
            mfa_enabled=view.mfa_enabled,
            created_at=view.created_at,
            updated_at=view.updated_at,
        )


class EmailChange(Strict):
    email: Email
    password: Password


class PasswordChange(Strict):
    current_password: Password
    new_password: Password


class Reauthentication(Strict):
    password: Password


class TotpEnrollment(BaseModel):
    secret: str
    otpauth_uri: str


class TotpConfirmation(Strict):
    code: TotpCode


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


class TotpDisable(Strict):
    password: Password
    code: OtpOrRecovery


class SessionPublic(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime


class ClientCreate(Strict):
    client_id: ClientId
    scopes: list[ScopeToken] = Field(min_length=1, max_length=64)
    roles: list[RoleName] = Field(default_factory=list, max_length=8)


class ClientCreated(BaseModel):
    client_id: str
    client_secret: str


class SigningKeyRotated(BaseModel):
    kid: str


class AuditEntry(BaseModel):
    id: int
    occurred_at: datetime
    actor_id: str | None
    subject_id: uuid.UUID | None
    action: str
    result: str
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]
