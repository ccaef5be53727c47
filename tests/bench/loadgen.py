"""A lean HTTP/1.1 load generator for benchmarks on this machine (loopback only).

Closed loop, like wrk: `connections` keep-alive connections, each with one request
in flight at a time, for a fixed duration or a fixed number of requests, whichever
comes first. Pure Python on asyncio streams (uvloop when installed): no external
tool, so `make bench` needs nothing beyond the venv.

    .venv/bin/python tests/bench/loadgen.py http://127.0.0.1:8000/ -c 16 -d 10
    .venv/bin/python tests/bench/loadgen.py http://127.0.0.1:8000/rows -X POST \\
        -H 'content-type: application/json' --body '{"amount": "1.00"}' -n 50000
    .venv/bin/python tests/bench/loadgen.py --ceiling -d 10   # its own ceiling

From Python:

    result = await run_load("http://127.0.0.1:8000/", make_request=..., duration_s=10)
    print(result.summary())

`make_request(i)` returns `(method, path, headers, body)` for the i-th request of
the run (i counts from 0 and is unique within a run, warm-up included), so each
request can carry its own Idempotency-Key or body. `run_closed_loop` measures any
awaitable operation (a database call, a handler) the same way, without HTTP.

Every run is bounded: duration (`DURATION_S_MAX`), requests (`REQUESTS_MAX`),
connections (`CONNECTIONS_MAX`), the time one request may take (`timeout_s`; a
request that takes longer is counted as a `timeout` error and its connection is
reopened), header and body sizes. Only 127.0.0.1, ::1 and localhost are accepted.

Errors are counted by kind, never raised: `connect`, `timeout`, `closed` (the
server closed the connection mid-response), `reset`, `protocol` (a response this
parser does not accept), `response_check` (`on_response` raised), and for
`run_closed_loop` the exception's class name. Latencies are those of complete
responses of any status; the status histogram says which were not 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
CONNECTIONS_DEFAULT = 16
CONNECTIONS_MAX = 1024
DURATION_S_DEFAULT = 10.0
DURATION_S_MAX = 600.0
WARMUP_S_MAX = 60.0
REQUESTS_MAX = 10_000_000  # latencies are kept one int64 each: 80 MB at most
TIMEOUT_S_DEFAULT = 10.0
HEADER_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 16 * 1024 * 1024
READ_BYTES = 256 * 1024
WRITE_BUFFER_BYTES_HIGH = 256 * 1024
ERROR_PAUSE_S = 0.01  # after an error, so a refused port does not become a busy loop
CLOSE_GRACE_S = 2.0

Headers = Mapping[str, str] | Sequence[tuple[str, str]]
Request = tuple[str, str, Headers, bytes | None]
MakeRequest = Callable[[int], Request]
OnResponse = Callable[[int, int, bytes], None]
T = TypeVar("T")

_HEADERS_END = b"\r\n\r\n"
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


class ProtocolError(Exception):
    """A response this client does not accept (malformed, too large)."""


class _ServerClosed(Exception):
    """The server closed the connection before the response was complete."""


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """What one closed-loop run measured (the warm-up excluded).

    `latencies_ns` is sorted; percentiles use the nearest-rank method.
    `client_cpu_s` is the CPU time of this process over the whole run (warm-up
    included) and `client_requests` every request it completed in that time, so
    `client_cpu_us_per_request` tells whether the client was the bottleneck.
    """

    label: str
    concurrency: int
    duration_s: float
    latencies_ns: array[int]
    status_counts: dict[int, int]
    errors: dict[str, int]
    client_cpu_s: float = 0.0
    client_wall_s: float = 0.0
    client_requests: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_ns)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> int:
        """Responses with a 2xx status (all completions for `run_closed_loop` without status)."""
        if not self.status_counts:
            return self.requests
        return sum(n for status, n in self.status_counts.items() if 200 <= status < 300)

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self, percentile: float) -> float:
        n = len(self.latencies_ns)
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(percentile / 100.0 * n))
        return self.latencies_ns[min(rank, n) - 1] / 1e6

    @property
    def p50_ms(self) -> float:
        return self.latency_ms(50)

    @property
    def p90_ms(self) -> float:
        return self.latency_ms(90)

    @property
    def p99_ms(self) -> float:
        return self.latency_ms(99)

    @property
    def max_ms(self) -> float:
        return self.latency_ms(100)

    @property
    def mean_ms(self) -> float:
        n = len(self.latencies_ns)
        return sum(self.latencies_ns) / n / 1e6 if n else math.nan

    @property
    def client_cpu_us_per_request(self) -> float:
        if not self.client_requests:
            return math.nan
        return self.client_cpu_s / self.client_requests * 1e6

    def figures(self) -> dict[str, float]:
        """The numbers a report prints; `median_figures` takes the median of each."""
        return {
            "requests_per_s": self.requests_per_s,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "requests": float(self.requests),
            "non_2xx": float(self.requests - self.ok),
            "errors": float(self.errors_total),
            "client_cpu_pct": 100.0 * self.client_cpu_s / self.client_wall_s
            if self.client_wall_s
            else math.nan,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
            **self.extra,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            **{k: round(v, 3) for k, v in self.figures().items()},
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "errors_by_kind": dict(sorted(self.errors.items())),
        }

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.status_counts.items()))
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.label}: {self.requests} requests in {self.duration_s:.2f} s at "
            f"concurrency {self.concurrency}: {self.requests_per_s:,.0f} req/s\n"
            f"  latency ms: p50 {self.p50_ms:.2f}  p90 {self.p90_ms:.2f}  "
            f"p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}  mean {self.mean_ms:.2f}\n"
            f"  status: {statuses or '-'}   errors: {errors}\n"
            f"  client: {self.client_cpu_us_per_request:.1f} µs CPU per request, "
            f"{100.0 * self.client_cpu_s / max(self.client_wall_s, 1e-9):.0f}% of one core"
        )


def median_figures(results: Sequence[LoadResult]) -> dict[str, float]:
    """The median of each figure over several runs of the same thing."""
    assert results, "no runs"
    keys = results[0].figures().keys()
    per_run = [r.figures() for r in results]
    return {k: statistics.median(f.get(k, math.nan) for f in per_run) for k in keys}


TABLE_COLUMNS = (
    ("requests_per_s", "req/s", "{:>9,.0f}"),
    ("p50_ms", "p50 ms", "{:>7.2f}"),
    ("p90_ms", "p90 ms", "{:>7.2f}"),
    ("p99_ms", "p99 ms", "{:>7.2f}"),
    ("max_ms", "max ms", "{:>7.1f}"),
    ("non_2xx", "non-2xx", "{:>7.0f}"),
    ("errors", "errors", "{:>6.0f}"),
    ("client_cpu_pct", "client%", "{:>7.0f}"),
)


def _cell(fmt: str, value: float) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def format_table(
    rows: Sequence[tuple[str, Sequence[LoadResult]]], extra: Sequence[str] = ()
) -> str:
    """One line with the median of the runs per row, then one line per run.

    `extra` names figures from `LoadResult.extra` to add as columns; a name ending
    in `_cpu_pct` (percent of one core) is shown as `<name>%`, one starting with `per_`
    (a ratio) with a decimal.
    """
    labels = [f"{name} (median of {len(results)})" for name, results in rows if results]
    name_w = max([len(label) for label in labels] + [10]) + 2
    cols = [
        *TABLE_COLUMNS,
        *(
            (
                k,
                k.removesuffix("_cpu_pct") + "%" if k.endswith("_cpu_pct") else k,
                "{:>8.1f}" if k.startswith("per_") else "{:>8.0f}",
            )
            for k in extra
        ),
    ]
    widths = [max(len(title), len(fmt.format(0))) for _, title, fmt in cols]
    header = f"{'':<{name_w}}" + " ".join(
        f"{title:>{w}}" for (_, title, _), w in zip(cols, widths, strict=True)
    )
    lines = [header]
    for name, results in rows:
        if not results:
            continue
        for label, figures in [
            (f"{name} (median of {len(results)})", median_figures(results)),
            *((f"  run {n}", r.figures()) for n, r in enumerate(results, 1)),
        ]:
            cells = " ".join(
                f"{_cell(fmt, figures.get(key, math.nan)):>{w}}"
                for (key, _, fmt), w in zip(cols, widths, strict=True)
            )
            lines.append(f"{label:<{name_w}}{cells}")
    return "\n".join(lines)


# -- the HTTP client -------------------------------------------------------------------


def check_loopback(url: str) -> tuple[str, int, str]:
    """(host to connect to, port, path) of a loopback http URL; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only plain http is supported, not {parts.scheme!r}")
    host = parts.hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"refusing to load {host!r}: only {sorted(LOOPBACK_HOSTS)}")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return ("127.0.0.1" if host == "localhost" else host), port, path


def encode_request(
    method: str, path: str, headers: Headers, body: bytes | None, host_header: str
) -> bytes:
    """One HTTP/1.1 request; Host and Content-Length are set here, never by the caller."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [f"{method} {path} HTTP/1.1\r\n", f"Host: {host_header}\r\n"]
    for name, value in items:
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the load generator")
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    if head.count("\n") != len(lines) or head.count("\r") != len(lines) or " " in path:
        raise ValueError("CR, LF or space inside the method, path or a header")
    data = head.encode("latin-1")
    return data + body if body else data


def _header_value(head: bytes, name: bytes) -> bytes | None:
    """The value of a header in a lowercased header block (name given as b'\\r\\nname:')."""
    start = head.find(name)
    if start < 0:
        return None
    start += len(name)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


async def _fill(read: Callable[[int], Awaitable[bytes]], buf: bytearray, size: int) -> None:
    while len(buf) < size:
        data = await read(READ_BYTES)
        if not data:
            raise _ServerClosed
        buf += data


async def _read_chunked(read: Callable[[int], Awaitable[bytes]], buf: bytearray) -> bytes:
    body = bytearray()
    while True:
        end = buf.find(b"\r\n")
        while end < 0:
            if len(buf) > HEADER_BYTES_MAX:
                raise ProtocolError("chunk size line too long")
            await _fill(read, buf, len(buf) + 1)
            end = buf.find(b"\r\n")
        try:
            size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        del buf[: end + 2]
        if size == 0:  # trailers (if any), then an empty line
            while True:
                end = buf.find(b"\r\n")
                while end < 0:
                    if len(buf) > HEADER_BYTES_MAX:
                        raise ProtocolError("trailers too long")
                    await _fill(read, buf, len(buf) + 1)
                    end = buf.find(b"\r\n")
                del buf[: end + 2]
                if end == 0:
                    return bytes(body)
        if len(body) + size > BODY_BYTES_MAX:
            raise ProtocolError("body too large")
        await _fill(read, buf, size + 2)
        if buf[size : size + 2] != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        body += buf[:size]
        del buf[: size + 2]


class _HttpRun:
    """The shared state of one run; every connection is a coroutine on one loop."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        make_request: MakeRequest | None,
        on_response: OnResponse | None,
        connections: int,
        duration_s: float,
        requests: int,
        warmup_s: float,
        timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.make_request = make_request
        self.fixed_request = encode_request("GET", path, (), None, self.host_header)
        self.on_response = on_response
        self.connections = connections
        self.timeout_ns = int(timeout_s * 1e9)
        now = time.perf_counter_ns()
        self.started_ns = now
        self.record_from_ns = now + int(warmup_s * 1e9)
        self.stop_at_ns = self.record_from_ns + int(duration_s * 1e9)
        self.requests_max = requests
        self.issued = 0  # measured requests sent
        self.completed = 0  # every response, warm-up included
        self.next_index = 0
        self.stopping = False
        self.latencies: array[int] = array("q")
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.inflight_ns = [0] * connections
        self.timed_out = [False] * connections
        self.transports: list[asyncio.BaseTransport | None] = [None] * connections

    def error(self, kind: str) -> None:
        if time.perf_counter_ns() >= self.record_from_ns:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def done(self) -> bool:
        return self.stopping or time.perf_counter_ns() >= self.stop_at_ns

    async def watchdog(self) -> None:
        """Aborts a connection whose request is older than the timeout."""
        period_s = min(0.25, self.timeout_ns / 4e9)
        while True:
            await asyncio.sleep(period_s)
            now = time.perf_counter_ns()
            for slot, since in enumerate(self.inflight_ns):
                transport = self.transports[slot]
                if since and now - since > self.timeout_ns and transport is not None:
                    self.timed_out[slot] = True
                    self.inflight_ns[slot] = 0
                    transport.abort()  # type: ignore[attr-defined]

    async def connection(self, slot: int) -> None:
        while not self.done():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.error("connect")
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            self.transports[slot] = writer.transport
            try:
                await self._requests(slot, reader, writer)
            except _ServerClosed:
                self.error("timeout" if self.timed_out[slot] else "closed")
            except (ConnectionResetError, BrokenPipeError):
                self.error("timeout" if self.timed_out[slot] else "reset")
            except ProtocolError:
                self.error("protocol")
            except OSError:
                self.error("timeout" if self.timed_out[slot] else "socket")
            finally:
                self.inflight_ns[slot] = 0
                self.transports[slot] = None
                self.timed_out[slot] = False
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_GRACE_S):
                        await writer.wait_closed()

    async def _requests(
        self, slot: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Requests on one connection until the run ends or the server closes it.

        The hot loop of the load generator: one write and, usually, one read per
        request; everything it touches is bound to a local name.
        """
        perf_ns = time.perf_counter_ns
        read = reader.read
        write = writer.write
        write_buffer_size = writer.transport.get_write_buffer_size
        latencies_append = self.latencies.append
        statuses = self.statuses
        inflight_ns = self.inflight_ns
        make_request = self.make_request
        on_response = self.on_response
        host_header = self.host_header
        record_from_ns = self.record_from_ns
        stop_at_ns = self.stop_at_ns
        buf = bytearray()
        method = "GET"
        while True:
            t0 = perf_ns()
            if t0 >= stop_at_ns or self.stopping:
                return
            measured = t0 >= record_from_ns
            if measured:
                if self.issued >= self.requests_max:
                    self.stopping = True
                    return
                self.issued += 1
            i = self.next_index
            self.next_index = i + 1
            if make_request is None:
                request = self.fixed_request
            else:
                method, path, headers, body = make_request(i)
                request = encode_request(method, path, headers, body, host_header)
            inflight_ns[slot] = t0
            write(request)
            if write_buffer_size() > WRITE_BUFFER_BYTES_HIGH:
                await writer.drain()

            # the status line and headers (informational 1xx responses are skipped)
            while True:
                end = buf.find(_HEADERS_END)
                while end < 0:
                    if len(buf) > HEADER_BYTES_MAX:
                        raise ProtocolError("response headers too large")
                    data = await read(READ_BYTES)
                    if not data:
                        raise _ServerClosed
                    buf += data
                    end = buf.find(_HEADERS_END)
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                if not head.startswith((b"http/1.1 ", b"http/1.0 ")):
                    raise ProtocolError("not an HTTP/1.x response")
                try:
                    status = int(head[9:12])
                except ValueError:
                    raise ProtocolError("bad status line") from None
                if status >= 200 or status == 101:
                    break

            # the body: Content-Length, chunked, or (HTTP/1.0 style) until the server closes
            keep_alive = head[7] == 0x31  # b"1": HTTP/1.1
            connection = _header_value(head, b"\r\nconnection:")
            if connection is not None:
                if b"close" in connection:
                    keep_alive = False
                elif b"keep-alive" in connection:
                    keep_alive = True
            body = b""
            if method == "HEAD" or status in (204, 304) or status < 200:
                pass
            elif (te := _header_value(head, b"\r\ntransfer-encoding:")) is not None:
                if not te.endswith(b"chunked"):
                    raise ProtocolError(f"unsupported transfer-encoding {te!r}")
                body = await _read_chunked(read, buf)
            elif (cl := _header_value(head, b"\r\ncontent-length:")) is not None:
                try:
                    length = int(cl)
                except ValueError:
                    raise ProtocolError("bad content-length") from None
                if not 0 <= length <= BODY_BYTES_MAX:
                    raise ProtocolError("content-length out of bounds")
                while len(buf) < length:
                    data = await read(READ_BYTES)
                    if not data:
                        raise _ServerClosed
                    buf += data
                if on_response is not None:
                    body = bytes(buf[:length])
                del buf[:length]
            else:
                while data := await read(READ_BYTES):
                    buf += data
                    if len(buf) > BODY_BYTES_MAX:
                        raise ProtocolError("body too large")
                body = bytes(buf)
                buf.clear()
                keep_alive = False

            t1 = perf_ns()
            inflight_ns[slot] = 0
            self.completed += 1
            if measured:
                latencies_append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1
            if on_response is not None:
                try:
                    on_response(i, status, body)
                except Exception:
                    self.error("response_check")
            if not keep_alive:
                return


def _bounded(duration_s: float | None, requests: int | None, warmup_s: float) -> tuple[float, int]:
    if duration_s is None:
        duration_s = DURATION_S_MAX if requests is not None else DURATION_S_DEFAULT
    if not 0 < duration_s <= DURATION_S_MAX:
        raise ValueError(f"duration_s must be in (0, {DURATION_S_MAX}]")
    if requests is None:
        requests = REQUESTS_MAX
    if not 0 < requests <= REQUESTS_MAX:
        raise ValueError(f"requests must be in (0, {REQUESTS_MAX}]")
    if not 0 <= warmup_s <= WARMUP_S_MAX:
        raise ValueError(f"warmup_s must be in [0, {WARMUP_S_MAX}]")
    return duration_s, requests


async def run_load(
    url: str,
    *,
    make_request: MakeRequest | None = None,
    on_response: OnResponse | None = None,
    connections: int = CONNECTIONS_DEFAULT,
    duration_s: float | None = None,
    requests: int | None = None,
    warmup_s: float = 0.0,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    label: str = "",
) -> LoadResult:
    """Load `url` (loopback only) with `connections` closed-loop keep-alive connections.

    Without `make_request`, every request is `GET <path of url>`. With it, request i
    is `make_request(i)`: (method, path, headers, body); Host and Content-Length are
    added. `on_response(i, status, body)` (optional) sees every response; if it
    raises, a `response_check` error is counted. Stops after `duration_s` (default
    10 s) or `requests` measured requests, whichever comes first; `warmup_s` of load
    before that is not measured. Requests in flight at the end complete and count.
    """
    host, port, path = check_loopback(url)
    if not 0 < connections <= CONNECTIONS_MAX:
        raise ValueError(f"connections must be in (0, {CONNECTIONS_MAX}]")
    if not 0 < timeout_s <= DURATION_S_MAX:
        raise ValueError(f"timeout_s must be in (0, {DURATION_S_MAX}]")
    duration_s, requests = _bounded(duration_s, requests, warmup_s)
    cpu0 = time.process_time()
    run = _HttpRun(
        host,
        port,
        path,
        make_request,
        on_response,
        connections,
        duration_s,
        requests,
        warmup_s,
        timeout_s,
    )
    watchdog = asyncio.create_task(run.watchdog())
    tasks = [asyncio.create_task(run.connection(slot)) for slot in range(connections)]
    try:
        async with asyncio.timeout(warmup_s + duration_s + timeout_s + 10.0):
            await asyncio.gather(*tasks)
    except TimeoutError:  # a bug, not the server: every request is bounded by timeout_s
        run.errors["run_timeout"] = run.errors.get("run_timeout", 0) + 1
    finally:
        for task in (*tasks, watchdog):
            task.cancel()
        await asyncio.gather(*tasks, watchdog, return_exceptions=True)
    end_ns = time.perf_counter_ns()
    return LoadResult(
        label=label or url,
        concurrency=connections,
        duration_s=max(end_ns - run.record_from_ns, 1) / 1e9,
        latencies_ns=array("q", sorted(run.latencies)),
        status_counts=dict(run.statuses),
        errors=dict(run.errors),
        client_cpu_s=time.process_time() - cpu0,
        client_wall_s=(end_ns - run.started_ns) / 1e9,
        client_requests=run.completed,
    )


# -- any awaitable operation, without HTTP ----------------------------------------------


async def run_closed_loop(
    operation: Callable[[int, int], Awaitable[object]],
    *,
    concurrency: int = CONNECTIONS_DEFAULT,
    duration_s: float | None = None,
    requests: int | None = None,
    warmup_s: float = 0.0,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    label: str = "closed loop",
) -> LoadResult:
    """`concurrency` workers each await `operation(worker, i)` back to back.

    `worker` is 0..concurrency-1 (e.g. an index into a list of connections), `i`
    is unique within the run. If the operation returns an int, it is counted in
    `status_counts`; an exception is counted by its class name (then the worker
    pauses `ERROR_PAUSE_S`); an operation longer than `timeout_s` is cancelled and
    counted as `timeout`. Same bounds as `run_load`.
    """
    if not 0 < concurrency <= CONNECTIONS_MAX:
        raise ValueError(f"concurrency must be in (0, {CONNECTIONS_MAX}]")
    duration_s, requests = _bounded(duration_s, requests, warmup_s)
    cpu0 = time.process_time()
    started_ns = time.perf_counter_ns()
    record_from_ns = started_ns + int(warmup_s * 1e9)
    stop_at_ns = record_from_ns + int(duration_s * 1e9)
    latencies: array[int] = array("q")
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    state = {"issued": 0, "next": 0, "completed": 0}
    inflight_ns = [0] * concurrency
    timed_out = [False] * concurrency
    timeout_ns = int(timeout_s * 1e9)

    async def worker(w: int) -> None:
        perf_ns = time.perf_counter_ns
        append = latencies.append
        task = asyncio.current_task()
        assert task is not None
        while True:
            t0 = perf_ns()
            if t0 >= stop_at_ns:
                return
            measured = t0 >= record_from_ns
            if measured:
                if state["issued"] >= requests:
                    return
                state["issued"] += 1
            i = state["next"]
            state["next"] = i + 1
            inflight_ns[w] = t0
            try:
                outcome = await operation(w, i)
            except asyncio.CancelledError:
                if not timed_out[w]:
                    raise  # the run is being cancelled, not this operation
                timed_out[w] = False
                task.uncancel()
                if measured:
                    errors["timeout"] = errors.get("timeout", 0) + 1
                continue
            except Exception as exc:
                inflight_ns[w] = 0
                if measured:
                    kind = type(exc).__name__
                    errors[kind] = errors.get(kind, 0) + 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            t1 = perf_ns()
            inflight_ns[w] = 0
            state["completed"] += 1
            if measured:
                append(t1 - t0)
                if type(outcome) is int:
                    statuses[outcome] = statuses.get(outcome, 0) + 1

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]

    async def watchdog() -> None:
        """Cancels an operation older than the timeout (cheaper than a timer per operation)."""
        period_s = min(0.25, timeout_s / 4)
        while True:
            await asyncio.sleep(period_s)
            now = time.perf_counter_ns()
            for w, since in enumerate(inflight_ns):
                if since and now - since > timeout_ns and not timed_out[w]:
                    timed_out[w] = True
                    inflight_ns[w] = 0
                    tasks[w].cancel()

    watchdog_task = asyncio.create_task(watchdog())
    try:
        async with asyncio.timeout(warmup_s + duration_s + timeout_s + 10.0):
            await asyncio.gather(*tasks)
    except TimeoutError:
        errors["run_timeout"] = errors.get("run_timeout", 0) + 1
    finally:
        for task in (*tasks, watchdog_task):
            task.cancel()
        await asyncio.gather(*tasks, watchdog_task, return_exceptions=True)
    end_ns = time.perf_counter_ns()
    return LoadResult(
        label=label,
        concurrency=concurrency,
        duration_s=max(end_ns - record_from_ns, 1) / 1e9,
        latencies_ns=array("q", sorted(latencies)),
        status_counts=statuses,
        errors=errors,
        client_cpu_s=time.process_time() - cpu0,
        client_wall_s=(end_ns - started_ns) / 1e9,
        client_requests=state["completed"],
    )


# -- running -----------------------------------------------------------------------------


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _parse_headers(values: Sequence[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep:
            raise SystemExit(f"header {value!r} is not 'name: value'")
        headers.append((name.strip(), rest.strip()))
    return headers


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", nargs="?", help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("-c", "--connections", type=int, default=CONNECTIONS_DEFAULT)
    parser.add_argument("-d", "--duration-s", type=float, default=None)
    parser.add_argument("-n", "--requests", type=int, default=None)
    parser.add_argument("-w", "--warmup-s", type=float, default=1.0)
    parser.add_argument("-t", "--timeout-s", type=float, default=TIMEOUT_S_DEFAULT)
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--body", help="request body (text, sent as UTF-8)")
    parser.add_argument("--runs", type=int, default=1, help="repeat; print the median and each")
    parser.add_argument("--json", action="store_true", help="print each run as JSON too")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=30.0,
        help="with --ceiling: wait at most this long for an idle machine before each run",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="start trivial uvicorn apps (raw ASGI, FastAPI GET) and measure against them",
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= 20:
        raise SystemExit("--runs must be in 1..20")
    if args.ceiling:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from harness import measure_ceiling

        return measure_ceiling(
            runs=args.runs,
            duration_s=args.duration_s or DURATION_S_DEFAULT,
            warmup_s=args.warmup_s,
            connections=args.connections,
            quiet_wait_s=args.quiet_wait_s,
        )
    if not args.url:
        parser.error("a URL is required (or --ceiling)")
    try:
        _, _, path = check_loopback(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    headers = _parse_headers(args.header)
    body = args.body.encode() if args.body is not None else None
    make_request: MakeRequest | None = None
    if args.method != "GET" or headers or body is not None:

        def make_request(i: int) -> Request:
            return args.method, path, headers, body

    results = []
    for run in range(args.runs):
        result = run_async(
            run_load(
                args.url,
                make_request=make_request,
                connections=args.connections,
                duration_s=args.duration_s,
                requests=args.requests,
                warmup_s=args.warmup_s,
                timeout_s=args.timeout_s,
                label=f"run {run + 1}",
            )
        )
        print(result.summary(), flush=True)
        if args.json:
            import json

            print(json.dumps(result.to_dict()), flush=True)
        results.append(result)
    if args.runs > 1:
        print(format_table([(f"{args.method} {path}", results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
