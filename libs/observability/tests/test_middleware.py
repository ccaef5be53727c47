from __future__ import annotations

import io
import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.staticfiles import StaticFiles

from tickertap.observability import (
    CORRELATION_ID_HEADER,
    ROUTE_OTHER,
    ROUTE_UNMATCHED,
    Metrics,
    ObservabilityMiddleware,
)

LATENCY_COUNT = "tickertap_http_request_duration_seconds_count"


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def requests_counted(metrics: Metrics, method: str, route: str, status: int) -> float:
    value = metrics.registry.get_sample_value(
        LATENCY_COUNT, {"method": method, "route": route, "status": str(status)}
    )
    return value or 0.0


async def test_echoes_a_well_formed_id(client: httpx.AsyncClient, logs: io.StringIO) -> None:
    response = await client.get("/v1/accounts/7", headers={CORRELATION_ID_HEADER: "req-1.a_B"})
    assert response.status_code == 200
    assert response.headers[CORRELATION_ID_HEADER] == "req-1.a_B"
    (line,) = [x for x in lines_of(logs) if x["message"] == "account read"]
    assert line["correlation_id"] == "req-1.a_B"
    assert line["account_id"] == 7


async def test_creates_an_id_when_absent(client: httpx.AsyncClient, logs: io.StringIO) -> None:
    response = await client.get("/v1/accounts/7")
    created = response.headers[CORRELATION_ID_HEADER]
    assert uuid.UUID(created).version == 4
    (line,) = [x for x in lines_of(logs) if x["message"] == "account read"]
    assert line["correlation_id"] == created


@pytest.mark.parametrize("malformed", ["has space", "x" * 129, "a;b", "<script>", ""])
async def test_replaces_a_malformed_id(client: httpx.AsyncClient, malformed: str) -> None:
    response = await client.get("/v1/accounts/7", headers={CORRELATION_ID_HEADER: malformed})
    replaced = response.headers[CORRELATION_ID_HEADER]
    assert replaced != malformed
    assert uuid.UUID(replaced).version == 4


async def test_sync_endpoints_see_the_id(client: httpx.AsyncClient, logs: io.StringIO) -> None:
    response = await client.get("/v1/accounts/7/sync", headers={CORRELATION_ID_HEADER: "t-1"})
    assert response.status_code == 200
    (line,) = [x for x in lines_of(logs) if x["message"] == "account read in a thread"]
    assert line["correlation_id"] == "t-1"


async def test_one_header_even_when_the_app_sets_its_own(metrics: Metrics) -> None:
    app = FastAPI()

    @app.get("/own")
    async def own() -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({}, headers={CORRELATION_ID_HEADER: "app-set"})

    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/own", headers={CORRELATION_ID_HEADER: "req-9"})
    assert response.headers.get_list(CORRELATION_ID_HEADER) == ["req-9"]


async def test_latency_is_labelled_by_route_template(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    for account_id in (1, 2, 3):
        await client.get(f"/v1/accounts/{account_id}")
    await client.get("/v1/accounts/not-a-number")
    await client.post("/v1/accounts/1")
    await client.get("/no/such/path/123")
    await client.get("/healthz")

    assert requests_counted(metrics, "GET", "/v1/accounts/{account_id}", 200) == 3
    assert requests_counted(metrics, "GET", "/v1/accounts/{account_id}", 422) == 1
    assert requests_counted(metrics, "POST", "/v1/accounts/{account_id}", 405) == 1
    assert requests_counted(metrics, "GET", ROUTE_UNMATCHED, 404) == 1
    assert requests_counted(metrics, "GET", "/healthz", 200) == 1
    exposition = (await client.get("/metrics")).text
    assert "/v1/accounts/1" not in exposition
    assert "/no/such/path" not in exposition


async def test_unknown_methods_are_bounded(client: httpx.AsyncClient, metrics: Metrics) -> None:
    await client.request("BREW", "/v1/accounts/1")
    assert requests_counted(metrics, "other", "/v1/accounts/{account_id}", 405) == 1


@pytest.fixture
def static_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "a.txt").write_text("hi")
        yield Path(folder)


async def test_templates_through_nested_includes_and_mounts(
    metrics: Metrics, static_dir: Path
) -> None:
    things = APIRouter(prefix="/things")

    @things.get("/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    outer = APIRouter(prefix="/v2")
    outer.include_router(things, prefix="/x")
    app = FastAPI()
    app.include_router(outer)
    app.include_router(things, prefix="/v3")  # the same route object under a second prefix
    sub = FastAPI()
    sub.include_router(things, prefix="/s")
    app.mount("/sub", sub)
    app.mount("/static", StaticFiles(directory=static_dir))
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        for path in ("/v2/x/things/1", "/v3/things/2", "/v3/things/3", "/sub/s/things/4"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/static/a.txt")).status_code == 200

    assert requests_counted(metrics, "GET", "/v2/x/things/{thing_id}", 200) == 1
    assert requests_counted(metrics, "GET", "/v3/things/{thing_id}", 200) == 2
    assert requests_counted(metrics, "GET", "/sub/s/things/{thing_id}", 200) == 1
    assert requests_counted(metrics, "GET", "/static/{path}", 200) == 1


async def test_route_labels_are_capped(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    metrics = Metrics("capped")
    async with make_client(make_app(metrics, route_labels_max=1)) as client:
        await client.get("/v1/accounts/1")
        await client.get("/healthz")
    assert requests_counted(metrics, "GET", "/v1/accounts/{account_id}", 200) == 1
    assert requests_counted(metrics, "GET", ROUTE_OTHER, 200) == 1


async def test_excluded_routes_are_not_recorded(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    metrics = Metrics("excluding")
    app = make_app(metrics, excluded_routes={"/healthz", "/readyz", "/metrics"})
    async with make_client(app) as client:
        response = await client.get("/healthz")
        await client.get("/v1/accounts/1")
    assert response.headers[CORRELATION_ID_HEADER]
    assert requests_counted(metrics, "GET", "/healthz", 200) == 0
    assert requests_counted(metrics, "GET", "/v1/accounts/{account_id}", 200) == 1


async def test_unhandled_errors_are_counted_and_logged_with_the_id(
    metrics: Metrics,
    logs: io.StringIO,
    make_app: Callable[..., FastAPI],
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(make_app(metrics), raise_app_exceptions=False) as client:
        response = await client.get("/boom", headers={CORRELATION_ID_HEADER: "err-1"})
    assert response.status_code == 500
    assert requests_counted(metrics, "GET", "/boom", 500) == 1
    assert metrics.registry.get_sample_value("tickertap_http_requests_in_flight") == 0
    (line,) = [x for x in lines_of(logs) if x["message"] == "unhandled exception"]
    assert line["correlation_id"] == "err-1"
    assert line["route"] == "/boom"
    assert "RuntimeError: boom" in line["exception"]


async def test_wrapping_the_whole_app_covers_the_500_response(
    metrics: Metrics, make_app: Callable[..., FastAPI]
) -> None:
    inner = make_app(Metrics("inner"))
    app = ObservabilityMiddleware(inner, metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom", headers={CORRELATION_ID_HEADER: "err-2"})
        ok = await client.get("/v1/accounts/5")
    assert response.status_code == 500
    assert response.headers[CORRELATION_ID_HEADER] == "err-2"
    assert ok.status_code == 200
    assert requests_counted(metrics, "GET", "/boom", 500) == 1
    assert requests_counted(metrics, "GET", "/v1/accounts/{account_id}", 200) == 1
