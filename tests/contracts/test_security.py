"""Security contracts: Elasticsearch security in compose and k8s, container hardening, audits.

No Docker engine, Kubernetes or security-enabled Elasticsearch runs here (the integ-test-zip
has no security module), so these are contracts over what would be deployed: the real Compose
v2 binary renders the stack (`docker compose config`, as test_docker.py does) and kubectl's
kustomize renders both overlays (as test_k8s.py does). `make security-bandit` and
`make security-audit` run for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.contracts.test_docker import ROOT_COMPOSE, compose_config
from tests.contracts.test_k8s import kubectl, render

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = {
    "minikube": REPO_ROOT / "k8s" / "overlays" / "minikube",
    "prod": REPO_ROOT / "k8s" / "overlays" / "prod",
}
sys.path.insert(0, str(REPO_ROOT / "jenkins"))
import pip_audit_gate  # noqa: E402  (jenkins/ is not a package)

pytestmark = pytest.mark.contracts

ES_URL = "http://elasticsearch:9200"


# --- Elasticsearch security in compose -------------------------------------------------------


def stack(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole root stack with its required secrets set (`compose_config` sets them)."""
    services: dict[str, Any] = compose_config(ROOT_COMPOSE, env)["services"]
    return services


def test_elasticsearch_security_is_on_by_default() -> None:
    elasticsearch = stack()["elasticsearch"]["environment"]
    assert elasticsearch["xpack.security.enabled"] == "true"
    assert elasticsearch["ELASTIC_PASSWORD"] == "contract-test-value"  # required, no default


def test_security_off_is_an_explicit_opt_out() -> None:
    services = stack({"ELASTIC_SECURITY": "false"})
    assert services["elasticsearch"]["environment"]["xpack.security.enabled"] == "false"
    assert services["es-passwords"]["environment"]["ELASTIC_SECURITY"] == "false"


def test_compose_refuses_to_start_elasticsearch_without_its_passwords() -> None:
    from tests.contracts.test_docker import compose_binary, compose_files, required_variables

    env = {
        name: "x"
        for name in required_variables(compose_files())
        if name not in {"ELASTIC_PASSWORD", "KIBANA_PASSWORD"}
    }
    done = subprocess.run(
        [compose_binary(), "-f", str(ROOT_COMPOSE), "config"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "ELASTIC_PASSWORD" in done.stderr or "KIBANA_PASSWORD" in done.stderr


def elasticsearch_clients(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every service whose settings point at Elasticsearch, with its environment."""
    return {
        name: service.get("environment", {})
        for name, service in services.items()
        if ES_URL in json.dumps(service)
    }


def test_every_elasticsearch_client_in_compose_authenticates() -> None:
    services = stack({"ELASTIC_PASSWORD": "elastic-pw", "KIBANA_PASSWORD": "kibana-pw"})
    clients = elasticsearch_clients(services)
    assert {"kibana", "elk-setup", "filebeat", "elastalert-config", "es-passwords"} <= set(clients)
    for name, env in clients.items():
        if name == "kibana":
            assert env["ELASTICSEARCH_USERNAME"] == "kibana_system"
            assert env["ELASTICSEARCH_PASSWORD"] == "kibana-pw"
        elif name == "es-passwords":  # sets kibana_system's password as the elastic user
            assert env["ELASTIC_PASSWORD"] == "elastic-pw" and env["KIBANA_PASSWORD"] == "kibana-pw"
            assert "_security/user/kibana_system/_password" in "".join(services[name]["command"])
        else:
            assert env["ELASTICSEARCH_USERNAME"] == "elastic", name
            assert env["ELASTICSEARCH_PASSWORD"] == "elastic-pw", name
    # ElastAlert reads the config elastalert-config renders from those settings
    assert services["elastalert"]["depends_on"]["elastalert-config"]
    kibana_deps = services["kibana"]["depends_on"]
    assert kibana_deps["es-passwords"]["condition"] == "service_completed_successfully"
    assert "elastic:" in " ".join(services["elasticsearch"]["healthcheck"]["test"])


def test_a_dedicated_user_replaces_the_superuser() -> None:
    services = stack({"ELASTICSEARCH_USERNAME": "shipper", "ELASTICSEARCH_PASSWORD": "ship-pw"})
    for name in ("elk-setup", "filebeat", "elastalert-config"):
        env = services[name]["environment"]
        assert (env["ELASTICSEARCH_USERNAME"], env["ELASTICSEARCH_PASSWORD"]) == (
            "shipper",
            "ship-pw",
        ), name


def test_filebeat_yml_takes_its_credentials_from_the_environment() -> None:
    for path in (
        REPO_ROOT / "elk/filebeat/filebeat.yml",
        REPO_ROOT / "k8s/base/filebeat/filebeat.yml",
    ):
        output = yaml.safe_load(path.read_text())["output.elasticsearch"]
        assert output["username"] == "${ELASTICSEARCH_USERNAME:}", path
        assert output["password"] == "${ELASTICSEARCH_PASSWORD:}", path


def test_the_tls_caveat_is_documented() -> None:
    text = (REPO_ROOT / "docs" / "observability.md").read_text()
    assert "ELASTIC_SECURITY=false" in text and "xpack.security.http.ssl" in text


# --- Elasticsearch credentials in Kubernetes ----------------------------------------------------


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=list(OVERLAYS))
def test_every_elasticsearch_client_in_k8s_takes_its_credentials_from_the_secret(
    overlay: str,
) -> None:
    clients = {
        name: container
        for name, container in workload_containers(OVERLAYS[overlay]).items()
        if "ELASTICSEARCH_URL" in env_of(container)
        or any("mlops-alerting" in json.dumps(source) for source in container.get("envFrom", []))
    }
    assert {
        "DaemonSet/filebeat/filebeat",
        "CronJob/mlops-backup/backup",
        "Deployment/elastalert/config",
    } <= set(clients)
    for name, container in clients.items():
        env = env_of(container)
        for key, secret_key in (
            ("ELASTICSEARCH_USERNAME", "elasticsearch-username"),
            ("ELASTICSEARCH_PASSWORD", "elasticsearch-password"),
        ):
            ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef")
            assert ref == {**ref, "name": "mlops-secrets", "key": secret_key}, (name, key)
            assert "value" not in env[key] or env[key]["value"] is None, (name, key)


# --- container hardening: Kubernetes -------------------------------------------------------------

# The one exception table: container -> {rule: why}. Everything else must pass every rule.
K8S_EXCEPTIONS: dict[str, dict[str, str]] = {
    "DaemonSet/filebeat/filebeat": {
        "non_root": "reads the NDJSON and Ray logs other pods wrote on the node (hostPath)",
    },
    "RayService/mlops-serving/log-dir-owner": {
        "non_root": "chowns the node's hostPath log dirs to uid 1000 (hostPath ignores fsGroup)",
    },
}


def pod_templates(directory: Path) -> dict[str, dict[str, Any]]:
    """Every pod spec a workload starts (CronJobs and Ray worker groups included)."""
    specs: dict[str, dict[str, Any]] = {}
    for doc in render(directory):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            specs[f"{kind}/{name}"] = doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            specs[f"{kind}/{name}"] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
            for index, group in enumerate(groups):
                specs[f"{kind}/{name}#{index}"] = group["template"]["spec"]
    return specs


def workload_containers(directory: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for owner, spec in pod_templates(directory).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            container = {**container, "_pod": spec.get("securityContext", {})}
            found[f"{owner.split('#')[0]}/{container['name']}"] = container
    return found


def violations(container: dict[str, Any]) -> dict[str, str]:
    """Rule -> what is wrong, for one container (its pod's securityContext as fallback)."""
    pod = container["_pod"]
    context = container.get("securityContext", {})
    user = context.get("runAsUser", pod.get("runAsUser"))
    non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
    found = {}
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        found["drop_all"] = "capabilities.drop lacks ALL"
    if context.get("allowPrivilegeEscalation") is not False:
        found["no_escalation"] = "allowPrivilegeEscalation is not false"
    if user == 0 or (user is None and non_root is not True):
        found["non_root"] = f"may run as root (runAsUser {user}, runAsNonRoot {non_root})"
    if context.get("readOnlyRootFilesystem") is not True:
        found["read_only_root"] = "readOnlyRootFilesystem is not true"
    seccomp = context.get("seccompProfile", pod.get("seccompProfile", {}))
    if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
        found["seccomp"] = "no RuntimeDefault seccomp profile"
    return found


@pytest.mark.parametrize("overlay", OVERLAYS, ids=list(OVERLAYS))
def test_every_container_is_hardened_or_listed_with_its_reason(overlay: str) -> None:
    containers = workload_containers(OVERLAYS[overlay])
    assert len(containers) >= 11, sorted(containers)
    problems = []
    for name, container in containers.items():
        allowed = K8S_EXCEPTIONS.get(name, {})
        for rule, message in violations(container).items():
            if rule not in allowed:
                problems.append(f"{name}: {message}")
    assert not problems, "\n".join(problems)


def test_every_k8s_exception_is_still_needed() -> None:
    """An exception the manifests no longer need is removed from the table."""
    needed: dict[str, set[str]] = {}
    for directory in OVERLAYS.values():
        for name, container in workload_containers(directory).items():
            needed.setdefault(name, set()).update(violations(container))
    for name, rules in K8S_EXCEPTIONS.items():
        assert name in needed, f"{name}: no such container"
        assert set(rules) <= needed[name], f"{name}: {set(rules) - needed[name]} not needed"


def test_the_hardening_check_rejects_a_weak_container() -> None:
    weak = {"name": "x", "_pod": {}, "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}
    assert set(violations(weak)) == {
        "drop_all",
        "no_escalation",
        "non_root",
        "read_only_root",
        "seccomp",
    }
    strong = {
        "_pod": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {
            "capabilities": {"drop": ["ALL"]},
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
        },
    }
    assert not violations(strong)


def test_read_only_roots_have_scratch_space_where_the_process_writes() -> None:
    """Processes that write temp files get an emptyDir at /tmp (and their var dir in it)."""
    containers = workload_containers(OVERLAYS["prod"])
    for name in (
        "Deployment/mlflow/mlflow",
        "Deployment/postgres/postgres",
        "Job/mlops-train/train",
        "CronJob/mlops-ct/ct",
        "CronJob/mlops-backup/backup",
        "Deployment/elastalert/elastalert",
        "RayService/mlops-serving/ray-head",
        "RayService/mlops-serving/ray-worker",
    ):
        mounts = {mount["mountPath"] for mount in containers[name].get("volumeMounts", [])}
        assert "/tmp" in mounts, name
    for name in (
        "Job/mlops-train/train",
        "CronJob/mlops-ct/ct",
        "CronJob/mlops-backup/backup",
        "RayService/mlops-serving/ray-head",
        "RayService/mlops-serving/ray-worker",
    ):
        assert env_of(containers[name])["MLOPS_VAR_DIR"]["value"].startswith("/tmp/"), name
    postgres = containers["Deployment/postgres/postgres"]["volumeMounts"]
    assert "/var/run/postgresql" in {mount["mountPath"] for mount in postgres}


def kube_score(*overlays: Path) -> subprocess.CompletedProcess[str]:
    """scripts/kube_score.sh check: builds kube-score once from its Go module (cached)."""
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "kube_score.sh"), "check", *map(str, overlays)],
        cwd=REPO_ROOT,
        env={**os.environ, "KUBECTL": kubectl()},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_kube_score_security_checks_pass_on_both_overlays() -> None:
    """kube-score's read-only root, unprivileged and seccomp checks on every built-in
    workload (it does not read the RayService: the tests above cover it)."""
    done = kube_score(*OVERLAYS.values())
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "[OK] mlflow" in done.stdout and "[CRITICAL]" not in done.stdout


def test_kube_score_fails_a_weak_workload(tmp_path: Path) -> None:
    weak = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "weak"},
        "spec": {
            "selector": {"matchLabels": {"app": "weak"}},
            "template": {
                "metadata": {"labels": {"app": "weak"}},
                "spec": {
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "weak",
                            "image": "busybox:1.37",
                            "securityContext": {"readOnlyRootFilesystem": False},
                        }
                    ],
                },
            },
        },
    }
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump(weak))
    (tmp_path / "kustomization.yaml").write_text("resources: [weak.yaml]\n")
    done = kube_score(tmp_path)
    assert done.returncode != 0
    assert "writable root filesystem" in done.stdout, done.stdout


# --- container hardening: compose ---------------------------------------------------------------

COMPOSE_EXCEPTIONS: dict[str, dict[str, str]] = {
    # images whose entrypoint starts as root and needs capabilities
    "postgres": {"drop_all": "entrypoint chowns the data dir, then drops to the postgres user"},
    "sonar-db": {"drop_all": "as postgres"},
    "minio": {"drop_all": "runs as root over a volume it must own; unverified without Docker"},
    "filebeat": {"drop_all": "root reading other containers' files (DAC_READ_SEARCH)"},
    "jenkins": {"drop_all": "the image's entrypoint and the Docker socket group; unverified"},
}
# Read-only roots in compose: only the one-shots that write nothing but their volumes; the
# long-running services keep theirs (no Docker here to verify what each image writes).
COMPOSE_READ_ONLY = {"minio-bucket", "elk-setup", "elastalert-config", "es-passwords"}


def test_every_compose_service_forbids_privilege_escalation_and_drops_capabilities() -> None:
    problems = []
    for name, service in stack().items():
        if "no-new-privileges:true" not in service.get("security_opt", []):
            problems.append(f"{name}: no no-new-privileges")
        if "ALL" not in service.get("cap_drop", []) and "drop_all" not in COMPOSE_EXCEPTIONS.get(
            name, {}
        ):
            problems.append(f"{name}: cap_drop lacks ALL")
    assert not problems, "\n".join(problems)
    services = stack()
    for name in COMPOSE_READ_ONLY:
        assert services[name].get("read_only") is True, name
        assert "ALL" in services[name]["cap_drop"], name


def test_the_serving_image_runs_as_non_root() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "\nUSER 1000:1000\n" in text


# --- bandit and pip-audit ----------------------------------------------------------------------


def make(target: str, reports: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"REPORTS_DIR={reports}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_bandit_finds_nothing_at_medium_or_high(tmp_path: Path) -> None:
    done = make("security-bandit", tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bandit.json").read_text())
    serious = [r for r in report["results"] if r["issue_severity"] in {"MEDIUM", "HIGH"}]
    assert not serious


def test_pip_audit_never_passes_without_an_audit(tmp_path: Path) -> None:
    """Offline (as here) the advisory DB is unreachable: one line says so, exit 3, and no
    report claims a clean audit. Where the DB answers, the report lists every package
    audited (none skipped) and the target's status is pip-audit's own."""
    done = make("security-audit", tmp_path)
    report = tmp_path / "pip-audit.json"
    # make itself exits 2 for any failed recipe; the recipe's own status is in its message
    if f"Error {pip_audit_gate.NOT_AUDITED}" in done.stderr:
        assert done.returncode != 0
        assert not report.exists(), "an unaudited run left a report"
        lines = [line for line in done.stderr.splitlines() if "NOT audited" in line]
        assert len(lines) == 1, done.stderr[-3000:]
        assert lines[0].startswith(("pip-audit could not run", "pip-audit incomplete"))
        assert "No known vulnerabilities found" not in done.stdout + done.stderr
        unaudited = json.loads((tmp_path / "pip-audit.unaudited.json").read_text())
        assert any("skip_reason" in dep for dep in unaudited["dependencies"])
    else:
        assert "NOT audited" not in done.stderr, done.stderr[-3000:]
        audited = json.loads(report.read_text())
        assert audited["dependencies"]
        assert not any("skip_reason" in dep for dep in audited["dependencies"])


@pytest.mark.parametrize(
    ("dependencies", "complete", "start"),
    [
        ([{"name": "a", "version": "1", "vulns": []}], True, ""),
        ([{"name": "a", "skip_reason": "not found"}], False, "pip-audit could not run"),
        (
            [{"name": "a", "version": "1", "vulns": []}, {"name": "b", "skip_reason": "x"}],
            False,
            "pip-audit incomplete: 1 of 2 packages",
        ),
    ],
)
def test_the_audit_gate_reads_skipped_packages(
    dependencies: list[dict[str, Any]], complete: bool, start: str
) -> None:
    result = pip_audit_gate.read_result({"dependencies": dependencies})
    assert result.complete is complete
    if not complete:
        assert pip_audit_gate.verdict(result).startswith(start)


def test_the_audit_gate_names_a_malformed_report() -> None:
    with pytest.raises(ValueError, match="dependencies"):
        pip_audit_gate.read_result({"fixes": []})
