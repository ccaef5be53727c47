"""The downstream consumers' example (examples/portfolio_updates_consumer.py) reads what the
service publishes, with confluent-kafka, fastavro and the schema file alone."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer
from portfolio_testkit import (
    PRICES,
    TRANSFERS,
    Book,
    UpdatesReader,
    new_symbol,
    price_record,
    publish,
)

from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "portfolio_updates_consumer.py"
RUN_TIMEOUT_S = 60


def test_the_example_imports_nothing_of_tickertap() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = {m.split(".")[0] for m in modules if m} - set(sys.stdlib_module_names)
    assert third_party == {"confluent_kafka", "fastavro"}


@pytest.mark.stack
async def test_the_example_prints_the_portfolio_s_latest_state(stack) -> None:
    codec = AvroCodec(load_schemas(find_schemas_dir()))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    book, symbol = Book(), new_symbol()
    records = [book.deposit("500.00"), book.trade(symbol, "buy", "4", "25.00", "0.10")]
    for record in records:
        await publish(producer, codec, TRANSFERS, record["transfer_id"], record)
    await publish(producer, codec, PRICES, symbol, price_record(symbol, "26.00", book._at(), 9))

    reader = UpdatesReader(stack.kafka_bootstrap, codec)
    try:
        await reader.until(
            book.owner,
            lambda u: bool(u["positions"]) and u["positions"][0]["price"] is not None,
            "the priced update",
        )
    finally:
        reader.close()

    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--from-beginning",
            "--exit-at-end",
            "--portfolio",
            book.owner,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines, done.stderr
    last = lines[-1]
    assert last["portfolio_id"] == book.owner
    (position,) = last["positions"]
    assert position["symbol"] == symbol
    assert position["quantity"] == "4"
    assert position["cost_basis"] == "100.1"  # 4 x 25.00 + 0.10
    assert position["market_value"] == "104"
    assert position["price_source_offset"] == 9
    assert last["cash"] == [{"asset": "USD", "amount": "399.9"}]
    assert last["totals"]["total_value"] == "503.9"
