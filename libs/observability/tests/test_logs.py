from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest

from tickertap.observability import (
    REDACTED,
    JsonLogHandler,
    bind_correlation_id,
    configure_logging,
    redact,
)

log = logging.getLogger("tests.logs")


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def find(stream: io.StringIO, message: str) -> dict[str, Any]:
    found = [line for line in lines_of(stream) if line["message"] == message]
    assert len(found) == 1, stream.getvalue()
    return found[0]


def test_one_json_object_per_line_with_core_fields(logs: io.StringIO) -> None:
    with bind_correlation_id("req-42"):
        log.info("hello %s", "world", extra={"account_id": 7})
    log.warning("outside")

    hello, outside = lines_of(logs)
    assert hello["message"] == "hello world"
    assert hello["level"] == "INFO"
    assert hello["logger"] == "tests.logs"
    assert hello["service"] == "testsvc"
    assert hello["correlation_id"] == "req-42"
    assert hello["account_id"] == 7
    timestamp = dt.datetime.fromisoformat(hello["timestamp"])
    assert timestamp.utcoffset() == dt.timedelta(0)
    assert hello["timestamp"].endswith("Z")
    assert outside["correlation_id"] is None


def test_sensitive_extra_fields_are_redacted(logs: io.StringIO) -> None:
    log.info(
        "login",
        extra={
            "password": "hunter2",
            "user_email": "a@example.com",
            "Authorization": "Bearer abc",
            "refresh_token": "rt",
            "client_secret": "s",
            "set_cookie": "c",
            "user": {"id": 1, "EMAIL": "a@example.com", "tokens": ["t"]},
            "attempts": [{"password": "p", "ok": False}],
            "account_id": 9,
        },
    )
    line = find(logs, "login")
    for name in ("password", "user_email", "Authorization", "refresh_token", "client_secret"):
        assert line[name] == REDACTED
    assert line["set_cookie"] == REDACTED
    assert line["user"] == {"id": 1, "EMAIL": REDACTED, "tokens": REDACTED}
    assert line["attempts"] == [{"password": REDACTED, "ok": False}]
    assert line["account_id"] == 9
    text = logs.getvalue()
    for secret in ("hunter2", "a@example.com", "Bearer abc"):
        assert secret not in text


def test_redact_bounds_depth() -> None:
    nested: dict[str, object] = {"note": "hunter2"}
    for _ in range(20):
        nested = {"n": nested}
    text = repr(redact(nested))
    assert "hunter2" not in text
    assert "[too deep]" in text


def test_exceptions_decimals_and_clashing_names(logs: io.StringIO) -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        log.exception("failed", extra={"amount": Decimal("1.10"), "service": "spoofed"})
    line = find(logs, "failed")
    assert line["level"] == "ERROR"
    assert isinstance(line["exception"], str)
    assert "KeyError" in line["exception"]
    assert line["amount"] == "1.10"
    assert line["service"] == "testsvc"
    assert line["extra_service"] == "spoofed"


def test_explicit_correlation_id_wins(logs: io.StringIO) -> None:
    log.info("consumed", extra={"correlation_id": "from-header"})
    assert find(logs, "consumed")["correlation_id"] == "from-header"


def test_unserialisable_values_still_log(logs: io.StringIO) -> None:
    log.info("big", extra={"n": 2**80, "obj": object()})
    line = find(logs, "big")
    assert line["n"] == str(2**80)


def test_configure_replaces_its_own_handler_only(logs: io.StringIO) -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        stream = io.StringIO()
        configure_logging("again", "warning", stream=stream)
        assert len([h for h in root.handlers if isinstance(h, JsonLogHandler)]) == 1
        assert other in root.handlers
        assert root.level == logging.WARNING
        log.info("dropped")
        log.warning("kept")
        assert [line["message"] for line in lines_of(stream)] == ["kept"]
        assert lines_of(logs) == []
    finally:
        root.removeHandler(other)


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("svc", "LOUD")


def test_default_stream_is_stderr() -> None:
    code = (
        "import logging\n"
        "from tickertap.observability import configure_logging\n"
        "configure_logging('svc')\n"
        "logging.getLogger('x').info('to stderr')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout == ""
    assert '"message":"to stderr"' in result.stderr
    assert '"service":"svc"' in result.stderr


def test_import_has_no_side_effects() -> None:
    code = (
        "import logging, prometheus_client\n"
        "before = {c.__class__ for c in prometheus_client.REGISTRY._collector_to_names}\n"
        "import tickertap.observability\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "after = {c.__class__ for c in prometheus_client.REGISTRY._collector_to_names}\n"
        "assert before == after\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
