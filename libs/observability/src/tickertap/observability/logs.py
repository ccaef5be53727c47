"""JSON logs: one object per line, carrying the service name and the correlation id.

    configure_logging("ledger", "INFO")       # once, in the composition root
    log.info("transfer posted", extra={"transfer_id": str(t.id), "amount": t.amount})

Each line holds `timestamp` (ISO-8601, UTC), `level`, `logger`, `message`, `service`,
`correlation_id`, every `extra=` field, and `exception` / `stack` as strings when
present. Extra fields whose name contains a sensitive word (`SENSITIVE_NAME_PARTS`) are
replaced by `REDACTED`, also inside nested mappings; this is defense in depth, not a
licence to log secrets: the message text and objects rendered with `str()` are not
inspected. Decimals are written as strings, never floats.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

from tickertap.observability.correlation import get_correlation_id

REDACTED: Final = "[redacted]"
SENSITIVE_NAME_PARTS: Final = ("password", "secret", "token", "authorization", "cookie", "email")
REDACTION_DEPTH_MAX: Final = 8
"""Nested containers deeper than this are replaced whole by a placeholder."""

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE_FIELDS: Final = frozenset(
    {"timestamp", "level", "logger", "message", "service", "correlation_id", "exception", "stack"}
)
_DUMPS_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


def is_sensitive_name(name: str) -> bool:
    """True when a field called `name` must never reach a log line."""
    lowered = name.lower()
    return any(part in lowered for part in SENSITIVE_NAME_PARTS)


def redact(value: Any, depth: int = 0) -> Any:
    """`value` with every sensitive key of nested mappings (and sequences) redacted."""
    if isinstance(value, Mapping):
        if depth >= REDACTION_DEPTH_MAX:
            return "[too deep]"
        return {
            key: REDACTED if is_sensitive_name(str(key)) else redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        if depth >= REDACTION_DEPTH_MAX:
            return "[too deep]"
        return [redact(item, depth + 1) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    """Formats a LogRecord as one line of JSON (see the module docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            # An explicit extra={"correlation_id": ...} (a consumer outside any bound
            # context) wins over the context; otherwise the bound id, or null.
            "correlation_id": record.__dict__.get("correlation_id") or get_correlation_id(),
        }
        for name, value in record.__dict__.items():
            if name in _RECORD_ATTRIBUTES or name == "correlation_id":
                continue
            key = f"extra_{name}" if name in _CORE_FIELDS else name
            fields[key] = REDACTED if is_sensitive_name(name) else redact(value)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        try:
            line = orjson.dumps(fields, default=str, option=_DUMPS_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            # e.g. an int beyond 64 bits or a value whose __str__ raises: keep the line.
            line = orjson.dumps(
                {key: _safe_repr(value) for key, value in fields.items()}, option=_DUMPS_OPTIONS
            )
        return line.decode("utf-8")


def _safe_repr(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | float):
        return value
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


class JsonLogHandler(logging.StreamHandler[IO[str]]):
    """The root handler `configure_logging` installs (a distinct type so it can be replaced)."""


def configure_logging(service: str, level: str = "INFO", *, stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (stderr by default) as JSON lines.

    Replaces a handler installed by an earlier call and leaves other handlers alone
    (pytest's capture handlers, for instance). Run uvicorn with `log_config=None` so
    its loggers propagate here instead of printing plain text. Raises ValueError for
    an unknown level name.
    """
    assert service, "service name is required"
    levels = logging.getLevelNamesMapping()
    level_name = level.upper()
    if level_name not in levels:
        raise ValueError(f"unknown log level {level!r}")
    handler = JsonLogHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, JsonLogHandler)]:
        root.removeHandler(existing)
        existing.close()
    root.addHandler(handler)
    root.setLevel(levels[level_name])
