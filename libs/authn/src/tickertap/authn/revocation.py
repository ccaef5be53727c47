"""Access tokens that stop being honoured before they expire.

An access token is self-contained: a service verifies it without asking the auth
service, so a logout or a password change there would otherwise reach the service only
when the token expires. The auth service publishes those changes on `auth.events.v1`;
every replica of every service follows the topic (`tickertap.runtime.revocations`) and
records them here, and the verifier refuses a token when

- its session was revoked (logout, revocation, a refresh token presented twice), or
- its user lost access at some moment (password changed, a role revoked, the account
  deleted) and the token was issued before that moment.

A record is kept for `retention_s`, the longest a token issued before it can live (the
verifier's lifetime bound and leeway): after that no token it concerns is valid anyway.
`iat` has whole seconds, so a user-wide revocation refuses the tokens issued in the
seconds before the one it happened in: a login right after a password change must get a
token that works. A token issued earlier in that same second stays valid, but not its
session: the auth service revokes each session of the user with its own event too.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from tickertap.authn.errors import InvalidToken
from tickertap.authn.principal import Principal

__all__ = ["RETENTION_S_DEFAULT", "Revocations"]

# the verifier's default bounds: a token lives at most 3600 s, give or take 30 s
RETENTION_S_DEFAULT = 3600.0 + 30.0


class Revocations:
    """Revoked sessions and per-user not-before times, bounded in age and count."""

    def __init__(
        self,
        *,
        retention_s: float = RETENTION_S_DEFAULT,
        entries_max: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert retention_s > 0
        assert entries_max > 0
        self.retention_s = retention_s
        self._entries_max = entries_max
        self._clock = clock
        # id -> when it was revoked (seconds since the epoch), oldest revocation first
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._users: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    def revoke_session(self, session_id: str, at_s: float) -> None:
        """Refuse every token of session `session_id` (revoked at `at_s`)."""
        self._record(self._sessions, session_id, at_s)

    def revoke_user(self, user_id: str, at_s: float) -> None:
        """Refuse every token of user `user_id` issued before the second of `at_s`."""
        self._record(self._users, user_id, at_s)

    def check(self, principal: Principal) -> None:
        """`InvalidToken` when `principal`'s token has been revoked."""
        if self._sessions and principal.session_id in self._sessions:
            raise InvalidToken("session revoked")
        if self._users:
            revoked_at_s = self._users.get(principal.subject)
            if revoked_at_s is not None and (
                principal.issued_at is None
                or principal.issued_at.timestamp() < math.floor(revoked_at_s)
            ):
                raise InvalidToken("revoked for the user")

    def _record(self, entries: OrderedDict[str, float], key: str, at_s: float) -> None:
        now_s = self._clock()
        if at_s < now_s - self.retention_s:
            return  # every token it concerns has expired
        # the latest revocation wins; order is kept by arrival (events come nearly in order)
        entries[key] = max(at_s, entries.get(key, at_s))
        entries.move_to_end(key)
        self._forget_old(entries, now_s)

    def _forget_old(self, entries: OrderedDict[str, float], now_s: float) -> None:
        horizon_s = now_s - self.retention_s
        while entries:
            at_s = next(iter(entries.values()))
            if at_s >= horizon_s and len(entries) <= self._entries_max:
                return
            entries.popitem(last=False)
