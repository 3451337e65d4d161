"""`make sonar` against a real SonarQube: the quality gate is read back as OK, coverage imported.

SonarQube comes from Maven Central through scripts/sonarqube.sh (cached zip, unprivileged
user, embedded H2) on free ports in a fresh home, so nothing is shared with other runs.
The analysed tree is a `git archive` of HEAD with its own reports, so the scan sees exactly
committed code. Slow: SonarQube takes minutes to start on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from tests.fixtures.mlflow_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "sonarqube.sh"
VENV = Path(sys.executable).parent.parent
PROJECT_KEY = "mlops-chain"
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class SonarQube:
    url: str
    token: str


def _script(env: dict[str, str], command: str, timeout_s: float) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"sonarqube.sh {command} failed:\n{done.stderr[-3000:]}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def sonarqube() -> Iterator[SonarQube]:
    """A fresh SonarQube on free ports; stopped and removed after the module."""
    if shutil.which("java") is None:
        pytest.fail("no java on PATH: the scanner needs the local JRE")
    # the service user must reach this directory, so not pytest's private tmp
    (REPO_ROOT / "var").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sonar-test-", dir=REPO_ROOT / "var"))
    home.chmod(0o755)
    port = free_port()
    env = {
        **os.environ,
        "SONAR_HOME_DIR": str(home),
        "SONAR_PORT": str(port),
        "SONAR_H2_PORT": str(free_port()),
        "SONAR_START_TIMEOUT": str(START_TIMEOUT_S),
    }
    try:
        _script(env, "start", timeout_s=START_TIMEOUT_S + 120)
        url = _script(env, "url", timeout_s=30)
        token = _script(env, "token", timeout_s=120)
        yield SonarQube(url=url, token=token)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=300, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _checkout_of_head(destination: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")
    return destination


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def _measures(sonar: SonarQube, *metrics: str) -> dict[str, float]:
    answer = httpx.get(
        f"{sonar.url}/api/measures/component",
        params={"component": PROJECT_KEY, "metricKeys": ",".join(metrics)},
        auth=(sonar.token, ""),
        timeout=30,
    )
    answer.raise_for_status()
    return {m["metric"]: float(m["value"]) for m in answer.json()["component"]["measures"]}


def _wait_for_measures(sonar: SonarQube, *metrics: str, timeout_s: float = 120) -> dict:
    """Measures appear once the compute engine has stored the analysis."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _measures(sonar, *metrics)
        if set(metrics) <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def test_make_sonar_passes_the_quality_gate_with_coverage(
    sonarqube: SonarQube, tmp_path: Path
) -> None:
    project = _checkout_of_head(tmp_path / "checkout")
    env = {**os.environ, "SONAR_HOST_URL": sonarqube.url, "SONAR_TOKEN": sonarqube.token}
    env.pop("SONAR_AUTH_TOKEN", None)
    # the reports sonar-project.properties imports: a quick test run for coverage and JUnit,
    # plus the fast linters (the full set is `make quality`)
    _run(
        [
            str(VENV / "bin" / "pytest"),
            "tests/unit/test_data.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--cov",
            "--cov-report=xml:reports/coverage.xml",
            "--junitxml=reports/junit.xml",
        ],
        project,
        env,
        timeout_s=600,
    )
    make = ["make", f"VENV={VENV}", "-o", f"{VENV}/.installed"]
    _run([*make, "lint-style", "security-bandit"], project, env, timeout_s=600)

    output = _run([*make, "sonar"], project, env, timeout_s=1200)

    assert "QUALITY GATE" in output.upper(), "the scanner did not wait for the gate"
    gate = httpx.get(
        f"{sonarqube.url}/api/qualitygates/project_status",
        params={"projectKey": PROJECT_KEY},
        auth=(sonarqube.token, ""),
        timeout=30,
    )
    gate.raise_for_status()
    assert gate.json()["projectStatus"]["status"] == "OK", gate.text
    measures = _wait_for_measures(sonarqube, "coverage", "tests", "ncloc")
    assert measures.get("coverage", 0) > 0, f"coverage not imported: {measures}"
    assert measures.get("tests", 0) > 0, f"JUnit report not imported: {measures}"
    assert measures["ncloc"] > 1000, "ml, serving and elk were not analysed"


def test_make_sonar_without_a_token_is_a_clear_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SONAR_TOKEN", "SONAR_AUTH_TOKEN")}
    done = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "-o", f"{VENV}/.installed", "sonar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "set SONAR_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
