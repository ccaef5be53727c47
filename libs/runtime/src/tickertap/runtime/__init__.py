"""What every tickerTap service is built on.

`create_service_app(definition, settings)` gives a FastAPI app whose lifespan
logs in to Vault, keeps rotating database credentials, migrates the service's
schema and starts its background workers; `/healthz`, `/readyz` and `/metrics`,
problem-details errors and a request-body bound come with it.
"""

from tickertap.runtime.app import (
    ServiceDefinition,
    ServiceRuntime,
    create_service_app,
    messaging_tables,
    serve,
)
from tickertap.runtime.direct import DirectRoutes, direct
from tickertap.runtime.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    Unauthorized,
    Unprocessable,
    install_error_handlers,
    problem,
)
from tickertap.runtime.settings import ServiceSettings

__all__ = [
    "Conflict",
    "DirectRoutes",
    "Forbidden",
    "NotFound",
    "ServiceDefinition",
    "ServiceError",
    "ServiceRuntime",
    "ServiceSettings",
    "Unauthorized",
    "Unprocessable",
    "create_service_app",
    "direct",
    "install_error_handlers",
    "messaging_tables",
    "problem",
    "serve",
]
