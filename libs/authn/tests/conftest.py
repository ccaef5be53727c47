"""Minters, a fake monotonic clock and a real JWKS server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tickertap.authn.testing import TokenMinter

ISSUER = "https://auth.tickertap.test"
AUDIENCE = "ledger"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """What the server answers: `jwks()` as JSON, or `body` as is, with `status`."""

    def __init__(self) -> None:
        self.url = ""
        self.jwks: Callable[[], Any] = lambda: {"keys": []}
        self.body: bytes | None = None
        self.status = 200
        self.delay_s = 0.0
        self.requests = 0
        self._lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.requests += 1


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter(ISSUER, AUDIENCE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    """An HTTP server on an ephemeral port of 127.0.0.1, stopped after the test."""
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.count()
            if state.delay_s:
                threading.Event().wait(state.delay_s)
            body = state.body if state.body is not None else json.dumps(state.jwks()).encode()
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up on purpose: a timeout or the size bound

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="jwks-server", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
