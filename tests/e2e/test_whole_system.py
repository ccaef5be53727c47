"""The whole system, end to end, against the real stack's processes (issue 6).

One customer's story over HTTP and Kafka only: register at auth with TOTP MFA, log in
with the second factor; operations list two instruments (market-data) and their shares
(ledger) and deposit cash; the feed simulator publishes ticks; the customer buys both
symbols at market through the ledger; a separate downstream consumer, built like
`examples/portfolio_updates_consumer.py` from confluent-kafka, fastavro and the schema
file only (no tickertap import), reads `portfolio.updates.v1`, and every figure of the
update is checked against values computed here from the ledger's trade responses and the
price the update carries; a partial sale shows its realized P&L (FIFO and average); both
reconciliations pass.

Why independent figures: the portfolio service and the ledger share no code for P&L, so
agreeing to the cent with arithmetic written here is evidence the events carry what the
contract says, not that one module agrees with itself.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pyotp
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
FEED = [sys.executable, "-m", "tickertap.marketdata.feed"]
UPDATES_SCHEMA_FILE = ROOT / "schemas" / "avro" / "portfolio.updates.v1.avsc"
UPDATES_TOPIC = "portfolio.updates.v1"

SYMBOLS = ("AAPL", "MSFT")  # the feed simulator's first two symbols (`--symbols 2`)
BUY_QUANTITY = {"AAPL": Decimal(5), "MSFT": Decimal(3)}
SELL_SYMBOL, SELL_QUANTITY = "AAPL", Decimal(2)
DEPOSIT_USD = Decimal("10000.00")
CENT = Decimal("0.01")

FEED_RATE_PER_S = 10  # enough for prices to move every few hundred ms, light on 2 cores
FEED_DURATION_S = 75  # bounds the simulator even if the test dies without stopping it
HTTP_TIMEOUT_S = 10.0
PRICE_WAIT_S = 30.0  # until the ledger has a fresh price (409 no_price before)
UPDATE_WAIT_S = 30.0  # until portfolio.updates.v1 carries the expected state
POLL_INTERVAL_S = 0.2
COMMAND_TIMEOUT_S = 60.0


# -- the downstream consumer: confluent-kafka + fastavro + the schema file, nothing else ----


def crc64_avro(data: bytes) -> int:
    """The Avro specification's 64-bit Rabin fingerprint (as the example consumer)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


class UpdatesReader:
    """Reads one portfolio's updates from the current end of the topic onwards.

    Assigned (no consumer group) at each partition's high watermark taken before the
    portfolio's first transfer, so every update of this fresh portfolio is seen.
    """

    def __init__(self, bootstrap: str, portfolio_id: str) -> None:
        schema = json.loads(UPDATES_SCHEMA_FILE.read_text(encoding="utf-8"))
        self._parsed = fastavro.parse_schema(schema)
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        self._header = b"\xc3\x01" + struct.pack("<Q", crc64_avro(canonical.encode()))
        self._key = portfolio_id.encode()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"e2e-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        topic = self._consumer.list_topics(UPDATES_TOPIC, timeout=10).topics[UPDATES_TOPIC]
        assert topic.error is None, topic.error
        assignment = []
        for partition in sorted(topic.partitions):
            tp = TopicPartition(UPDATES_TOPIC, partition)
            _, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            assignment.append(TopicPartition(UPDATES_TOPIC, partition, high))
        self._consumer.assign(assignment)
        self.seen: list[dict[str, Any]] = []
        self._event_ids: set[str] = set()

    def decode(self, data: bytes) -> dict[str, Any]:
        assert data[:10] == self._header, "an update not written with the schema file's schema"
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), self._parsed, None)
        assert isinstance(record, dict)
        return record

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first new update of the portfolio that `wanted` accepts, within UPDATE_WAIT_S."""
        deadline = time.monotonic() + UPDATE_WAIT_S
        while time.monotonic() < deadline:
            for message in self._consumer.consume(100, 0.5):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    continue
                if message.key() != self._key:
                    continue
                update = self.decode(message.value() or b"")
                if str(update["event_id"]) in self._event_ids:
                    continue  # at-least-once delivery: deduplicate on event_id
                self._event_ids.add(str(update["event_id"]))
                self.seen.append(update)
                if wanted(update):
                    return update
        last = self.seen[-1] if self.seen else None
        raise AssertionError(f"no update with {what} in {UPDATE_WAIT_S} s; last: {last}")

    def close(self) -> None:
        self._consumer.close()


# -- figures computed here, from the ledger's trade responses and the update's price ------


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def position(update: dict[str, Any], symbol: str) -> dict[str, Any]:
    return next(p for p in update["positions"] if p["symbol"] == symbol)


def cash(update: dict[str, Any], asset: str) -> Decimal:
    return next((c["amount"] for c in update["cash"] if c["asset"] == asset), Decimal(0))


def holds(update: dict[str, Any], quantities: dict[str, Decimal], usd: Decimal) -> bool:
    held = {p["symbol"]: p["quantity"] for p in update["positions"]}
    if held != quantities or cash(update, "USD") != usd:
        return False
    return all(position(update, s)["price"] is not None for s in quantities)


# -- the story ------------------------------------------------------------------------------


@pytest.fixture
def feed(stack: Any, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts the feed simulator on the stack's broker; stopped (by its handle) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "feed.log").open("wb")

    def start() -> subprocess.Popen[bytes]:
        args = [
            *FEED,
            f"--bootstrap-servers={stack.kafka_bootstrap}",
            f"--symbols={len(SYMBOLS)}",
            f"--rate={FEED_RATE_PER_S}",
            f"--duration-s={FEED_DURATION_S}",
            f"--seed={time.time_ns() % 1_000_000}",
            "--quiet",
        ]
        process = subprocess.Popen(args, stdout=log, stderr=log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=15)
    log.close()


def stack_exec(
    service: str, secret_id_file: Path, argv: list[str], extra_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`stack.py exec SERVICE -- env TICKERTAP_VAULT_SECRET_ID_FILE=... ARGV`.

    The secret_id file is a fresh one: tests that rerun the bootstrap in the same session
    (test_external_servers.py) destroy the secret_ids the stack's files hold, and exec
    passes no TICKERTAP_* variable of ours through, so `env` sets it inside.
    """
    command = [*STACK, "exec", service, "--", "env"]
    command += [f"TICKERTAP_VAULT_SECRET_ID_FILE={secret_id_file}", *argv]
    return subprocess.run(
        command,
        env={**os.environ, **extra_env},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


@pytest.mark.slow
def test_a_customer_trades_and_a_downstream_consumer_sees_exact_pnl(
    stack: Any,
    mint_token: Any,
    approle_secret_id: Any,
    feed: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    auth_url = stack.service_url("auth")
    ledger_url = stack.service_url("ledger")
    market_url = stack.service_url("market-data-ingest")
    http = httpx.Client(timeout=HTTP_TIMEOUT_S)
    request.addfinalizer(http.close)

    # 1. register, log in, enroll TOTP, confirm, log out, log in again with the second factor
    email = f"e2e-{uuid.uuid4().hex[:12]}@example.com"
    password = f"correct horse {uuid.uuid4().hex}"
    registered = http.post(f"{auth_url}/v1/users", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.text
    customer_id = registered.json()["id"]
    login = {"grant_type": "password", "username": email, "password": password}
    first = http.post(f"{auth_url}/oauth/token", data=login)
    assert first.status_code == 200, first.text
    bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
    enrolled = http.post(f"{auth_url}/v1/users/me/mfa/totp", headers=bearer)
    assert enrolled.status_code == 201, enrolled.text
    totp = pyotp.parse_uri(enrolled.json()["otpauth_uri"])  # an independent RFC 6238 code
    assert isinstance(totp, pyotp.TOTP)
    assert totp.secret == enrolled.json()["secret"]
    now = time.time()
    confirmed = http.post(
        f"{auth_url}/v1/users/me/mfa/totp/confirm", headers=bearer, json={"code": totp.at(now)}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert len(confirmed.json()["recovery_codes"]) == 10
    logged_out = http.post(f"{auth_url}/v1/logout", headers=bearer)
    assert logged_out.status_code == 204, logged_out.text
    assert http.get(f"{auth_url}/v1/users/me", headers=bearer).status_code == 401

    challenged = http.post(f"{auth_url}/oauth/token", data=login)
    assert challenged.status_code == 403, challenged.text
    assert challenged.json()["error"] == "mfa_required", challenged.text
    # the confirmation used this time step; a code is good once, so take the next step's
    # (inside the server's ±1 step window) rather than wait up to 30 s
    second = http.post(
        f"{auth_url}/oauth/token",
        data={
            "grant_type": "urn:tickertap:params:oauth:grant-type:mfa-otp",
            "mfa_token": challenged.json()["mfa_token"],
            "otp": totp.at(now + 30),
        },
    )
    assert second.status_code == 200, second.text
    me = {"Authorization": f"Bearer {second.json()['access_token']}"}
    profile = http.get(f"{auth_url}/v1/users/me", headers=me)
    assert profile.status_code == 200, profile.text
    assert profile.json()["mfa_enabled"] is True

    # 2. operations list the instruments and shares; the customer opens a USD account
    admin = {"Authorization": f"Bearer {mint_token('e2e-admin', roles=('admin',))}"}
    # a UUID subject: the ledger answers 403 to `GET /v1/accounts?owner=` for a token whose
    # subject is not a UUID, even with the ops role (reported, not fixed here)
    ops = mint_token(str(uuid.uuid4()), roles=("ops",))
    ops_auth = {"Authorization": f"Bearer {ops}"}
    for symbol in SYMBOLS:
        listed = http.post(
            f"{market_url}/v1/instruments",
            headers=admin,
            json={"symbol": symbol, "currency": "USD", "price_scale": 2},
        )
        assert listed.status_code in (200, 201), listed.text
        share = {"code": symbol, "scale": 0, "kind": "share", "quote_currency": "USD"}
        created = http.post(f"{ledger_url}/v1/assets", headers=ops_auth, json=share)
        assert created.status_code in (200, 201, 409), created.text
    assets = {a["code"]: a for a in http.get(f"{ledger_url}/v1/assets", headers=me).json()}
    for symbol in SYMBOLS:  # whoever listed it first, it is the share the test trades
        assert assets[symbol]["kind"] == "share", assets[symbol]
        assert assets[symbol]["scale"] == 0, assets[symbol]

    reader = UpdatesReader(stack.kafka_bootstrap, customer_id)  # before the first transfer
    try:
        account = http.post(f"{ledger_url}/v1/accounts", headers=me, json={"asset": "USD"})
        assert account.status_code == 201, account.text
        account_id = account.json()["id"]
        deposit = http.post(
            f"{ledger_url}/v1/deposits",
            headers=ops_auth,
            json={
                "transfer_id": str(uuid.uuid4()),
                "account_id": account_id,
                "amount": str(DEPOSIT_USD),
            },
        )
        assert deposit.status_code == 201, deposit.text

        # 3. the feed simulator: ticks -> ingest -> marketdata.prices.v1 -> ledger, portfolio
        simulator = feed()

        # 4. buy both at market; 409 no_price until the ledger has seen a fresh price
        def trade(symbol: str, side: str, quantity: Decimal) -> dict[str, Any]:
            body = {
                "trade_id": str(uuid.uuid4()),
                "symbol": symbol,
                "side": side,
                "quantity": str(quantity),
            }
            deadline = time.monotonic() + PRICE_WAIT_S
            while True:
                answer = http.post(f"{ledger_url}/v1/trades", headers=me, json=body)
                if answer.status_code != 409 or time.monotonic() > deadline:
                    break
                assert answer.json()["code"] == "no_price", answer.text
                assert simulator.poll() is None, "the feed simulator stopped early"
                time.sleep(POLL_INTERVAL_S)
            assert answer.status_code == 201, answer.text
            executed = answer.json()["trade"]
            assert executed["symbol"] == symbol, executed
            assert executed["side"] == side, executed
            assert Decimal(executed["quantity"]) == quantity, executed
            assert executed["currency"] == "USD", executed
            assert Decimal(executed["notional"]) == cents(quantity * Decimal(executed["price"]))
            return {k: Decimal(executed[k]) for k in ("price", "notional", "fee")}

        bought = {symbol: trade(symbol, "buy", BUY_QUANTITY[symbol]) for symbol in SYMBOLS}
        cost = {s: bought[s]["notional"] + bought[s]["fee"] for s in SYMBOLS}  # fees included
        usd = DEPOSIT_USD - sum(cost.values(), Decimal(0))

        # 5. the downstream consumer sees positions, cash and P&L, prices having moved
        def after_buys(update: dict[str, Any]) -> bool:
            if not holds(update, BUY_QUANTITY, usd):
                return False
            return bool(position(update, "AAPL")["price"] != bought["AAPL"]["price"])

        update = reader.wait_for(after_buys, "both positions, the cash left and a moved price")
        assert str(update["portfolio_id"]) == customer_id
        assert str(update["owner_id"]) == customer_id
        assert update["base_currency"] == "USD"
        market_total = Decimal(0)
        for symbol in SYMBOLS:
            held = position(update, symbol)
            price = held["price"]
            market_value = cents(BUY_QUANTITY[symbol] * price)
            assert held["currency"] == "USD"
            assert held["cost_basis"] == cost[symbol], (symbol, held)
            assert held["cost_basis_average"] == cost[symbol], (symbol, held)
            assert held["market_value"] == market_value, (symbol, held)
            assert held["unrealized_pnl"] == market_value - cost[symbol], (symbol, held)
            assert held["unrealized_pnl_average"] == market_value - cost[symbol], (symbol, held)
            assert held["realized_pnl"] == 0, held
            assert held["realized_pnl_average"] == 0, held
            assert held["price_source_topic"] == "marketdata.ticks.v1", held
            market_total += market_value
        totals = update["totals"]
        assert totals["market_value"] == market_total, totals
        assert totals["cost_basis"] == sum(cost.values(), Decimal(0)), totals
        assert totals["unrealized_pnl"] == market_total - sum(cost.values(), Decimal(0))
        assert totals["realized_pnl"] == 0, totals
        assert totals["cash_value"] == usd, totals
        assert totals["total_value"] == market_total + usd, totals

        # 6. sell part of one position: realized P&L by FIFO and average cost
        sold = trade(SELL_SYMBOL, "sell", SELL_QUANTITY)
        usd += sold["notional"] - sold["fee"]
        left = dict(BUY_QUANTITY)
        left[SELL_SYMBOL] -= SELL_QUANTITY
        # one lot: FIFO and the average pool take the same share of its cost, half-even
        cost_taken = cents(cost[SELL_SYMBOL] * SELL_QUANTITY / BUY_QUANTITY[SELL_SYMBOL])
        realized = sold["notional"] - sold["fee"] - cost_taken
        after_sale = reader.wait_for(lambda u: holds(u, left, usd), "the sale applied")
        held = position(after_sale, SELL_SYMBOL)
        assert held["realized_pnl"] == realized, (realized, held)
        assert held["realized_pnl_average"] == realized, (realized, held)
        assert held["cost_basis"] == cost[SELL_SYMBOL] - cost_taken, held
        assert held["cost_basis_average"] == cost[SELL_SYMBOL] - cost_taken, held
        market_value = cents(left[SELL_SYMBOL] * held["price"])
        assert held["market_value"] == market_value, held
        assert held["unrealized_pnl"] == market_value - (cost[SELL_SYMBOL] - cost_taken), held
        assert after_sale["totals"]["realized_pnl"] == realized, after_sale["totals"]
        untouched = position(after_sale, "MSFT")
        assert untouched["cost_basis"] == cost["MSFT"], untouched
        assert untouched["realized_pnl"] == 0, untouched
    finally:
        reader.close()

    # 7. reconciliation: the portfolio against the ledger's API, the ledger against itself
    portfolio_secret = tmp_path / "portfolio.secret_id"
    portfolio_secret.write_text(approle_secret_id("portfolio"))
    portfolio_secret.chmod(0o600)
    reconciled = stack_exec(
        "portfolio-calculation",
        portfolio_secret,
        [
            "python",
            "-m",
            "tickertap.portfolio.reconcile",
            f"--ledger-url={ledger_url}",
            f"--portfolio={customer_id}",
        ],
        {"RECONCILE_LEDGER_TOKEN": ops},
    )
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr

    ledger_secret = tmp_path / "ledger.secret_id"
    ledger_secret.write_text(approle_secret_id("ledger"))
    ledger_secret.chmod(0o600)
    checked = stack_exec(
        "ledger", ledger_secret, ["python", "-m", "tickertap.ledger.reconcile"], {}
    )
    # exit 0 is clean; other tests of the session may leave deliberate drift elsewhere, so
    # on exit 1 none of it may concern this customer's accounts
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr
    if checked.returncode == 1:
        assert account_id not in checked.stdout, checked.stdout
        assert customer_id not in checked.stdout, checked.stdout
