"""Every expected failure is a typed error with one HTTP status and one machine-readable code.

Responses are RFC 9457 problem details (`application/problem+json`) with an
extra `code` member that clients switch on:

    ServiceError (400 bad_request)
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    ├── Unprocessable (422 unprocessable)
    └── Unauthorized (401 unauthorized), Forbidden (403 forbidden)

Services subclass these: `class InsufficientFunds(Conflict): code = "insufficient_funds"`.
An error's `headers` (for example `WWW-Authenticate` on a 401) go into the
response headers, never into the body.
Request validation failures are 422 `validation_error`; bodies over the bound
are 413 `body_too_large`; a database that is away for a moment (connection lost,
serialization failure after the retries) is 503 `unavailable` with Retry-After;
anything else unexpected is 500 `internal_error`, logged with the correlation id
and never detailed to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tickertap.db import is_retryable
from tickertap.observability import get_correlation_id

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


class ServiceError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Unprocessable(ServiceError):
    status = 422
    code = "unprocessable"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


def problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    correlation_id = get_correlation_id()
    if correlation_id:
        body["correlation_id"] = correlation_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # the offending input is left out on purpose: it may hold a password or a token
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        response = problem(exc.status, exc.code, exc.detail, **exc.extra)
        response.headers.update(exc.headers)
        return response

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem(
            422, "validation_error", "the request is not valid", errors=_validation_errors(exc)
        )

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = problem(exc.status_code, code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_retryable(exc):  # the database is away for a moment: say so, and when to retry
            log.warning("dependency unavailable", extra={"error": type(exc).__name__})
            response = problem(503, "unavailable", "a dependency is unavailable; retry shortly")
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "internal_error", "an unexpected error occurred")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
