"""Avro codec, transactional outbox and relay, inbox consumer loop with dead-lettering, over confluent-kafka."""
