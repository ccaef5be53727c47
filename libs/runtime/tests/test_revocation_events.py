"""Which auth.events.v1 records revoke what (pure: no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tickertap.authn import Revocations
from tickertap.runtime.revocations import apply_event

AT = datetime(2026, 11, 26, 12, 0, 0, 500_000, tzinfo=UTC)


def record(event_type: str, session_id: uuid.UUID | None = None) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4(),
        "occurred_at": AT,
        "user_id": uuid.UUID(int=7),
        "event_type": event_type,
        "session_id": session_id,
        "actor_id": None,
        "details": {},
    }


def test_session_and_user_events_revoke_and_the_others_do_not() -> None:
    revocations = Revocations(clock=lambda: AT.timestamp())
    for event_type in ("user_registered", "role_granted", "session_revoked"):  # no session id
        assert not apply_event(revocations, record(event_type))
    assert len(revocations) == 0
    for event_type in ("session_revoked", "refresh_token_reused"):
        assert apply_event(revocations, record(event_type, uuid.uuid4()))
    for event_type in ("password_changed", "role_revoked", "user_deleted"):
        assert apply_event(revocations, record(event_type))
    assert len(revocations) == 3  # two sessions, one user
