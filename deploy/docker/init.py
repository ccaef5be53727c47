"""Run the project's own bootstrap once, from the bootstrap image, before the services start.

It is deploy/local/bootstrap.py unchanged (the same idempotent steps `make up` runs against
real servers): the `tickertap` database, a schema and NOLOGIN owner role per service, Vault's
database secrets engine with a role per service, an AppRole and policy per service, the
transit keys, and every topic of schemas/topics.toml. Running it again changes nothing but
the AppRole secret_ids: each run issues fresh ones and destroys the earlier ones, so the
services must be (re)started after it.

Needs (environment): TICKERTAP_PG_ADMIN_URL (a Postgres superuser URL; add
`?sslmode=disable` only on a private network), TICKERTAP_VAULT_ADDR and TICKERTAP_VAULT_TOKEN
(a token that may mount engines and write policies), TICKERTAP_KAFKA_BOOTSTRAP_SERVERS (a
principal that may create topics). Writes, for each service schema, `<out>/<schema>/role_id`
and `<out>/<schema>/secret_id` (mode 0600) under TICKERTAP_BOOTSTRAP_OUT_DIR: the services
read them from a volume shared with this container only. Nothing secret is printed.

Topics are created with replication factor 1 (the local bootstrap's choice): on a cluster of
three or more brokers create them beforehand with the replication you want; existing topics
are left as they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# in the image bootstrap.py and config.py sit beside this file; in a checkout, in deploy/local
sys.path[:0] = [str(HERE), str(HERE.parent / "local")]

from bootstrap import bootstrap_all  # noqa: E402
from config import StackConfig, load_topics  # noqa: E402

REQUIRED = (
    "TICKERTAP_PG_ADMIN_URL",
    "TICKERTAP_VAULT_ADDR",
    "TICKERTAP_VAULT_TOKEN",
    "TICKERTAP_KAFKA_BOOTSTRAP_SERVERS",
    "TICKERTAP_BOOTSTRAP_OUT_DIR",
)


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` readable by its owner only, never world-readable in between."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"init: set {', '.join(missing)}", file=sys.stderr)
        return 2
    cfg = StackConfig.from_env()
    topics_file = Path(
        os.environ.get("TICKERTAP_TOPICS_FILE", HERE.parents[1] / "schemas/topics.toml")
    )
    out_dir = Path(os.environ["TICKERTAP_BOOTSTRAP_OUT_DIR"])
    assert cfg.pg_admin_url is not None
    assert cfg.vault_token is not None
    creds = bootstrap_all(cfg, cfg.pg_admin_url, cfg.vault_token, load_topics(topics_file))
    for schema, pair in creds.items():
        write_private(out_dir / schema / "role_id", pair["role_id"])
        write_private(out_dir / schema / "secret_id", pair["secret_id"])
    print(f"init: bootstrapped {', '.join(sorted(creds))}; credentials in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
