"""Fixtures of the deployment checks: the Helm chart rendered once per test session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rendering import ENVIRONMENTS, manifests_of, render


@pytest.fixture(scope="session")
def rendered_chart() -> dict[str, list[dict[str, Any]]]:
    """Environment -> its rendered manifests (all templates, hooks included)."""
    return {env: manifests_of(render(env)) for env in ENVIRONMENTS}
