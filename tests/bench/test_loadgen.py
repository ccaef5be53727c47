"""The load generator's HTTP/1.1 client against a scripted server: framing, errors, bounds.

No stack needed: the server is a few lines of asyncio on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # a sibling script, found through the line above

RESPONSES = {
    "/cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    "/chunked": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"hello world",
    ),
    "/chunked-empty": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"",
    ),
    "/204": (b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", b""),
    "/continue": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nCONTENT-LENGTH: 2\r\n\r\nok",
        b"ok",
    ),
    "/close": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", b"ok"),
    "/eof": (b"HTTP/1.0 404 Not Found\r\n\r\nuntil eof", b"until eof"),
    "/echo": (b"", b""),  # answered with the request body
}
CLOSES = {"/close", "/eof"}


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            _, path, _ = lines[0].split(" ")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if path == "/slow":
                await asyncio.sleep(2)
                return
            if path == "/bad":
                writer.write(b"garbage\r\n\r\n")
                return
            if path == "/echo":
                response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            else:
                response = RESPONSES[path][0]
            if headers.get("x-drip"):  # one byte per write: the client must reassemble
                for n in range(len(response)):
                    writer.write(response[n : n + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(response)
            if path in CLOSES:
                return
    finally:
        writer.close()


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await asyncio.sleep(0.05)
    await server.wait_closed()


async def test_framings_are_parsed_and_bodies_delivered(server_url: str) -> None:
    paths = sorted(RESPONSES)
    seen: dict[int, tuple[int, bytes]] = {}

    def make_request(i: int) -> loadgen.Request:
        path = paths[i % len(paths)]
        headers = [("X-Drip", "1")] if i % 3 == 0 else []
        body = b"body-%d" % i if path == "/echo" else None
        return ("POST" if body else "GET"), path, headers, body

    def on_response(i: int, status: int, body: bytes) -> None:
        seen[i] = (status, body)

    result = await loadgen.run_load(
        server_url + "/",
        make_request=make_request,
        on_response=on_response,
        connections=4,
        requests=240,
        duration_s=20,
    )
    assert result.errors == {}
    assert result.requests == 240
    assert len(seen) == 240
    for i, (_status, body) in seen.items():
        path = paths[i % len(paths)]
        expected = b"body-%d" % i if path == "/echo" else RESPONSES[path][1]
        assert body == expected, (path, body)
    assert result.status_counts == {200: 150, 201: 30, 204: 30, 404: 30}
    assert result.ok == 210
    assert list(result.latencies_ns) == sorted(result.latencies_ns)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms


async def test_a_fixed_get_runs_for_its_duration(server_url: str) -> None:
    result = await loadgen.run_load(server_url + "/cl", connections=2, duration_s=0.3, warmup_s=0.1)
    assert result.errors == {}
    assert result.requests > 10
    assert result.status_counts == {200: result.requests}
    assert 0.3 <= result.duration_s < 1.0
    assert result.client_requests > result.requests  # the warm-up is not measured


async def test_errors_are_counted_by_kind_not_raised(server_url: str) -> None:
    slow = await loadgen.run_load(
        server_url + "/slow", connections=2, duration_s=0.5, timeout_s=0.2
    )
    assert slow.requests == 0
    assert slow.errors.get("timeout", 0) >= 2
    bad = await loadgen.run_load(server_url + "/bad", connections=1, requests=3)
    assert bad.errors == {"protocol": 3}


async def test_a_refused_port_is_a_connect_error() -> None:
    result = await loadgen.run_load("http://127.0.0.1:9/", connections=1, duration_s=0.2)
    assert result.requests == 0
    assert result.errors.get("connect", 0) >= 1


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "http://10.0.0.1:80/", "https://127.0.0.1/", "http://127.0.0.2/"],
)
async def test_only_loopback_http_is_loaded(url: str) -> None:
    with pytest.raises(ValueError):
        await loadgen.run_load(url, requests=1)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/a b", []),
        ("GET", "/\r\nX: 1", []),
        ("GET", "/", [("X-A", "1\r\nX-B: 2")]),
        ("GET", "/", [("Content-Length", "3")]),
        ("GET", "/", [("host", "evil")]),
    ],
)
def test_requests_cannot_smuggle_lines_or_reserved_headers(
    method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        loadgen.encode_request(method, path, headers, None, "127.0.0.1:1")


def test_bounds_are_enforced() -> None:
    with pytest.raises(ValueError):
        loadgen._bounded(loadgen.DURATION_S_MAX + 1, None, 0)
    with pytest.raises(ValueError):
        loadgen._bounded(None, loadgen.REQUESTS_MAX + 1, 0)
    assert loadgen._bounded(None, None, 0) == (loadgen.DURATION_S_DEFAULT, loadgen.REQUESTS_MAX)


async def test_closed_loop_counts_statuses_errors_and_timeouts() -> None:
    async def operation(worker: int, i: int) -> int:
        if i % 10 == 3:
            raise KeyError(i)
        if i == 5:
            await asyncio.sleep(1)
        await asyncio.sleep(0)
        return 200 + worker

    result = await loadgen.run_closed_loop(
        operation, concurrency=2, requests=50, duration_s=5, timeout_s=0.1
    )
    assert result.errors["KeyError"] == 5
    assert result.errors["timeout"] == 1
    assert result.requests == 44
    assert set(result.status_counts) <= {200, 201}
    assert result.ok == 44


def test_median_figures_and_table() -> None:
    from array import array

    def result(ms: list[int]) -> loadgen.LoadResult:
        return loadgen.LoadResult(
            label="x",
            concurrency=1,
            duration_s=1.0,
            latencies_ns=array("q", sorted(m * 1_000_000 for m in ms)),
            status_counts={200: len(ms)},
            errors={},
        )

    runs = [result([1] * 100), result([2] * 300), result([3] * 200)]
    figures = loadgen.median_figures(runs)
    assert figures["requests_per_s"] == 200
    assert figures["p50_ms"] == 2
    table = loadgen.format_table([("row", runs)])
    assert "row (median of 3)" in table
    assert table.count("run ") == 3
