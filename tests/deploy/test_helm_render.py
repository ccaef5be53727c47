"""The chart as Helm renders it (tests/deploy/conftest.py), with the defaults and with each
environment's values: `helm lint --strict` finds nothing, every manifest validates against
the Kubernetes schemas of the version we target (strict: unknown fields fail), and every
workload carries the hardening the deployment relies on.

test_helm.py checks the templates as text; this checks what a cluster would receive, so an
indentation slip, a setting an environment file drops, or a field Kubernetes does not know
fails here instead of at `helm install`.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tickertap.portfolio.settings import PortfolioSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rendering import CHART, ENVIRONMENTS, NAMESPACE, RELEASE, environment_values, manifests_of

# the Kubernetes version the chart targets (kubernetes-validate ships its schemas offline)
KUBERNETES_VERSION = "1.31.0"
HELM_LINT_WARNING = 2  # severities: 1 info, 2 warning, 3 error; --strict fails on warnings
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
VAULT_ROLE = "vault.hashicorp.com/role"
HOOK = "helm.sh/hook"
COMPONENT = "app.kubernetes.io/component"
MIGRATE_SCRIPT = "/opt/tickertap/ops/migrate.py"
VAULT_TOKEN_VOLUME = "vault.hashicorp.com/agent-service-account-token-volume-name"
TOKEN_LIFETIME_S_MAX = 3600  # the Vault agent logs in once, at pod start
ROLE = "tickertap.io/role"
# portfolio-calculation's report job workers: no HTTP, their replicas bound by the topic
JOB_WORKER = "Deployment/tickertap-portfolio-calculation-jobs"
JOB_WORKER_MODULE = "tickertap.portfolio.jobs_worker"
JOBS_TOPIC = "portfolio.jobs.v1"


def service_schemas() -> dict[str, str]:
    """Component label (the kebab-case services key) -> its schema, Vault role suffix."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    kebab = {
        "auth": "auth",
        "ledger": "ledger",
        "marketDataIngest": "market-data-ingest",
        "portfolioCalculation": "portfolio-calculation",
    }
    assert set(values["services"]) == set(kebab), "a new service: add its component name here"
    return {kebab[key]: svc["schema"] for key, svc in values["services"].items()}


SCHEMAS = service_schemas()


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod a workload runs (metadata and spec), or None for a non-workload."""
    if doc["kind"] in POD_TEMPLATE_KINDS:
        template: dict[str, Any] = doc["spec"]["template"]
        return template
    if doc["kind"] == "CronJob":
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
        return template
    if doc["kind"] == "Pod":
        return doc
    return None


def workloads(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pairs = [(doc, pod) for doc in docs if (pod := pod_template(doc)) is not None]
    assert pairs, "no workload rendered"
    return pairs


def ident(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint_strict(env: str) -> None:
    report = helm.lint(
        CHART, environment_values(env), strict=True, kube_version=f"v{KUBERNETES_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    loud = [m for m in report["messages"] if m["severity"] >= HELM_LINT_WARNING]
    assert loud == [], loud


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_manifest_validates(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    docs = rendered_chart[env]
    failures = []
    for doc in docs:
        # namespaced explicitly: the release's namespace, never an implicit `default`
        assert doc["metadata"]["namespace"] == NAMESPACE, ident(doc)
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{ident(doc)}: {getattr(e, 'message', e)}")
    assert failures == []
    kinds = Counter(doc["kind"] for doc in docs)
    services = len(SCHEMAS)
    # one API per service + the market-data worker + the portfolio job workers
    assert kinds["Deployment"] == services + 2
    assert kinds["Job"] == services  # one migration Job per service
    assert kinds["NetworkPolicy"] == services
    assert kinds["Ingress"] == 1


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_is_hardened(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    for doc, pod in workloads(rendered_chart[env]):
        name = ident(doc)
        spec = pod["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{name}: {flag}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name
        # no Kubernetes API token in the service's containers: the Vault agent alone gets a
        # short-lived projected one
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        token_volume = pod["metadata"]["annotations"][VAULT_TOKEN_VOLUME]
        (source,) = volumes[token_volume]["projected"]["sources"]
        assert source["serviceAccountToken"]["expirationSeconds"] <= TOKEN_LIFETIME_S_MAX, name
        containers = spec["containers"] + spec.get("initContainers", [])
        assert containers, name
        for container in containers:
            where = f"{name} container {container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where} {kind}"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{where}: untagged image {image}"
            assert not image.endswith(":latest"), where


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_api_containers_probe_healthz_and_readyz(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    """Every container that serves HTTP (the APIs, and the market-data worker's /metrics and
    probes) is started, kept alive on /healthz and put in rotation on /readyz. The portfolio
    job workers serve nothing (test_job_workers_run_beside_the_portfolio_api)."""
    serving = 0
    for doc, pod in workloads(rendered_chart[env]):
        for container in pod["spec"]["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if doc["kind"] != "Deployment":
                assert not ports, f"{ident(doc)} is a run-to-completion pod and serves nothing"
                continue
            if ident(doc) == JOB_WORKER:
                continue
            assert "http" in ports, ident(doc)
            serving += 1
            for probe, path in (
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ):
                check = container[probe]["httpGet"]
                assert check["path"] == path, f"{ident(doc)} {probe}"
                assert check["port"] in ("http", ports["http"]), f"{ident(doc)} {probe}"
    assert serving == len(SCHEMAS) + 1


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_logs_in_to_vault_as_its_own_role(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    roles: dict[str, set[str]] = {}
    for doc, pod in workloads(rendered_chart[env]):
        component = pod["metadata"]["labels"][COMPONENT]
        annotations = pod["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/agent-inject"] == "true", ident(doc)
        assert annotations[VAULT_ROLE] == f"tickertap-{SCHEMAS[component]}", ident(doc)
        assert pod["spec"]["serviceAccountName"].startswith(f"tickertap-{component}")
        roles.setdefault(component, set()).add(annotations[VAULT_ROLE])
    assert set(roles) == set(SCHEMAS)
    assert all(len(r) == 1 for r in roles.values()), roles  # one role per service
    assert len({r for rs in roles.values() for r in rs}) == len(SCHEMAS)  # none shared


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_a_network_policy_covers_every_workload(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    docs = rendered_chart[env]
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    selected: Counter[str] = Counter()
    for policy in policies:
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, ident(policy)
        # every rule names its peers: nothing allows all sources or all destinations
        assert all(rule.get("from") for rule in spec["ingress"]), ident(policy)
        assert all(rule.get("to") for rule in spec["egress"]), ident(policy)
        selected[spec["podSelector"]["matchLabels"][COMPONENT]] += 1
    assert selected == Counter(set(SCHEMAS)), "exactly one NetworkPolicy per service"
    for doc, pod in workloads(docs):
        labels = pod["metadata"]["labels"]
        matching = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{ident(doc)} is selected by {len(matching)} policies"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_service_migrates_in_a_hook_before_install_and_upgrade(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    docs = rendered_chart[env]
    hooks = {ident(d): d for d in docs if HOOK in d["metadata"].get("annotations", {})}
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert {j["spec"]["template"]["metadata"]["labels"][COMPONENT] for j in jobs} == set(SCHEMAS)
    for job in jobs:
        annotations = job["metadata"]["annotations"]
        assert set(annotations[HOOK].split(",")) == {"pre-install", "pre-upgrade"}, ident(job)
        spec = job["spec"]
        assert spec["backoffLimit"] >= 0, ident(job)
        assert spec["activeDeadlineSeconds"] > 0, ident(job)
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never", ident(job)
        (container,) = pod["containers"]
        assert MIGRATE_SCRIPT in " ".join(container["command"]), ident(job)
        # its service account is a hook too (the release's own objects do not exist yet),
        # created first: a lower weight
        account = hooks[f"ServiceAccount/{pod['serviceAccountName']}"]
        account_weight = int(account["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert account_weight < int(annotations["helm.sh/hook-weight"]), ident(job)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_job_workers_run_beside_the_portfolio_api(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    """The report job workers: a Deployment of their own (the hardening, Vault role and
    NetworkPolicy checks above iterate it with every workload), no more replicas than the
    jobs topic has partitions (more would only wait), the jobs_worker module with the
    service's settings, no HTTP (no ports, probes or scrape annotations), and outside the
    API's Service, HPA and PDB, so it scales on its own."""
    docs = rendered_chart[env]
    by_ident = {ident(doc): doc for doc in docs}
    deployment = by_ident[JOB_WORKER]
    api = by_ident["Deployment/tickertap-portfolio-calculation"]
    topics = tomllib.loads((CHART.parents[1] / "schemas" / "topics.toml").read_text())
    partitions = topics["topics"][JOBS_TOPIC]["partitions"]
    replicas = deployment["spec"]["replicas"]
    assert 1 <= replicas <= partitions, replicas
    if env != "staging":
        assert replicas == partitions
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"][ROLE] == "jobs"
    assert "prometheus.io/scrape" not in pod["metadata"]["annotations"]
    api_pod = api["spec"]["template"]["spec"]
    assert pod["spec"]["serviceAccountName"] == api_pod["serviceAccountName"]
    (container,) = pod["spec"]["containers"]
    (api_container,) = api_pod["containers"]
    assert container["image"] == api_container["image"]
    assert container["envFrom"] == api_container["envFrom"], "the service's own settings"
    assert container["command"][-1].endswith(f"exec python -m {JOB_WORKER_MODULE}")
    assert "TICKERTAP_VAULT_ROLE_ID=" in container["command"][-1]
    env_vars = {e["name"]: e["value"] for e in container.get("env", [])}
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert mounts == ["/tmp"]
    assert env_vars["TICKERTAP_JOB_DATA_DIR"].startswith("/tmp/"), "its only writable path"
    assert "ports" not in container
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe not in container, f"{probe}: it serves no HTTP"
    # the API's Service, autoscaler and disruption budget select or target the API alone
    for doc in docs:
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]
        elif doc["kind"] == "Service":
            assert doc["spec"]["selector"][ROLE] == "api", ident(doc)
        elif doc["kind"] == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"][ROLE] == "api", ident(doc)


# portfolio-calculation's periodic reconciliation with the ledger (values: its `reconcile`)
PORTFOLIO_API = "Deployment/tickertap-portfolio-calculation"
RECONCILE_ENV = "TICKERTAP_RECONCILE_"
HTTP_PORT = 8000


def reconcile_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    block: dict[str, Any] = values["services"]["portfolioCalculation"]["reconcile"]
    return block


def container_env(doc: dict[str, Any]) -> dict[str, str]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def policy_of(docs: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    (policy,) = [
        doc
        for doc in docs
        if doc["kind"] == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    return policy


def admits(rules: list[dict[str, Any]], side: str, peer: dict[str, str], port: int) -> bool:
    """Whether a rule lets traffic on TCP `port` to (egress: side "to") or from (ingress:
    "from") a pod of this namespace with labels `peer`: a podSelector peer with no
    namespaceSelector whose labels the pod carries."""
    for rule in rules:
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}
        if (port, "TCP") not in ports:
            continue
        for selector in rule[side]:
            if "namespaceSelector" in selector or "podSelector" not in selector:
                continue
            if selector["podSelector"]["matchLabels"].items() <= peer.items():
                return True
    return False


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_portfolio_api_reconciles_with_the_ledger(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portfolio API replicas get the reconciliation's settings: the ledger's Service,
    auth's token endpoint, the client id, scope and interval from the values, and the
    client's secret as a file of the operator's Secret, mounted read-only (never a value:
    no TICKERTAP_RECONCILE_CLIENT_SECRET, nothing in the ConfigMap); with them the
    service's settings load with the job configured. The job workers get none of it."""
    docs = rendered_chart[env]
    by_ident = {ident(doc): doc for doc in docs}
    api = by_ident[PORTFOLIO_API]
    block = reconcile_values()
    env_vars = container_env(api)
    reconcile = {k: v for k, v in env_vars.items() if k.startswith(RECONCILE_ENV)}
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    ledger_service = services["tickertap-ledger"]
    auth_service = services["tickertap-auth"]
    assert [p["port"] for p in ledger_service["spec"]["ports"]] == [HTTP_PORT]
    assert [p["port"] for p in auth_service["spec"]["ports"]] == [HTTP_PORT]
    secret_file = Path(reconcile[f"{RECONCILE_ENV}CLIENT_SECRET_FILE"])
    assert reconcile == {
        f"{RECONCILE_ENV}LEDGER_URL": f"http://tickertap-ledger:{HTTP_PORT}",
        f"{RECONCILE_ENV}TOKEN_URL": f"http://tickertap-auth:{HTTP_PORT}/oauth/token",
        f"{RECONCILE_ENV}CLIENT_ID": block["clientId"],
        f"{RECONCILE_ENV}SCOPE": block["scope"],
        f"{RECONCILE_ENV}INTERVAL_S": str(block["intervalS"]),
        f"{RECONCILE_ENV}CLIENT_SECRET_FILE": str(secret_file),
    }
    assert float(reconcile[f"{RECONCILE_ENV}INTERVAL_S"]) > 0, "the job runs"
    # the secret: a file of the Secret's key, on a read-only mount without subPath (a
    # rotated Secret reaches the running pod)
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(secret_file.parent)]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == block["secretName"]
    assert volume["secret"]["items"] == [{"key": block["secretKey"], "path": secret_file.name}]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "not world-readable"
    assert volume["secret"].get("optional", False) is False, "no start without it"
    # the ConfigMap every role shares carries none of it
    (config_map,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tickertap-portfolio-calculation"
    ]
    assert not [k for k in config_map["data"] if k.startswith(RECONCILE_ENV)]
    # the job workers and the other services: no reconciliation settings, no secret volume
    for doc, other in workloads(docs):
        if doc is api:
            continue
        for c in other["spec"]["containers"]:
            assert not [e for e in c.get("env", []) if e["name"].startswith(RECONCILE_ENV)]
        assert not [v for v in other["spec"]["volumes"] if "secret" in v], ident(doc)

    # what the API container would load: the ConfigMap, then its own env
    for key in [k for k in os.environ if k.startswith("TICKERTAP_")]:
        monkeypatch.delenv(key)
    for key, value in {**config_map["data"], **env_vars}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TICKERTAP_VAULT_ROLE_ID", "from-the-vault-agent")
    settings = PortfolioSettings()  # type: ignore[call-arg]  # from the environment
    assert settings.reconcile_configured()
    assert settings.reconcile_client_secret is None
    assert settings.reconcile_client_secret_file == secret_file


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_portfolio_api_may_reach_the_ledger_and_auth(
    rendered_chart: dict[str, list[dict[str, Any]]], env: str
) -> None:
    """Both NetworkPolicies let the reconciliation through on 8000: the portfolio pods'
    egress to the ledger's and auth's API pods, the ledger's ingress from the portfolio API
    pods (auth already admits every tickerTap pod, for its JWKS). The job workers do not
    reconcile: the ledger does not admit them."""
    docs = rendered_chart[env]
    by_ident = {ident(doc): doc for doc in docs}
    portfolio = pod_labels(by_ident[PORTFOLIO_API])
    jobs = pod_labels(by_ident[JOB_WORKER])
    ledger = pod_labels(by_ident["Deployment/tickertap-ledger"])
    auth = pod_labels(by_ident["Deployment/tickertap-auth"])
    egress = policy_of(docs, portfolio)["spec"]["egress"]
    assert admits(egress, "to", ledger, HTTP_PORT)
    assert admits(egress, "to", auth, HTTP_PORT)
    assert not admits(egress, "to", ledger, HTTP_PORT + 1)
    ledger_ingress = policy_of(docs, ledger)["spec"]["ingress"]
    assert admits(ledger_ingress, "from", portfolio, HTTP_PORT)
    assert not admits(ledger_ingress, "from", jobs, HTTP_PORT)
    assert admits(policy_of(docs, auth)["spec"]["ingress"], "from", portfolio, HTTP_PORT)
    # no other service reaches the ledger's pods, nor does the ledger reach itself this way
    for other in ("auth", "ledger", "market-data-ingest"):
        labels = pod_labels(by_ident[f"Deployment/tickertap-{other}"])
        assert not admits(policy_of(docs, labels)["spec"]["egress"], "to", ledger, HTTP_PORT)
        assert not admits(ledger_ingress, "from", labels, HTTP_PORT)


def render_with(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        texts = chart.render(overrides, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return manifests_of(texts)


def test_reconciliation_can_be_turned_off() -> None:
    """`reconcile.enabled: false`: no settings (the service logs that the job is off), no
    Secret needed, and the NetworkPolicies open nothing for it."""
    docs = render_with({"services": {"portfolioCalculation": {"reconcile": {"enabled": False}}}})
    by_ident = {ident(doc): doc for doc in docs}
    api = by_ident[PORTFOLIO_API]
    assert not [k for k in container_env(api) if k.startswith(RECONCILE_ENV)]
    assert not [v for v in api["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    ledger = pod_labels(by_ident["Deployment/tickertap-ledger"])
    egress = policy_of(docs, pod_labels(api))["spec"]["egress"]
    assert not admits(egress, "to", ledger, HTTP_PORT)
    ledger_ingress = policy_of(docs, ledger)["spec"]["ingress"]
    assert not admits(ledger_ingress, "from", pod_labels(api), HTTP_PORT)


def test_reconciliation_needs_the_secret_name() -> None:
    with pytest.raises(Exception, match=r"reconcile\.secretName"):
        render_with({"services": {"portfolioCalculation": {"reconcile": {"secretName": ""}}}})
