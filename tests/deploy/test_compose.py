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
ONE_SHOT = {"bootstrap", "feed"}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET(?!_ID_FILE)|PRIVATE|API_KEY")


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
    assert set(services) == INFRA | set(APP_SERVICES) | set(WORKERS) | {"feed"}
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
    shared = {k: v for k, v in service["environment"].items() if k in owner_service["environment"]}
    assert shared == owner_service["environment"], "the service's own settings"
    assert service["environment"]["TICKERTAP_JOB_DATA_DIR"].startswith("/tmp/")
    _check_app_container(service, target, schema, monkeypatch)


def _check_app_container(
    service: dict[str, Any], target: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {k: _interpolate(str(v)) for k, v in service["environment"].items()}
    assert environment["TICKERTAP_DB_SCHEMA"] == schema
    assert environment["TICKERTAP_VAULT_ROLE"] == schema
    assert environment["TICKERTAP_KAFKA_SCHEMA_REGISTRY_URL"].startswith("http://schema-registry")
    # hardened: read-only root with a /tmp tmpfs, no capabilities, no privilege gain
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert any(t.startswith("/tmp") for t in service["tmpfs"])
    (mount,) = service["volumes"]
    assert mount["source"] == "credentials"
    assert mount["read_only"] is True
    assert mount["volume"]["subpath"] == schema, "each service sees only its own AppRole"
    assert service["depends_on"]["bootstrap"] == {"condition": "service_completed_successfully"}

    for key in [k for k in os.environ if k.startswith("TICKERTAP_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    # the entrypoint exports the role_id read from the credentials volume
    assert "TICKERTAP_VAULT_ROLE_ID=" in service["command"][0]
    monkeypatch.setenv("TICKERTAP_VAULT_ROLE_ID", "from-the-volume")
    module_name, class_name = target.split(":")
    settings = getattr(importlib.import_module(module_name), class_name)()
    assert settings.db_schema == schema
    assert settings.environment == "production"


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
