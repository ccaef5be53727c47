"""Security scanners over the code, the deployment artifacts and the dependency lock.

- bandit ([tool.bandit] in pyproject.toml) over services/*/src and libs/*/src: no finding
  left; each suppression is an inline `# nosec BXXX  # reason`.
- checkov (.checkov.yaml) over deploy/docker/Dockerfile, the Helm chart as rendered with
  each values file, and docker-compose.yml with its env example (secrets only: checkov has
  no Compose framework): no failed check; every skip carries its reason where it is made.
- pip-audit over requirements/lock.txt and bootstrap.txt, by hashes alone (`--disable-pip`:
  nothing is resolved or installed), against PyPI's vulnerability data. Where that data
  cannot be reached (no network, or an index mirror without PyPI's JSON API), this one test
  skips and says so; nothing else here may skip.

All run from .venv-tools, the scanners' own venv (`make install`; requirements/tools.in
says why it is separate).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rendering import ENVIRONMENTS, ROOT, render

TOOLS_BIN = ROOT / ".venv-tools" / "bin"
BANDIT_TIMEOUT_S = 300
CHECKOV_TIMEOUT_S = 600  # its start-up alone takes ~30 s on a busy 2-core machine
PIP_AUDIT_TIMEOUT_S = 300
PIP_AUDIT_SOCKET_TIMEOUT_S = 15
AUDITED_LOCKS = ("requirements/lock.txt", "requirements/bootstrap.txt")
CHECKOV_FRAMEWORKS = {"dockerfile", "kubernetes"}  # secrets reports only when it finds one
UNREACHABLE = ("ConnectionError", "Max retries", "NameResolutionError", "timed out")


def tool(name: str) -> Path:
    path = TOOLS_BIN / name
    assert path.exists(), f"{path} is missing: run `make install` (it creates .venv-tools)"
    return path


def rendered_files(out_dir: Path) -> list[Path]:
    """The chart rendered with each values file, one YAML file per template."""
    files = []
    for env in ENVIRONMENTS:
        for template, text in render(env).items():
            path = out_dir / env / Path(template).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            files.append(path)
    return files


def checkov_reports(output: str) -> list[dict[str, Any]]:
    data = json.loads(output)
    return data if isinstance(data, list) else [data]


def test_bandit_finds_nothing(tmp_path: Path) -> None:
    sources = sorted(str(p) for p in (*ROOT.glob("services/*/src"), *ROOT.glob("libs/*/src")))
    assert len(sources) >= 8, sources
    report_path = tmp_path / "bandit.json"
    command = [str(tool("bandit")), "-c", str(ROOT / "pyproject.toml"), "-q", "-f", "json"]
    command += ["-o", str(report_path), "-r", *sources]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BANDIT_TIMEOUT_S,
        check=False,
    )
    assert report_path.exists(), result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    findings = [
        f"{r['test_id']} {r['filename']}:{r['line_number']} {r['issue_text']}"
        for r in report["results"]
    ]
    totals = report["metrics"]["_totals"]
    print(f"bandit: {totals['loc']} lines, {totals['skipped_tests']} suppressed inline")
    assert findings == []
    assert report["errors"] == []
    assert result.returncode == 0, result.stderr[-2000:]


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    targets = [
        ROOT / "deploy" / "docker" / "Dockerfile",
        ROOT / "docker-compose.yml",
        ROOT / "deploy" / "compose.env.example",
        *rendered_files(tmp_path / "chart"),
    ]
    command = [str(tool("checkov")), "--config-file", str(ROOT / ".checkov.yaml"), "-o", "json"]
    for target in targets:
        command += ["-f", str(target)]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=CHECKOV_TIMEOUT_S, check=False
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = checkov_reports(result.stdout)
    failed = [
        f"{r['check_type']}: {c['check_id']} {c['check_name']} in {c['file_path']} "
        f"({c['resource']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    summary = {r["check_type"]: r["summary"] for r in reports}
    print(f"checkov: {json.dumps(summary)}")
    assert failed == []
    assert all(s["parsing_errors"] == 0 for s in summary.values()), summary
    assert set(summary) >= CHECKOV_FRAMEWORKS, summary
    # every rendered manifest was scanned, not just parsed past
    assert summary["kubernetes"]["resource_count"] > 0
    assert result.returncode == 0, result.stderr[-2000:]


def test_pip_audit_finds_no_known_vulnerability(tmp_path: Path) -> None:
    report_path = tmp_path / "audit.json"
    command = [str(tool("pip-audit")), "--require-hashes", "--disable-pip"]
    for lock in AUDITED_LOCKS:
        command += ["-r", str(ROOT / lock)]
    command += [
        "--progress-spinner=off",
        f"--timeout={PIP_AUDIT_SOCKET_TIMEOUT_S}",
        "--format=json",
        f"--output={report_path}",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=PIP_AUDIT_TIMEOUT_S, check=False
    )
    if not report_path.exists():
        if any(marker in result.stderr for marker in UNREACHABLE):
            pytest.skip(
                "pip-audit NOT run: the vulnerability data cannot be reached from here "
                f"({result.stderr.strip().splitlines()[-1]})"
            )
        pytest.fail(f"pip-audit failed (exit {result.returncode}): {result.stderr[-2000:]}")
    dependencies = json.loads(report_path.read_text())["dependencies"]
    unaudited = [d["name"] for d in dependencies if "skip_reason" in d]
    if dependencies and len(unaudited) == len(dependencies):
        pytest.skip(
            f"pip-audit NOT run: none of the {len(dependencies)} locked packages could be "
            "looked up in PyPI's vulnerability data (no network here, or an index mirror "
            "without PyPI's JSON API); the locks were NOT audited"
        )
    vulnerable = {
        f"{d['name']}=={d['version']}": [(v["id"], v["fix_versions"]) for v in d["vulns"]]
        for d in dependencies
        if d.get("vulns")
    }
    print(f"pip-audit: {len(dependencies) - len(unaudited)} packages audited")
    assert vulnerable == {}
    assert unaudited == [], "some packages could not be audited while others could"
    assert result.returncode == 0, result.stderr[-2000:]
