"""Idempotent bootstrap of Postgres, Vault (OpenBao) and Kafka: run it twice, nothing breaks.

Postgres: one database; per service a schema owned by a NOLOGIN `<schema>_owner`
role; `vault_admin`, the Vault connection user, may grant the owner roles but
holds no data rights; `public` is locked down.

Vault: the database secrets engine issues each service short-lived logins that
are members of its owner role and switch to it at login (`ALTER ROLE ... SET
role`), so every object belongs to the owner role and survives rotation; an
AppRole and a policy per service allow only its own credentials and transit key.

Kafka: every topic in schemas/topics.toml, created explicitly.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from urllib.parse import urlsplit

import asyncpg
import hvac
from config import DATABASE_NAME, SERVICES, ServiceSpec, StackConfig, TopicSpec
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

DB_CONNECTION = "tickertap"
CREDENTIAL_TTL = "15m"
CREDENTIAL_TTL_MAX = "1h"
PG_VERSION_NUM_MIN = 160000


def _ident(name: str) -> str:
    assert name.replace("_", "").isalnum(), name
    return f'"{name}"'


async def bootstrap_postgres(admin_url: str, vault_admin_password: str) -> None:
    assert vault_admin_password.isalnum()
    conn = await asyncpg.connect(admin_url)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        if int(version) < PG_VERSION_NUM_MIN:
            raise SystemExit(
                f"Postgres {version} is too old: the grant options used here need 16 or newer"
            )
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME):
            await conn.execute(f"CREATE DATABASE {_ident(DATABASE_NAME)}")
        # service logins may connect to their own database only
        await conn.execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC")
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    db_url = parts._replace(path=f"/{DATABASE_NAME}").geturl()
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            # bootstrap runs at every start; the lock keeps two starts from racing
            await conn.execute("SELECT pg_advisory_xact_lock(7271)")
            await conn.execute(f"REVOKE ALL ON DATABASE {_ident(DATABASE_NAME)} FROM PUBLIC")
            await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            await conn.execute(
                """DO $$ BEGIN
                     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_admin') THEN
                       CREATE ROLE vault_admin LOGIN CREATEROLE;
                     END IF;
                   END $$"""
            )
            # a fresh password each start: Vault rotates it at once, so no one keeps it
            await conn.execute(
                f"ALTER ROLE vault_admin WITH LOGIN CREATEROLE NOSUPERUSER NOCREATEDB "
                f"PASSWORD '{vault_admin_password}'"
            )
            await conn.execute("GRANT pg_signal_backend TO vault_admin")
            # logins from an earlier Vault (the dev server keeps leases in memory) that
            # expired without being revoked: they cannot log in, drop them
            stale = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' "
                "AND rolvaliduntil < now() - interval '1 minute'"
            )
            for row in stale:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    row["rolname"],
                )
                name = row["rolname"]
                assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
                await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
            await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(DATABASE_NAME)} TO vault_admin")
            for svc in SERVICES:
                owner = _ident(svc.owner_role)
                await conn.execute(
                    f"""DO $$ BEGIN
                         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{svc.owner_role}')
                         THEN CREATE ROLE {owner} NOLOGIN;
                         END IF;
                       END $$"""
                )
                await conn.execute(
                    f"CREATE SCHEMA IF NOT EXISTS {_ident(svc.schema)} AUTHORIZATION {owner}"
                )
                await conn.execute(f"REVOKE ALL ON SCHEMA {_ident(svc.schema)} FROM PUBLIC")
                await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(DATABASE_NAME)} TO {owner}")
                await conn.execute(
                    f"GRANT {owner} TO vault_admin WITH ADMIN TRUE, INHERIT FALSE, SET FALSE"
                )
    finally:
        await conn.close()


def creation_statements(svc: ServiceSpec) -> list[str]:
    return [
        f"CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' "
        f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {_ident(svc.owner_role)};",
        f"ALTER ROLE \"{{{{name}}}}\" SET role = '{svc.owner_role}';",
        f"ALTER ROLE \"{{{{name}}}}\" SET search_path = '{svc.schema}';",
    ]


REVOCATION_STATEMENTS = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'DROP ROLE IF EXISTS "{{name}}";',
]


def policy(svc: ServiceSpec) -> str:
    name = svc.schema
    return f"""
path "database/creds/{name}" {{ capabilities = ["read"] }}
path "sys/leases/renew/database/creds/{name}/*" {{ capabilities = ["update"] }}
path "sys/leases/revoke/database/creds/{name}/*" {{ capabilities = ["update"] }}
path "transit/encrypt/{name}" {{ capabilities = ["update"] }}
path "transit/decrypt/{name}" {{ capabilities = ["update"] }}
path "transit/rewrap/{name}" {{ capabilities = ["update"] }}
path "transit/hmac/{name}" {{ capabilities = ["update"] }}
path "transit/verify/{name}" {{ capabilities = ["update"] }}
path "transit/datakey/plaintext/{name}" {{ capabilities = ["update"] }}
path "transit/keys/{name}" {{ capabilities = ["read"] }}
""" + (SIGNING_POLICY if svc.schema == "auth" else "")


# The auth service signs access tokens with a Vault transit Ed25519 key: the private key
# never leaves Vault; the service reads the public halves for its JWKS and rotates the key.
SIGNING_KEY = "auth-jwt"
SIGNING_POLICY = f"""
path "transit/sign/{SIGNING_KEY}" {{ capabilities = ["update"] }}
path "transit/sign/{SIGNING_KEY}/*" {{ capabilities = ["update"] }}
path "transit/keys/{SIGNING_KEY}" {{ capabilities = ["read"] }}
path "transit/keys/{SIGNING_KEY}/rotate" {{ capabilities = ["update"] }}
"""


def bootstrap_vault(
    client: hvac.Client,
    pg_host: str,
    pg_port: int,
    vault_admin_password: str,
    *,
    sslmode: str,
    test_roles: bool,
) -> dict[str, dict[str, str]]:
    """Configure Vault; returns each service's AppRole role_id and a fresh secret_id."""
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "database/" not in mounts:
        client.sys.enable_secrets_engine("database", path="database")
    if "transit/" not in mounts:
        client.sys.enable_secrets_engine("transit", path="transit")
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")

    client.secrets.database.configure(
        name=DB_CONNECTION,
        plugin_name="postgresql-database-plugin",
        connection_url=(
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg_host}:{pg_port}/{DATABASE_NAME}"
            f"?sslmode={sslmode}"
        ),
        username="vault_admin",
        password=vault_admin_password,
        # the test profile lets tests make short-lived roles (rotation under load)
        allowed_roles=[svc.schema for svc in SERVICES] + (["test-*"] if test_roles else []),
        password_authentication="scram-sha-256",
        verify_connection=True,
    )
    # the connection user's password is now known to Vault alone
    client.secrets.database.rotate_root_credentials(name=DB_CONNECTION)

    try:
        client.secrets.transit.read_key(name=SIGNING_KEY)
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(name=SIGNING_KEY, key_type="ed25519")
    credentials: dict[str, dict[str, str]] = {}
    for svc in SERVICES:
        client.secrets.database.create_role(
            name=svc.schema,
            db_name=DB_CONNECTION,
            creation_statements=creation_statements(svc),
            revocation_statements=REVOCATION_STATEMENTS,
            default_ttl=CREDENTIAL_TTL,
            max_ttl=CREDENTIAL_TTL_MAX,
        )
        try:
            client.secrets.transit.read_key(name=svc.schema)
        except hvac.exceptions.InvalidPath:
            client.secrets.transit.create_key(name=svc.schema, key_type="aes256-gcm96")
        policy_name = f"tickertap-{svc.schema}"
        client.sys.create_or_update_policy(name=policy_name, policy=policy(svc))
        client.auth.approle.create_or_update_approle(
            role_name=svc.schema,
            token_policies=[policy_name],
            token_ttl="1h",
            token_max_ttl="24h",
            secret_id_ttl="0",
        )
        role_id = client.auth.approle.read_role_id(svc.schema)["data"]["role_id"]
        # one live secret_id per service: the ones handed out by earlier starts end here
        _destroy_secret_ids(client, svc.schema)
        secret_id = client.auth.approle.generate_secret_id(svc.schema)["data"]["secret_id"]
        credentials[svc.schema] = {"role_id": role_id, "secret_id": secret_id}
    return credentials


def _destroy_secret_ids(client: hvac.Client, role: str) -> None:
    try:
        accessors = client.auth.approle.list_secret_id_accessors(role)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return  # none yet
    for accessor in accessors:
        client.auth.approle.destroy_secret_id_accessor(role, accessor)


def bootstrap_topics(bootstrap_servers: str, topics: list[TopicSpec]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [NewTopic(t.name, t.partitions, 1, config=t.config) for t in topics],
        operation_timeout=10,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"creating topic {name}: {exc}") from exc


def bootstrap_all(
    cfg: StackConfig, pg_admin_url: str, vault_token: str, topics: list[TopicSpec]
) -> dict[str, dict[str, str]]:
    vault_admin_password = secrets.token_hex(24)
    asyncio.run(bootstrap_postgres(pg_admin_url, vault_admin_password))
    client = hvac.Client(url=cfg.vault_url, token=vault_token)
    creds = bootstrap_vault(
        client,
        cfg.pg_host,
        cfg.pg_port,
        vault_admin_password,
        sslmode=cfg.pg_sslmode,
        test_roles=cfg.profile == "test",
    )
    bootstrap_topics(cfg.bootstrap_servers, topics)
    return creds


if __name__ == "__main__":  # pragma: no cover - manual use: print the topic plan
    from config import load_topics

    print(json.dumps([t.__dict__ for t in load_topics()], indent=2))
