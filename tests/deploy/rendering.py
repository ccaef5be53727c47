"""The Helm chart rendered the way `helm template` would (conftest.py renders it once per
session; test_scanners.py writes it out for checkov).

helm-python-sdk binds Helm's own Go SDK (a shared library in the wheel), so this is Helm's
real template engine and value coalescing, with no helm binary and no cluster. The render
is an install (hooks included) of release `tickertap` into namespace `tickertap`, with the
chart's defaults and each environment's values file on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tickertap"
# the default values alone, then each environment's overrides on top of them
ENVIRONMENTS = ("default", "staging", "prod")
RELEASE = "tickertap"
NAMESPACE = "tickertap"


def environment_values(env: str) -> dict[str, Any] | None:
    """The values a `helm install -f values-<env>.yaml` adds to the chart's defaults."""
    if env == "default":
        return None
    data = yaml.safe_load((CHART / f"values-{env}.yaml").read_text())
    assert isinstance(data, dict), env
    return data


def render(env: str) -> dict[str, str]:
    """Template path -> rendered text (several `---` separated manifests per template)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(
            environment_values(env), name=RELEASE, namespace=NAMESPACE, is_install=True
        )


def manifests_of(texts: dict[str, str]) -> list[dict[str, Any]]:
    docs = [doc for text in texts.values() for doc in yaml.safe_load_all(text)]
    return [doc for doc in docs if doc]
