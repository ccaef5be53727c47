"""The Helm chart, checked without a helm binary: the chart metadata and values files parse,
the environment files override only keys the defaults define, every `.Values` path and
every per-service `$svc` key a template uses exists, and the security, probe, Vault and
migration settings the deployment relies on are there.

These read the templates as text; test_helm_render.py renders them with Helm's Go SDK and
checks what a cluster would receive (schemas, and the same settings on every workload).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tickertap"
TEMPLATES = sorted((CHART / "templates").glob("*"))
ENVIRONMENTS = ("staging", "prod")

sys.path.insert(0, str(ROOT / "deploy" / "local"))
from config import SERVICES  # noqa: E402  # the local stack's list: names and schemas

VALUES_PATH = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
SERVICE_KEY = re.compile(r"\$svc((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
INGRESS_PATHS = {"/auth", "/ledger", "/market", "/portfolio"}


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / name).read_text())
    assert isinstance(data, dict), name
    return data


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load("values.yaml")


def has_path(tree: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(tree, dict) or not tree:
        return [prefix]
    return [p for key, sub in tree.items() for p in leaf_paths(sub, (*prefix, key))]


def test_chart_metadata() -> None:
    chart = load("Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["appVersion"])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_overrides_only_known_keys(values: dict[str, Any], env: str) -> None:
    override = load(f"values-{env}.yaml")
    for path in leaf_paths(override):
        assert has_path(values, list(path)), f"values-{env}.yaml sets unknown {'.'.join(path)}"
    # security settings are the same everywhere: no environment may loosen them
    for key in ("podSecurityContext", "containerSecurityContext", "migrations"):
        assert key not in override, f"values-{env}.yaml must not change {key}"


@pytest.mark.parametrize("template", [t.name for t in TEMPLATES])
def test_template_references_exist(values: dict[str, Any], template: str) -> None:
    text = (CHART / "templates" / template).read_text()
    assert text.count("{{") == text.count("}}"), "unbalanced template delimiters"
    for match in VALUES_PATH.finditer(text):
        path = match[1].lstrip(".").split(".")
        assert has_path(values, path), f"{template}: .Values.{'.'.join(path)} is not in values"
    for match in SERVICE_KEY.finditer(text):
        path = match[1].lstrip(".").split(".")
        for name, service in values["services"].items():
            assert has_path(service, path), f"{template}: services.{name} lacks {path}"


def test_one_component_per_service(values: dict[str, Any]) -> None:
    services = values["services"]
    assert {s["schema"] for s in services.values()} == {spec.schema for spec in SERVICES}
    assert {s["module"] for s in services.values()} == {spec.module for spec in SERVICES}
    assert {s["path"] for s in services.values()} == INGRESS_PATHS
    for name, service in services.items():
        assert service["image"].startswith("tickertap-"), name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(service["resources"][kind]), name
        assert service["autoscaling"]["minReplicas"] <= service["autoscaling"]["maxReplicas"]
        assert service["pdb"]["minAvailable"] < service["autoscaling"]["minReplicas"], name
    # only market-data-ingest has a separate worker (its single ingest replica)
    assert [n for n, s in services.items() if s["worker"]["enabled"]] == ["marketDataIngest"]
    # only portfolio-calculation has job workers; the templates read the block's keys only
    # where it is enabled (through $jobWorker, so the $svc check above does not see them)
    assert [n for n, s in services.items() if s["jobWorker"]["enabled"]] == ["portfolioCalculation"]
    job_worker = services["portfolioCalculation"]["jobWorker"]
    assert set(job_worker) == {"enabled", "module", "replicas", "resources", "env"}
    assert job_worker["module"] == "tickertap.portfolio.jobs_worker"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(job_worker["resources"][kind])
    # only portfolio-calculation reconciles with the ledger (the templates read the block
    # with `get`, so the others need none); it names the machine client and the operator's
    # Secret, never holds the secret itself
    reconciling = [n for n, s in services.items() if s.get("reconcile", {}).get("enabled")]
    assert reconciling == ["portfolioCalculation"]
    reconcile = services["portfolioCalculation"]["reconcile"]
    keys = {"enabled", "clientId", "scope", "intervalS", "secretName", "secretKey"}
    assert set(reconcile) == keys
    assert reconcile["scope"] == "ledger:read"


def test_security_settings(values: dict[str, Any]) -> None:
    pod = values["podSecurityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the image's user (deploy/docker/Dockerfile)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = values["containerSecurityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["runAsNonRoot"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}


def test_workloads_use_the_security_probes_and_vault() -> None:
    """Every pod template (Deployments and the migration Jobs) gets the same hardening."""
    for name in ("deployment.yaml", "migration-job.yaml"):
        text = (CHART / "templates" / name).read_text()
        assert "toYaml $.Values.podSecurityContext" in text, name
        assert "toYaml $.Values.containerSecurityContext" in text, name
        assert 'include "tickertap.vaultAnnotations"' in text, name
        assert 'include "tickertap.volumeMounts"' in text, name  # the only writable path
        assert "resources:" in text, name
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz")):
        assert re.search(rf"{probe}:\n\s+httpGet: \{{path: {path}, port: http\}}", deployment)
    assert re.search(r"readinessProbe:\n\s+httpGet: \{path: /readyz, port: http\}", deployment)
    assert "prometheus.io/scrape" in deployment
    assert "type: Recreate" in deployment  # never two market-data workers at once


def test_migration_job_runs_before_upgrades() -> None:
    text = (CHART / "templates" / "migration-job.yaml").read_text()
    assert "helm.sh/hook: pre-install,pre-upgrade" in text
    assert "python /opt/tickertap/ops/migrate.py" in text
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert "/opt/tickertap/ops/migrate.py" in dockerfile


def test_every_kind_is_there() -> None:
    kinds = {
        match
        for template in TEMPLATES
        for match in re.findall(r"^kind: (\w+)$", template.read_text(), re.M)
    }
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "ServiceAccount",
        "NetworkPolicy",
        "Ingress",
        "Job",
    }
