from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from tickertap.observability import HealthCheck, Metrics


async def passes() -> None:
    return None


async def fails_with_credentials() -> None:
    raise ConnectionRefusedError("postgresql://ledger:hunter2@db:5432/ledger refused")


async def hangs() -> None:
    await asyncio.sleep(60)


async def readyz(
    checks: dict[str, HealthCheck],
    make_app: Callable[..., FastAPI],
    make_client: Callable[..., httpx.AsyncClient],
) -> tuple[httpx.Response, Metrics]:
    metrics = Metrics("health")
    async with make_client(make_app(metrics, checks)) as client:
        return await client.get("/readyz"), metrics


async def test_healthz_is_always_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_ok_when_every_check_passes(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    response, metrics = await readyz({"postgres": passes, "kafka": passes}, make_app, make_client)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: c["status"] for name, c in body["checks"].items()} == {
        "postgres": "ok",
        "kafka": "ok",
    }
    assert (
        metrics.registry.get_sample_value("tickertap_readiness_check_up", {"check": "kafka"}) == 1
    )


async def test_readyz_ok_without_checks(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    response, _ = await readyz({}, make_app, make_client)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {}}


async def test_readyz_503_when_a_check_raises(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    response, metrics = await readyz(
        {"postgres": fails_with_credentials, "kafka": passes}, make_app, make_client
    )
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["postgres"]["status"] == "fail"
    assert body["checks"]["postgres"]["error"] == "ConnectionRefusedError"
    assert body["checks"]["kafka"]["status"] == "ok"
    assert "hunter2" not in response.text
    up = metrics.registry.get_sample_value
    assert up("tickertap_readiness_check_up", {"check": "postgres"}) == 0


async def test_readyz_503_when_a_check_times_out(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    response, _ = await readyz({"vault": hangs, "postgres": passes}, make_app, make_client)
    assert loop.time() - started < 5  # the app's timeout is 0.2 s
    assert response.status_code == 503
    assert response.json()["checks"]["vault"] == {
        "status": "fail",
        "error": "TimeoutError",
        "duration_ms": response.json()["checks"]["vault"]["duration_ms"],
    }


async def test_checks_run_concurrently(
    make_app: Callable[..., FastAPI], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    # Each check finishes only once the other has started: sequential runs time out.
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def waits_for(me: str, other: str) -> HealthCheck:
        async def check() -> None:
            started[me].set()
            await started[other].wait()

        return check

    response, _ = await readyz(
        {"a": waits_for("a", "b"), "b": waits_for("b", "a")}, make_app, make_client
    )
    assert response.status_code == 200
