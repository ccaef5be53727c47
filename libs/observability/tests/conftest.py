"""A small FastAPI app wired with the observability pieces, and a JSON log capture."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from tickertap.observability import (
    HealthCheck,
    JsonLogHandler,
    Metrics,
    ObservabilityMiddleware,
    configure_logging,
    health_router,
)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """JSON logging of service "testsvc" at DEBUG into the yielded stream."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("testsvc", "DEBUG", stream=stream)
    try:
        yield stream
    finally:
        for handler in [h for h in root.handlers if isinstance(h, JsonLogHandler)]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def make_app() -> Callable[..., FastAPI]:
    return build_app


@pytest.fixture
def make_client() -> Callable[..., httpx.AsyncClient]:
    return client_for


def build_app(
    metrics: Metrics,
    checks: dict[str, HealthCheck] | None = None,
    **middleware_options: Any,
) -> FastAPI:
    app = FastAPI()
    accounts = APIRouter(prefix="/accounts")
    log = logging.getLogger("tests.app")

    @accounts.get("/{account_id}")
    async def get_account(account_id: int) -> dict[str, int]:
        log.info("account read", extra={"account_id": account_id})
        return {"account_id": account_id}

    @accounts.get("/{account_id}/sync")
    def get_account_sync(account_id: int) -> dict[str, int]:
        log.info("account read in a thread")
        return {"account_id": account_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.include_router(accounts, prefix="/v1")
    app.include_router(health_router(checks or {}, metrics, readiness_timeout_s=0.2))
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, **middleware_options)
    return app


def client_for(app: Any, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("testsvc")


@pytest.fixture
async def client(metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_app(metrics)) as c:
        yield c
