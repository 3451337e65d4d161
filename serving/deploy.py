"""Render `serving/serve_config.yaml` for one model version and deploy it to a Ray cluster.

`mlops serve` uses this with the detached local cluster of `serving.local_cluster`, so the
command returns with serving left running; tests use it with an in-process `ray.init`. Either
way the deployed config is the committed file with three things filled in:
the resolved `models:/<name>/<version>`, the tracking URI replicas must use, and host/port.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from ml.config import Settings

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

APP_NAME = "model"
DEPLOYMENT_NAME = "ModelServer"


class ServeError(RuntimeError):
    """Serving could not be started, updated or reached; the message says what to do."""


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ServeError(f"{path}: no such Serve config")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ServeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or not config.get("applications"):
        raise ServeError(f"{path}: expected a Serve config with `applications`")
    return config


def model_deployment(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelServer deployment entry of the model application."""
    for application in config.get("applications", []):
        if application.get("name") == APP_NAME:
            for deployment in application.get("deployments", []):
                if deployment.get("name") == DEPLOYMENT_NAME:
                    return deployment
    raise ServeError(
        f"the Serve config has no deployment {DEPLOYMENT_NAME!r} in application " f"{APP_NAME!r}"
    )


def render_config(
    config: dict[str, Any],
    *,
    model_uri: str,
    settings: Settings,
    port: int | None = None,
    num_replicas: int | None = None,
    num_cpus: float | None = None,
    max_batch_size: int | None = None,
) -> dict[str, Any]:
    """A copy of `config` for one resolved model version; validated by Ray's own schema."""
    from ray.serve.schema import ServeDeploySchema

    rendered = copy.deepcopy(config)
    rendered.setdefault("http_options", {})
    rendered["http_options"]["host"] = settings.serve_host
    rendered["http_options"]["port"] = port or settings.serve_port
    application = next(app for app in rendered["applications"] if app.get("name") == APP_NAME)
    env_vars = application.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env_vars.update(replica_env(settings))
    deployment = model_deployment(rendered)
    user_config = deployment.setdefault("user_config", {})
    user_config["model_uri"] = model_uri
    user_config["max_request_rows"] = settings.max_batch_rows
    user_config["max_request_bytes"] = settings.max_request_bytes
    if max_batch_size is not None:
        user_config["max_batch_size"] = max_batch_size
    if num_replicas is not None:
        deployment["num_replicas"] = num_replicas
    if num_cpus is not None:
        deployment.setdefault("ray_actor_options", {})["num_cpus"] = num_cpus
    ServeDeploySchema.model_validate(rendered)
    return rendered


def replica_env(settings: Settings) -> dict[str, str]:
    """What replicas (other processes) need from our settings; no secrets here: those reach
    replicas through the cluster's own environment (`ray start` inherits it)."""
    env = {
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_LOG_DIR": str(settings.log_dir),
        "MLOPS_MODEL_NAME": settings.model_name,
    }
    if settings.elasticsearch_url:
        env["ELASTICSEARCH_URL"] = settings.elasticsearch_url
    return env


def write_config(rendered: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return path


def deploy(rendered: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Start Serve (if needed) on the connected cluster with the config's cluster-wide options,
    apply the config's applications, and wait for the model application to run: what
    `serve run <config>` does, without blocking and without a second process."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(rendered)
    # Public: fixed once Serve runs (a redeploy keeps the first ones).
    serve.start(
        proxy_location=schema.proxy_location,
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        logging_config=schema.logging_config,
        controller_options=schema.controller_options,
    )
    apply_config(schema)
    wait_running(timeout_s)


def apply_config(schema: ServeDeploySchema) -> None:
    """Hand the config's applications to the running Serve controller, as `serve run <config>`
    and `serve deploy` do: the one private Ray Serve call of this project.

    Why not the public `serve.run(app)`: only a deployed *config* gets a code version derived
    from the config (import path, runtime env), so a later `user_config` change (a new model
    version) is a lightweight update: Serve calls `reconfigure` on the running replicas, a
    failed load keeps the old model serving, and the swap is rolling without a restart.
    `serve.run` gives each call a random code version (`@serve.deployment(version=...)` was
    removed from the public API), so every update would restart every replica. The public
    ways to deploy a config are `serve deploy` (the REST API needs the dashboard, off in
    tests) and the `serve run` CLI (a second process importing Ray per deploy, about 10 s
    here). tests/unit/test_serving_deploy.py fails loudly when an upgrade changes this call,
    or when Ray's public API can pin a version again.
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:  # it raises instead when no controller runs; mypy cannot know
        raise ServeError("Serve is not running on the connected cluster")
    client.deploy_apps(schema, _blocking=False)


def wait_running(timeout_s: float) -> None:
    """Until the model application is RUNNING; a failed deploy is reported with Serve's words."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = "NOT_STARTED"
    message = ""
    while time.monotonic() < deadline:
        application = serve.status().applications.get(APP_NAME)
        if application is not None:
            status, message = str(application.status), application.message
            deployment = application.deployments.get(DEPLOYMENT_NAME)
            if status.endswith("RUNNING") and deployment is not None:
                return
            if status.endswith("DEPLOY_FAILED"):
                details = deployment.message if deployment is not None else ""
                raise ServeError(f"deploying failed: {message or details}")
        time.sleep(0.5)
    raise ServeError(
        f"the model application is not running after {timeout_s:.0f}s "
        f"(status {status}: {message})"
    )


def wait_version(base_url: str, version: str, timeout_s: float, samples: int = 8) -> None:
    """Until `samples` consecutive `/version` answers name `version` (every replica swapped)."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                answers = [
                    http.get(f"{base_url}/version").json().get("model_version")
                    for _ in range(samples)
                ]
            except (httpx.HTTPError, ValueError):
                answers = []
            if answers and all(answer == version for answer in answers):
                return
            seen = answers
            time.sleep(0.5)
        last_load = _last_load(http, base_url)
    raise ServeError(
        f"serving did not switch to version {version} within {timeout_s:.0f}s "
        f"(replicas answer {sorted(set(seen))}; last load: {last_load})"
    )


def _last_load(http: httpx.Client, base_url: str) -> Any:
    try:
        return http.get(f"{base_url}/health").json().get("last_load")
    except (httpx.HTTPError, ValueError):
        return "unknown"


def serving_version(base_url: str) -> dict[str, Any] | None:
    """What `/version` answers, or None when nothing serves there."""
    try:
        response = httpx.get(f"{base_url}/version", timeout=2)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
