"""The apps benchmarks load, each served by `harness.start_server("bench_apps:...")`.

- `hello_asgi`: the least uvicorn can do (raw ASGI, 2-byte body): the load
  generator's ceiling.
- `create_get_app`: FastAPI, `GET /` returning a small JSON object.
- `create_post_app`: FastAPI, `POST /rows` validating a small Pydantic body, no
  database: the HTTP + validation floor of a write endpoint.
- `create_insert_app`: the same endpoint doing one single-row INSERT + COMMIT
  through an asyncpg pool. Reads TICKERTAP_BENCH_PG_DSN (and
  TICKERTAP_BENCH_PG_PASSWORD_FILE), TICKERTAP_BENCH_COMMIT (`implicit`: the
  INSERT alone, committed by Postgres as one statement; `explicit`: BEGIN,
  INSERT, COMMIT as a unit of work does), TICKERTAP_BENCH_POOL_SIZE (16) and
  TICKERTAP_BENCH_POOL_RESET (`rollback`: on release, only roll back an open
  transaction; `asyncpg`: asyncpg's default reset query, one more round trip
  per request).

Nothing happens at import: the factories build the apps in the server process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "bench"
TABLE = f"{SCHEMA}.insert_baseline"
CREATE_TABLE_SQL = f"""
CREATE TABLE {TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL,
    amount numeric(20, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_SQL = f"INSERT INTO {TABLE} (account_id, amount) VALUES ($1, $2) RETURNING id"
POOL_SIZE_DEFAULT = 16
COMMIT_MODES = ("implicit", "explicit")
# on release: "rollback" only if a transaction is open (what SQLAlchemy's pool does), or
# "asyncpg": its default reset query (UNLISTEN, RESET ALL, ...: one more round trip)
POOL_RESETS = ("rollback", "asyncpg")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def hello_asgi(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


class RowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Annotated[str, Field(min_length=1, max_length=64)]
    amount: Annotated[Decimal, Field(max_digits=20, decimal_places=2, ge=0)]


class RowCreated(BaseModel):
    id: int


def row_body(i: int) -> bytes:
    """The JSON body of request i: a small, distinct row."""
    return b'{"account_id":"acct-%d","amount":"%d.%02d"}' % (i % 1000, i % 100000, i % 100)


def create_get_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_post_app() -> FastAPI:
    app = FastAPI()
    ids = itertools.count(1)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/rows", status_code=201)
    async def create_row(row: RowCreate) -> RowCreated:
        return RowCreated(id=next(ids))

    return app


def create_insert_app() -> FastAPI:
    import asyncpg

    dsn = os.environ["TICKERTAP_BENCH_PG_DSN"]
    password_file = os.environ.get("TICKERTAP_BENCH_PG_PASSWORD_FILE")
    password = Path(password_file).read_text().strip() if password_file else None
    commit = os.environ.get("TICKERTAP_BENCH_COMMIT", "implicit")
    assert commit in COMMIT_MODES, commit
    pool_size = int(os.environ.get("TICKERTAP_BENCH_POOL_SIZE", str(POOL_SIZE_DEFAULT)))
    assert 1 <= pool_size <= 100, pool_size
    pool_reset = os.environ.get("TICKERTAP_BENCH_POOL_RESET", "rollback")
    assert pool_reset in POOL_RESETS, pool_reset
    pools: list[asyncpg.Pool] = []

    async def rollback_only(conn: asyncpg.Connection) -> None:
        """Nothing beyond what asyncpg always does on release (roll back an open
        transaction): these connections never change session state."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            dsn,
            password=password,
            min_size=pool_size,
            max_size=pool_size,
            reset=rollback_only if pool_reset == "rollback" else None,
        )
        pools.append(pool)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"status": "ok"}

    if commit == "implicit":

        @app.post("/rows", status_code=201)
        async def create_row(row: RowCreate) -> RowCreated:
            async with pools[0].acquire() as conn:
                row_id = await conn.fetchval(INSERT_SQL, row.account_id, row.amount)
            return RowCreated(id=row_id)

    else:

        @app.post("/rows", status_code=201)
        async def create_row_in_transaction(row: RowCreate) -> RowCreated:
            async with pools[0].acquire() as conn, conn.transaction():
                row_id = await conn.fetchval(INSERT_SQL, row.account_id, row.amount)
            return RowCreated(id=row_id)

    return app
