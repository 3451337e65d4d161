"""Contracts of the two environments: `k8s/overlays/minikube` (dev) and `k8s/overlays/prod`.

No Kubernetes runs here (nor a cluster behind a kubeconfig), so both overlays are rendered by
the real kustomize (kubectl's), validated against the Kubernetes schemas (kubernetes-validate,
strict) and KubeRay's CRD, and compared where prod must differ: replicas, anti-affinity,
PodDisruptionBudgets that select real pods, resource limits, Elasticsearch credentials from
the Secret, the prod settings profile. The nightly backup CronJob runs in both.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ml.config import PROFILES, Settings
from tests.contracts.test_k8s import (
    KUBERNETES_VERSION,
    REPO_ROOT,
    kuberay_validator,
    quantity,
    render,
)

pytestmark = pytest.mark.contracts

DEV = REPO_ROOT / "k8s" / "overlays" / "minikube"
PROD = REPO_ROOT / "k8s" / "overlays" / "prod"
ENVIRONMENTS = pytest.mark.parametrize("directory", [DEV, PROD], ids=["dev", "prod"])


def named(directory: Path, kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        doc for doc in render(directory) if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return found


def pod_templates(directory: Path) -> dict[str, dict[str, Any]]:
    """Every pod template by owner (Ray groups as `RayService/head` and `/<group>`)."""
    templates: dict[str, dict[str, Any]] = {}
    for doc in render(directory):
        kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec", {})
        if kind in ("Deployment", "DaemonSet", "Job"):
            templates[f"{kind}/{name}"] = spec["template"]
        elif kind == "CronJob":
            templates[f"{kind}/{name}"] = spec["jobTemplate"]["spec"]["template"]
        elif kind == "RayService":
            cluster = spec["rayClusterConfig"]
            templates["RayService/head"] = cluster["headGroupSpec"]["template"]
            for group in cluster.get("workerGroupSpecs", []):
                # KubeRay adds this label to every worker pod it creates
                template = {**group["template"]}
                labels = {**template.get("metadata", {}).get("labels", {})}
                labels["ray.io/node-type"] = "worker"
                template["metadata"] = {**template.get("metadata", {}), "labels": labels}
                templates[f"RayService/{group['groupName']}"] = template
    return templates


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


@ENVIRONMENTS
def test_both_environments_render_and_validate(directory: Path) -> None:
    validated = 0
    for doc in render(directory):
        if doc["apiVersion"].startswith("ray.io/"):
            errors = sorted(kuberay_validator().iter_errors(doc), key=str)
            assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        validated += 1
    assert validated >= 15


@ENVIRONMENTS
def test_every_container_has_limits(directory: Path) -> None:
    for owner, template in pod_templates(directory).items():
        for container in template["spec"]["containers"]:
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), f"{owner}/{container['name']}"


def test_prod_serves_from_two_worker_pods_on_two_nodes() -> None:
    cluster = named(PROD, "RayService", "mlops-serving")["spec"]["rayClusterConfig"]
    [workers] = cluster["workerGroupSpecs"]
    assert workers["replicas"] >= 2 and workers["minReplicas"] >= 2
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "replicas on workers"
    serve = yaml.safe_load(named(PROD, "RayService", "mlops-serving")["spec"]["serveConfigV2"])
    [deployment] = serve["applications"][0]["deployments"]
    assert deployment["num_replicas"] >= 2
    affinity = workers["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    [worker] = workers["template"]["spec"]["containers"]
    assert worker["image"] == head["image"], "the workers run the deployed image"
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_CT_DATABASE", "POSTGRES_PASSWORD"):
        assert env_of(worker)[name] == env_of(head)[name], name
    dev = named(DEV, "RayService", "mlops-serving")["spec"]["rayClusterConfig"]
    assert not dev.get("workerGroupSpecs"), "dev stays a head-only cluster"


def test_prod_runs_two_mlflow_servers_on_shared_storage() -> None:
    mlflow = named(PROD, "Deployment", "mlflow")["spec"]
    assert mlflow["replicas"] >= 2 and mlflow["strategy"]["type"] == "RollingUpdate"
    assert "podAntiAffinity" in mlflow["template"]["spec"]["affinity"]
    volume = named(PROD, "PersistentVolumeClaim", "mlflow-artifacts")["spec"]
    assert volume["accessModes"] == ["ReadWriteMany"], "two servers write the same artifacts"
    assert named(DEV, "Deployment", "mlflow")["spec"].get("replicas", 1) == 1


def test_prod_disruption_budgets_select_real_pods() -> None:
    budgets = [doc for doc in render(PROD) if doc["kind"] == "PodDisruptionBudget"]
    assert {doc["metadata"]["name"] for doc in budgets} == {"mlops-serving-workers", "mlflow"}
    templates = pod_templates(PROD)
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [
            owner
            for owner, template in templates.items()
            if selector.items() <= template.get("metadata", {}).get("labels", {}).items()
        ]
        assert matched, f"PDB {budget['metadata']['name']} selects no pod"
        assert budget["spec"]["minAvailable"] == 1
    assert not [doc for doc in render(DEV) if doc["kind"] == "PodDisruptionBudget"]


def test_prod_limits_are_larger_than_dev() -> None:
    def memory(directory: Path, owner: str) -> float:
        container = pod_templates(directory)[owner]["spec"]["containers"][0]
        return quantity(container["resources"]["limits"]["memory"])

    assert memory(PROD, "Deployment/mlflow") > memory(DEV, "Deployment/mlflow")
    assert memory(PROD, "RayService/serve") >= memory(DEV, "RayService/head")


def test_prod_takes_elasticsearch_credentials_from_the_secret() -> None:
    example = yaml.safe_load((PROD / "secrets.example.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    for owner in ("DaemonSet/filebeat", "CronJob/mlops-backup"):
        for directory in (DEV, PROD):
            container = pod_templates(directory)[owner]["spec"]["containers"][0]
            env = env_of(container)
            refs = {
                name: env[name].get("valueFrom", {}).get("secretKeyRef")
                for name in (
                    "ELASTICSEARCH_URL",
                    "ELASTICSEARCH_USERNAME",
                    "ELASTICSEARCH_PASSWORD",
                )
                if name in env
            }
            if directory == PROD:
                assert all(ref is not None for ref in refs.values()) and len(refs) == 3, owner
                assert not any(ref.get("optional") for ref in refs.values()), owner
                assert all("value" not in env[name] for name in refs), owner
            else:
                assert env["ELASTICSEARCH_URL"]["value"].startswith("http://"), owner
    keys = set(example["stringData"])
    for owner, template in pod_templates(PROD).items():
        for container in template["spec"].get("containers", []):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == example["metadata"]["name"], owner
                    assert ref["key"] in keys, f"{owner}: {ref['key']} not in the prod example"


@ENVIRONMENTS
def test_the_profile_is_the_environment(directory: Path) -> None:
    config = next(
        doc
        for doc in render(directory)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("mlops-training")
    )
    expected = "prod" if directory == PROD else "dev"
    settings = Settings.model_validate(
        {key.removeprefix("MLOPS_").lower(): value for key, value in config["data"].items()}
    )
    assert settings.env == expected
    assert settings.from_profile == set(PROFILES[expected]) - {
        key.removeprefix("MLOPS_").lower() for key in config["data"]
    }


@ENVIRONMENTS
def test_the_backup_cronjob_backs_up_the_servers_stores(directory: Path) -> None:
    """`mlops backup create` nightly, never two at once, against the database the MLflow
    server, the studies and the CT loop use, with the artifacts volume read-only."""
    from typer.main import get_command

    from serving.main import app

    cronjob = named(directory, "CronJob", "mlops-backup")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["mlops", "backup", "create"]
    assert "create" in get_command(app).commands["backup"].commands  # type: ignore[attr-defined]
    env = {name: item.get("value") for name, item in env_of(container).items()}
    mlflow = named(directory, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    backend = next(a for a in mlflow["command"] if a.startswith("--backend-store-uri="))
    database = backend.split("=", 1)[1]
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_OPTUNA_STORAGE", "MLOPS_CT_DATABASE"):
        assert env[name] == database, name
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["artifacts"]["readOnly"] is True
    assert env["MLOPS_MLFLOW_ARTIFACTS_DIR"] == mounts["artifacts"]["mountPath"]
    assert env["MLOPS_BACKUP_DIR"] == mounts["backups"]["mountPath"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "mlflow-artifacts"
    keep = int(env["MLOPS_BACKUP_KEEP"])
    assert keep == (14 if directory == PROD else 7)
    Settings(backup_keep=keep)  # a valid setting


# --- scripts/deploy_prod.sh: the digest dev ran, pinned in the prod overlay ------------------

DIGEST = "sha256:" + "ab" * 32
REPOSITORY = "registry.example.com/team/mlops-serving"


def deploy_prod(tmp_path: Path, digest_line: str | None) -> subprocess.CompletedProcess[str]:
    digest_file = tmp_path / "image-digest"
    if digest_line is not None:
        digest_file.write_text(digest_line + "\n")
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": f"{venv_bin}:/usr/bin:/bin",
        "DRY_RUN": "1",
        "VAR_DIR": str(tmp_path),
        "IMAGE_DIGEST_FILE": str(digest_file),
    }
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "deploy_prod.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_prod_pins_every_serving_image_to_the_pushed_digest(tmp_path: Path) -> None:
    done = deploy_prod(tmp_path, f"{REPOSITORY}@{DIGEST}")
    assert done.returncode == 0, done.stderr
    assert "apply -k" in done.stdout and "wait --for=condition=Ready" in done.stdout
    pinned = render(tmp_path / "deploy-prod")
    images = {
        container["image"]
        for template in _templates(pinned)
        for container in template["spec"]["containers"]
        if "mlops-serving" in container["image"]
    }
    assert images == {f"{REPOSITORY}@{DIGEST}"}, "every serving pod runs the digest dev ran"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (None, "run `make docker-push` first"),
        (f"mlops-serving@{DIGEST}", "expected REGISTRY/NAMESPACE/NAME@sha256"),
        (f"{REPOSITORY}:0.1.0", "expected REGISTRY/NAMESPACE/NAME@sha256"),
    ],
    ids=["missing", "no-namespace", "a-tag-not-a-digest"],
)
def test_deploy_prod_refuses_anything_but_a_recorded_digest(
    tmp_path: Path, line: str | None, expected: str
) -> None:
    done = deploy_prod(tmp_path, line)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert "apply" not in done.stdout


def _templates(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    found = []
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "DaemonSet", "Job"):
            found.append(spec["template"])
        elif doc["kind"] == "CronJob":
            found.append(spec["jobTemplate"]["spec"]["template"])
        elif doc["kind"] == "RayService":
            cluster = spec["rayClusterConfig"]
            found.append(cluster["headGroupSpec"]["template"])
            found += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    return found
