"""Events between tickerTap services: Avro codec, transactional outbox, relay, inbox consumer.

- `AvroCodec` writes Avro single-object encoding (or Confluent framing with a
  registry) and reads both; schemas come from `schemas/avro/`.
- `add_event` writes an event into the service's outbox in the caller's
  transaction; `OutboxRelay` publishes the outbox in order and marks rows sent.
- `InboxConsumer` applies each event in one transaction with its inbox claim,
  commits offsets afterwards, and dead-letters what cannot be decoded or fails
  validation (`InvalidEvent`) to `<domain>.<name>.dlq.v<N>` with `x-dlq-*` headers.
"""

from tickertap.messaging.codec import AvroCodec, CodecError, DecodeError, EncodeError
from tickertap.messaging.consumer import (
    ConsumedEvent,
    InboxConsumer,
    InvalidEvent,
    avro_decoder,
    inbox_table,
    purge_inbox,
)
from tickertap.messaging.headers import dead_letter_topic
from tickertap.messaging.outbox import (
    EncodedEvents,
    OutboxEvent,
    add_event,
    add_events,
    add_events_driver,
    add_to_outbox,
    create_statements,
    encode_events,
    insert_events_driver,
    notify_sql,
    outbox_ctes,
    outbox_params,
    outbox_table,
)
from tickertap.messaging.relay import OutboxRelay, outbox_backlog, replay
from tickertap.messaging.schemas import SchemaSet, find_schemas_dir, load_schemas

__all__ = [
    "AvroCodec",
    "CodecError",
    "ConsumedEvent",
    "DecodeError",
    "EncodeError",
    "EncodedEvents",
    "InboxConsumer",
    "InvalidEvent",
    "OutboxEvent",
    "OutboxRelay",
    "SchemaSet",
    "add_event",
    "add_events",
    "add_events_driver",
    "add_to_outbox",
    "avro_decoder",
    "create_statements",
    "dead_letter_topic",
    "encode_events",
    "find_schemas_dir",
    "inbox_table",
    "insert_events_driver",
    "load_schemas",
    "notify_sql",
    "outbox_backlog",
    "outbox_ctes",
    "outbox_params",
    "outbox_table",
    "purge_inbox",
    "replay",
]
