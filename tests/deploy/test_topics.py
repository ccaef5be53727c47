"""Every topic the services name is one the bootstrap creates (compose's init container, the
local stack and a real cluster all create `schemas/topics.toml`), with its dead-letter
topic, and every Avro contract travels on a declared topic."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tickertap.messaging.headers import dead_letter_topic

ROOT = Path(__file__).resolve().parents[2]
TOPICS_FILE = ROOT / "schemas" / "topics.toml"
TOPIC_LITERAL = re.compile(r"[\"']((?:auth|ledger|marketdata|portfolio)\.[a-z_.]+\.v[0-9]+)[\"']")
# schemas that are no topic's value: the dead-letter envelope describes DLQ headers
NOT_A_TOPIC = {"deadletter.envelope.v1"}


def declared() -> set[str]:
    return set(tomllib.loads(TOPICS_FILE.read_text())["topics"])


def named_in_code() -> set[str]:
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]
    return {m for path in sources for m in TOPIC_LITERAL.findall(path.read_text())}


def test_every_topic_the_code_names_is_created_with_its_dead_letter_topic() -> None:
    topics = declared()
    named = named_in_code()
    assert len(named) >= 7, named  # the pattern still finds the services' topics
    assert named - topics == set()
    # what the ingest worker, the ledger's and portfolio's consumers and the job workers read
    consumed = {"marketdata.ticks.v1", "marketdata.prices.v1", "ledger.transfers.v1"}
    consumed |= {"portfolio.jobs.v1"}
    assert {dead_letter_topic(t) for t in consumed} - topics == set()


def test_every_avro_contract_has_its_topic() -> None:
    schemas = {p.name.removesuffix(".avsc") for p in (ROOT / "schemas" / "avro").glob("*.avsc")}
    assert schemas - NOT_A_TOPIC - declared() == set()
