"""Kafka header names, the correlation id context variable and topic naming rules.

Every event the relay publishes carries three headers, stored with it in the outbox:

    x-event-id        the event's UUID (also inside the Avro record)
    x-schema          the writer schema's name, e.g. `ledger.transfers.v1`
    x-correlation-id  the request or job that caused the event, carried from
                      an HTTP request through every event it leads to

A dead-lettered message keeps its key, value and headers unchanged and gains the
`x-dlq-*` headers below. Header values are UTF-8 text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from tickertap.observability.correlation import correlation_id as correlation_id_var
from tickertap.observability.correlation import is_valid_correlation_id

__all__ = [
    "CORRELATION_ID",
    "DLQ_CONSUMER_GROUP",
    "DLQ_DETAIL",
    "DLQ_DETAIL_CHARS_MAX",
    "DLQ_HEADERS",
    "DLQ_REASON",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TOPIC",
    "EVENT_ID",
    "SCHEMA",
    "correlation_id_var",
    "dead_letter_topic",
    "decode_headers",
    "encode_headers",
    "header",
    "inbound_correlation_id",
]

EVENT_ID = "x-event-id"
SCHEMA = "x-schema"
CORRELATION_ID = "x-correlation-id"

DLQ_REASON = "x-dlq-reason"
DLQ_DETAIL = "x-dlq-detail"
DLQ_SOURCE_TOPIC = "x-dlq-source-topic"
DLQ_SOURCE_PARTITION = "x-dlq-source-partition"
DLQ_SOURCE_OFFSET = "x-dlq-source-offset"
DLQ_CONSUMER_GROUP = "x-dlq-consumer-group"
DLQ_HEADERS = frozenset(
    {
        DLQ_REASON,
        DLQ_DETAIL,
        DLQ_SOURCE_TOPIC,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_OFFSET,
        DLQ_CONSUMER_GROUP,
    }
)
DLQ_DETAIL_CHARS_MAX = 1000

# `correlation_id_var` is tickertap.observability's context variable: HTTP middleware sets
# it for a request and the consumer loop for each message; `add_to_outbox` stores it with
# every event it adds, so it travels on; the JSON log formatter reads it.

_TOPIC = re.compile(r"^(?P<base>[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)*)\.v(?P<version>[1-9][0-9]*)$")


def dead_letter_topic(topic: str) -> str:
    """`<domain>.<name>.v<N>` -> `<domain>.<name>.dlq.v<N>`; ValueError for another shape."""
    match = _TOPIC.match(topic)
    if match is None or match["base"].endswith(".dlq") or "." not in match["base"]:
        raise ValueError(f"topic {topic!r} is not named <domain>.<name>.v<N>")
    return f"{match['base']}.dlq.v{match['version']}"


def encode_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Text headers as the (key, UTF-8 bytes) pairs confluent-kafka produces."""
    return [(key, value.encode()) for key, value in headers.items()]


def decode_headers(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> dict[str, str]:
    """Headers of a consumed message as text; for a repeated key the last value wins.

    A value that is not UTF-8 is decoded with replacement characters: headers are
    metadata, never a reason to refuse a message.
    """
    if headers is None:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, str] = {}
    for key, value in pairs:
        if value is None:
            result[key] = ""
        elif isinstance(value, bytes):
            result[key] = value.decode("utf-8", errors="replace")
        else:
            result[key] = value
    return result


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header `name`, matched without regard to case (HTTP habits leak in:
    `X-Correlation-ID` and `x-correlation-id` are the same header here)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def inbound_correlation_id(headers: Mapping[str, str]) -> str | None:
    """The message's correlation id when present and well-formed, else None: header values
    come from outside and are never trusted as they are."""
    value = header(headers, CORRELATION_ID)
    return value if value is not None and is_valid_correlation_id(value) else None
