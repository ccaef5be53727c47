"""`@direct` routes: served past the routing, with the same errors, metrics label and
OpenAPI entry as when FastAPI serves them (a small app, no I/O beyond ASGI)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

from tickertap.observability import Metrics, ObservabilityMiddleware
from tickertap.runtime import Conflict, DirectRoutes, direct, install_error_handlers


class Taken(Conflict):
    code = "taken"


def make_app(metrics: Metrics) -> tuple[FastAPI, list[str]]:
    served: list[str] = []  # which endpoints ran, and who routed them
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(prefix="/v1")

    @router.post("/things", status_code=201)
    @direct
    async def post_thing(request: Request) -> Response:
        served.append(f"direct:{request.scope.get('router') is None}")
        body = await request.body()
        if body == b"taken":
            raise Taken("that thing exists", thing="x")
        if body == b"invalid":
            raise RequestValidationError([{"loc": ("body",), "msg": "bad", "type": "bad"}])
        if body == b"boom":
            raise RuntimeError("detail that must not leak")
        return JSONResponse({"echo": body.decode()}, status_code=201)

    @router.get("/things")
    async def list_things() -> list[str]:
        served.append("routed")
        return []

    app.include_router(router)
    app.add_middleware(DirectRoutes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app, served


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("direct-test", process_metrics=False)


async def test_direct_route_is_served_without_the_router(metrics: Metrics) -> None:
    app, served = make_app(metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        created = await client.post("/v1/things", content=b"hello")
        listed = await client.get("/v1/things")
        slash = await client.post("/v1/things/", content=b"x", follow_redirects=False)
    assert created.status_code == 201, created.text
    assert created.json() == {"echo": "hello"}
    assert created.headers["x-correlation-id"]
    assert listed.status_code == 200
    assert slash.status_code in (307, 404, 405)  # the router's answer, as before
    assert served[:2] == ["direct:True", "routed"]


async def test_direct_route_errors_are_the_apps_problem_details(metrics: Metrics) -> None:
    app, _ = make_app(metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        taken = await client.post("/v1/things", content=b"taken")
        invalid = await client.post("/v1/things", content=b"invalid")
        boom = await client.post("/v1/things", content=b"boom")
    assert taken.status_code == 409
    assert taken.headers["content-type"] == "application/problem+json"
    assert taken.json()["code"] == "taken"
    assert taken.json()["thing"] == "x"
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "validation_error"
    assert boom.status_code == 500
    assert boom.json()["code"] == "internal_error"
    assert "leak" not in boom.text


async def test_direct_route_keeps_its_metrics_label_and_openapi_entry(metrics: Metrics) -> None:
    app, _ = make_app(metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/v1/things", content=b"hello")
        document = (await client.get("/openapi.json")).json()
    assert "post" in document["paths"]["/v1/things"]
    samples = [
        s
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.endswith("http_request_duration_seconds_count")
    ]
    labels = {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in samples}
    assert ("POST", "/v1/things", "201") in labels


def test_a_direct_route_with_path_parameters_is_refused() -> None:
    app = FastAPI()

    @app.post("/things/{thing_id}")
    @direct
    async def post_thing(request: Request) -> Response:
        return Response()

    with pytest.raises(ValueError, match="no path parameters"):
        DirectRoutes(app)._index(app)
