"""`/healthz`, `/readyz` and `/metrics` for a service.

    app.include_router(health_router({"postgres": ping_postgres, "kafka": ping_kafka}, metrics))

- `GET /healthz`: 200 `{"status": "ok"}` whenever the process serves requests (liveness).
- `GET /readyz`: runs every dependency check concurrently, each within
  `readiness_timeout_s`; 200 when all pass, else 503. The body names each check with
  its status and, on failure, only the exception's class name: exception messages may
  hold DSNs or tokens and are neither returned nor logged.
- `GET /metrics`: the service registry in the Prometheus text format (or OpenMetrics
  when the scraper asks for it).

A check is `async def check() -> None` that raises when its dependency does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from tickertap.observability.metrics import Metrics

HealthCheck = Callable[[], Awaitable[None]]

READINESS_TIMEOUT_S: Final = 2.0
CHECKS_MAX: Final = 32
_CHECK_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")

_logger = logging.getLogger("tickertap.observability.health")


def health_router(
    checks: Mapping[str, HealthCheck],
    metrics: Metrics,
    *,
    readiness_timeout_s: float = READINESS_TIMEOUT_S,
) -> APIRouter:
    """A router with `/healthz`, `/readyz` and `/metrics` (see the module docstring).

    The routes are left out of the OpenAPI schema: they serve the platform, not clients.
    """
    assert readiness_timeout_s > 0, readiness_timeout_s
    assert len(checks) <= CHECKS_MAX, f"more than {CHECKS_MAX} readiness checks"
    for name in checks:
        assert _CHECK_NAME.fullmatch(name), f"bad readiness check name {name!r}"
    named_checks = dict(checks)
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        names = list(named_checks)
        results = await asyncio.gather(
            *(_run_check(named_checks[name], readiness_timeout_s) for name in names)
        )
        report = dict(zip(names, results, strict=True))
        ready = all(result["status"] == "ok" for result in results)
        for name, result in report.items():
            metrics.readiness_check_up.labels(check=name).set(1 if result["status"] == "ok" else 0)
            if result["status"] != "ok":
                _logger.warning(
                    "readiness check failed", extra={"check": name, "error": result["error"]}
                )
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": report},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), headers={"Content-Type": content_type})

    return router


async def _run_check(check: HealthCheck, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except TimeoutError:
        error: str | None = "TimeoutError"
    except Exception as exc:
        error = type(exc).__name__
    else:
        error = None
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if error is None:
        return {"status": "ok", "duration_ms": duration_ms}
    return {"status": "fail", "error": error, "duration_ms": duration_ms}
