"""`tickertap-feed`: the token bucket and the replay parser (no I/O), then publishing to the
real broker of the local stack and reading the ticks back with the project's codec."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feed_testkit import fresh_topic, read_topic

from tickertap.marketdata.feed import default_symbols, simulate
from tickertap.marketdata.feed_cli import (
    FeedOptions,
    ReplayError,
    TokenBucket,
    parse_options,
    read_replay,
    run_feed,
)
from tickertap.messaging import AvroCodec, find_schemas_dir, load_schemas

START_US = 1_790_000_000_000_000
CLI_TIMEOUT_S = 60
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

GOOD_CSV = """symbol,price,size,exchange_ts,bid,ask,venue
AAPL,189.84,100,2026-11-26T10:15:00.123456Z,189.83,189.85,XNAS
MSFT,415.26,3.5,1795687200000000,,,
AAPL,189.86,0,2026-11-26T10:15:01+01:00,,,XNYS
"""


@pytest.fixture(scope="module")
def codec():
    return AvroCodec(load_schemas(find_schemas_dir()))


def micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_keeps_the_rate_and_bounds_bursts():
    clock = FakeClock()  # steps that are exact in binary, so the counts are exact
    bucket = TokenBucket(8, burst=4, clock=clock)
    assert bucket.take(50) == 1  # starts with one token
    assert bucket.take(50) == 0
    assert bucket.wait_s() == 0.125
    clock.now += 0.25
    assert bucket.take(50) == 2
    clock.now += 60  # a long pause earns no more than the burst
    assert bucket.take(50) == 4
    granted = 0
    for _ in range(100):
        clock.now += 0.125
        granted += bucket.take(50)
    assert granted == 100
    clock.now += 1
    assert bucket.take(3) == 3  # never more than asked


def test_replay_reads_decimals_timestamps_and_counts_sequences(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(GOOD_CSV)
    ticks = list(read_replay(path, "replay-1"))
    assert [t["symbol"] for t in ticks] == ["AAPL", "MSFT", "AAPL"]
    assert ticks[0]["price"] == Decimal("189.84")
    assert isinstance(ticks[1]["size"], Decimal)
    assert ticks[1]["size"] == Decimal("3.5")
    assert ticks[0]["bid"] == Decimal("189.83")
    assert ticks[1]["bid"] is None
    assert ticks[1]["venue"] == "XNAS"  # the default
    assert ticks[2]["venue"] == "XNYS"
    assert ticks[0]["exchange_ts"] == 1_795_688_100_123_456
    assert ticks[1]["exchange_ts"] == 1_795_687_200_000_000
    assert ticks[2]["exchange_ts"] == 1_795_684_501_000_000  # +01:00 taken into account
    assert [t["source_seq"] for t in ticks] == [1, 2, 3]
    assert {t["source_id"] for t in ticks} == {"replay-1"}
    assert len({t["event_id"] for t in ticks}) == 3
    assert list(read_replay(path, "replay-1")) == ticks  # deterministic ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("symbol,price,size\nAAPL,1,1\n", "lacks the columns exchange_ts"),
        ("symbol,price,size,exchange_ts,colour\n", "unknown columns colour"),
        ("symbol,price,size,exchange_ts\nAAPL,1e3,1,1\n", ":2: price"),
        ("symbol,price,size,exchange_ts\nAAPL,1.0,1,1\nAAPL,NaN,1,1\n", ":3: price"),
        ("symbol,price,size,exchange_ts\nAAPL,1,-1,1\n", "size: -1 is negative"),
        ("symbol,price,size,exchange_ts\nAAPL,1,1,2026-11-26T10:00:00\n", "needs an offset"),
        ("symbol,price,size,exchange_ts\nAAPL,1,1,yesterday\n", "exchange_ts"),
        ("symbol,price,size,exchange_ts\nAAPL,1,1\n", "one value per column"),
        ("symbol,price,size,exchange_ts\n,1,1,1\n", "symbol: empty"),
        ("symbol,price,size,exchange_ts,event_id\nA,1,1,1,nope\n", "not a UUID"),
        ("symbol,price,size,exchange_ts,source_seq\nA,1,1,1,-3\n", "source_seq"),
    ],
)
def test_replay_refuses_bad_files_saying_where(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ReplayError, match=message):
        list(read_replay(path, "replay-1"))


def test_options_default_to_a_fresh_source_and_a_bounded_run():
    a, b = parse_options([]), parse_options([])
    assert a.source_id != b.source_id
    assert a.count is None
    assert a.duration_s is None  # run_feed then stops after DURATION_S_DEFAULT
    with pytest.raises(SystemExit):
        parse_options(["--rate", "-1"])
    with pytest.raises(SystemExit):
        parse_options(["--bad-ratio", "2"])


@pytest.mark.stack
def test_simulated_ticks_reach_the_broker_keyed_by_symbol(stack, codec):
    topic = fresh_topic(stack.kafka_bootstrap)
    options = FeedOptions(
        bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        symbols=12,
        rate_per_s=0,
        count=600,
        seed=5,
        bad_ratio=Decimal("0.05"),
        source_id="it-sim",
        timestamps="source",
        start_us=START_US,
    )
    out = io.StringIO()
    progress = run_feed(options, stream=out)
    assert (progress.sent, progress.delivered, progress.errors) == (600, 600, 0)
    assert "delivered 600" in out.getvalue()

    messages = read_topic(stack.kafka_bootstrap, topic, 600)
    assert len(messages) == 600
    decoded = []
    for message in messages:
        value = message.value()
        assert value[:2] == b"\xc3\x01"  # single-object encoding
        tick = codec.decode(value, "marketdata.ticks.v1")
        assert message.key() == tick["symbol"].encode()
        decoded.append(tick)
    decoded.sort(key=lambda t: t["source_seq"])
    expected = list(
        simulate(
            default_symbols(12),
            seed=5,
            source_id="it-sim",
            start_us=START_US,
            step_us=1000,  # the unpaced step
            count=600,
            bad_ratio=Decimal("0.05"),
        )
    )
    assert [str(t["event_id"]) for t in decoded] == [t["event_id"] for t in expected]
    assert [t["price"] for t in decoded] == [t["price"] for t in expected]
    assert [t["bid"] for t in decoded] == [t["bid"] for t in expected]
    assert [micros(t["exchange_ts"]) for t in decoded] == [t["exchange_ts"] for t in expected]
    # one symbol's ticks share a partition, in sequence order
    by_symbol: dict[str, set[int]] = {}
    for message in messages:
        by_symbol.setdefault(message.key().decode(), set()).add(message.partition())
    assert all(len(partitions) == 1 for partitions in by_symbol.values())


@pytest.mark.stack
def test_the_command_replays_a_csv_and_refuses_a_bad_one_sending_nothing(stack, codec, tmp_path):
    topic = fresh_topic(stack.kafka_bootstrap, partitions=2)
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    command = [sys.executable, "-m", "tickertap.marketdata.feed"]
    common = ["--bootstrap-servers", stack.kafka_bootstrap, "--topic", topic]
    done = subprocess.run(
        [*command, *common, "--replay", str(good), "--rate", "0", "--timestamps", "source"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "delivered 3" in done.stderr
    ticks = [codec.decode(m.value()) for m in read_topic(stack.kafka_bootstrap, topic, 3)]
    assert sorted(str(t["price"]) for t in ticks) == [
        "189.840000000000000000",
        "189.860000000000000000",
        "415.260000000000000000",
    ]

    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD_CSV + "AAPL,12..5,1,1,,,\n")
    done = subprocess.run(
        [*command, *common, "--replay", str(bad)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}:5: price" in done.stderr
    assert len(read_topic(stack.kafka_bootstrap, topic, 4, timeout_s=3)) == 3


@pytest.mark.stack
def test_a_paced_run_stops_at_its_duration_and_stamps_wall_time(stack, codec):
    topic = fresh_topic(stack.kafka_bootstrap, partitions=1)
    options = FeedOptions(
        bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        rate_per_s=40,
        duration_s=1.0,
        source_id="it-paced",
    )
    progress = run_feed(options, stream=io.StringIO())
    assert progress.errors == 0
    assert 0 < progress.delivered == progress.sent
    ticks = [
        codec.decode(m.value())
        for m in read_topic(stack.kafka_bootstrap, topic, progress.sent, timeout_s=10)
    ]
    assert len(ticks) == progress.sent
    for tick in ticks:
        assert tick["occurred_at"] == tick["exchange_ts"]  # wall time, no bad ticks asked
    assert [t["source_seq"] for t in ticks] == list(range(1, len(ticks) + 1))
