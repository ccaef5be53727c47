"""The local tickerTap stack: real Postgres, Kafka-compatible broker, OpenBao and the services.

    python deploy/local/stack.py run     start everything in the foreground; Ctrl-C stops it all
    python deploy/local/stack.py up      the same, detached; returns when everything is ready
    ... run|up --services ledger,auth    the servers and only the services named
    ... run|up --no-services             only Postgres, the broker and OpenBao
    python deploy/local/stack.py down    stop a detached stack
    python deploy/local/stack.py status  print what runs and where
    python deploy/local/stack.py exec SERVICE -- COMMAND...
                                         run COMMAND with the environment the running stack
                                         gives SERVICE, for example (`make reconcile`):
                                         exec ledger -- python -m tickertap.ledger.reconcile

Settings are environment variables, listed in config.py and the README.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devkeys
import parts
from bootstrap import bootstrap_all
from config import ROOT, SERVICES, ServiceSpec, StackConfig, load_topics
from processes import Child, wait_until, write_private

SERVICE_READY_TIMEOUT_S = 60
SERVICE_NAMES = frozenset(svc.name for svc in SERVICES)
PORTFOLIO = "portfolio-calculation"
INGEST = "market-data-ingest"
# the portfolio service's reconciliation asks the ledger, with a token from auth
RECONCILE_NEEDS = frozenset({"ledger", "auth", PORTFOLIO})
# The demo feed (dev profile, `make run`): it may end or fail without stopping the stack.
DEMO_FEED = "demo-feed"
# Portfolio report job workers (faust-streaming, portfolio.jobs.v1): TICKERTAP_JOB_WORKERS of
# them, by default one in the dev profile and none in test (the job tests start their own)
# and bench. Jobs wait in Postgres while none runs, so a dead one does not stop the stack.
JOB_WORKER = "portfolio-jobs-worker"
JOB_WORKERS_MAX = 8
OPTIONAL_CHILDREN = frozenset({DEMO_FEED, JOB_WORKER})
DEMO_FEED_SYMBOLS = 10
DEMO_FEED_RATE_PER_S = 20
DEMO_FEED_DESCRIPTION = f"{DEMO_FEED_RATE_PER_S} ticks/s for {DEMO_FEED_SYMBOLS} symbols"
# The portfolio service's periodic reconciliation asks the ledger's API with tokens of a
# machine client (client-credentials grant at auth), provisioned at every start with a new
# secret (see provision_reconcile_client); the bench profile turns the job off.
RECONCILE_CLIENT = "portfolio-reconcile"
RECONCILE_CLIENT_TIMEOUT_S = 60


def reconcile_client_id(cfg: StackConfig) -> str:
    """One client per launcher (its port block): launchers that share servers, as
    tests/e2e/test_external_servers.py does, never rotate each other's secret."""
    return f"{RECONCILE_CLIENT}-{cfg.port_base}"


def reconcile_secret_file(cfg: StackConfig) -> Path:
    return cfg.secrets_dir / f"{RECONCILE_CLIENT}.client_secret"


def reconcile_env(cfg: StackConfig) -> dict[str, str]:
    """The portfolio service's reconciliation settings (see its settings.py)."""
    by_name = {svc.name: svc for svc in SERVICES}
    env = {
        "TICKERTAP_RECONCILE_LEDGER_URL": cfg.service_url(by_name["ledger"]),
        "TICKERTAP_RECONCILE_TOKEN_URL": f"{cfg.service_url(by_name['auth'])}/oauth/token",
        "TICKERTAP_RECONCILE_CLIENT_ID": reconcile_client_id(cfg),
        "TICKERTAP_RECONCILE_CLIENT_SECRET_FILE": str(reconcile_secret_file(cfg)),
    }
    if cfg.profile == "bench":  # benchmarks measure the event path, not a 10,000-owner walk
        env["TICKERTAP_RECONCILE_INTERVAL_S"] = "0"
    return env


def service_env(
    cfg: StackConfig,
    svc: ServiceSpec,
    role_id: str,
    secret_file: Path,
    *,
    without_auth: bool = False,
    with_reconcile: bool = True,
) -> dict[str, str]:
    """The environment the launcher gives `svc`. With `without_auth` (a service run on its
    own, as benchmarks do), tokens are verified against the dev JWKS file instead of the
    auth service's JWKS URL. The portfolio service's reconciliation, which asks the ledger
    with a token from auth, is configured only `with_reconcile` (and with auth)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    env.update(
        TICKERTAP_ENVIRONMENT="development",
        TICKERTAP_HTTP_HOST="127.0.0.1",
        TICKERTAP_HTTP_PORT=str(cfg.service_port(svc)),
        TICKERTAP_DB_HOST=cfg.pg_host,
        TICKERTAP_DB_PORT=str(cfg.pg_port),
        TICKERTAP_DB_NAME="tickertap",
        TICKERTAP_DB_SCHEMA=svc.schema,
        TICKERTAP_KAFKA_BOOTSTRAP_SERVERS=cfg.bootstrap_servers,
        TICKERTAP_VAULT_ADDR=cfg.vault_url,
        TICKERTAP_VAULT_ROLE=svc.schema,
        TICKERTAP_VAULT_ROLE_ID=role_id,
        TICKERTAP_VAULT_SECRET_ID_FILE=str(secret_file),
        TICKERTAP_SCHEMAS_DIR=str(ROOT / "schemas" / "avro"),
        TICKERTAP_AUTH_ISSUER=devkeys.ISSUER,
        TICKERTAP_AUTH_AUDIENCE=devkeys.AUDIENCE,
        # the auth service also publishes the dev key, so dev tokens verify against its JWKS
        TICKERTAP_JWKS_INCLUDE_FILE=str(devkeys.jwks_path(cfg)),
        TICKERTAP_LOG_FILE="",
        PYTHONUNBUFFERED="1",
    )
    if svc.name == "ledger":  # its hot path: the outbox relay runs in a child process
        env["TICKERTAP_OUTBOX_RELAY_PROCESS"] = "true"
        env["TICKERTAP_OUTBOX_RELAY_LINGER_S"] = "0.05"  # fewer, larger relay batches
    if svc.name == "portfolio-calculation":  # live updates encoded on both cores
        env["TICKERTAP_UPDATE_PUBLISHER_PROCESSES"] = "2"
    if without_auth and svc.name != "auth":
        env["TICKERTAP_AUTH_JWKS_FILE"] = str(devkeys.jwks_path(cfg))
    elif svc.name != "auth":  # the others verify tokens against auth's keys (and the dev key)
        auth = next(spec for spec in SERVICES if spec.name == "auth")
        env["TICKERTAP_AUTH_JWKS_URL"] = f"{cfg.service_url(auth)}/.well-known/jwks.json"
        if svc.name == "portfolio-calculation" and with_reconcile:
            env.update(reconcile_env(cfg))
    return env


def provision_reconcile_client(cfg: StackConfig, creds: dict[str, dict[str, str]]) -> None:
    """Create the reconciliation's machine client at auth (or give it a new secret), with
    the auth service's own operator command; the secret goes to the secrets folder."""
    auth = next(svc for svc in SERVICES if svc.name == "auth")
    env = service_env(
        cfg, auth, creds[auth.schema]["role_id"], cfg.secrets_dir / f"{auth.schema}.secret_id"
    )
    client_id = reconcile_client_id(cfg)
    argv = [parts.python(), "-m", "tickertap.auth.cli", "--operator", "stack.py"]
    argv += ["set-client", client_id, "--scope", "ledger:read", "--role", "support"]
    argv += ["--secret-file", str(reconcile_secret_file(cfg))]
    done = subprocess.run(
        argv,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RECONCILE_CLIENT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"provisioning {client_id} failed: {done.stderr[-2000:]}")


def demo_feed_child(cfg: StackConfig) -> Child | None:
    """The simulated upstream feed of `make run` (dev profile only; TICKERTAP_DEMO_FEED=off
    turns it off): lists its symbols through the ingest API, then publishes ticks."""
    if cfg.profile != "dev" or os.environ.get("TICKERTAP_DEMO_FEED", "on") == "off":
        return None
    ingest = next(svc for svc in SERVICES if svc.name == INGEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKERTAP_")}
    env.update(TICKERTAP_SCHEMAS_DIR=str(ROOT / "schemas" / "avro"), PYTHONUNBUFFERED="1")
    argv = [
        parts.python(),
        str(ROOT / "deploy" / "local" / "demo_feed.py"),
        "--ingest-url",
        cfg.service_url(ingest),
        "--key-file",
        str(devkeys.private_key_path(cfg)),
        "--bootstrap-servers",
        cfg.bootstrap_servers,
        "--symbols",
        str(DEMO_FEED_SYMBOLS),
        "--rate",
        str(DEMO_FEED_RATE_PER_S),
    ]
    return Child(DEMO_FEED, argv, cfg.logs_dir / f"{DEMO_FEED}.log", env=env, cwd=ROOT)


def job_worker_count(cfg: StackConfig) -> int:
    """TICKERTAP_JOB_WORKERS, by default 1 in the dev profile and 0 in the others."""
    count = int(os.environ.get("TICKERTAP_JOB_WORKERS", "1" if cfg.profile == "dev" else "0"))
    if not 0 <= count <= JOB_WORKERS_MAX:
        raise SystemExit(f"TICKERTAP_JOB_WORKERS must be in [0, {JOB_WORKERS_MAX}]")
    return count


def job_worker_children(
    cfg: StackConfig,
    role_id: str,
    secret_file: Path,
    *,
    without_auth: bool = False,
    with_reconcile: bool = True,
) -> list[Child]:
    """`python -m tickertap.portfolio.jobs_worker` processes, in the portfolio service's env."""
    count = job_worker_count(cfg)
    portfolio = next(svc for svc in SERVICES if svc.name == PORTFOLIO)
    env = service_env(
        cfg,
        portfolio,
        role_id,
        secret_file,
        without_auth=without_auth,
        with_reconcile=with_reconcile,
    )
    argv = [parts.python(), "-m", "tickertap.portfolio.jobs_worker"]
    return [
        Child(f"{JOB_WORKER}-{n}", argv, cfg.logs_dir / f"{JOB_WORKER}-{n}.log", env=env, cwd=ROOT)
        for n in range(1, count + 1)
    ]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback only
            return bool(r.status == 200)
    except OSError:
        return False


class Supervisor:
    def __init__(self, cfg: StackConfig, services: frozenset[str]) -> None:
        self.cfg = cfg
        self.services = services  # the names of the services to start
        self.children: list[Child] = []
        self.stopping = threading.Event()

    def start(self) -> dict[str, object]:
        cfg = self.cfg
        started = time.monotonic()
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.logs_dir.mkdir(exist_ok=True)
        pg = None if cfg.pg_admin_url else self._add(parts.start_postgres(cfg))
        vault = None if cfg.vault_addr else self._add(parts.start_vault(cfg))
        broker = None if cfg.kafka_bootstrap_servers else self._add(parts.start_broker(cfg))
        parts.wait_postgres(cfg, pg)
        parts.wait_vault(cfg, vault)
        parts.wait_broker(cfg, broker)
        infra_s = time.monotonic() - started
        creds = bootstrap_all(cfg, parts.pg_admin_url(cfg), parts.vault_token(cfg), load_topics())
        bootstrap_s = time.monotonic() - started - infra_s

        services: dict[str, dict[str, object]] = {}
        demo_feed: dict[str, object] | None = None
        job_workers: dict[str, int] = {}
        devkeys.ensure_keys(cfg)
        chosen = [svc for svc in SERVICES if svc.name in self.services]
        without_auth = "auth" not in self.services
        reconciled = self.services >= RECONCILE_NEEDS  # else the portfolio's job stays off
        if chosen:
            for svc in chosen:
                secret_file = cfg.secrets_dir / f"{svc.schema}.secret_id"
                write_private(secret_file, creds[svc.schema]["secret_id"])
                env = service_env(
                    cfg,
                    svc,
                    creds[svc.schema]["role_id"],
                    secret_file,
                    without_auth=without_auth,
                    with_reconcile=reconciled,
                )
                child = Child(
                    svc.name,
                    [parts.python(), "-m", svc.module],
                    cfg.logs_dir / f"{svc.name}.log",
                    env=env,
                    cwd=ROOT,
                )
                self._add(child)
                services[svc.name] = {"url": cfg.service_url(svc), "pid": child.pid}
            for svc in chosen:
                child = next(c for c in self.children if c.name == svc.name)
                url = cfg.service_url(svc)
                wait_until(
                    lambda u=url: http_ok(f"{u}/readyz"),
                    f"{svc.name} /readyz",
                    SERVICE_READY_TIMEOUT_S,
                    child,
                )
            if PORTFOLIO in self.services:
                if reconciled:
                    provision_reconcile_client(cfg, creds)
                for worker in job_worker_children(
                    cfg,
                    creds["portfolio"]["role_id"],
                    cfg.secrets_dir / "portfolio.secret_id",
                    without_auth=without_auth,
                    with_reconcile=reconciled,
                ):
                    self._add(worker)
                    job_workers[worker.name] = worker.pid
            feed = demo_feed_child(cfg) if INGEST in self.services else None
            if feed is not None:
                self._add(feed)
                demo_feed = {"pid": feed.pid, "log": str(cfg.logs_dir / f"{DEMO_FEED}.log")}
        info: dict[str, object] = {
            "profile": cfg.profile,
            "supervisor_pid": os.getpid(),
            "postgres": {
                "host": cfg.pg_host,
                "port": cfg.pg_port,
                "database": "tickertap",
                "pid": pg.pid if pg else None,
            },
            "kafka": {
                "bootstrap_servers": cfg.bootstrap_servers,
                "pid": broker.pid if broker else None,
            },
            "vault": {"addr": cfg.vault_url, "pid": vault.pid if vault else None},
            "services": services,
            "demo_feed": demo_feed,
            "job_workers": job_workers,
            "secrets_dir": str(cfg.secrets_dir),
            "approle_role_ids": {k: v["role_id"] for k, v in creds.items()},
            "startup_s": {
                "infrastructure": round(infra_s, 2),
                "bootstrap": round(bootstrap_s, 2),
                "total": round(time.monotonic() - started, 2),
            },
        }
        write_private(cfg.stack_file, json.dumps(info, indent=2))
        return info

    def _add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def watch(self) -> int:
        """Block until a signal or a child's death; returns the exit code."""
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.name.startswith(tuple(OPTIONAL_CHILDREN)):
                    continue
                if not child.alive():
                    print(
                        f"stack: {child.name} exited with {child.proc.returncode}; stopping "
                        f"(log: {self.cfg.logs_dir / (child.name + '.log')})",
                        flush=True,
                    )
                    return 1
        return 0

    def stop(self) -> None:
        """Services first, all at once (each drains on its own), then the servers in reverse."""
        services = [c for c in self.children if c.name in SERVICE_NAMES]
        for child in services:
            child.signal()
        for child in services:
            child.stop()
        for child in reversed(self.children):
            child.stop()
        self.cfg.stack_file.unlink(missing_ok=True)


def print_urls(info: dict[str, object]) -> None:
    services = info["services"]
    assert isinstance(services, dict)
    print("tickerTap is up.")
    for name, svc in services.items():
        url = svc["url"]
        print(f"  {name:<22} {url}/docs   (metrics {url}/metrics, health {url}/readyz)")
    kafka = info["kafka"]
    vault = info["vault"]
    pg = info["postgres"]
    assert isinstance(kafka, dict)
    assert isinstance(vault, dict)
    assert isinstance(pg, dict)
    print(f"  {'Kafka bootstrap':<22} {kafka['bootstrap_servers']}")
    print(
        f"  {'Vault (OpenBao)':<22} {vault['addr']}   "
        f"(root token: {info['secrets_dir']}/vault_root_token)"
    )
    print(
        f"  {'Postgres':<22} 127.0.0.1:{pg['port']}/tickertap   "
        f"(admin password: {info['secrets_dir']}/pg_admin_password)"
    )
    feed = info.get("demo_feed")
    if isinstance(feed, dict):
        print(f"  {'Demo feed':<22} {DEMO_FEED_DESCRIPTION}   (log: {feed['log']})")
    workers = info.get("job_workers")
    if workers:
        print(f"  {'Report job workers':<22} {len(workers)}   (logs: {JOB_WORKER}-N.log)")
    print(f"  started in {info['startup_s']}", flush=True)


def cmd_run(cfg: StackConfig, services: frozenset[str]) -> int:
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # one supervisor per profile: the lock is held for the life of this process
    lock = open(cfg.state_dir / "supervisor.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"stack ({cfg.profile}) already running; `make down` first", file=sys.stderr)
        return 1
    sup = Supervisor(cfg, services)
    cfg.stack_file.unlink(missing_ok=True)  # a stale one from a killed supervisor
    write_private(cfg.pid_file, str(os.getpid()))

    def on_signal(signum: int, _frame: object) -> None:
        sup.stopping.set()
        if not started.is_set():
            raise KeyboardInterrupt

    started = threading.Event()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        info = sup.start()
        started.set()
        print_urls(info)
        print("Ctrl-C stops everything.", flush=True)
        code = sup.watch()
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        print(f"stack: start failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stack: stopping...", flush=True)
        sup.stop()
        cfg.pid_file.unlink(missing_ok=True)
        print("stack: stopped.", flush=True)
    return code


def supervisor_alive(cfg: StackConfig) -> int | None:
    try:
        pid = int(cfg.pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"stack.py" in cmdline else None


def cmd_up(cfg: StackConfig, services: frozenset[str], started_marker: Path | None) -> int:
    """Start detached and wait until ready. With `--started-marker F`, F is created only
    when this call started the stack (so a caller stops only what it started). A running
    stack is used if it runs at least the services asked for."""
    if started_marker is not None:
        started_marker.unlink(missing_ok=True)
    if supervisor_alive(cfg) and cfg.stack_file.exists():
        info = json.loads(cfg.stack_file.read_text())
        missing = sorted(services - set(info["services"]))
        if missing:
            print(
                f"stack ({cfg.profile}) runs without {', '.join(missing)}; stop it first",
                file=sys.stderr,
            )
            return 1
        print(f"stack ({cfg.profile}) is already running; using it")
        print_urls(info)
        return 0
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg.logs_dir.mkdir(exist_ok=True)
    cfg.stack_file.unlink(missing_ok=True)
    log = open(cfg.logs_dir / "stack.log", "ab")  # noqa: SIM115 - handed to the child
    argv = [parts.python(), str(Path(__file__).resolve()), "run"]
    if not services:
        argv.append("--no-services")
    elif services != SERVICE_NAMES:
        argv += ["--services", ",".join(sorted(services))]
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"stack failed to start; see {cfg.logs_dir}/stack.log:", file=sys.stderr)
            print((cfg.logs_dir / "stack.log").read_text()[-3000:], file=sys.stderr)
            return 1
        if cfg.stack_file.exists():
            if started_marker is not None:
                started_marker.write_text(str(proc.pid))
            print_urls(json.loads(cfg.stack_file.read_text()))
            return 0
        time.sleep(0.1)
    print("stack did not become ready in 120 s", file=sys.stderr)
    proc.terminate()
    return 1


def cmd_down(cfg: StackConfig) -> int:
    pid = supervisor_alive(cfg)
    if pid is None:
        print(f"stack ({cfg.profile}) is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            print(f"stack ({cfg.profile}) stopped")
            return 0
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    print(f"stack ({cfg.profile}) did not stop in 60 s (pid {pid})", file=sys.stderr)
    return 1


def cmd_status(cfg: StackConfig) -> int:
    if supervisor_alive(cfg) and cfg.stack_file.exists():
        print_urls(json.loads(cfg.stack_file.read_text()))
        return 0
    print(f"stack ({cfg.profile}) is not running")
    return 3


def cmd_exec(cfg: StackConfig, service: str | None, argv: list[str]) -> int:
    """Replace this process with `argv`, in the environment the launcher gives `service`.

    The addresses, the AppRole role_id and secret_id file come from the running stack's
    stack.json; `python` and the other tools of this virtualenv come first on PATH.
    Exit 2 when the stack is not running or the call is malformed, else the command's code.
    """
    spec = next((svc for svc in SERVICES if svc.name == service), None)
    if spec is None or not argv:
        names = ", ".join(sorted(SERVICE_NAMES))
        print(f"usage: stack.py exec SERVICE -- COMMAND... (SERVICE: {names})", file=sys.stderr)
        return 2
    if not (supervisor_alive(cfg) and cfg.stack_file.exists()):
        print(f"stack ({cfg.profile}) is not running; `make up` first", file=sys.stderr)
        return 2
    info = json.loads(cfg.stack_file.read_text())
    secret_file = Path(info["secrets_dir"]) / f"{spec.schema}.secret_id"
    if spec.name not in info["services"] or not secret_file.exists():
        print(f"stack ({cfg.profile}) runs without {spec.name}", file=sys.stderr)
        return 2
    env = service_env(
        cfg,
        spec,
        info["approle_role_ids"][spec.schema],
        secret_file,
        without_auth="auth" not in info["services"],
        with_reconcile=set(info["services"]) >= RECONCILE_NEEDS,
    )
    env.update(  # where the running stack's parts are, should the environment have changed
        TICKERTAP_DB_HOST=str(info["postgres"]["host"]),
        TICKERTAP_DB_PORT=str(info["postgres"]["port"]),
        TICKERTAP_KAFKA_BOOTSTRAP_SERVERS=str(info["kafka"]["bootstrap_servers"]),
        TICKERTAP_VAULT_ADDR=str(info["vault"]["addr"]),
        PATH=os.pathsep.join([str(Path(parts.python()).parent), env.get("PATH", "")]),
    )
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the caller's own command
    except OSError as exc:
        print(f"stack.py exec: {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 2
    raise AssertionError("unreachable")  # pragma: no cover - execvpe never returns


def main() -> int:
    argv = sys.argv[1:]
    command_argv: list[str] = []
    if "--" in argv:  # exec SERVICE -- COMMAND...: what follows is the command's
        split = argv.index("--")
        argv, command_argv = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["run", "up", "down", "status", "exec"])
    parser.add_argument("service", nargs="?", help="with exec: whose environment to use")
    parser.add_argument(
        "--started-marker",
        type=Path,
        help="with up: create this file only if this call started the stack",
    )
    parser.add_argument(
        "--no-services", action="store_true", help="start only Postgres, the broker and OpenBao"
    )
    parser.add_argument(
        "--services",
        help="with run/up: start only these services (comma-separated; "
        f"of {', '.join(svc.name for svc in SERVICES)}); without auth, the services verify "
        "tokens against the dev JWKS file only",
    )
    args = parser.parse_args(argv)
    if args.service is not None and args.command != "exec":
        parser.error(f"{args.command} takes no service name")
    services = SERVICE_NAMES
    if args.services is not None and args.command not in ("run", "up"):
        parser.error("--services goes with run or up")
    if args.services is not None:
        services = frozenset(name.strip() for name in args.services.split(",") if name.strip())
        unknown = sorted(services - SERVICE_NAMES)
        if unknown or not services or args.no_services:
            parser.error(
                f"--services takes names of {', '.join(sorted(SERVICE_NAMES))} "
                "(and not with --no-services)"
            )
    if args.no_services:
        services = frozenset()
    cfg = StackConfig.from_env()
    if args.command == "exec":
        return cmd_exec(cfg, args.service, command_argv)
    if args.command == "run":
        return cmd_run(cfg, services)
    if args.command == "up":
        return cmd_up(cfg, services, args.started_marker)
    if args.command == "down":
        return cmd_down(cfg)
    return cmd_status(cfg)


if __name__ == "__main__":
    sys.exit(main())
