"""docker-compose.yml, checked structurally (no Docker engine here).

Every long-running container has a healthcheck, every image an exact tag, every port an
explicit host address, no secret is written in the file (all come from the git-ignored env
file that deploy/compose.env.example documents), and each service's environment is enough
for its settings class to load: a missing required setting fails here, not at deploy time.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
# the official Compose specification's schema, vendored (its README: source and licence)
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose-spec" / "compose-spec.json"

# compose service -> (settings class, Postgres schema = Vault role, Python module)
APP_SERVICES = {
    "auth": ("tickertap.auth.settings:AuthSettings", "auth", "tickertap.auth"),
    "ledger": ("tickertap.ledger.settings:LedgerSettings", "ledger", "tickertap.ledger"),
    "market-data-ingest": (
        "tickertap.marketdata.settings:MarketDataSettings",
        "market",
        "tickertap.marketdata",
    ),
    "portfolio-calculation": (
        "tickertap.portfolio.settings:PortfolioSettings",
        "portfolio",
        "tickertap.portfolio",
    ),
}
# compose worker -> (settings class, schema, the service whose image and AppRole it shares,
# the module it runs); no HTTP, so no ports, no healthcheck and no Prometheus target
WORKERS = {
    "portfolio-jobs-worker": (
        "tickertap.portfolio.jobs_worker:JobWorkerSettings",
        "portfolio",
        "portfolio-calculation",
        "tickertap.portfolio.jobs_worker",
    ),
}
INFRA = {"postgres", "kafka", "schema-registry", "openbao", "bootstrap", "prometheus", "grafana"}
# the one-shot that provisions the portfolio reconciliation's machine client at auth, and
# the volume it hands the client's secret to the portfolio service in
RECONCILE_CLIENT = "reconcile-client"
RECONCILE_VOLUME = "reconcile-client"
RECONCILE_ENV = "TICKERTAP_RECONCILE_"
ONE_SHOT = {"bootstrap", "feed", RECONCILE_CLIENT}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# a secret's file or an endpoint is not a secret (…_SECRET_ID_FILE, …_SECRET_FILE, …_TOKEN_URL)
SECRET_KEY = re.compile(r"PASSWORD|TOKEN(?!_URL)|SECRET(?!(_ID)?_FILE)|PRIVATE|API_KEY")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _interpolate(value: str) -> str:
    """What compose would substitute, with a placeholder for variables it would require."""

    def sub(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"placeholder-{match['name'].lower()}"

    return INTERPOLATION.sub(sub, value)


def compose_spec_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert compose_spec_errors(compose) == []


def test_the_compose_specification_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    """The schema is strict (unknown keys fail), so the pass above means something."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["ledger"]["restrat"] = broken["services"]["ledger"].pop("restart")
    errors = compose_spec_errors(broken)
    assert len(errors) == 1
    assert "restrat" in errors[0]


def test_every_part_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == INFRA | set(APP_SERVICES) | set(WORKERS) | ONE_SHOT
    assert services["feed"]["profiles"] == ["feed"], "the feed simulator is opt-in"
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("name", sorted(INFRA | set(APP_SERVICES) | set(WORKERS) | ONE_SHOT))
def test_service_is_pinned_bound_and_checked(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    image = service["image"]
    assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._${}:-]+(@sha256:[0-9a-f]{64})?", image), image
    assert not image.endswith((":latest", ":stable")), image
    for port in service.get("ports", []):
        assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: bind ports explicitly"
    healthcheck = service["healthcheck"]
    if name in ONE_SHOT:
        assert service["restart"] == "no"
        assert healthcheck == {"disable": True}
    elif name in WORKERS:
        # long-running but with no HTTP endpoint to check: restarted when it exits
        assert service["restart"] == "unless-stopped"
        assert healthcheck == {"disable": True}
        assert "ports" not in service
    else:
        assert healthcheck["test"][0] == "CMD"
        assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_settings_load(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment compose gives a service makes its settings class load."""
    service = compose["services"][name]
    target, schema, module = APP_SERVICES[name]
    assert service["build"]["args"] == {"SERVICE": name, "MODULE": module}
    _check_app_container(service, target, schema, monkeypatch)


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_runs_its_services_image_and_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker container: its service's image, environment, AppRole and hardening, its own
    module, started after its service is healthy (which has migrated the schema)."""
    service = compose["services"][name]
    target, schema, owner, module = WORKERS[name]
    owner_service = compose["services"][owner]
    assert service["image"] == owner_service["image"]
    assert service["build"] == owner_service["build"]
    assert service["command"][0].endswith(f"exec python -m {module}")
    assert service["depends_on"][owner] == {"condition": "service_healthy"}
    # the service's own settings, but the reconciliation's: its API replicas run that job
    owner_env = {
        k: v for k, v in owner_service["environment"].items() if not k.startswith(RECONCILE_ENV)
    }
    shared = {k: v for k, v in service["environment"].items() if k in owner_env}
    assert shared == owner_env, "the service's own settings"
    assert not [k for k in service["environment"] if k.startswith(RECONCILE_ENV)]
    assert [m["source"] for m in service["volumes"]] == ["credentials"]
    assert service["environment"]["TICKERTAP_JOB_DATA_DIR"].startswith("/tmp/")
    _check_app_container(service, target, schema, monkeypatch)


def _check_app_container(
    service: dict[str, Any], target: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Checks `service` and returns its settings, loaded from the environment compose gives
    it (the role_id a placeholder)."""
    environment = {k: _interpolate(str(v)) for k, v in service["environment"].items()}
    assert environment["TICKERTAP_DB_SCHEMA"] == schema
    assert environment["TICKERTAP_VAULT_ROLE"] == schema
    assert environment["TICKERTAP_KAFKA_SCHEMA_REGISTRY_URL"].startswith("http://schema-registry")
    # hardened: read-only root with a /tmp tmpfs, no capabilities, no privilege gain
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert any(t.startswith("/tmp") for t in service["tmpfs"])
    mounts = {m["source"]: m for m in service["volumes"]}
    mount = mounts.pop("credentials")
    assert mount["read_only"] is True
    assert mount["volume"]["subpath"] == schema, "each service sees only its own AppRole"
    # whatever else it mounts (the portfolio service: its reconciliation client's secret)
    # it only reads
    assert all(m["read_only"] is True for m in mounts.values()), mounts
    assert service["depends_on"]["bootstrap"] == {"condition": "service_completed_successfully"}
    return _load_settings(service, target, schema, monkeypatch)


def _load_settings(
    service: dict[str, Any], target: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """`target`, the settings class, loaded from the environment compose gives `service`."""
    for key in [k for k in os.environ if k.startswith("TICKERTAP_")]:
        monkeypatch.delenv(key)
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value)))
    # the entrypoint exports the role_id read from the credentials volume
    assert "TICKERTAP_VAULT_ROLE_ID=" in service["command"][0]
    monkeypatch.setenv("TICKERTAP_VAULT_ROLE_ID", "from-the-volume")
    module_name, class_name = target.split(":")
    settings = getattr(importlib.import_module(module_name), class_name)()
    assert settings.db_schema == schema
    assert settings.environment == "production"
    return settings


def test_no_secret_literal_in_the_file(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    # credentials inside URLs come from interpolation only
    for user_info in re.findall(r"://([^/@\s]+)@", text):
        password = user_info.partition(":")[2]
        assert INTERPOLATION.fullmatch(password), f"literal password in a URL: {user_info}"
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if SECRET_KEY.search(key):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}: {key} is a literal"
    # no long unbroken alphanumeric run anywhere (a hex or base64 token pasted in by
    # mistake); names and paths have separators
    assert re.findall(r"[A-Za-z0-9]{24,}", text) == []


def test_env_file_is_documented_and_ignored() -> None:
    required = {m["name"] for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required <= documented, f"undocumented: {sorted(required - documented)}"
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if SECRET_KEY.search(key) or key == "KAFKA_CLUSTER_ID":
            assert value == "CHANGE-ME", f"the example holds a real value for {key}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/compose.env"], cwd=ROOT, check=False, timeout=30
    )
    assert ignored.returncode == 0, "deploy/compose.env must be git-ignored"


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert {f"{name}:8000" for name in APP_SERVICES} <= targets


def test_grafana_dashboard_is_provisioned(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/compose/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    provider = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/dashboards/tickertap.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = list((ROOT / "deploy/compose/grafana/dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert exprs
        assert all("tickertap_" in e or "up{" in e for e in exprs)


def test_bootstrap_runs_the_project_bootstrap(compose: dict[str, Any]) -> None:
    bootstrap = compose["services"]["bootstrap"]
    assert bootstrap["build"]["target"] == "bootstrap"
    for needed in (
        "TICKERTAP_PG_ADMIN_URL",
        "TICKERTAP_VAULT_TOKEN",
        "TICKERTAP_BOOTSTRAP_OUT_DIR",
    ):
        assert needed in bootstrap["environment"]
    assert set(bootstrap["depends_on"]) == {"postgres", "kafka", "openbao"}


def _mount_of(service: dict[str, Any], path: str) -> dict[str, Any]:
    """The mount `path` lies in (the deepest target above it)."""
    above = [m for m in service["volumes"] if Path(path).is_relative_to(m["target"])]
    assert above, f"{path} is on no mount"
    mount: dict[str, Any] = max(above, key=lambda m: len(m["target"]))
    return mount


def test_portfolio_reconciles_with_a_provisioned_client(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portfolio service gets the reconciliation's settings (the ledger's and auth's
    compose addresses, the client, scope and interval) and reads the client's secret from
    the reconcile-client volume, read-only; the reconcile-client one-shot provisions that
    same client with auth's set-client (auth's image, settings and AppRole, after auth is
    healthy) and writes the secret into that volume, before the portfolio service starts.
    No other container mounts the volume."""
    services = compose["services"]
    portfolio = services["portfolio-calculation"]
    one_shot = services[RECONCILE_CLIENT]
    auth = services["auth"]
    env = portfolio["environment"]
    reconcile = {k.removeprefix(RECONCILE_ENV): v for k, v in env.items() if RECONCILE_ENV in k}
    assert set(reconcile) == {
        "LEDGER_URL",
        "TOKEN_URL",
        "CLIENT_ID",
        "SCOPE",
        "CLIENT_SECRET_FILE",
        "INTERVAL_S",
    }, "the secret only as a file"
    assert reconcile["LEDGER_URL"] == "http://ledger:8000"
    assert reconcile["TOKEN_URL"] == "http://auth:8000/oauth/token"
    assert float(reconcile["INTERVAL_S"]) > 0, "the job runs"
    assert {"ledger", "auth"} <= set(services)

    # the one-shot: auth's image, settings and AppRole, once auth has migrated its schema
    assert one_shot["image"] == auth["image"]
    assert one_shot["build"] == auth["build"]
    assert one_shot["depends_on"] == {"auth": {"condition": "service_healthy"}}
    assert one_shot["read_only"] is True
    assert one_shot["cap_drop"] == ["ALL"]
    assert one_shot["security_opt"] == ["no-new-privileges:true"]
    one_env = one_shot["environment"]
    assert {k: v for k, v in one_env.items() if k in auth["environment"]} == {
        **auth["environment"],
        "TICKERTAP_VAULT_SECRET_ID_FILE": one_env["TICKERTAP_VAULT_SECRET_ID_FILE"],
    }
    approle = _mount_of(one_shot, one_env["TICKERTAP_VAULT_SECRET_ID_FILE"])
    assert approle["source"] == "credentials"
    assert approle["volume"]["subpath"] == "auth"
    assert approle["read_only"] is True
    command = one_shot["command"][0]
    role_id_file = re.search(r"cat (\S+)\)", command)
    assert role_id_file is not None
    assert _mount_of(one_shot, role_id_file[1]) is approle
    # it provisions the client the portfolio service uses, with the role and scope it needs
    argv = shlex.split(command.split("&&", 1)[1].replace("$$", "$"))
    assert argv[:4] == ["exec", "python", "-m", "tickertap.auth.cli"]
    at = argv.index("set-client")
    assert argv[at + 1] == "$RECONCILE_CLIENT_ID"
    assert one_env["RECONCILE_CLIENT_ID"] == reconcile["CLIENT_ID"]
    assert argv[argv.index("--scope") + 1] == "$RECONCILE_SCOPE"
    assert one_env["RECONCILE_SCOPE"] == reconcile["SCOPE"] == "ledger:read"
    assert argv[argv.index("--role") + 1] == "support"  # reads every customer's accounts
    # ... and writes its secret into the volume the portfolio service reads it from
    written = argv[argv.index("--secret-file") + 1]
    writes = _mount_of(one_shot, written)
    reads = _mount_of(portfolio, reconcile["CLIENT_SECRET_FILE"])
    assert writes["source"] == reads["source"] == RECONCILE_VOLUME
    assert not writes.get("read_only", False)
    assert reads["read_only"] is True
    assert Path(written).relative_to(writes["target"]) == Path(
        reconcile["CLIENT_SECRET_FILE"]
    ).relative_to(reads["target"])
    assert portfolio["depends_on"][RECONCILE_CLIENT] == {
        "condition": "service_completed_successfully"
    }
    assert RECONCILE_VOLUME in compose["volumes"]
    mounting = {
        name
        for name, service in services.items()
        for m in service.get("volumes", [])
        if isinstance(m, dict) and m["source"] == RECONCILE_VOLUME
    }
    assert mounting == {RECONCILE_CLIENT, "portfolio-calculation"}

    # both load their settings from what compose gives them
    settings = _check_app_container(
        portfolio, APP_SERVICES["portfolio-calculation"][0], "portfolio", monkeypatch
    )
    assert settings.reconcile_configured()
    assert settings.reconcile_client_secret is None
    one_shot_settings = _load_settings(one_shot, APP_SERVICES["auth"][0], "auth", monkeypatch)
    assert str(one_shot_settings.vault_secret_id_file) == one_env["TICKERTAP_VAULT_SECRET_ID_FILE"]
