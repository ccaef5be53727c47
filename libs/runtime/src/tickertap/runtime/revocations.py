"""A service's bearer-token checks: the auth service's keys, and its revocations.

    auth, follow = token_auth(settings)  # BearerAuth; a start hook
    ServiceDefinition(..., routers=[build_router(auth)], on_start=[..., follow])

Access tokens are verified with the keys of `TICKERTAP_AUTH_JWKS_URL` (or a JWKS file)
and refused once `auth.events.v1` says their session or user was revoked
(`tickertap.authn.revocation`). Each replica needs every event, so it reads all
partitions by assignment (no consumer group, no committed offsets): at start from the
events of the last `retention_s` (the offsets for that time where the broker serves
them, else each partition's start), then as they come. A revocation reaches the
replicas about a poll interval after the auth service publishes it; until then (and
while the broker is down) the token is accepted as before, until it expires. An event
that does not decode is logged and skipped: that only keeps a token valid until its
expiry, as it would be without this follower.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)

from tickertap.authn import AccessTokenVerifier, BearerAuth, Revocations, jwks_source
from tickertap.messaging.codec import AvroCodec, CodecError
from tickertap.messaging.kafka import consumer_config, take_batch

if TYPE_CHECKING:
    from tickertap.runtime.app import ServiceRuntime

log = logging.getLogger(__name__)

TOPIC = "auth.events.v1"
SESSION_EVENTS = frozenset({"session_revoked", "refresh_token_reused"})
USER_EVENTS = frozenset({"password_changed", "role_revoked", "user_deleted"})
POLL_TIMEOUT_S = 0.25
BATCH_MAX = 500
METADATA_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 2.0


def apply_event(revocations: Revocations, record: Mapping[str, Any]) -> bool:
    """Record what one `auth.events.v1` record revokes; True when it revoked something."""
    event_type = record["event_type"]
    occurred_at = record["occurred_at"]
    assert isinstance(occurred_at, datetime)
    if event_type in SESSION_EVENTS and record.get("session_id") is not None:
        revocations.revoke_session(str(record["session_id"]), occurred_at.timestamp())
        return True
    if event_type in USER_EVENTS:
        revocations.revoke_user(str(record["user_id"]), occurred_at.timestamp())
        return True
    return False


class TokenSettings(Protocol):
    """The settings of a service that verifies the auth service's access tokens."""

    @property
    def auth_jwks_url(self) -> str | None: ...
    @property
    def auth_jwks_file(self) -> Path | None: ...
    @property
    def auth_issuer(self) -> str: ...
    @property
    def auth_audience(self) -> str: ...
    @property
    def auth_algorithms(self) -> tuple[str, ...]: ...


def token_auth(
    settings: TokenSettings,
) -> tuple[BearerAuth, Callable[[ServiceRuntime], Awaitable[None]]]:
    """The service's `BearerAuth`, and the start hook that feeds its revocations."""
    revocations = Revocations()
    verifier = AccessTokenVerifier(
        jwks_source(settings.auth_jwks_url, settings.auth_jwks_file),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=settings.auth_algorithms,
        revocations=revocations,
    )
    return BearerAuth(verifier), follow_revocations(revocations)


def follow_revocations(revocations: Revocations) -> Callable[[ServiceRuntime], Awaitable[None]]:
    """A start hook running a `RevocationFollower` for the life of the service."""

    async def start(runtime: ServiceRuntime) -> None:
        follower = RevocationFollower(
            runtime.settings.kafka_bootstrap_servers,
            runtime.codec,
            revocations,
            client_id=f"{runtime.metrics.service}.revocations",
            retention_s=revocations.retention_s,
        )
        runtime.spawn(follower.run(), "revocation-follower", graceful=False)

    return start


class RevocationFollower:
    """Reads `auth.events.v1` from every partition into `revocations` until cancelled."""

    def __init__(
        self,
        bootstrap_servers: str,
        codec: AvroCodec,
        revocations: Revocations,
        *,
        client_id: str,
        retention_s: float,
    ) -> None:
        self._codec = codec
        self._revocations = revocations
        self._retention_s = retention_s
        # a group id is required by the client, though none is joined (assign, no commits)
        self._config = consumer_config(
            bootstrap_servers,
            f"{client_id}.{uuid.uuid4()}",
            {"client.id": client_id, "enable.partition.eof": False},
        )
        self.applied = 0

    async def run(self) -> None:
        executor = ThreadPoolExecutor(1, thread_name_prefix="revocations")
        loop = asyncio.get_running_loop()
        consumer = Consumer(self._config)
        try:
            while True:
                try:
                    await loop.run_in_executor(executor, self._assign, consumer)
                    break
                except KafkaException as exc:  # the broker not there yet: try again
                    log.warning("revocations: cannot assign %s: %s", TOPIC, exc)
                    await asyncio.sleep(RETRY_PAUSE_S)
            while True:
                messages = await loop.run_in_executor(
                    executor, take_batch, consumer, BATCH_MAX, POLL_TIMEOUT_S
                )
                for message in messages:
                    error = message.error()
                    if error is None:
                        self._apply(message.value())
                    elif error.fatal():
                        raise KafkaException(error)  # the task ends: readiness fails
                    else:
                        log.warning("revocations: %s", error)
        finally:
            await asyncio.shield(loop.run_in_executor(executor, consumer.close))
            executor.shutdown(wait=False)

    def _assign(self, consumer: Consumer) -> None:
        metadata = consumer.list_topics(TOPIC, timeout=METADATA_TIMEOUT_S)
        topic = metadata.topics.get(TOPIC)
        if topic is None or topic.error is not None or not topic.partitions:
            raise KafkaException(f"no partitions of {TOPIC}")
        since_ms = int((time.time() - self._retention_s) * 1000)
        wanted = [TopicPartition(TOPIC, p, since_ms) for p in sorted(topic.partitions)]
        found = consumer.offsets_for_times(wanted, timeout=METADATA_TIMEOUT_S)
        consumer.assign([TopicPartition(TOPIC, tp.partition, _start(tp)) for tp in found])

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            record = self._codec.decode(value, TOPIC)
        except CodecError as exc:
            log.warning("revocations: undecodable %s event skipped: %s", TOPIC, exc)
            return
        if apply_event(self._revocations, record):
            self.applied += 1


def _start(found: TopicPartition) -> int:
    """Where to read a partition from, given the broker's offset for the retention start."""
    if found.error is not None:
        return int(OFFSET_BEGINNING)  # no time index: everything still on the partition
    if found.offset < 0:
        return int(OFFSET_END)  # nothing since then
    return int(found.offset)
