"""JSON logs with correlation ids, Prometheus metrics, health and readiness router.

    from tickertap.observability import (
        Metrics, ObservabilityMiddleware, configure_logging, health_router,
    )

    def create_app(settings: LedgerSettings) -> FastAPI:
        configure_logging("ledger", settings.log_level)
        metrics = Metrics("ledger")
        app = FastAPI(lifespan=...)
        app.add_middleware(ObservabilityMiddleware, metrics=metrics)
        app.include_router(health_router({"postgres": ping_postgres}, metrics))
        return app

A consumer binds the id it got from the message headers for the handling of that message:

    with bind_correlation_id(coerce_correlation_id(header_value)):
        ...

Nothing happens at import: no handler, no registry, no collector until called.
"""

from tickertap.observability.correlation import (
    CORRELATION_ID_HEADER,
    CORRELATION_ID_LENGTH_MAX,
    bind_correlation_id,
    coerce_correlation_id,
    correlation_id,
    get_correlation_id,
    is_valid_correlation_id,
    new_correlation_id,
)
from tickertap.observability.health import READINESS_TIMEOUT_S, HealthCheck, health_router
from tickertap.observability.logs import (
    REDACTED,
    SENSITIVE_NAME_PARTS,
    JsonFormatter,
    JsonLogHandler,
    configure_logging,
    is_sensitive_name,
    redact,
)
from tickertap.observability.metrics import LATENCY_BUCKETS_S, ConsumerOutcome, Metrics
from tickertap.observability.middleware import (
    ROUTE_OTHER,
    ROUTE_UNMATCHED,
    ObservabilityMiddleware,
)

__all__ = [
    "CORRELATION_ID_HEADER",
    "CORRELATION_ID_LENGTH_MAX",
    "LATENCY_BUCKETS_S",
    "READINESS_TIMEOUT_S",
    "REDACTED",
    "ROUTE_OTHER",
    "ROUTE_UNMATCHED",
    "SENSITIVE_NAME_PARTS",
    "ConsumerOutcome",
    "HealthCheck",
    "JsonFormatter",
    "JsonLogHandler",
    "Metrics",
    "ObservabilityMiddleware",
    "bind_correlation_id",
    "coerce_correlation_id",
    "configure_logging",
    "correlation_id",
    "get_correlation_id",
    "health_router",
    "is_sensitive_name",
    "is_valid_correlation_id",
    "new_correlation_id",
    "redact",
]
