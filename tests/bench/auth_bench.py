"""The auth service's two figures, each against a baseline measured in the same run.

On the local stack of `TICKERTAP_PROFILE` (default `bench`, ports 274xx; started
here if it is not up, and stopped at the end if so):

1. Password logins: `POST /oauth/token` (grant_type=password) on an auth server
   with the service's default settings (Argon2id at OWASP's m=19 MiB, t=2, p=1)
   except the per-IP login limit, raised because every request comes from
   127.0.0.1. Each login: a transit HMAC (blind index), one Argon2id verification,
   a session and a refresh token written, an access token signed in Vault. The
   baseline: Argon2id verifications per second of one core in this process.
   Reported per core of the auth server's CPU (`server%`), and the p99.
2. Token verification: the same tiny FastAPI endpoint without authentication
   and with `tickertap.authn` bearer verification (keys from the auth server's
   JWKS over HTTP): as a `BearerAuth.require()` dependency with the verifier's
   cache (a client reuses its token), as a direct `BearerAuth.authenticate` call
   (no FastAPI dependency solving: how the ledger's hot route does it), and as a
   dependency with the cache off (every request pays the Ed25519 verification).
   The same pair (`/open`, `/protected` with `require()`) again as a tickerTap
   service serves its routes: behind the runtime's middleware (correlation id,
   latency metric, body-size bound), which every service request passes.

Each run loads every target in turn (interleaved), `--runs` times; the table shows
the median of the runs, then each run. Bounded: each load lasts `--duration-s`.

    .venv/bin/python tests/bench/auth_bench.py --runs 3 --duration-s 10
"""

# No `from __future__ import annotations`: FastAPI reads the annotations of the routes
# built in create_protected_app, which name local aliases.

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import loadgen  # noqa: E402

STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
PROFILE = os.environ.get("TICKERTAP_PROFILE", "bench")
ENV = {**os.environ, "TICKERTAP_PROFILE": PROFILE}
STATE = Path(os.environ.get("TICKERTAP_STATE_DIR") or ROOT / ".tickertap" / PROFILE)
USERS = 64
PASSWORD = "bench passphrase that is long"
LOGIN_CONNECTIONS = 8
HTTP_CONNECTIONS = 16
ARGON2_SAMPLES = 40
OPEN = "GET /open (no auth)"
CACHED = "GET /protected (verified, cached)"
DIRECT = "GET /protected (verified, direct)"
UNCACHED = "GET /protected (verified, no cache)"
SERVICE_OPEN = "service GET /open (no auth)"
SERVICE_PROTECTED = "service GET /protected (require())"
LIMITS_OFF = {
    "TICKERTAP_LOGIN_RATE_PER_MIN": "1000000",
    "TICKERTAP_LOGIN_BURST": "1000000",
    "TICKERTAP_REGISTER_RATE_PER_MIN": "1000000",
    "TICKERTAP_REGISTER_BURST": "1000000",
    "TICKERTAP_LOG_LEVEL": "WARNING",
}


# -- the apps the child servers run (factories, called without arguments) -------------


def create_auth_app() -> Any:
    from tickertap.auth.main import create_app
    from tickertap.auth.settings import AuthSettings

    return create_app(AuthSettings())  # type: ignore[call-arg]  # from the environment


def create_protected_app() -> Any:
    """GET /open, and GET /protected and /protected-uncached behind bearer verification.

    With BENCH_SERVICE_STACK=1, behind the runtime middleware of `create_service_app`
    (the app's lifespan needs Vault, Postgres and Kafka, so it is not built whole here).
    """
    from typing import Annotated

    from fastapi import Depends, FastAPI, Request

    from tickertap.authn import AccessTokenVerifier, BearerAuth, HttpJwks, Principal
    from tickertap.runtime import install_error_handlers

    jwks = HttpJwks(os.environ["BENCH_JWKS_URL"])
    options = {
        "issuer": os.environ["BENCH_ISSUER"],
        "audience": os.environ["BENCH_AUDIENCE"],
        "algorithms": ("EdDSA",),
    }
    cached = BearerAuth(AccessTokenVerifier(jwks, **options))  # type: ignore[arg-type]
    uncached = BearerAuth(
        AccessTokenVerifier(jwks, cache_entries_max=0, **options)  # type: ignore[arg-type]
    )
    service_stack = os.environ.get("BENCH_SERVICE_STACK") == "1"
    # as create_service_app builds a service's app: FastAPI's OpenTelemetry hooks off
    telemetry = {"tracing": False, "metrics": False, "logs": False} if service_stack else None
    app = FastAPI(telemetry=telemetry)
    install_error_handlers(app)
    Cached = Annotated[Principal, Depends(cached.require())]
    Uncached = Annotated[Principal, Depends(uncached.require())]

    @app.get("/open")
    async def open_endpoint() -> dict[str, str]:
        return {"subject": "anyone"}

    @app.get("/protected")
    async def protected(principal: Cached) -> dict[str, str]:
        return {"subject": principal.subject}

    @app.get("/protected-direct", openapi_extra={"security": cached.openapi_security})
    async def protected_direct(request: Request) -> dict[str, str]:
        # what a hot route does (the ledger's POST /v1/transfers): the same checks, called
        # directly instead of through FastAPI's dependency solving
        principal = await cached.authenticate(request, frozenset(), frozenset())
        return {"subject": principal.subject}

    @app.get("/protected-uncached")
    async def protected_uncached(principal: Uncached) -> dict[str, str]:
        return {"subject": principal.subject}

    if service_stack:
        from tickertap.observability import Metrics, ObservabilityMiddleware
        from tickertap.runtime.limits import BodySizeLimit
        from tickertap.runtime.settings import ServiceSettings

        body_bytes_max = ServiceSettings.model_fields["request_body_bytes_max"].default
        app.add_middleware(BodySizeLimit, body_bytes_max=body_bytes_max)
        app.add_middleware(ObservabilityMiddleware, metrics=Metrics("bench"))
    return app


# -- the run --------------------------------------------------------------------------


def auth_environment() -> dict[str, str]:
    """What the launcher gives the auth service (AppRole, addresses), read through exec."""
    dump = "import json, os; print(json.dumps({k: v for k, v in os.environ.items()}))"
    out = subprocess.run(
        [*STACK, "exec", "auth", "--", "python", "-c", dump],
        env=ENV, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    env = json.loads(out.stdout)
    return {k: v for k, v in env.items() if k.startswith("TICKERTAP_")}


def argon2_verifications_per_s() -> float:
    """The floor: one core verifying Argon2id at the service's default parameters."""
    from argon2 import PasswordHasher, Type

    from tickertap.auth.settings import AuthSettings

    fields = AuthSettings.model_fields
    hasher = PasswordHasher(
        time_cost=fields["argon2_time_cost"].default,
        memory_cost=fields["argon2_memory_kib"].default,
        parallelism=fields["argon2_parallelism"].default,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )
    stored = hasher.hash(PASSWORD)
    durations = []
    for _ in range(ARGON2_SAMPLES):
        t0 = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        durations.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(durations)


def register_users(url: str) -> list[str]:
    emails = [f"bench-{uuid.uuid4().hex[:10]}@bench.test" for _ in range(USERS)]

    def make(i: int) -> loadgen.Request:
        body = json.dumps({"email": emails[i], "password": PASSWORD}).encode()
        return ("POST", "/v1/users", {"Content-Type": "application/json"}, body)

    def check(_i: int, status: int, body: bytes) -> None:
        assert status == 201, body[:200]

    loadgen.run_async(
        loadgen.run_load(f"{url}/v1/users", make_request=make, on_response=check,
                         connections=4, requests=USERS, label="setup")
    )  # fmt: skip
    return emails


def login_requests(emails: list[str]) -> loadgen.MakeRequest:
    bodies = [
        urlencode({"grant_type": "password", "username": e, "password": PASSWORD}).encode()
        for e in emails
    ]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def make(i: int) -> loadgen.Request:
        return ("POST", "/oauth/token", headers, bodies[i % len(bodies)])

    return make


def check_ok(_i: int, status: int, body: bytes) -> None:
    if status != 200:
        raise AssertionError(f"{status}: {body[:200]!r}")


def get_requests(path: str, token: str | None) -> loadgen.MakeRequest:
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def make(_i: int) -> loadgen.Request:
        return ("GET", path, headers, None)

    return make


def one_token(url: str, email: str) -> str:
    import httpx

    r = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--quiet-wait-s", type=float, default=harness.QUIET_WAIT_S_DEFAULT)
    args = parser.parse_args()
    assert 1 <= args.runs <= 10
    assert 1 <= args.duration_s <= 120

    with tempfile.TemporaryDirectory(prefix="tickertap-auth-bench-") as tmp:
        marker = Path(tmp) / "started"
        subprocess.run(
            [*STACK, "up", "--started-marker", str(marker)],
            env=ENV, check=True, stdout=subprocess.DEVNULL, timeout=harness.STACK_UP_TIMEOUT_S,
        )  # fmt: skip
        try:
            return run(args)
        finally:
            if marker.exists():
                subprocess.run([*STACK, "down"], env=ENV, check=False, stdout=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> int:
    env = auth_environment() | LIMITS_OFF
    floor = argon2_verifications_per_s()
    rows: dict[str, list[loadgen.LoadResult]] = {}
    with harness.start_server(
        "auth_bench:create_auth_app", factory=True, env=env, ready_path="/healthz"
    ) as auth_server:
        emails = register_users(auth_server.url)
        token = one_token(auth_server.url, emails[0])
        protected_env = {
            "BENCH_JWKS_URL": f"{auth_server.url}/.well-known/jwks.json",
            "BENCH_ISSUER": env["TICKERTAP_AUTH_ISSUER"],
            "BENCH_AUDIENCE": env["TICKERTAP_AUTH_AUDIENCE"],
        }
        with harness.start_server(
            "auth_bench:create_protected_app", factory=True, env=protected_env,
            ready_path="/open",
        ) as app_server, harness.start_server(
            "auth_bench:create_protected_app", factory=True,
            env={**protected_env, "BENCH_SERVICE_STACK": "1"}, ready_path="/open",
        ) as service_server:  # fmt: skip
            for _ in range(args.runs):
                harness.settle(args.quiet_wait_s, "logins")
                cpu = harness.CpuShares(auth_server.pid, None)
                result = loadgen.run_async(
                    loadgen.run_load(
                        f"{auth_server.url}/oauth/token",
                        make_request=login_requests(emails),
                        on_response=check_ok,
                        connections=LOGIN_CONNECTIONS,
                        duration_s=args.duration_s,
                        warmup_s=args.warmup_s,
                        label="password logins",
                    )
                )
                shares = cpu.stop(result.client_cpu_s)
                rows.setdefault("password logins", []).append(_with(result, shares))
                for server, label, path, tok in (
                    (app_server, OPEN, "/open", None),
                    (app_server, CACHED, "/protected", token),
                    (app_server, DIRECT, "/protected-direct", token),
                    (app_server, UNCACHED, "/protected-uncached", token),
                    (service_server, SERVICE_OPEN, "/open", None),
                    (service_server, SERVICE_PROTECTED, "/protected", token),
                ):
                    rows.setdefault(label, []).append(
                        harness.load_server(
                            server,
                            make_request=get_requests(path, tok),
                            connections=HTTP_CONNECTIONS,
                            duration_s=args.duration_s,
                            warmup_s=args.warmup_s,
                            label=label,
                            quiet_wait_s=args.quiet_wait_s,
                        )
                    )
                    bad = {s: n for s, n in rows[label][-1].status_counts.items() if s != 200}
                    assert not bad, f"{label}: {bad}"
    print(loadgen.format_table(list(rows.items()), extra=["server_cpu_pct", "other_cpu_pct"]))
    med = {k: statistics.median(r.ok / r.duration_s for r in v) for k, v in rows.items()}
    logins = rows["password logins"]
    per_core = statistics.median(
        r.ok / r.duration_s / max(r.extra["server_cpu_pct"] / 100.0, 1e-9) for r in logins
    )
    p99 = statistics.median(r.latency_ms(99) for r in logins)
    # server CPU per request: what each endpoint costs the server, less sensitive than
    # requests/s to what else runs on a shared machine
    cpu_us = {
        k: statistics.median(
            r.extra["server_cpu_pct"] / 100.0 / max(r.ok / r.duration_s, 1e-9) * 1e6 for r in v
        )
        for k, v in rows.items()
        if k != "password logins"
    }
    print()
    print(f"medians of {args.runs} runs, {args.duration_s:.0f} s each:")
    print(
        f"  password logins/s          {med['password logins']:8.1f}  p99 "
        f"{p99:6.1f} ms  ({LOGIN_CONNECTIONS} connections)"
    )
    print(f"  logins per core of server  {per_core:8.1f}  (target >= 30)")
    print(f"  floor: Argon2id verify/s   {floor:8.1f}  (one core, default parameters)")
    for label, baseline in (
        (CACHED, OPEN),
        (DIRECT, OPEN),
        (UNCACHED, OPEN),
        (SERVICE_PROTECTED, SERVICE_OPEN),
    ):
        print(
            f"  {label:<38} {med[label]:8.0f}/s  = {med[label] / med[baseline]:.2f}x "
            f"{baseline} ({med[baseline]:.0f}/s; target >= 0.8); per server core "
            f"{cpu_us[baseline] / cpu_us[label]:.2f}x "
            f"({cpu_us[label]:.0f} vs {cpu_us[baseline]:.0f} us of CPU a request)"
        )
    return 0


def _with(result: loadgen.LoadResult, shares: dict[str, float]) -> loadgen.LoadResult:
    import dataclasses

    return dataclasses.replace(result, extra={**result.extra, **shares})


if __name__ == "__main__":
    sys.exit(main())
