"""Problem-details errors and the body bound, on a small app (no I/O beyond ASGI)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError

from tickertap.runtime import Conflict, ServiceSettings, Unauthorized, install_error_handlers
from tickertap.runtime.limits import BodySizeLimit


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class TokenExpired(Unauthorized):
    code = "token_expired"

    def __init__(self) -> None:
        super().__init__("the token has expired")
        self.headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Order(BaseModel):
    password: str
    quantity: int = Field(gt=0)


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/orders")
    async def create(order: Order) -> dict[str, int]:
        if order.quantity > 10:
            raise InsufficientFunds("not enough cash", available="10.00")
        return {"quantity": order.quantity}

    @app.get("/db-away")
    async def db_away() -> None:
        raise ConnectionError("connection refused")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail that must not leak")

    @app.get("/me")
    async def me() -> None:
        raise TokenExpired()

    app.add_middleware(BodySizeLimit, body_bytes_max=2048)
    return app


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_typed_error_maps_to_its_status_and_code(client):
    r = await client.post("/orders", json={"password": "x", "quantity": 11})
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "insufficient_funds"
    assert r.json()["available"] == "10.00"


async def test_error_headers_go_into_the_response_not_the_body(client):
    r = await client.get("/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert r.json()["code"] == "token_expired"
    assert "headers" not in r.json()
    r = await client.post("/orders", json={"password": "x", "quantity": 11})
    assert "www-authenticate" not in r.headers


async def test_validation_error_is_422_and_never_echoes_the_input(client):
    r = await client.post("/orders", json={"password": "hunter2", "quantity": -1})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "validation_error"
    assert body["errors"][0]["loc"] == ["body", "quantity"]
    assert "hunter2" not in r.text


async def test_malformed_json_is_422(client):
    r = await client.post(
        "/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"


async def test_unexpected_errors_are_500_without_detail(client):
    r = await client.get("/boom")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert "secret detail" not in r.text


async def test_bodies_over_the_bound_are_413_declared_or_streamed(client):
    big = b'{"password": "' + b"x" * 4096 + b'", "quantity": 1}'
    r = await client.post("/orders", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large"

    async def chunks():
        for _ in range(8):
            yield b"x" * 1024

    r = await client.post("/orders", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_unknown_route_and_method_have_codes(client):
    assert (await client.get("/nope")).json()["code"] == "not_found"
    assert (await client.get("/orders")).json()["code"] == "method_not_allowed"


def test_settings_need_exactly_one_secret_id(tmp_path):
    base = {
        "http_port": 1,
        "db_host": "db",
        "db_port": 5432,
        "kafka_bootstrap_servers": "kafka:9092",
        "vault_addr": "https://vault:8200",
        "db_schema": "x",
        "vault_role": "x",
        "vault_role_id": "r",
    }
    with pytest.raises(ValidationError):
        ServiceSettings(**base)
    with pytest.raises(ValidationError):  # no default address for a dependency
        ServiceSettings(**{**base, "vault_secret_id": "s"} | {"db_host": None})
    secret = tmp_path / "sid"
    secret.write_text("s3cret\n")
    settings = ServiceSettings(**base, vault_secret_id_file=secret)
    assert settings.secret_id() == "s3cret"
    assert "s3cret" not in repr(ServiceSettings(**base, vault_secret_id="s3cret"))


async def test_a_dependency_that_is_away_is_503_with_retry_after(client):
    r = await client.get("/db-away")
    assert r.status_code == 503
    assert r.json()["code"] == "unavailable"
    assert r.headers["retry-after"] == "1"
